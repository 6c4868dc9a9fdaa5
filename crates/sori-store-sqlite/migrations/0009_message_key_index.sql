-- The dedupe index over the keys migration 8 filled (see there).
CREATE UNIQUE INDEX events_by_message ON events (channel_id, message_key)
    WHERE message_key IS NOT NULL;
