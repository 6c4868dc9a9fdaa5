-- Activity-only changes are found through the events that caused them (as SQLite's
-- migration 7). The activity update now changes only unindexed columns, so PostgreSQL can
-- keep it on the row's page (a HOT update, no index entries); the fill factor leaves room.
ALTER TABLE users DROP COLUMN light_seq, DROP COLUMN full_seq;
ALTER TABLE users SET (fillfactor = 85);
