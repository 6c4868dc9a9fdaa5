-- The GIN index on whole profiles served no query: filters read profile keys by path
-- (`profile -> 'key'`), which `jsonb_path_ops` cannot answer. Every upsert still paid
-- for it, and flushing its pending list inside an upsert cost tens of milliseconds at
-- the 99th percentile.
DROP INDEX IF EXISTS users_profile;
