-- Events, their per-user aggregates and catalog, identity merges, retention setting.
-- Event properties are stored as JSON text: ingestion is the hot path and nothing queries
-- inside them yet.
ALTER TABLE channels ADD COLUMN event_retention_days BIGINT NOT NULL DEFAULT 90;

CREATE TABLE events (
    channel_id BIGINT NOT NULL,
    user_id    TEXT   COLLATE "C" NOT NULL,
    id         TEXT   COLLATE "C" NOT NULL,
    name       TEXT   NOT NULL,
    property   TEXT   NOT NULL,
    page       TEXT,
    source     TEXT   NOT NULL,
    message_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_by_user ON events (channel_id, user_id, created_at, id);
CREATE INDEX events_by_time ON events (channel_id, created_at, id);
CREATE UNIQUE INDEX events_by_message ON events (channel_id, message_id)
    WHERE message_id IS NOT NULL;

CREATE TABLE user_event_stats (
    channel_id BIGINT NOT NULL,
    user_id    TEXT   COLLATE "C" NOT NULL,
    name       TEXT   NOT NULL,
    count      BIGINT NOT NULL,
    first_at   BIGINT NOT NULL,
    last_at    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, user_id, name)
);

CREATE TABLE event_catalog (
    channel_id    BIGINT  NOT NULL,
    name          TEXT    NOT NULL,
    count         BIGINT  NOT NULL,
    first_seen_at BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    revenue       BOOLEAN NOT NULL,
    PRIMARY KEY (channel_id, name)
);

CREATE TABLE user_merges (
    channel_id   BIGINT NOT NULL,
    id           TEXT   COLLATE "C" NOT NULL,
    from_user_id TEXT   NOT NULL,
    into_user_id TEXT   NOT NULL,
    merged_at    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE INDEX user_merges_by_into ON user_merges (channel_id, into_user_id);
