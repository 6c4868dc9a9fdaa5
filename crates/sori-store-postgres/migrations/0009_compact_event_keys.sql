-- Smaller event index entries (as SQLite's migrations 8 and 9). Each event inserts into two
-- indexes at random places (its user's timeline and the messageId dedupe index):
-- * `events_by_user` ended with the 36-byte event id, only to break ties in created_at
--   order, which a read now sorts itself (`events_by_time` keeps it: see SQLite's 8);
-- * `events_by_message` held the whole messageId, compared in the database's collation.
--   It now holds `message_key`, the first 16 bytes of the SHA-256 of the id's UTF-8
--   bytes, compared as bytes: a collision is as unlikely as one of SHA-256's.
-- The key is a generated column, so PostgreSQL computes it for every insert, also from a
-- node still running the previous version during a rolling upgrade (its inserts keep
-- being deduplicated). A generated column needs immutable functions, and `convert_to` is
-- only stable, so the id's bytes are taken with `decode(…, 'escape')` after doubling its
-- backslashes: the same bytes in a UTF-8 database. (A wrapper function declared
-- immutable is not inlined, and cost 9 % of batched ingestion.)
-- The indexes go first: adding a stored column rewrites the table and rebuilds the
-- indexes it still has.
DROP INDEX events_by_message;
DROP INDEX events_by_user;
ALTER TABLE events ADD COLUMN message_key BYTEA GENERATED ALWAYS AS
    (substring(sha256(decode(replace(message_id, '\', '\\'), 'escape')) FROM 1 FOR 16)) STORED;
CREATE INDEX events_by_user ON events (channel_id, user_id, created_at);
CREATE UNIQUE INDEX events_by_message ON events (channel_id, message_key)
    WHERE message_key IS NOT NULL;
