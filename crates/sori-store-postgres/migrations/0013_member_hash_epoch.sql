-- Counts the times member hashes were turned on (docs/sdk.md): an SDK session opened
-- anonymously may act as the member its visitor became only when it was opened since
-- the last time, so a visitor who claimed a member id by id alone while hashes were off
-- is shut out when they are turned on.
ALTER TABLE channels ADD COLUMN member_hash_epoch BIGINT NOT NULL DEFAULT 0;
