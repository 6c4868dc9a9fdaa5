-- The change log (removals and merges) is pruned after a while (see `prune_changes`), so
-- each entry carries the time it was logged, and the store remembers up to which change
-- number entries may be gone: a follower behind that mark cannot catch up from the log and
-- rebuilds its projection instead. Entries logged before this migration count as logged
-- now.
ALTER TABLE change_log ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
UPDATE change_log SET at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
CREATE TABLE change_log_pruned (v INTEGER NOT NULL);
INSERT INTO change_log_pruned (v) VALUES (0);
