-- One anonymous user per browser id (veil id) and channel: a second writer creating an
-- anonymous user for the same anonymousId fails and retries, finding the first. It
-- replaces users_by_veil: every lookup by veil id is for anonymous users.
CREATE UNIQUE INDEX users_one_anonymous ON users (channel_id, veil_id) WHERE member_id IS NULL;
DROP INDEX users_by_veil;
