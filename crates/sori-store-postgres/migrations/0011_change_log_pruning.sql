-- The change log (removals and merges) is pruned after a while (see `prune_changes`), so
-- each entry carries the time it was logged, and the store remembers up to which change
-- number entries may be gone: a follower behind that mark cannot catch up from the log and
-- rebuilds its projection instead. The default is the time of the insert: entries logged
-- before this migration count as logged now (PostgreSQL fills them from the default
-- without rewriting the table, since `now()` is stable), and so do entries a node that
-- still runs the previous version logs without the column.
ALTER TABLE change_log ADD COLUMN at BIGINT NOT NULL
    DEFAULT ((extract(epoch FROM now()) * 1000)::bigint);
CREATE TABLE change_log_pruned (v BIGINT NOT NULL);
INSERT INTO change_log_pruned (v) VALUES (0);
