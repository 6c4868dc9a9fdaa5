-- The messageIds of Segment calls that carry no event (identify), kept for as long as the
-- channel keeps events, so that a retried identify is answered instead of applied again:
-- applied again, it could merge an anonymous user made since into the member, or set a
-- trait back to a value a later identify replaced. `message_key` is the first 16 bytes of
-- the id's SHA-256, as for events; `user_id` the user the call was applied to.
CREATE TABLE call_keys (
    channel_id  INTEGER NOT NULL,
    message_key BLOB    NOT NULL,
    user_id     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, message_key)
) WITHOUT ROWID;
CREATE INDEX call_keys_by_time ON call_keys (channel_id, created_at);
-- A merge moves them to the member, and a deleted user's go with its events, so that a
-- retry after either behaves as an event's would.
CREATE INDEX call_keys_by_user ON call_keys (channel_id, user_id);
