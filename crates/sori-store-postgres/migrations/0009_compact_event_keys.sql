-- Smaller event index entries (as SQLite's migration 8). Each event inserts into two
-- indexes at random places (its user's timeline and the messageId dedupe index):
-- * `events_by_user` and `events_by_time` ended with the 36-byte event id, only to break
--   ties in created_at order, which a read now sorts itself;
-- * `events_by_message` held the whole messageId, compared in the database's collation.
--   It now holds `message_key`, the first 16 bytes of the id's SHA-256 (computed by the
--   insert), compared as bytes: a collision is as unlikely as one of SHA-256's.
ALTER TABLE events ADD COLUMN message_key BYTEA;
UPDATE events SET message_key = substring(sha256(convert_to(message_id, 'UTF8')) FROM 1 FOR 16)
    WHERE message_id IS NOT NULL;
DROP INDEX events_by_message;
DROP INDEX events_by_user;
DROP INDEX events_by_time;
CREATE INDEX events_by_user ON events (channel_id, user_id, created_at);
CREATE INDEX events_by_time ON events (channel_id, created_at);
CREATE UNIQUE INDEX events_by_message ON events (channel_id, message_key)
    WHERE message_key IS NOT NULL;
