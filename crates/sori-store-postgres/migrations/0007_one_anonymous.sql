-- One anonymous user per browser id (veil id) and channel. Two writer shards or nodes
-- could each create an anonymous user for the same anonymousId at once, splitting that
-- visitor's events; with this index the second insert fails, and its batch is retried and
-- finds the first. It replaces users_by_veil: every lookup by veil id is for anonymous
-- users. A database that already holds such duplicates keeps the old index and works
-- without the guarantee (a warning says so; see docs/identity.md).
DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM users WHERE member_id IS NULL AND veil_id IS NOT NULL
    GROUP BY channel_id, veil_id HAVING count(*) > 1
  ) THEN
    CREATE UNIQUE INDEX users_one_anonymous ON users (channel_id, veil_id) WHERE member_id IS NULL;
    DROP INDEX users_by_veil;
  ELSE
    RAISE WARNING 'users: several anonymous users share a veil id; users_one_anonymous not created';
  END IF;
END $$;
