//! SQLite implementation of the storage seam: the embedded default.
//!
//! All writes go through one connection (a pool of size one), so SQLite never answers
//! "database is locked"; reads use a separate pool and see committed data through WAL.
//! `synchronous = FULL` makes every commit durable before the call returns; throughput
//! comes from group commit (many user writes per transaction), not from weaker syncing.

mod batch;
mod checkpoint;
mod follow;
mod pcache;
mod walbuf;

use sori_store_sqlx::{
    catalog_entry, channel as channel_from_row, field as field_from_row,
    manager as manager_from_row, merge as merge_from_row, reveal as reveal_from_row,
    role as role_from_row, seat as seat_from_row, segment as segment_from_row,
    user as user_from_row,
};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sori_domain::event::{Event, NewEvent};
use sori_domain::filter::{EventTest, Query};
use sori_domain::team::Team;
use sori_domain::{ProfileField, Registry, Role, User};
use sori_store::{
    CatalogEntry, ChangeBatch, Channel, ChannelSettingsPatch, Cursor, Manager, Merge, NewChannel,
    RevealRecord, Segment, Session, Store, StoreError, TeamWrite, UserOp, UserOpResult,
};
use sori_store_sqlx::filter_sql::{self, Arg, Dialect};
use sori_store_sqlx::team_sql;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

type Result<T> = std::result::Result<T, StoreError>;

/// Binds a compiled filter's arguments, in order, to a query or scalar query.
macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Int(i) => q.bind(i),
                Arg::Float(f) => q.bind(f),
                Arg::Text(t) => q.bind(t),
                // Never produced for SQLite.
                Arg::TextArray(v) => q.bind(serde_json::to_string(&v).unwrap_or_default()),
            };
        }
        q
    }};
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "events", include_str!("../migrations/0002_events.sql")),
    (
        3,
        "segments",
        include_str!("../migrations/0003_segments.sql"),
    ),
    (4, "changes", include_str!("../migrations/0004_changes.sql")),
    (
        5,
        "activity",
        include_str!("../migrations/0005_activity.sql"),
    ),
    (
        6,
        "one anonymous user per veil id",
        include_str!("../migrations/0006_one_anonymous.sql"),
    ),
    (
        7,
        "activity found by events",
        include_str!("../migrations/0007_activity_by_events.sql"),
    ),
    (
        8,
        "compact event index keys",
        include_str!("../migrations/0008_compact_event_keys.sql"),
    ),
    (
        9,
        "messageId dedupe index on keys",
        include_str!("../migrations/0009_message_key_index.sql"),
    ),
    (
        10,
        "change log pruning",
        include_str!("../migrations/0010_change_log_pruning.sql"),
    ),
    (
        11,
        "sessions as web plus app, languages as their primary subtag",
        include_str!("../migrations/0011_sessions_and_languages.sql"),
    ),
    (
        12,
        "member hash epoch",
        include_str!("../migrations/0012_member_hash_epoch.sql"),
    ),
    (
        13,
        "messageIds of calls without events",
        include_str!("../migrations/0013_call_keys.sql"),
    ),
    (
        14,
        "id is never sensitive",
        include_str!("../migrations/0014_id_not_sensitive.sql"),
    ),
];

/// The migration whose SQL is followed by [`fill_message_keys`].
const MESSAGE_KEYS: i64 = 8;

/// Fills `message_key` of every stored event that has a `messageId` (migration 8), 1,000
/// rows per statement in rowid order, so a large store is not held in memory (about 5 s
/// per million events on two cores; one statement per row spent most of its time
/// switching between the runtime and the driver's thread).
async fn fill_message_keys(tx: &mut Transaction<'_, Sqlite>) -> Result<()> {
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT rowid, message_id FROM events WHERE rowid > ? AND message_id IS NOT NULL \
             ORDER BY rowid LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&mut **tx)
        .await
        .map_err(backend)?;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        after = *last;
        let values = vec!["(?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "UPDATE events SET message_key = v.column2 FROM (VALUES {values}) AS v \
             WHERE events.rowid = v.column1"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (rowid, id) in &rows {
            q = q.bind(rowid).bind(batch::message_key(id).to_vec());
        }
        q.execute(&mut **tx).await.map_err(backend)?;
    }
}

/// The embedded store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The connection user batches run on, synchronously (see `batch`).
    batch: Mutex<rusqlite::Connection>,
    /// The connection the change sequence is read on (see `follow`).
    follower: std::sync::Arc<Mutex<rusqlite::Connection>>,
    /// The database URL, for extra read connections of bulk scans.
    url: String,
    /// Checkpoints the WAL while the store is open.
    checkpointer: checkpoint::Checkpointer,
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

/// The database file a `sqlite:` URL names (`None` for an in-memory database or a URL
/// that does not parse): the binary locks a file beside it, so two servers never share
/// one store and its in-memory state (see `sori::start`).
pub fn database_file(url: &str) -> Option<std::path::PathBuf> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let opts = SqliteConnectOptions::from_str(url).ok()?;
    let file = opts.get_filename();
    (!file.as_os_str().is_empty()).then(|| file.to_path_buf())
}

impl SqliteStore {
    /// Runs `f` on the follower connection, off the async workers.
    async fn follow<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.follower.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Corrupt("follower connection poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
    }

    /// The channel a unique public key column names (`sql` selects by that column).
    async fn channel_where(&self, sql: &'static str, key: &str) -> Result<Option<Channel>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    /// Opens (creating when missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self> {
        // Before the first connection of the process opens (see `pcache`).
        pcache::install();
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16384")
            // Checkpoints run on their own thread (see `checkpoint`).
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "1073741824");
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
        let batch = batch::open(url)?;
        checkpoint::Checkpointer::watch(&batch);
        Ok(Self {
            writer,
            reader,
            batch: Mutex::new(batch),
            follower: std::sync::Arc::new(Mutex::new(batch::open_follower(url)?)),
            url: url.to_owned(),
            checkpointer: checkpoint::start(batch::open(url)?)
                .map_err(|e| StoreError::Backend(Box::new(e)))?,
        })
    }
}

const USER_COLUMNS: &str = "channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile";

/// The oldest events of a channel before a time, in a stable order (retention chunks).
/// The newest row is never removed: rowids then never repeat, and followers of the change
/// sequence track events by rowid.
const EXPIRED: &str = "SELECT rowid FROM events WHERE channel_id = ?1 AND created_at < ?2 \
    AND rowid < (SELECT max(rowid) FROM events) AND rowid <= ?4 \
    ORDER BY created_at, id LIMIT ?3";

const FIELD_SELECT: &str = "SELECT key, name, type, sensitive, builtin, created_at \
    FROM profile_fields WHERE channel_id = ? ORDER BY key";

/// Runs statements in order inside `tx`; their counts of rows changed.
async fn run_all(
    tx: &mut Transaction<'_, Sqlite>,
    statements: impl IntoIterator<Item = filter_sql::Sql>,
) -> Result<Vec<u64>> {
    let mut changed = Vec::new();
    for sql in statements {
        let r = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        changed.push(r.rows_affected());
    }
    Ok(changed)
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
        let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
        sori_store::refuse_newer_schema(&done, known)?;
        for (version, description, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tracing::info!(version, description, "applying sqlite migration");
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if *version == MESSAGE_KEYS {
                fill_message_keys(&mut tx).await?;
            }
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
            run_all(&mut tx, [team_sql::insert_role(Dialect::Sqlite, id, &role)]).await?;
        }
        for f in Registry::preregistered(c.created_at) {
            insert_field_tx(&mut tx, id, &f).await?;
        }
        let owner = Manager {
            channel_id: id,
            ..new.owner
        };
        run_all(
            &mut tx,
            [team_sql::insert_manager(Dialect::Sqlite, id, &owner)],
        )
        .await?;
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
        self.channel_where("SELECT * FROM channels WHERE access_key = ?", access_key)
            .await
    }

    async fn channel_by_plugin_key(&self, key: &str) -> Result<Option<Channel>> {
        self.channel_where("SELECT * FROM channels WHERE plugin_key = ?", key)
            .await
    }

    async fn channel_by_write_key_hash(&self, key: &str) -> Result<Option<Channel>> {
        self.channel_where("SELECT * FROM channels WHERE write_key_hash = ?", key)
            .await
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
             member_hash_epoch = member_hash_epoch \
                 + (COALESCE(?, 0) = 1 AND member_hash_required = 0), \
             member_hash_required = COALESCE(?, member_hash_required), \
             event_retention_days = COALESCE(?, event_retention_days) WHERE id = ? RETURNING *",
        )
        .bind(&p.name)
        .bind(&p.time_zone)
        .bind(&p.default_language)
        .bind(p.member_hash_required)
        .bind(p.member_hash_required)
        .bind(p.event_retention_days)
        .bind(id)
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn set_channel_secrets(
        &self,
        id: i64,
        access_secret_hash: &str,
        write_key_hash: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE channels SET access_secret_hash = ?, write_key_hash = ? WHERE id = ?",
        )
        .bind(access_secret_hash)
        .bind(write_key_hash)
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_manager_password(
        &self,
        channel_id: i64,
        manager_id: &str,
        password_hash: &str,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let changed = run_all(
            &mut tx,
            team_sql::password_reset(Dialect::Sqlite, channel_id, manager_id, password_hash),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(changed.first() == Some(&1))
    }

    async fn roles(&self, channel_id: i64) -> Result<Vec<Role>> {
        let rows = sqlx::query(team_sql::roles_select(Dialect::Sqlite))
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn change_team(&self, channel_id: i64, actor_id: &str, write: &TeamWrite) -> Result<()> {
        // The write lock before the team is read, so no other connection or process
        // changes the team between the check and the write.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let roles = sqlx::query(team_sql::roles_select(Dialect::Sqlite))
            .bind(channel_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let seats = sqlx::query(team_sql::seats_select(Dialect::Sqlite))
            .bind(channel_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let team = Team {
            roles: roles.iter().map(role_from_row).collect::<Result<_>>()?,
            seats: seats.iter().map(seat_from_row).collect::<Result<_>>()?,
        };
        team.check(actor_id, write.change())?;
        run_all(
            &mut tx,
            team_sql::team_write(Dialect::Sqlite, channel_id, write),
        )
        .await?;
        tx.commit().await.map_err(backend)
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
            // The users who lose a value count as changed for followers of the sequence.
            let seq = next_seq(&mut tx).await?;
            sqlx::query(
                "UPDATE users SET profile = json_remove(profile, '$.\"' || ? || '\"'), seq = ? \
                 WHERE channel_id = ? AND json_type(profile, '$.\"' || ? || '\"') IS NOT NULL",
            )
            .bind(key)
            .bind(seq)
            .bind(channel_id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
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

    async fn write_users(&self, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
        // Called from a writer shard's own thread, which may block: the whole batch runs
        // synchronously on the batch connection.
        let mut conn = self
            .batch
            .lock()
            .map_err(|_| StoreError::Corrupt("batch connection poisoned".into()))?;
        let out = batch::write_users(&mut conn, ops);
        self.checkpointer.after_commit(&conn);
        out
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
        // The user's events, counts and merge records go with it; the removal is logged
        // for followers of the change sequence.
        let mut tx = self.writer.begin().await.map_err(backend)?;
        for sql in [
            "DELETE FROM events WHERE channel_id = ? AND user_id = ?",
            "DELETE FROM call_keys WHERE channel_id = ? AND user_id = ?",
            "DELETE FROM user_event_stats WHERE channel_id = ? AND user_id = ?",
            "DELETE FROM user_merges WHERE channel_id = ? AND into_user_id = ?",
        ] {
            sqlx::query(sql)
                .bind(channel_id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let r = sqlx::query("DELETE FROM users WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if r.rows_affected() == 1 {
            let seq = next_seq(&mut tx).await?;
            sqlx::query(
                "INSERT INTO change_log (channel_id, seq, kind, user_id, at) \
                 VALUES (?, ?, 'delete', ?, unixepoch() * 1000)",
            )
            .bind(channel_id)
            .bind(seq)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn bulk_load(
        &self,
        channel_id: i64,
        users: &[User],
        events: &[(String, NewEvent)],
    ) -> Result<()> {
        // A bulk load is an administrative job: it may hold a runtime thread while the
        // batch connection works.
        tokio::task::block_in_place(|| {
            let mut conn = self
                .batch
                .lock()
                .map_err(|_| StoreError::Corrupt("batch connection poisoned".into()))?;
            let out = batch::bulk_load(&mut conn, channel_id, users, events);
            self.checkpointer.after_commit(&conn);
            out
        })
    }

    async fn users_by_ids(&self, channel_id: i64, ids: &[String]) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE channel_id = ? \
             AND id IN (SELECT value FROM json_each(?))"
        );
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel_id)
            .bind(list)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn count_matching(&self, channel_id: i64, query: &Query) -> Result<u64> {
        let sql = filter_sql::users_matching(Dialect::Sqlite, "count(*)", channel_id, query, "");
        let n: i64 = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_one(&self.reader)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn ids_matching(&self, channel_id: i64, query: &Query) -> Result<Vec<String>> {
        let sql =
            filter_sql::users_matching(Dialect::Sqlite, "u.id", channel_id, query, "ORDER BY u.id");
        bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)
    }

    async fn event_counts_matching(
        &self,
        channel_id: i64,
        test: &EventTest,
    ) -> Result<Vec<(String, i64)>> {
        let sql = filter_sql::event_counts(Dialect::Sqlite, channel_id, test);
        let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(backend)?,
                    r.try_get(1).map_err(backend)?,
                ))
            })
            .collect()
    }

    async fn user_ids(&self, channel_id: i64) -> Result<Vec<String>> {
        tokio::task::block_in_place(|| {
            let conn = self
                .batch
                .lock()
                .map_err(|_| StoreError::Corrupt("batch connection poisoned".into()))?;
            batch::user_ids(&conn, channel_id)
        })
    }

    async fn scan_users(
        &self,
        channel_id: i64,
        part: u32,
        parts: u32,
        user: &mut (dyn FnMut(i64, User) + Send),
    ) -> Result<()> {
        // Its own connection, so the parts run in parallel.
        tokio::task::block_in_place(|| {
            let conn = batch::open_scan(&self.url)?;
            batch::scan_users(&conn, channel_id, part, parts, user)
        })
    }

    async fn scan_events(
        &self,
        channel_id: i64,
        upto: i64,
        part: u32,
        parts: u32,
        event: &mut (dyn for<'s> FnMut(i64, &'s str, &'s str) + Send),
    ) -> Result<()> {
        // Its own connection, so the parts of one scan run in parallel (WAL readers do not
        // block each other or the writer).
        tokio::task::block_in_place(|| {
            let conn = batch::open_scan(&self.url)?;
            batch::scan_events(&conn, channel_id, upto, part, parts, event)
        })
    }

    async fn horizon(&self) -> Result<Cursor> {
        self.follow(follow::horizon).await
    }

    async fn changes(&self, from: Cursor, to: Cursor) -> Result<ChangeBatch> {
        self.follow(move |conn| follow::changes(conn, from, to))
            .await
    }

    async fn prune_changes(&self, before: i64) -> Result<u64> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query(
            "UPDATE change_log_pruned SET v = max(v, \
             ifnull((SELECT max(seq) FROM change_log WHERE at < ?), 0))",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let r = sqlx::query("DELETE FROM change_log WHERE at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected())
    }

    async fn rolled_counts(&self, channel_id: i64) -> Result<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT user_id, name, count FROM user_event_stats WHERE channel_id = ?")
                .bind(channel_id)
                .fetch_all(&self.reader)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(backend)?,
                    r.try_get(1).map_err(backend)?,
                    r.try_get(2).map_err(backend)?,
                ))
            })
            .collect()
    }

    async fn user_events(
        &self,
        channel_id: i64,
        user_id: &str,
        cursor: Option<(i64, &str)>,
        limit: u32,
        oldest_first: bool,
    ) -> Result<Vec<Event>> {
        sori_store_sqlx::events_from(
            &self.reader,
            Dialect::Sqlite,
            channel_id,
            Some(user_id),
            cursor,
            limit,
            oldest_first,
        )
        .await
    }

    async fn events_page(
        &self,
        channel_id: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        sori_store_sqlx::events_from(
            &self.reader,
            Dialect::Sqlite,
            channel_id,
            None,
            after,
            limit,
            true,
        )
        .await
    }

    async fn event_catalog(&self, channel_id: i64) -> Result<Vec<CatalogEntry>> {
        let rows = sqlx::query("SELECT * FROM event_catalog WHERE channel_id = ? ORDER BY name")
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(catalog_entry).collect()
    }

    async fn delete_events_before(
        &self,
        channel_id: i64,
        before: i64,
        upto: i64,
        limit: u32,
    ) -> Result<u64> {
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
                .bind(upto)
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

    async fn delete_call_keys_before(
        &self,
        channel_id: i64,
        before: i64,
        limit: u32,
    ) -> Result<u64> {
        sqlx::query(
            "DELETE FROM call_keys WHERE channel_id = ?1 AND message_key IN \
             (SELECT message_key FROM call_keys WHERE channel_id = ?1 AND created_at < ?2 \
             LIMIT ?3)",
        )
        .bind(channel_id)
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .map(|r| r.rows_affected())
        .map_err(backend)
    }

    async fn event_counts(&self, channel_id: i64, user_id: &str) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT name, CAST(sum(n) AS INTEGER) AS n FROM ( \
             SELECT name, count AS n FROM user_event_stats WHERE channel_id = ?1 AND user_id = ?2 \
             UNION ALL SELECT name, count(*) AS n FROM events \
             WHERE channel_id = ?1 AND user_id = ?2 GROUP BY name) GROUP BY name ORDER BY name",
        )
        .bind(channel_id)
        .bind(user_id)
        .fetch_all(&self.reader)
        .await
        .map_err(backend)
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

    async fn segments(&self, channel_id: i64) -> Result<Vec<Segment>> {
        let rows = sqlx::query("SELECT * FROM segments WHERE channel_id = ? ORDER BY name")
            .bind(channel_id)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(segment_from_row).collect()
    }

    async fn segment(&self, channel_id: i64, id: &str) -> Result<Option<Segment>> {
        let row = sqlx::query("SELECT * FROM segments WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(segment_from_row).transpose()
    }

    async fn insert_segment(&self, sg: &Segment) -> Result<()> {
        sqlx::query(
            "INSERT INTO segments (channel_id, id, name, filter, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(sg.channel_id)
        .bind(&sg.id)
        .bind(&sg.name)
        .bind(sg.filter.to_string())
        .bind(sg.created_at)
        .bind(sg.updated_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn update_segment(&self, sg: &Segment) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE segments SET name = ?, filter = ?, updated_at = ? \
             WHERE channel_id = ? AND id = ?",
        )
        .bind(&sg.name)
        .bind(sg.filter.to_string())
        .bind(sg.updated_at)
        .bind(sg.channel_id)
        .bind(&sg.id)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_segment(&self, channel_id: i64, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM segments WHERE channel_id = ? AND id = ?")
            .bind(channel_id)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
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

/// Takes the next change number inside a write transaction (SQLite serializes writers, so
/// numbers are handed out in commit order).
async fn next_seq(tx: &mut Transaction<'_, Sqlite>) -> Result<i64> {
    sqlx::query_scalar("UPDATE change_seq SET v = v + 1 RETURNING v")
        .fetch_one(&mut **tx)
        .await
        .map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, SqliteConnection};

    /// A store from before migration 8 gets the dedupe key of every stored event with a
    /// `messageId`, across the migration's chunks, and the new unique index then refuses
    /// a stored id again.
    #[tokio::test]
    async fn migration_fills_message_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE sori_migrations (version INTEGER PRIMARY KEY, \
             description TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        for (version, _, sql) in MIGRATIONS.iter().filter(|m| m.0 < MESSAGE_KEYS) {
            sqlx::raw_sql(*sql).execute(&mut conn).await.unwrap();
            sqlx::query("INSERT INTO sori_migrations VALUES (?, 'old', 0)")
                .bind(version)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        // Every seventh event has no messageId (the SDK's and the Open API's).
        sqlx::raw_sql(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12005) \
             INSERT INTO events (channel_id, user_id, id, name, property, source, message_id, \
             created_at) SELECT 1, 'u', 'e' || i, 'E', '{}', 'api', \
             CASE WHEN i % 7 = 0 THEN NULL ELSE 'm-' || i END, i FROM n",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let rows: Vec<(Option<String>, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT message_id, message_key FROM events ORDER BY rowid")
                .fetch_all(&store.reader)
                .await
                .unwrap();
        assert_eq!(rows.len(), 12005);
        for (id, key) in &rows {
            let want = id.as_deref().map(|m| batch::message_key(m).to_vec());
            assert_eq!(key, &want, "the key of {id:?}");
        }
        // 10,290 keys: more than one chunk of the fill.
        assert_eq!(rows.iter().filter(|(id, _)| id.is_none()).count(), 1715);
        let again = sqlx::query(
            "INSERT INTO events (channel_id, user_id, id, name, property, source, message_id, \
             created_at, message_key) VALUES (1, 'u', 'e-again', 'E', '{}', 'api', 'm-12004', \
             0, ?)",
        )
        .bind(&batch::message_key("m-12004")[..])
        .execute(&store.writer)
        .await;
        assert!(again.is_err(), "a stored messageId is refused: {again:?}");
    }
}
