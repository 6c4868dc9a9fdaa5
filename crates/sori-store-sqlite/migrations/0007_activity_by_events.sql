-- Activity-only changes are found through the events that caused them. An events-only
-- write moves a user's lastSeenAt (and createdAt, updatedAt) and, until now, gave the row
-- a new change number, which moved its entry in users_by_seq: a B-tree delete and insert
-- per event on the single writer. Such a write always appends at least one event (a
-- retried one moves nothing), so a follower learns of it from the events it reads anyway
-- and reads those users' three instants as they are now.
ALTER TABLE users DROP COLUMN light_seq;
ALTER TABLE users DROP COLUMN full_seq;
