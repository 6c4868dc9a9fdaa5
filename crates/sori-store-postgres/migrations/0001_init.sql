-- Sori schema, PostgreSQL dialect; the same tables as the SQLite schema.
-- Every tenant table leads its key with channel_id. Times are epoch milliseconds (BIGINT).
-- Ids and keys that are ordered or paged on use COLLATE "C" so order and cursor
-- comparisons are bytewise, as in SQLite, whatever the database locale.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE channels (
    id                   BIGSERIAL PRIMARY KEY,
    name                 TEXT    NOT NULL,
    time_zone            TEXT    NOT NULL,
    default_language     TEXT    NOT NULL,
    plugin_key           TEXT    NOT NULL UNIQUE,
    access_key           TEXT    NOT NULL UNIQUE,
    access_secret_hash   TEXT    NOT NULL,
    write_key_hash       TEXT    NOT NULL UNIQUE,
    member_hash_secret   TEXT    NOT NULL,
    member_hash_required BOOLEAN NOT NULL DEFAULT FALSE,
    created_at           BIGINT  NOT NULL
);

CREATE TABLE roles (
    channel_id  BIGINT  NOT NULL REFERENCES channels (id),
    id          TEXT    COLLATE "C" NOT NULL,
    name        TEXT    NOT NULL,
    permissions TEXT    NOT NULL,
    inbox_scope TEXT    NOT NULL,
    builtin     BOOLEAN NOT NULL,
    PRIMARY KEY (channel_id, id)
);

CREATE TABLE managers (
    channel_id    BIGINT NOT NULL REFERENCES channels (id),
    id            TEXT   COLLATE "C" NOT NULL,
    email         TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    role_id       TEXT   NOT NULL,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, id),
    UNIQUE (channel_id, email)
);
CREATE INDEX managers_by_email ON managers (email);

CREATE TABLE sessions (
    channel_id BIGINT NOT NULL,
    token_hash TEXT   NOT NULL,
    manager_id TEXT   NOT NULL,
    csrf_token TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, token_hash)
);

CREATE TABLE profile_fields (
    channel_id BIGINT  NOT NULL REFERENCES channels (id),
    key        TEXT    COLLATE "C" NOT NULL,
    name       TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    sensitive  BOOLEAN NOT NULL,
    builtin    BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (channel_id, key)
);

CREATE TABLE builtin_field_settings (
    channel_id BIGINT  NOT NULL,
    key        TEXT    COLLATE "C" NOT NULL,
    sensitive  BOOLEAN NOT NULL,
    PRIMARY KEY (channel_id, key)
);

CREATE TABLE users (
    channel_id          BIGINT  NOT NULL,
    id                  TEXT    COLLATE "C" NOT NULL,
    member_id           TEXT,
    veil_id             TEXT,
    name                TEXT,
    profile             JSONB   NOT NULL,
    tags                JSONB   NOT NULL,
    unsubscribe_email   BOOLEAN NOT NULL,
    unsubscribe_texting BOOLEAN NOT NULL,
    blocked             BOOLEAN NOT NULL,
    city                TEXT,
    country             TEXT,
    language            TEXT,
    has_chat            BOOLEAN NOT NULL,
    has_push_token      BOOLEAN NOT NULL,
    sessions_count      BIGINT  NOT NULL,
    last_seen_at        BIGINT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    web                 JSONB   NOT NULL,
    mobile              JSONB   NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE UNIQUE INDEX users_by_member ON users (channel_id, member_id) WHERE member_id IS NOT NULL;
CREATE INDEX users_by_veil ON users (channel_id, veil_id) WHERE veil_id IS NOT NULL;
-- For profile filters (`profile @> '{"key": value}'`) to come.
CREATE INDEX users_profile ON users USING GIN (profile jsonb_path_ops);

CREATE TABLE reveal_audit (
    channel_id BIGINT NOT NULL,
    id         TEXT   COLLATE "C" NOT NULL,
    manager_id TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    field      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, id)
);
