-- Smaller event index entries. Each event inserts into two indexes at random places (its
-- user's timeline and the messageId dedupe index), and those inserts are most of the
-- writer's work. The entries carried text that is not needed:
-- * `events_by_user` ended with the 36-byte event id, only to break ties in created_at
--   order; ties are sorted when read (a user's events in one millisecond are few).
--   `events_by_time` keeps it: it is appended to at its right edge (cheap), and it lets a
--   page of a whole channel's events (`sori export`) seek into thousands of events
--   imported with one time.
-- * `events_by_message` held the whole messageId. It now holds `message_key`, the first
--   16 bytes of the id's SHA-256 (`message_key` in the crate), filled for stored events
--   by the migration's Rust step: a collision is as unlikely as one of SHA-256's. Its
--   unique index comes in migration 9, once the keys are filled, so the fill does not
--   maintain it row by row.
ALTER TABLE events ADD COLUMN message_key BLOB;
DROP INDEX events_by_message;
DROP INDEX events_by_user;
CREATE INDEX events_by_user ON events (channel_id, user_id, created_at);
