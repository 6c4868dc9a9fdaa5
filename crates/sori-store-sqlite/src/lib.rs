//! SQLite implementation of the storage seam: the embedded default.
//!
//! All writes go through one connection (a pool of size one), so SQLite never answers
//! "database is locked"; reads use a separate pool and see committed data through WAL.
//! `synchronous = FULL` makes every commit durable before the call returns; throughput
//! comes from group commit (many user writes per transaction), not from weaker syncing.

use sori_store_sqlx::{
    aggregate, catalog_entry, channel as channel_from_row, event as event_from_row,
    field as field_from_row, manager as manager_from_row, merge as merge_from_row, perms_json,
    reveal as reveal_from_row, role as role_from_row, scope_str, user as user_from_row,
};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sori_domain::event::{Event, NewEvent};
use sori_domain::{ProfileField, Registry, Role, User};
use sori_store::{
    CatalogEntry, Channel, ChannelSettingsPatch, Manager, Merge, NewChannel, RevealRecord, Session,
    Store, StoreError, UserKeys, UserOp, UserOpResult, UserRow, plan_user_writes,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

type Result<T> = std::result::Result<T, StoreError>;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "events", include_str!("../migrations/0002_events.sql")),
];

/// The embedded store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Field registries by channel, read by user batches without a round trip. Only the
    /// single writer connection changes the registry, and it drops a channel's entry
    /// while it still holds that connection, so no batch can see a stale one.
    registries: Mutex<HashMap<i64, Registry>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict(db.message().to_owned());
    }
    StoreError::Backend(Box::new(e))
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(backend)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await
            .map_err(backend)?;
        Ok(Self {
            writer,
            reader,
            registries: Mutex::default(),
        })
    }

    fn forget_registry(&self, channel_id: i64) {
        if let Ok(mut cache) = self.registries.lock() {
            cache.remove(&channel_id);
        }
    }

    async fn load_registry(tx: &mut Transaction<'_, Sqlite>, channel_id: i64) -> Result<Registry> {
        let rows = sqlx::query(FIELD_SELECT)
            .bind(channel_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(Registry::new(
            rows.iter()
                .map(field_from_row)
                .collect::<Result<Vec<_>>>()?,
        ))
    }
}

const USER_COLUMNS: &str = "channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile";

/// Users of channel ?1 by ids (?2), member ids (?3) or anonymous veil ids (?4), all JSON
/// arrays; indexed lookups joined with UNION (an OR would make SQLite scan the table).
const USERS_BY_KEYS: &str = "SELECT channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile \
    FROM users WHERE channel_id = ?1 AND id IN (SELECT value FROM json_each(?2)) \
    UNION SELECT channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile \
    FROM users WHERE channel_id = ?1 AND member_id IN (SELECT value FROM json_each(?3)) \
    UNION SELECT channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile \
    FROM users WHERE channel_id = ?1 AND member_id IS NULL \
    AND veil_id IN (SELECT value FROM json_each(?4))";

/// Identity columns of users by ids (?2), member ids (?3) or anonymous veil ids (?4), as
/// one JSON array of `[id, memberId, veilId]` (one row back instead of one per user).
const LIGHT_BY_KEYS: &str = "SELECT json_group_array(json_array(id, member_id, veil_id)) FROM \
    (SELECT id, member_id, veil_id FROM users \
    WHERE channel_id = ?1 AND id IN (SELECT value FROM json_each(?2)) \
    UNION SELECT id, member_id, veil_id FROM users \
    WHERE channel_id = ?1 AND member_id IN (SELECT value FROM json_each(?3)) \
    UNION SELECT id, member_id, veil_id FROM users WHERE channel_id = ?1 AND member_id IS NULL \
    AND veil_id IN (SELECT value FROM json_each(?4)))";

/// Moves `lastSeenAt` later and `createdAt` earlier for events-only writes, given
/// `[channel, id, latest, earliest, now]` rows; `updatedAt` moves when `lastSeenAt` does.
const LIGHT_ACTIVITY: &str = "UPDATE users SET \
    updated_at = CASE WHEN v.latest > ifnull(users.last_seen_at, -1) \
        THEN max(users.updated_at, v.now) ELSE users.updated_at END, \
    last_seen_at = max(ifnull(users.last_seen_at, v.latest), v.latest), \
    created_at = min(users.created_at, v.earliest) \
    FROM (SELECT value ->> 0 AS ch, value ->> 1 AS id, value ->> 2 AS latest, \
    value ->> 3 AS earliest, value ->> 4 AS now FROM json_each(?)) AS v \
    WHERE users.channel_id = v.ch AND users.id = v.id";

/// Rows per multi-row event insert, largest first; a batch is cut into these sizes so only
/// a few statement shapes are ever prepared.
const EVENT_CHUNKS: [usize; 3] = [256, 32, 1];

/// `INSERT INTO events … VALUES (…), (…)` for `rows` rows; a repeated `messageId` is
/// skipped.
fn insert_events_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (channel_id, user_id, id, name, property, page, source, message_id, \
         created_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?)");
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// The oldest events of a channel before a time, in a stable order (retention chunks).
const EXPIRED: &str = "SELECT rowid FROM events WHERE channel_id = ?1 AND created_at < ?2 \
    ORDER BY created_at, id LIMIT ?3";

/// Adds catalog counts `[channel, name, count, first, last, revenue]`.
const UPSERT_CATALOG: &str = "INSERT INTO event_catalog (channel_id, name, count, first_seen_at, \
    last_seen_at, revenue) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, \
    value ->> 4, value ->> 5 FROM json_each(?) WHERE true ON CONFLICT (channel_id, name) DO UPDATE \
    SET count = count + excluded.count, first_seen_at = min(first_seen_at, excluded.first_seen_at), \
    last_seen_at = max(last_seen_at, excluded.last_seen_at), \
    revenue = max(revenue, excluded.revenue)";

/// Inserts or replaces users given as a JSON array of arrays in `USER_COLUMNS` order.
const UPSERT_USERS: &str = "INSERT INTO users (channel_id, id, member_id, veil_id, name, profile, \
    tags, unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile) \
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
    value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12, \
    value ->> 13, value ->> 14, value ->> 15, value ->> 16, value ->> 17, value ->> 18, \
    value ->> 19, value ->> 20 FROM json_each(?) WHERE true \
    ON CONFLICT (channel_id, id) DO UPDATE SET member_id = excluded.member_id, \
    veil_id = excluded.veil_id, name = excluded.name, profile = excluded.profile, \
    tags = excluded.tags, unsubscribe_email = excluded.unsubscribe_email, \
    unsubscribe_texting = excluded.unsubscribe_texting, blocked = excluded.blocked, \
    city = excluded.city, country = excluded.country, language = excluded.language, \
    has_chat = excluded.has_chat, has_push_token = excluded.has_push_token, \
    sessions_count = excluded.sessions_count, last_seen_at = excluded.last_seen_at, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, \
    web = excluded.web, mobile = excluded.mobile";

/// One user row as a JSON array for `UPSERT_USERS`; JSON columns stay text.
fn row_json(r: &UserRow) -> serde_json::Value {
    serde_json::json!([
        r.channel_id,
        r.id,
        r.member_id,
        r.veil_id,
        r.name,
        r.profile,
        r.tags,
        i64::from(r.unsubscribe_email),
        i64::from(r.unsubscribe_texting),
        i64::from(r.blocked),
        r.city,
        r.country,
        r.language,
        i64::from(r.has_chat),
        i64::from(r.has_push_token),
        r.sessions_count,
        r.last_seen_at,
        r.created_at,
        r.updated_at,
        r.web,
        r.mobile
    ])
}

/// Moves an anonymous user's events and counts to the member, deletes it, records the merge.
async fn merge_tx(tx: &mut Transaction<'_, Sqlite>, m: &Merge) -> Result<()> {
    let stmts: [&str; 5] = [
        "UPDATE events SET user_id = ?3 WHERE channel_id = ?1 AND user_id = ?2",
        "INSERT INTO user_event_stats (channel_id, user_id, name, count, first_at, last_at) \
         SELECT channel_id, ?3, name, count, first_at, last_at FROM user_event_stats \
         WHERE channel_id = ?1 AND user_id = ?2 ON CONFLICT (channel_id, user_id, name) DO UPDATE \
         SET count = count + excluded.count, first_at = min(first_at, excluded.first_at), \
         last_at = max(last_at, excluded.last_at)",
        "DELETE FROM user_event_stats WHERE channel_id = ?1 AND user_id = ?2",
        "DELETE FROM users WHERE channel_id = ?1 AND id = ?2",
        "INSERT INTO user_merges (channel_id, id, from_user_id, into_user_id, merged_at) \
         VALUES (?1, ?4, ?2, ?3, ?5)",
    ];
    for sql in stmts {
        sqlx::query(sql)
            .bind(m.channel_id)
            .bind(&m.from)
            .bind(&m.into)
            .bind(&m.id)
            .bind(m.at)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Appends a batch's events and adds what was really inserted to the aggregates.
async fn insert_events_tx(
    tx: &mut Transaction<'_, Sqlite>,
    events: &[(i64, String, NewEvent)],
) -> Result<()> {
    // Rows are not streamed back (that costs a message per row); only when a chunk skipped
    // duplicates are its surviving ids looked up, so the catalog counts what was stored.
    let mut inserted: Vec<String> = Vec::with_capacity(events.len());
    let mut rest = events;
    while !rest.is_empty() {
        let size = EVENT_CHUNKS
            .into_iter()
            .find(|n| *n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_events_sql(size)));
        for (ch, user, e) in chunk {
            q = q
                .bind(*ch)
                .bind(user.as_str())
                .bind(e.id.as_str())
                .bind(e.name.as_str())
                .bind(serde_json::to_string(&e.property).unwrap_or_default())
                .bind(e.page.as_deref())
                .bind(e.source.as_str())
                .bind(e.message_id.as_deref())
                .bind(e.created_at);
        }
        let done = q.execute(&mut **tx).await.map_err(backend)?.rows_affected();
        if done == chunk.len() as u64 {
            inserted.extend(chunk.iter().map(|(_, _, e)| e.id.clone()));
        } else {
            let ids: Vec<&str> = chunk.iter().map(|(_, _, e)| e.id.as_str()).collect();
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM events WHERE channel_id = ? AND id IN (SELECT value FROM json_each(?))",
            )
            .bind(chunk[0].0)
            .bind(serde_json::to_string(&ids).unwrap_or_default())
            .fetch_all(&mut **tx)
            .await
            .map_err(backend)?;
            inserted.extend(found);
        }
    }
    let agg = aggregate(events, &inserted);
    if agg.catalog.is_empty() {
        return Ok(());
    }
    let catalog: Vec<serde_json::Value> = agg
        .catalog
        .iter()
        .map(|((ch, n), (c, f, l, r))| serde_json::json!([ch, n, c, f, l, i64::from(*r)]))
        .collect();
    sqlx::query(UPSERT_CATALOG)
        .bind(serde_json::Value::Array(catalog).to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

const FIELD_SELECT: &str = "SELECT key, name, type, sensitive, builtin, created_at \
    FROM profile_fields WHERE channel_id = ? ORDER BY key";

async fn insert_role_tx(
    tx: &mut Transaction<'_, Sqlite>,
    channel_id: i64,
    role: &Role,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO roles (channel_id, id, name, permissions, inbox_scope, builtin) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(channel_id)
    .bind(&role.id)
    .bind(&role.name)
    .bind(perms_json(role))
    .bind(scope_str(role.inbox_scope))
    .bind(role.builtin)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_field_tx(
    tx: &mut Transaction<'_, Sqlite>,
    channel_id: i64,
    f: &ProfileField,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO profile_fields (channel_id, key, name, type, sensitive, builtin, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(channel_id)
    .bind(f.key.as_str())
    .bind(&f.name)
    .bind(f.field_type.as_str())
    .bind(f.sensitive)
    .bind(f.builtin)
    .bind(f.created_at)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_manager_tx(tx: &mut Transaction<'_, Sqlite>, m: &Manager) -> Result<()> {
    sqlx::query(
        "INSERT INTO managers (channel_id, id, email, name, role_id, password_hash, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(m.channel_id)
    .bind(&m.id)
    .bind(&m.email)
    .bind(&m.name)
    .bind(&m.role_id)
    .bind(&m.password_hash)
    .bind(m.created_at)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS sori_migrations \
             (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM sori_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        for (version, description, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tracing::info!(version, description, "applying sqlite migration");
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO sori_migrations (version, description, applied_at) \
                 VALUES (?, ?, strftime('%s','now') * 1000)",
            )
            .bind(version)
            .bind(description)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn meta_get_or_insert(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_one(&self.writer)
            .await
            .map_err(backend)
    }

    async fn create_channel(&self, new: NewChannel) -> Result<(Channel, Manager)> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let c = &new.channel;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO channels (name, time_zone, default_language, plugin_key, access_key, \
             access_secret_hash, write_key_hash, member_hash_secret, member_hash_required, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&c.name)
        .bind(&c.time_zone)
        .bind(&c.default_language)
        .bind(&c.plugin_key)
        .bind(&c.access_key)
        .bind(&c.access_secret_hash)
        .bind(&c.write_key_hash)
        .bind(&c.member_hash_secret)
        .bind(c.member_hash_required)
        .bind(c.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        for role in [Role::owner(), Role::basic()] {
            insert_role_tx(&mut tx, id, &role).await?;
        }
        for f in Registry::preregistered(c.created_at) {
            insert_field_tx(&mut tx, id, &f).await?;
        }
        let owner = Manager {
            channel_id: id,
            ..new.owner
        };
        insert_manager_tx(&mut tx, &owner).await?;
        tx.commit().await.map_err(backend)?;
        Ok((Channel { id, ..new.channel }, owner))
    }

    async fn count_channels(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM channels")
            .fetch_one(&self.reader)
            .await
            .map_err(backend)
    }

    async fn channel(&self, id: i64) -> Result<Option<Channel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn channel_by_access_key(&self, access_key: &str) -> Result<Option<Channel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE access_key = ?")
            .bind(access_key)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn channel_by_plugin_key(&self, key: &str) -> Result<Option<Channel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE plugin_key = ?")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn channel_by_write_key_hash(&self, key: &str) -> Result<Option<Channel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE write_key_hash = ?")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn channel_ids(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT id FROM channels ORDER BY id")
            .fetch_all(&self.reader)
            .await
            .map_err(backend)
    }

    async fn update_channel(&self, id: i64, p: &ChannelSettingsPatch) -> Result<Option<Channel>> {
        let row = sqlx::query(
            "UPDATE channels SET name = COALESCE(?, name), time_zone = COALESCE(?, time_zone), \
             default_language = COALESCE(?, default_language), \
             member_hash_required = COALESCE(?, member_hash_required), \
             event_retention_days = COALESCE(?, event_retention_days) WHERE id = ? RETURNING *",
        )
        .bind(&p.name)
        .bind(&p.time_zone)
        .bind(&p.default_language)
        .bind(p.member_hash_required)
        .bind(p.event_retention_days)
        .bind(id)
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn roles(&self, channel_id: i64) -> Result<Vec<Role>> {
        let rows = sqlx::query(
            "SELECT * FROM roles WHERE channel_id = ? ORDER BY builtin DESC, id = 'basic', id",
        )
        .bind(channel_id)
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn insert_role(&self, channel_id: i64, role: &Role) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        insert_role_tx(&mut tx, channel_id, role).await?;
        tx.commit().await.map_err(backend)
    }

    async fn update_role(&self, channel_id: i64, role: &Role) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE roles SET name = ?, permissions = ?, inbox_scope = ? \
             WHERE channel_id = ? AND id = ? AND builtin = 0",
        )
        .bind(&role.name)
        .bind(perms_json(role))
        .bind(scope_str(role.inbox_scope))
        .bind(channel_id)
        .bind(&role.id)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_role(&self, channel_id: i64, role_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM roles WHERE channel_id = ? AND id = ? AND builtin = 0")
            .bind(channel_id)
            .bind(role_id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn managers(&self, channel_id: i64) -> Result<Vec<Manager>> {
        let rows = sqlx::query("SELECT * FROM managers WHERE channel_id = ? ORDER BY id")
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(manager_from_row).collect()
    }

    async fn managers_by_email(&self, email: &str) -> Result<Vec<Manager>> {
        let rows = sqlx::query("SELECT * FROM managers WHERE email = ? ORDER BY channel_id")
            .bind(email)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(manager_from_row).collect()
    }

    async fn manager(&self, channel_id: i64, id: &str) -> Result<Option<Manager>> {
        let row = sqlx::query("SELECT * FROM managers WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(manager_from_row).transpose()
    }

    async fn insert_manager(&self, manager: &Manager) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        insert_manager_tx(&mut tx, manager).await?;
        tx.commit().await.map_err(backend)
    }

    async fn set_manager_role(&self, channel_id: i64, id: &str, role_id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE managers SET role_id = ? WHERE channel_id = ? AND id = ?")
            .bind(role_id)
            .bind(channel_id)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_manager(&self, channel_id: i64, id: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM sessions WHERE channel_id = ? AND manager_id = ?")
            .bind(channel_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let r = sqlx::query("DELETE FROM managers WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_session(&self, s: &Session) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (channel_id, token_hash, manager_id, csrf_token, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(s.channel_id)
        .bind(&s.token_hash)
        .bind(&s.manager_id)
        .bind(&s.csrf_token)
        .bind(s.expires_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn session(&self, channel_id: i64, token_hash: &str) -> Result<Option<Session>> {
        let row = sqlx::query("SELECT * FROM sessions WHERE channel_id = ? AND token_hash = ?")
            .bind(channel_id)
            .bind(token_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.map(|r| -> Result<Session> {
            Ok(Session {
                token_hash: r.try_get("token_hash").map_err(backend)?,
                channel_id: r.try_get("channel_id").map_err(backend)?,
                manager_id: r.try_get("manager_id").map_err(backend)?,
                csrf_token: r.try_get("csrf_token").map_err(backend)?,
                expires_at: r.try_get("expires_at").map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, channel_id: i64, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE channel_id = ? AND token_hash = ?")
            .bind(channel_id)
            .bind(token_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn profile_fields(&self, channel_id: i64) -> Result<Vec<ProfileField>> {
        let rows = sqlx::query(FIELD_SELECT)
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(field_from_row).collect()
    }

    async fn insert_profile_field(&self, channel_id: i64, field: &ProfileField) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        insert_field_tx(&mut tx, channel_id, field).await?;
        self.forget_registry(channel_id);
        tx.commit().await.map_err(backend)
    }

    async fn update_profile_field(
        &self,
        channel_id: i64,
        key: &str,
        name: Option<&str>,
        sensitive: Option<bool>,
    ) -> Result<Option<ProfileField>> {
        let row = sqlx::query(
            "UPDATE profile_fields SET name = COALESCE(?, name), sensitive = COALESCE(?, sensitive) \
             WHERE channel_id = ? AND key = ? \
             RETURNING key, name, type, sensitive, builtin, created_at",
        )
        .bind(name)
        .bind(sensitive)
        .bind(channel_id)
        .bind(key)
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.as_ref().map(field_from_row).transpose()
    }

    async fn delete_profile_field(&self, channel_id: i64, key: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let r = sqlx::query(
            "DELETE FROM profile_fields WHERE channel_id = ? AND key = ? AND builtin = 0",
        )
        .bind(channel_id)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if r.rows_affected() == 1 {
            sqlx::query(
                "UPDATE users SET profile = json_remove(profile, '$.\"' || ? || '\"') \
                 WHERE channel_id = ? AND json_type(profile, '$.\"' || ? || '\"') IS NOT NULL",
            )
            .bind(key)
            .bind(channel_id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        self.forget_registry(channel_id);
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn sensitive_builtins(&self, channel_id: i64) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT key FROM builtin_field_settings WHERE channel_id = ? AND sensitive = 1 ORDER BY key",
        )
        .bind(channel_id)
        .fetch_all(&self.reader)
        .await
        .map_err(backend)
    }

    async fn set_builtin_sensitive(
        &self,
        channel_id: i64,
        key: &str,
        sensitive: bool,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO builtin_field_settings (channel_id, key, sensitive) VALUES (?, ?, ?) \
             ON CONFLICT (channel_id, key) DO UPDATE SET sensitive = excluded.sensitive",
        )
        .bind(channel_id)
        .bind(key)
        .bind(sensitive)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn write_users(&self, ops: Vec<UserOp>) -> Result<Vec<UserOpResult>> {
        // A constant number of statements per batch, whatever its size: keys and rows
        // travel as one JSON parameter each and are unpacked with json_each.
        let mut keys: BTreeMap<i64, (Vec<&str>, Vec<&str>, Vec<&str>)> = BTreeMap::new();
        let mut light_keys: BTreeMap<i64, (Vec<&str>, Vec<&str>, Vec<&str>)> = BTreeMap::new();
        for op in &ops {
            keys.entry(op.channel_id).or_default();
            let k = if op.is_light() {
                light_keys.entry(op.channel_id).or_default()
            } else {
                keys.entry(op.channel_id).or_default()
            };
            if let Some(id) = op.id_key() {
                k.0.push(id);
            }
            if let Some(m) = op.member_key() {
                k.1.push(m);
            }
            if let Some(v) = op.veil_key() {
                k.2.push(v);
            }
        }
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let mut registries = HashMap::new();
        let mut loaded = Vec::new();
        for (ch, (ids, members, veils)) in &keys {
            let cached = self.registries.lock().ok().and_then(|m| m.get(ch).cloned());
            let registry = match cached {
                Some(r) => r,
                None => Self::load_registry(&mut tx, *ch).await?,
            };
            registries.insert(*ch, registry);
            let rows = sqlx::query(USERS_BY_KEYS)
                .bind(ch)
                .bind(serde_json::to_string(ids).unwrap_or_default())
                .bind(serde_json::to_string(members).unwrap_or_default())
                .bind(serde_json::to_string(veils).unwrap_or_default())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            for r in &rows {
                loaded.push((*ch, user_from_row(r)?));
            }
        }
        let mut light = Vec::new();
        for (ch, (ids, members, veils)) in &light_keys {
            let packed: String = sqlx::query_scalar(LIGHT_BY_KEYS)
                .bind(ch)
                .bind(serde_json::to_string(ids).unwrap_or_default())
                .bind(serde_json::to_string(members).unwrap_or_default())
                .bind(serde_json::to_string(veils).unwrap_or_default())
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            let rows: Vec<(String, Option<String>, Option<String>)> = serde_json::from_str(&packed)
                .map_err(|e| StoreError::Corrupt(format!("user keys: {e}")))?;
            for (id, member_id, veil_id) in rows {
                light.push((
                    *ch,
                    UserKeys {
                        id,
                        member_id,
                        veil_id,
                    },
                ));
            }
        }
        let mut registries_after = registries.clone();
        let plan = plan_user_writes(ops, loaded, light, registries);
        for (ch, f) in &plan.new_fields {
            registries_after.entry(*ch).or_default().insert(f.clone());
        }
        if !plan.new_fields.is_empty() {
            let fields: Vec<serde_json::Value> = plan
                .new_fields
                .iter()
                .map(|(ch, f)| {
                    serde_json::json!([
                        ch,
                        f.key.as_str(),
                        f.name,
                        f.field_type.as_str(),
                        f.created_at
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO profile_fields (channel_id, key, name, type, sensitive, builtin, created_at) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 0, 0, value ->> 4 \
                 FROM json_each(?) WHERE true ON CONFLICT (channel_id, key) DO NOTHING",
            )
            .bind(serde_json::Value::Array(fields).to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for m in &plan.merges {
            merge_tx(&mut tx, m).await?;
        }
        if !plan.events.is_empty() {
            insert_events_tx(&mut tx, &plan.events).await?;
        }
        if !plan.light.is_empty() {
            let rows: Vec<serde_json::Value> = plan
                .light
                .iter()
                .map(|((ch, id), (latest, earliest, now))| {
                    serde_json::json!([ch, id, latest, earliest, now])
                })
                .collect();
            sqlx::query(LIGHT_ACTIVITY)
                .bind(serde_json::Value::Array(rows).to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if !plan.users.is_empty() {
            let rows: Vec<serde_json::Value> = plan
                .users
                .iter()
                .map(|((ch, _), u)| row_json(&UserRow::from_user(*ch, u)))
                .collect();
            sqlx::query(UPSERT_USERS)
                .bind(serde_json::Value::Array(rows).to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        if let Ok(mut cache) = self.registries.lock() {
            for (ch, registry) in registries_after {
                cache.insert(ch, registry);
            }
        }
        Ok(plan.results)
    }

    async fn user(&self, channel_id: i64, id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE channel_id = ? AND id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_member_id(&self, channel_id: i64, member_id: &str) -> Result<Option<User>> {
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users WHERE channel_id = ? AND member_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel_id)
            .bind(member_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn users_page(
        &self,
        channel_id: i64,
        after: Option<&str>,
        limit: u32,
        descending: bool,
    ) -> Result<Vec<User>> {
        let (cmp, order) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE channel_id = ? AND (? IS NULL OR id {cmp} ?) \
             ORDER BY id {order} LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel_id)
            .bind(after)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn delete_user(&self, channel_id: i64, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM users WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn user_events(
        &self,
        channel_id: i64,
        user_id: &str,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let (t, id) = before.map_or((None, None), |(t, id)| (Some(t), Some(id)));
        let rows = sqlx::query(
            "SELECT * FROM events WHERE channel_id = ?1 AND user_id = ?2 \
             AND (?3 IS NULL OR (created_at, id) < (?3, ?4)) \
             ORDER BY created_at DESC, id DESC LIMIT ?5",
        )
        .bind(channel_id)
        .bind(user_id)
        .bind(t)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn events_page(
        &self,
        channel_id: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let (t, id) = after.map_or((None, None), |(t, id)| (Some(t), Some(id)));
        let rows = sqlx::query(
            "SELECT * FROM events WHERE channel_id = ?1 \
             AND (?2 IS NULL OR (created_at, id) > (?2, ?3)) \
             ORDER BY created_at, id LIMIT ?4",
        )
        .bind(channel_id)
        .bind(t)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn event_catalog(&self, channel_id: i64) -> Result<Vec<CatalogEntry>> {
        let rows = sqlx::query("SELECT * FROM event_catalog WHERE channel_id = ? ORDER BY name")
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(catalog_entry).collect()
    }

    async fn delete_events_before(&self, channel_id: i64, before: i64, limit: u32) -> Result<u64> {
        // Roll the chunk up into per-user counts first, so segments keep counting events
        // that retention removed; both statements see the same rows inside the transaction.
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let rollup = format!(
            "INSERT INTO user_event_stats (channel_id, user_id, name, count, first_at, last_at) \
             SELECT channel_id, user_id, name, count(*), min(created_at), max(created_at) \
             FROM events WHERE rowid IN ({EXPIRED}) GROUP BY channel_id, user_id, name \
             ON CONFLICT (channel_id, user_id, name) DO UPDATE \
             SET count = count + excluded.count, first_at = min(first_at, excluded.first_at), \
             last_at = max(last_at, excluded.last_at)"
        );
        let delete = format!("DELETE FROM events WHERE rowid IN ({EXPIRED})");
        let mut deleted = 0;
        for (i, sql) in [rollup, delete].into_iter().enumerate() {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(channel_id)
                .bind(before)
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if i == 1 {
                deleted = r.rows_affected();
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(deleted)
    }

    async fn merges_into(&self, channel_id: i64, user_id: &str) -> Result<Vec<Merge>> {
        let rows = sqlx::query(
            "SELECT * FROM user_merges WHERE channel_id = ? AND into_user_id = ? \
             ORDER BY merged_at DESC, id DESC",
        )
        .bind(channel_id)
        .bind(user_id)
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(merge_from_row).collect()
    }

    async fn insert_reveal(&self, r: &RevealRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO reveal_audit (channel_id, id, manager_id, user_id, field, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(r.channel_id)
        .bind(&r.id)
        .bind(&r.manager_id)
        .bind(&r.user_id)
        .bind(&r.field)
        .bind(r.created_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn reveals(
        &self,
        channel_id: i64,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RevealRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM reveal_audit WHERE channel_id = ? AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(channel_id)
        .bind(before)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(reveal_from_row).collect()
    }
}
