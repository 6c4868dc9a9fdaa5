-- The change sequence that lets an audience projection follow writes it did not make
-- (another process, such as `sori import`, on the same file). Every write transaction
-- takes the next number; users carry the number of their last change, removals and merges
-- are logged with theirs. Events are followed by rowid (retention never deletes the
-- newest row, so rowids never repeat).
CREATE TABLE change_seq (v INTEGER NOT NULL);
INSERT INTO change_seq (v) VALUES (0);
ALTER TABLE users ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX users_by_seq ON users (seq);
CREATE TABLE change_log (
    channel_id INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    into_id    TEXT
);
CREATE INDEX change_log_by_seq ON change_log (seq);
