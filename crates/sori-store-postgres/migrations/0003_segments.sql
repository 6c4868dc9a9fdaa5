-- Saved audience filters.
CREATE TABLE segments (
    channel_id BIGINT NOT NULL,
    id         TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    filter     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, id)
);
CREATE UNIQUE INDEX segments_by_name ON segments (channel_id, name);
