-- Activity-only changes go to an append-only log instead of the user row's change number.
-- Events move a user's lastSeenAt many times a second; giving the row a new `seq` (an
-- indexed column) made every such update a non-HOT update that inserted into each of the
-- table's indexes. Now the update touches only unindexed columns, so PostgreSQL can keep
-- it on the same page (HOT; the fill factor leaves room for that), and followers read
-- `(channel, seq, user)` from the log. Whole writes still take a new `seq`.
CREATE TABLE activity_log (
    channel_id BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    user_id    TEXT   COLLATE "C" NOT NULL
);
CREATE INDEX activity_log_by_seq ON activity_log (seq);
ALTER TABLE users DROP COLUMN light_seq, DROP COLUMN full_seq;
ALTER TABLE users SET (fillfactor = 85);
