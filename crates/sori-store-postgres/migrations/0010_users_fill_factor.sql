-- Room on each users page for one and a half new versions of every row (fill factor 40;
-- it was 85, room for a fifth). Every event moves its user's activity with an update that
-- PostgreSQL keeps on the row's page (HOT) only while the page has room; the room comes
-- back when the page is pruned, which waits for every older snapshot and for a moment with
-- no other pins. Under single events from a hot set of users (10,000 in the benchmark)
-- pages filled between prunes, 12 % of updates left the page and added entries to every
-- users index, and lookups then walked dead entries: 7,000–8,000 events/s on a fresh
-- store against 12,600–13,300 with this setting. Existing pages keep their layout until
-- they are rewritten (`VACUUM FULL users`, optional).
ALTER TABLE users SET (fillfactor = 40);
