-- The change sequence that lets every node's audience projection follow the writes of the
-- others. Every write transaction takes the next number while holding a shared advisory
-- lock (see `horizon`); users and events carry the number of their last change, removals
-- and merges are logged with theirs.
CREATE SEQUENCE change_seq;
ALTER TABLE users ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX users_by_seq ON users (seq);
ALTER TABLE events ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX events_by_seq ON events (seq);
CREATE TABLE change_log (
    channel_id BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    into_id    TEXT
);
CREATE INDEX change_log_by_seq ON change_log (seq);
