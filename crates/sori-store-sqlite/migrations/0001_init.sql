-- Sori schema, SQLite dialect. Every tenant table leads its key with channel_id.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE channels (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    name                 TEXT    NOT NULL,
    time_zone            TEXT    NOT NULL,
    default_language     TEXT    NOT NULL,
    plugin_key           TEXT    NOT NULL UNIQUE,
    access_key           TEXT    NOT NULL UNIQUE,
    access_secret_hash   TEXT    NOT NULL,
    write_key_hash       TEXT    NOT NULL UNIQUE,
    member_hash_secret   TEXT    NOT NULL,
    member_hash_required INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL
);

CREATE TABLE roles (
    channel_id  INTEGER NOT NULL REFERENCES channels (id),
    id          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    permissions TEXT    NOT NULL,
    inbox_scope TEXT    NOT NULL,
    builtin     INTEGER NOT NULL,
    PRIMARY KEY (channel_id, id)
);

CREATE TABLE managers (
    channel_id    INTEGER NOT NULL REFERENCES channels (id),
    id            TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    role_id       TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (channel_id, id),
    UNIQUE (channel_id, email)
);
CREATE INDEX managers_by_email ON managers (email);

CREATE TABLE sessions (
    channel_id INTEGER NOT NULL,
    token_hash TEXT    NOT NULL,
    manager_id TEXT    NOT NULL,
    csrf_token TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (channel_id, token_hash)
);

CREATE TABLE profile_fields (
    channel_id INTEGER NOT NULL REFERENCES channels (id),
    key        TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    sensitive  INTEGER NOT NULL,
    builtin    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (channel_id, key)
);

CREATE TABLE builtin_field_settings (
    channel_id INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    sensitive  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, key)
);

CREATE TABLE users (
    channel_id          INTEGER NOT NULL,
    id                  TEXT    NOT NULL,
    member_id           TEXT,
    veil_id             TEXT,
    name                TEXT,
    profile             TEXT    NOT NULL,
    tags                TEXT    NOT NULL,
    unsubscribe_email   INTEGER NOT NULL,
    unsubscribe_texting INTEGER NOT NULL,
    blocked             INTEGER NOT NULL,
    city                TEXT,
    country             TEXT,
    language            TEXT,
    has_chat            INTEGER NOT NULL,
    has_push_token      INTEGER NOT NULL,
    sessions_count      INTEGER NOT NULL,
    last_seen_at        INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    web                 TEXT    NOT NULL,
    mobile              TEXT    NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE UNIQUE INDEX users_by_member ON users (channel_id, member_id) WHERE member_id IS NOT NULL;
CREATE INDEX users_by_veil ON users (channel_id, veil_id) WHERE veil_id IS NOT NULL;

CREATE TABLE reveal_audit (
    channel_id INTEGER NOT NULL,
    id         TEXT    NOT NULL,
    manager_id TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (channel_id, id)
);
