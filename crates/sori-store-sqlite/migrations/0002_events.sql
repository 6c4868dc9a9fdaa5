-- Events, their per-user aggregates and catalog, identity merges, retention setting.
ALTER TABLE channels ADD COLUMN event_retention_days INTEGER NOT NULL DEFAULT 90;

-- A rowid table: appends are cheap, and ids are generated unique so they need no index.
CREATE TABLE events (
    channel_id INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    property   TEXT    NOT NULL,
    page       TEXT,
    source     TEXT    NOT NULL,
    message_id TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_by_user ON events (channel_id, user_id, created_at, id);
CREATE INDEX events_by_time ON events (channel_id, created_at, id);
CREATE UNIQUE INDEX events_by_message ON events (channel_id, message_id)
    WHERE message_id IS NOT NULL;

-- Survives retention: segments count events per user from here.
CREATE TABLE user_event_stats (
    channel_id    INTEGER NOT NULL,
    user_id       TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    first_at      INTEGER NOT NULL,
    last_at       INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id, name)
) WITHOUT ROWID;

CREATE TABLE event_catalog (
    channel_id    INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    first_seen_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    revenue       INTEGER NOT NULL,
    PRIMARY KEY (channel_id, name)
) WITHOUT ROWID;

CREATE TABLE user_merges (
    channel_id   INTEGER NOT NULL,
    id           TEXT    NOT NULL,
    from_user_id TEXT    NOT NULL,
    into_user_id TEXT    NOT NULL,
    merged_at    INTEGER NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE INDEX user_merges_by_into ON user_merges (channel_id, into_user_id);
