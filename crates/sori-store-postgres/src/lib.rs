//! PostgreSQL implementation of the storage seam, for deployments that outgrow one node.
//!
//! Semantics match the SQLite store exactly; only the dialect and the batching differ.
//! User writes are group-committed by the caller, so `write_users` spends two round trips
//! per batch, three with events (lock the addressed rows; write and commit, see `write`),
//! however many ops the batch holds. Several nodes may share one database: migrations take
//! an advisory lock, and user rows are locked in key order so concurrent batches queue
//! instead of deadlocking.

use sori_store_sqlx::{
    EventAggregates, LOG_CHANGES, PRUNED_MARK, RowDecode, WHOLE_CHANGES, catalog_entry,
    channel as channel_from_row, field as field_from_row, log_change, manager as manager_from_row,
    merge as merge_from_row, reveal as reveal_from_row, role as role_from_row,
    seat as seat_from_row, segment as segment_from_row, user as user_from_row,
};
use std::collections::BTreeMap;
use std::str::FromStr;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use sori_domain::change::Change;
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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgExecutor, Row};

mod script;
use script::Lit;
mod write;

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
                Arg::TextArray(v) => q.bind(v),
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
        "no profile gin",
        include_str!("../migrations/0005_no_profile_gin.sql"),
    ),
    (
        6,
        "activity",
        include_str!("../migrations/0006_activity.sql"),
    ),
    (
        7,
        "one anonymous user per veil id",
        include_str!("../migrations/0007_one_anonymous.sql"),
    ),
    (
        8,
        "activity found by events",
        include_str!("../migrations/0008_activity_by_events.sql"),
    ),
    (
        9,
        "compact event index keys",
        include_str!("../migrations/0009_compact_event_keys.sql"),
    ),
    (
        10,
        "users fill factor 40",
        include_str!("../migrations/0010_users_fill_factor.sql"),
    ),
    (
        11,
        "change log pruning",
        include_str!("../migrations/0011_change_log_pruning.sql"),
    ),
    (
        12,
        "sessions as web plus app, languages as their primary subtag",
        include_str!("../migrations/0012_sessions_and_languages.sql"),
    ),
    (
        13,
        "member hash epoch",
        include_str!("../migrations/0013_member_hash_epoch.sql"),
    ),
    (
        14,
        "messageIds of calls without events",
        include_str!("../migrations/0014_call_keys.sql"),
    ),
    (
        15,
        "id is never sensitive",
        include_str!("../migrations/0015_id_not_sensitive.sql"),
    ),
];

/// The owners of the events at positions `($1, $2]` with their activity instants as they
/// are now. An events-only write moves a user's activity without a new change number but
/// always appends an event (a retried one moves nothing), so this finds every such change
/// (migration 8).
const ACTIVITY_CHANGES: &str = "SELECT u.channel_id, u.id, u.last_seen_at, u.created_at, \
    u.updated_at FROM users u JOIN (SELECT DISTINCT channel_id, user_id FROM events \
    WHERE seq > $1 AND seq <= $2) e ON u.channel_id = e.channel_id AND u.id = e.user_id";

/// Advisory lock key serializing migrations across nodes that start at the same time.
const MIGRATION_LOCK: i64 = 7_261_001;
/// First key of the per-channel advisory lock that team writes take (the two-key locks
/// are a space apart from the one-key ones above).
const TEAM_LOCK: i32 = 7_261_003;

/// The user columns in table order, JSON columns read back as text for `UserRow`.
/// Users of channel `$1` whose id is in `$2`, member id in `$3`, or (anonymous) veil id in
/// `$4`.
macro_rules! user_keys_in {
    () => {
        "WHERE channel_id = $1 AND (id = ANY($2::text[]) OR member_id = ANY($3::text[]) \
         OR (member_id IS NULL AND veil_id = ANY($4::text[])))"
    };
}

/// Identity columns of the users light ops address, locked in id order.
const LIGHT_FOR_UPDATE: &str = concat!(
    "SELECT id, member_id, veil_id FROM users ",
    user_keys_in!(),
    " ORDER BY id FOR UPDATE"
);

macro_rules! user_select {
    () => {
        "SELECT channel_id, id, member_id, veil_id, name, profile::text AS profile, \
         tags::text AS tags, unsubscribe_email, unsubscribe_texting, blocked, city, country, \
         language, has_chat, has_push_token, sessions_count, last_seen_at, created_at, \
         updated_at, web::text AS web, mobile::text AS mobile, seq FROM users "
    };
}

const USER_BY_ID: &str = concat!(user_select!(), "WHERE channel_id = $1 AND id = $2");
const USERS_BY_IDS: &str = concat!(user_select!(), "WHERE channel_id = $1 AND id = ANY($2)");
const USER_BY_MEMBER: &str = concat!(user_select!(), "WHERE channel_id = $1 AND member_id = $2");
const USERS_AFTER: &str = concat!(
    user_select!(),
    "WHERE channel_id = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id ASC LIMIT $3"
);
const USERS_BEFORE: &str = concat!(
    user_select!(),
    "WHERE channel_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
);
/// Loads and locks, in id order, every user a batch addresses in one channel. One
/// statement (not one per key kind) so two batches always lock shared rows in the same order.
const USERS_FOR_UPDATE: &str = concat!(user_select!(), user_keys_in!(), " ORDER BY id FOR UPDATE");

/// The start of a lookup by member ids (`$2`) in channel `$1`: one unique-index probe per
/// member, unlocked, the users found put in id order (`p`), then a lateral subquery that
/// the caller completes to lock each by id (rechecking its member id, which may have
/// changed in between). Rows are thus locked in id order like every other batch lookup,
/// so two batches sharing users cannot deadlock; and the shape's cached generic plan is
/// those probes even before the table's first ANALYZE, so it is never planned again.
/// (`OFFSET 0` keeps the probe a subquery run per key: flattened into a join, a generic
/// plan made on an empty table walked the whole channel for every batch, 2,200 events/s.)
macro_rules! by_members_in_id_order {
    () => {
        "SELECT u.* FROM (SELECT k.m, x.id FROM unnest($2::text[]) AS k(m) \
         CROSS JOIN LATERAL (SELECT id FROM users WHERE channel_id = $1 AND member_id = k.m \
         OFFSET 0) x ORDER BY x.id) p CROSS JOIN LATERAL ("
    };
}

/// `USERS_FOR_UPDATE` for a batch that addresses users by member id only (upserts through
/// the Open API), without planning per batch (see `by_members_in_id_order`).
const MEMBERS_FOR_UPDATE: &str = concat!(
    by_members_in_id_order!(),
    user_select!(),
    "WHERE channel_id = $1 AND id = p.id AND member_id = p.m FOR UPDATE) u"
);

/// `LIGHT_FOR_UPDATE` for light ops that address users by member id only (Segment and
/// Open API events name members), without planning per batch: custom planning of the
/// three-way `OR` was a tenth of PostgreSQL's CPU under single-event ingestion.
const LIGHT_MEMBERS_FOR_UPDATE: &str = concat!(
    by_members_in_id_order!(),
    "SELECT id, member_id, veil_id FROM users \
     WHERE channel_id = $1 AND id = p.id AND member_id = p.m FOR UPDATE) u"
);

const FIELD_SELECT: &str = "SELECT key, name, type, sensitive, builtin, created_at \
    FROM profile_fields WHERE channel_id = $1 ORDER BY key";

/// The store on a PostgreSQL database shared by every node of a deployment.
pub struct PostgresStore {
    pool: PgPool,
    /// Connections of the batch writer (see `write::Writers`).
    writers: write::Writers,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connect options hold the password; never print them.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict(db.message().to_owned());
    }
    // Deadlocks and serialization failures are races another attempt wins.
    if let sqlx::Error::Database(db) = &e
        && matches!(db.code().as_deref(), Some("40P01" | "40001"))
    {
        return StoreError::Transient(db.message().to_owned());
    }
    if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) {
        return StoreError::Unavailable(e.to_string());
    }
    // A connection the server ended (a restart: `57P01` admin shutdown, `57P02`, `57P03`,
    // class 08, or the socket gone): another attempt on a fresh connection may succeed,
    // and if the server is down it answers 503, not 500.
    if let sqlx::Error::Database(db) = &e
        && db
            .code()
            .is_some_and(|c| c.starts_with("57P0") || c.starts_with("08"))
    {
        return StoreError::Transient(db.message().to_owned());
    }
    if let sqlx::Error::Io(io) = &e {
        return StoreError::Transient(io.to_string());
    }
    StoreError::Backend(Box::new(e))
}

/// The rows of a change query for the range `(from, to]` of its position (`$1`, `$2`).
async fn rows_between(
    tx: &mut sqlx::PgConnection,
    sql: impl sqlx::SqlSafeStr,
    from: i64,
    to: i64,
) -> Result<Vec<PgRow>> {
    sqlx::query(sql)
        .bind(from)
        .bind(to)
        .fetch_all(tx)
        .await
        .map_err(backend)
}

impl PostgresStore {
    /// The block range of part `part` of `parts` of a table, as the text of two tuple ids
    /// `[from, to)`: parallel scans of a build read disjoint stretches of the heap (a TID
    /// range scan), instead of each reading all of it and keeping a share.
    async fn block_part(&self, table: &str, part: u32, parts: u32) -> Result<(String, String)> {
        let blocks: i64 = sqlx::query_scalar(
            "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let parts = i64::from(parts.max(1));
        let from = blocks * i64::from(part) / parts;
        // The last part is open-ended: rows the table grew by since the size was read.
        let to = if i64::from(part) + 1 >= parts {
            i64::from(u32::MAX)
        } else {
            blocks * (i64::from(part) + 1) / parts
        };
        Ok((format!("({from},0)"), format!("({to},0)")))
    }

    /// The channel a unique public key column names (`sql` selects by that column).
    async fn channel_where(&self, sql: &'static str, key: &str) -> Result<Option<Channel>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    /// Connects a pool of at most `max_connections` to `url` (`postgres://...`), so every
    /// request and the user writer shards share a bounded number of server backends.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(backend)?
            .application_name("sori")
            // Lookups by `= ANY($n)` arrays: a cached generic plan cannot see the array size
            // and falls back to a sequential scan (5+ ms per batch at 20,000 users); custom
            // plans keep the index scans for a fraction of a millisecond of planning.
            .options([
                ("plan_cache_mode", "force_custom_plan"),
                // Every lock-then-read in this store (team writes, the change lock, user
                // rows) relies on each statement seeing what committed before it: a
                // database set to `repeatable read` would read behind the lock.
                ("default_transaction_isolation", "read committed"),
            ]);
        wait_until_up(&opts).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // No ping before every checkout: it cost a round trip per transaction (a tenth
            // of an upsert batch). A dead connection fails its query instead and is dropped.
            .test_before_acquire(false)
            // A request waits at most this for a connection: past it PostgreSQL is down or
            // swamped, and a 503 now serves clients and health checks better than one in
            // 30 s (the default).
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
            .map_err(backend)?;
        Ok(Self {
            pool,
            writers: write::Writers::new(opts),
        })
    }
}

/// Opens and closes one direct connection. A server that refuses connections or says it
/// is starting up (Sori and PostgreSQL started together) is tried again for up to 30 s,
/// each wait logged with its cause; anything else (unknown host, bad password, no
/// answer within 10 s) fails at once with its cause, where the pool would retry every
/// error for its whole acquire timeout and then report only that it timed out.
async fn wait_until_up(opts: &PgConnectOptions) -> Result<()> {
    use std::time::Duration;
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let tried = tokio::time::timeout(
            Duration::from_secs(10),
            <sqlx::PgConnection as sqlx::Connection>::connect_with(opts),
        )
        .await;
        match tried {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                return Ok(());
            }
            Ok(Err(e)) if not_up_yet(&e) && started.elapsed() < Duration::from_secs(30) => {
                tracing::warn!(error = %e, "PostgreSQL is not accepting connections yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(Err(e)) if not_up_yet(&e) => {
                return Err(StoreError::Backend(
                    format!("PostgreSQL still refused connections after 30 s: {e}").into(),
                ));
            }
            // Said plainly: not a "transient conflict" (an unknown host is an I/O error),
            // and without the server's source position ("at line 768") that reads like a
            // line of the configuration.
            Ok(Err(e)) => {
                let cause = match &e {
                    sqlx::Error::Database(db) => db.message().to_owned(),
                    sqlx::Error::Io(io) => io.to_string(),
                    other => other.to_string(),
                };
                return Err(StoreError::Backend(cause.into()));
            }
            Err(_) => {
                return Err(StoreError::Backend(
                    "PostgreSQL did not answer within 10 s".into(),
                ));
            }
        }
    }
}

/// A server that is down or still starting: refused connections, `57P03`
/// (`cannot_connect_now`, "the database system is starting up").
fn not_up_yet(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// Runs statements in order inside `tx`; their counts of rows changed.
async fn run_all(
    tx: &mut sqlx::PgConnection,
    statements: impl IntoIterator<Item = filter_sql::Sql>,
) -> Result<Vec<u64>> {
    let mut changed = Vec::new();
    for sql in statements {
        let r = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        changed.push(r.rows_affected());
    }
    Ok(changed)
}

async fn insert_field(db: impl PgExecutor<'_>, channel_id: i64, f: &ProfileField) -> Result<()> {
    sqlx::query(
        "INSERT INTO profile_fields (channel_id, key, name, type, sensitive, builtin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(channel_id)
    .bind(f.key.as_str())
    .bind(&f.name)
    .bind(f.field_type.as_str())
    .bind(f.sensitive)
    .bind(f.builtin)
    .bind(f.created_at)
    .execute(db)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Adds a batch's events to the catalog (arguments: see `catalog_args`), inside the
/// batch's transaction as its last statement: catalog rows are shared by every writer, so
/// they stay locked only for the commit, and the counts commit with the events.
pub(crate) const CATALOG_UPSERT: &str = "INSERT INTO event_catalog (channel_id, name, count, \
    first_seen_at, last_seen_at, revenue) SELECT * FROM UNNEST($1::bigint[], $2::text[], \
    $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[]) ON CONFLICT (channel_id, name) \
    DO UPDATE SET count = event_catalog.count + excluded.count, \
    first_seen_at = LEAST(event_catalog.first_seen_at, excluded.first_seen_at), \
    last_seen_at = GREATEST(event_catalog.last_seen_at, excluded.last_seen_at), \
    revenue = event_catalog.revenue OR excluded.revenue";

/// `CATALOG_UPSERT`'s arguments, in (channel, name) order (so concurrent batches lock
/// catalog rows in one order); `None` when nothing was stored.
pub(crate) fn catalog_args(agg: &EventAggregates) -> Option<Vec<Lit<'_>>> {
    if agg.catalog.is_empty() {
        return None;
    }
    let (mut c, mut nm, mut cnt, mut first, mut last, mut rev) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((ch, name), (n, f, l, r)) in &agg.catalog {
        c.push(Some(*ch));
        nm.push(Some(name.as_str()));
        cnt.push(Some(*n));
        first.push(Some(*f));
        last.push(Some(*l));
        rev.push(Some(*r));
    }
    Some(vec![
        Lit::Ints(c),
        Lit::Texts(nm),
        Lit::Ints(cnt),
        Lit::Ints(first),
        Lit::Ints(last),
        Lit::Bools(rev),
    ])
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Held until commit: a node starting alongside waits, then sees the versions applied.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS sori_migrations \
             (version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
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
            tracing::info!(version, description, "applying postgres migration");
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO sori_migrations (version, description, applied_at) \
                 VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
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
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn create_channel(&self, new: NewChannel) -> Result<(Channel, Manager)> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let c = &new.channel;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO channels (name, time_zone, default_language, plugin_key, access_key, \
             access_secret_hash, write_key_hash, member_hash_secret, member_hash_required, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
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
            run_all(
                &mut tx,
                [team_sql::insert_role(Dialect::Postgres, id, &role)],
            )
            .await?;
        }
        for f in Registry::preregistered(c.created_at) {
            insert_field(&mut *tx, id, &f).await?;
        }
        let owner = Manager {
            channel_id: id,
            ..new.owner
        };
        run_all(
            &mut tx,
            [team_sql::insert_manager(Dialect::Postgres, id, &owner)],
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok((Channel { id, ..new.channel }, owner))
    }

    async fn count_channels(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM channels")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn channel(&self, id: i64) -> Result<Option<Channel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(channel_from_row).transpose()
    }

    async fn channel_by_access_key(&self, access_key: &str) -> Result<Option<Channel>> {
        self.channel_where("SELECT * FROM channels WHERE access_key = $1", access_key)
            .await
    }

    async fn channel_by_plugin_key(&self, key: &str) -> Result<Option<Channel>> {
        self.channel_where("SELECT * FROM channels WHERE plugin_key = $1", key)
            .await
    }

    async fn channel_by_write_key_hash(&self, key: &str) -> Result<Option<Channel>> {
        self.channel_where("SELECT * FROM channels WHERE write_key_hash = $1", key)
            .await
    }

    async fn channel_ids(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT id FROM channels ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn update_channel(&self, id: i64, p: &ChannelSettingsPatch) -> Result<Option<Channel>> {
        let row = sqlx::query(
            "UPDATE channels SET name = COALESCE($1, name), time_zone = COALESCE($2, time_zone), \
             default_language = COALESCE($3, default_language), \
             member_hash_epoch = member_hash_epoch \
                 + CASE WHEN $4 AND NOT member_hash_required THEN 1 ELSE 0 END, \
             member_hash_required = COALESCE($4, member_hash_required), \
             event_retention_days = COALESCE($5, event_retention_days) WHERE id = $6 RETURNING *",
        )
        .bind(&p.name)
        .bind(&p.time_zone)
        .bind(&p.default_language)
        .bind(p.member_hash_required)
        .bind(p.event_retention_days)
        .bind(id)
        .fetch_optional(&self.pool)
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
            "UPDATE channels SET access_secret_hash = $1, write_key_hash = $2 WHERE id = $3",
        )
        .bind(access_secret_hash)
        .bind(write_key_hash)
        .bind(id)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let changed = run_all(
            &mut tx,
            team_sql::password_reset(Dialect::Postgres, channel_id, manager_id, password_hash),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(changed.first() == Some(&1))
    }

    async fn roles(&self, channel_id: i64) -> Result<Vec<Role>> {
        let rows = sqlx::query(team_sql::roles_select(Dialect::Postgres))
            .bind(channel_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn change_team(&self, channel_id: i64, actor_id: &str, write: &TeamWrite) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Held to commit: the team's writes on every node queue here, and each reads the
        // team (fresh statements under read committed) after the one before committed.
        sqlx::query("SELECT pg_advisory_xact_lock($1, ($2 % 2147483647)::int4)")
            .bind(TEAM_LOCK)
            .bind(channel_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let roles = sqlx::query(team_sql::roles_select(Dialect::Postgres))
            .bind(channel_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let seats = sqlx::query(team_sql::seats_select(Dialect::Postgres))
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
            team_sql::team_write(Dialect::Postgres, channel_id, write),
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn managers(&self, channel_id: i64) -> Result<Vec<Manager>> {
        let rows = sqlx::query("SELECT * FROM managers WHERE channel_id = $1 ORDER BY id")
            .bind(channel_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(manager_from_row).collect()
    }

    async fn managers_by_email(&self, email: &str) -> Result<Vec<Manager>> {
        let rows = sqlx::query("SELECT * FROM managers WHERE email = $1 ORDER BY channel_id")
            .bind(email)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(manager_from_row).collect()
    }

    async fn manager(&self, channel_id: i64, id: &str) -> Result<Option<Manager>> {
        let row = sqlx::query("SELECT * FROM managers WHERE channel_id = $1 AND id = $2")
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(manager_from_row).transpose()
    }

    async fn insert_session(&self, s: &Session) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (channel_id, token_hash, manager_id, csrf_token, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(s.channel_id)
        .bind(&s.token_hash)
        .bind(&s.manager_id)
        .bind(&s.csrf_token)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn session(&self, channel_id: i64, token_hash: &str) -> Result<Option<Session>> {
        let row = sqlx::query("SELECT * FROM sessions WHERE channel_id = $1 AND token_hash = $2")
            .bind(channel_id)
            .bind(token_hash)
            .fetch_optional(&self.pool)
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
        sqlx::query("DELETE FROM sessions WHERE channel_id = $1 AND token_hash = $2")
            .bind(channel_id)
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn profile_fields(&self, channel_id: i64) -> Result<Vec<ProfileField>> {
        let rows = sqlx::query(FIELD_SELECT)
            .bind(channel_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(field_from_row).collect()
    }

    async fn insert_profile_field(&self, channel_id: i64, field: &ProfileField) -> Result<()> {
        insert_field(&self.pool, channel_id, field).await
    }

    async fn update_profile_field(
        &self,
        channel_id: i64,
        key: &str,
        name: Option<&str>,
        sensitive: Option<bool>,
    ) -> Result<Option<ProfileField>> {
        let row = sqlx::query(
            "UPDATE profile_fields SET name = COALESCE($1, name), \
             sensitive = COALESCE($2, sensitive) WHERE channel_id = $3 AND key = $4 \
             RETURNING key, name, type, sensitive, builtin, created_at",
        )
        .bind(name)
        .bind(sensitive)
        .bind(channel_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(field_from_row).transpose()
    }

    async fn delete_profile_field(&self, channel_id: i64, key: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The change lock exclusively, so that no write batch is in flight while the key
        // leaves the profiles: one that read the registry before would write the key back
        // after the values are removed. Batches in flight commit first (their values go
        // too); batches after read the registry without the field (a value of the key then
        // registers it again, as any new key does).
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let seq = next_seq(&mut tx).await?;
        let r = sqlx::query(
            "DELETE FROM profile_fields WHERE channel_id = $1 AND key = $2 AND NOT builtin",
        )
        .bind(channel_id)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let deleted = r.rows_affected() == 1;
        if deleted {
            sqlx::query(
                "UPDATE users SET profile = profile - $1::text, seq = $3 \
                 WHERE channel_id = $2 AND profile ? $1::text",
            )
            .bind(key)
            .bind(channel_id)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(deleted)
    }

    async fn sensitive_builtins(&self, channel_id: i64) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT key FROM builtin_field_settings WHERE channel_id = $1 AND sensitive ORDER BY key",
        )
        .bind(channel_id)
        .fetch_all(&self.pool)
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
            "INSERT INTO builtin_field_settings (channel_id, key, sensitive) VALUES ($1, $2, $3) \
             ON CONFLICT (channel_id, key) DO UPDATE SET sensitive = EXCLUDED.sensitive",
        )
        .bind(channel_id)
        .bind(key)
        .bind(sensitive)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn write_users(&self, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
        write::write_users(&self.writers, ops).await
    }

    async fn user(&self, channel_id: i64, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(USER_BY_ID)
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_member_id(&self, channel_id: i64, member_id: &str) -> Result<Option<User>> {
        let row = sqlx::query(USER_BY_MEMBER)
            .bind(channel_id)
            .bind(member_id)
            .fetch_optional(&self.pool)
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
        let sql = if descending {
            USERS_BEFORE
        } else {
            USERS_AFTER
        };
        let rows = sqlx::query(sql)
            .bind(channel_id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn delete_user(&self, channel_id: i64, id: &str) -> Result<bool> {
        // The user's events, counts and merge records go with it; the removal is logged
        // for followers of the change sequence.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let seq = next_seq(&mut tx).await?;
        // The row first, as write batches lock it before they add events or merge into
        // it: a batch holding it commits before the deletes below read (its events go
        // too), and one that comes after finds no user. Deleting the events first let a
        // batch add events between them and the row, left to a user that no longer
        // exists, and a merge in flight deadlocked with the delete.
        sqlx::query("SELECT 1 FROM users WHERE channel_id = $1 AND id = $2 FOR UPDATE")
            .bind(channel_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for sql in [
            "DELETE FROM events WHERE channel_id = $1 AND user_id = $2",
            "DELETE FROM call_keys WHERE channel_id = $1 AND user_id = $2",
            "DELETE FROM user_event_stats WHERE channel_id = $1 AND user_id = $2",
            "DELETE FROM user_merges WHERE channel_id = $1 AND into_user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(channel_id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let r = sqlx::query("DELETE FROM users WHERE channel_id = $1 AND id = $2")
            .bind(channel_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if r.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO change_log (channel_id, seq, kind, user_id, at) \
                 VALUES ($1, $2, 'delete', $3, (extract(epoch FROM now()) * 1000)::bigint)",
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let seq = next_seq(&mut tx).await?;
        let map: BTreeMap<(i64, String), User> = users
            .iter()
            .map(|u| ((channel_id, u.id.clone()), u.clone()))
            .collect();
        if !map.is_empty() {
            write::upsert_users(&mut tx, &map, seq).await?;
        }
        let rows: Vec<(i64, String, &NewEvent)> = events
            .iter()
            .map(|(user, e)| (channel_id, user.clone(), e))
            .collect();
        let agg = if rows.is_empty() {
            EventAggregates::default()
        } else {
            write::insert_events(&mut tx, &rows, seq).await?
        };
        if let Some(args) = catalog_args(&agg) {
            script::bind(sqlx::query(CATALOG_UPSERT), args)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn users_by_ids(&self, channel_id: i64, ids: &[String]) -> Result<Vec<User>> {
        let rows = sqlx::query(USERS_BY_IDS)
            .bind(channel_id)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn count_matching(&self, channel_id: i64, query: &Query) -> Result<u64> {
        let sql = filter_sql::users_matching(Dialect::Postgres, "count(*)", channel_id, query, "");
        let n: i64 = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn ids_matching(&self, channel_id: i64, query: &Query) -> Result<Vec<String>> {
        let sql = filter_sql::users_matching(
            Dialect::Postgres,
            "u.id",
            channel_id,
            query,
            "ORDER BY u.id",
        );
        bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn event_counts_matching(
        &self,
        channel_id: i64,
        test: &EventTest,
    ) -> Result<Vec<(String, i64)>> {
        let sql = filter_sql::event_counts(Dialect::Postgres, channel_id, test);
        let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&self.pool)
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
        sqlx::query_scalar("SELECT id FROM users WHERE channel_id = $1")
            .bind(channel_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn scan_users(
        &self,
        channel_id: i64,
        part: u32,
        parts: u32,
        user: &mut (dyn FnMut(i64, User) + Send),
    ) -> Result<()> {
        let (from, to) = self.block_part("users", part, parts).await?;
        let mut rows = sqlx::query(concat!(
            user_select!(),
            "WHERE ctid >= $2::text::tid AND ctid < $3::text::tid AND channel_id = $1"
        ))
        .bind(channel_id)
        .bind(from)
        .bind(to)
        .fetch(&self.pool);
        while let Some(r) = rows.try_next().await.map_err(backend)? {
            user(r.try_get("seq").map_err(backend)?, user_from_row(&r)?);
        }
        Ok(())
    }

    async fn scan_events(
        &self,
        channel_id: i64,
        upto: i64,
        part: u32,
        parts: u32,
        event: &mut (dyn for<'s> FnMut(i64, &'s str, &'s str) + Send),
    ) -> Result<()> {
        let (from, to) = self.block_part("events", part, parts).await?;
        // COPY in binary streams the values as they are stored: tens of millions of rows
        // cost a few length reads each, instead of a protocol row each (or, in text form,
        // number formatting and escaping on the server). Every value in the statement is a
        // number or a tuple id made here, so formatting it in is safe.
        let sql = format!(
            "COPY (SELECT created_at, user_id, name FROM events WHERE ctid >= '{from}'::tid \
             AND ctid < '{to}'::tid AND channel_id = {channel_id} AND seq <= {upto}) \
             TO STDOUT (FORMAT binary)"
        );
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let mut stream = conn.copy_out_raw(&sql).await.map_err(backend)?;
        let mut copy = EventCopy::default();
        while let Some(chunk) = stream.try_next().await.map_err(backend)? {
            copy.feed(&chunk, event)?;
        }
        copy.finish()
    }

    async fn horizon(&self) -> Result<Cursor> {
        // Waits until every transaction holding a change number has ended (they hold the
        // shared lock from before they take the number until they commit), so the current
        // value bounds everything that can still appear. One statement in its own
        // transaction: the exclusive lock is held only while the value is read, where a
        // transaction around it held it over three more round trips, and every write
        // batch arriving meanwhile waited (no throughput or p99 change measured; a count's
        // catch-up saves the round trips).
        let seq: i64 = sqlx::query_scalar(
            // The correlated subquery runs per row of `l`, so after the lock (a column of
            // the sequence in a join could be read before it).
            "WITH l AS MATERIALIZED (SELECT 1 AS one FROM (SELECT pg_advisory_xact_lock($1)) x) \
             SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM change_seq \
             WHERE l.one = 1) FROM l",
        )
        .bind(CHANGE_LOCK)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Cursor { seq, event: seq })
    }

    async fn changes(&self, from: Cursor, to: Cursor) -> Result<ChangeBatch> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut out = ChangeBatch::default();
        let pruned: i64 = sqlx::query_scalar(PRUNED_MARK)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if from.seq < pruned {
            out.pruned = true;
            tx.commit().await.map_err(backend)?;
            return Ok(out);
        }
        // Whole rows for users written whole since `from`; three instants for the owners
        // of the events since then (see migration 8). Events by change number.
        let users = format!("{}{WHOLE_CHANGES}", user_select!());
        for r in rows_between(&mut tx, sqlx::AssertSqlSafe(users), from.seq, to.seq).await? {
            out.users
                .push((r.col("channel_id")?, r.col("seq")?, user_from_row(&r)?));
        }
        // As of this snapshot, so stamped with the horizon's number.
        for r in rows_between(&mut tx, ACTIVITY_CHANGES, from.event, to.event).await? {
            let change = Change::Activity {
                id: r.col("id")?,
                last_seen_at: r.col("last_seen_at")?,
                created_at: r.col("created_at")?,
                updated_at: r.col("updated_at")?,
            };
            out.activity.push((r.col("channel_id")?, to.seq, change));
        }
        let events = "SELECT channel_id, user_id, name, created_at FROM events \
                      WHERE seq > $1 AND seq <= $2 ORDER BY seq";
        for r in rows_between(&mut tx, events, from.event, to.event).await? {
            out.events.push((
                r.col("channel_id")?,
                r.col("user_id")?,
                r.col("name")?,
                r.col("created_at")?,
            ));
        }
        for r in rows_between(&mut tx, LOG_CHANGES, from.seq, to.seq).await? {
            let kind: String = r.col("kind")?;
            let change = log_change(&kind, r.col("user_id")?, r.col("into_id")?)?;
            out.log.push((r.col("channel_id")?, change));
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn prune_changes(&self, before: i64) -> Result<u64> {
        // One statement: the mark covers exactly the rows deleted, whatever commits
        // meanwhile.
        let pruned: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM change_log WHERE at < $1 RETURNING seq), \
             mark AS (UPDATE change_log_pruned \
             SET v = GREATEST(v, COALESCE((SELECT max(seq) FROM gone), 0))) \
             SELECT count(*) FROM gone",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(pruned as u64)
    }

    async fn rolled_counts(&self, channel_id: i64) -> Result<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT user_id, name, count FROM user_event_stats WHERE channel_id = $1")
                .bind(channel_id)
                .fetch_all(&self.pool)
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
            &self.pool,
            Dialect::Postgres,
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
            &self.pool,
            Dialect::Postgres,
            channel_id,
            None,
            after,
            limit,
            true,
        )
        .await
    }

    async fn event_catalog(&self, channel_id: i64) -> Result<Vec<CatalogEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM event_catalog WHERE channel_id = $1 ORDER BY name COLLATE \"C\"",
        )
        .bind(channel_id)
        .fetch_all(&self.pool)
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
        // Roll the chunk up into per-user counts in the same statement that deletes it,
        // so segments keep counting events that retention removed.
        let r: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM events WHERE ctid = ANY(ARRAY(SELECT ctid FROM events \
             WHERE channel_id = $1 AND created_at < $2 AND seq <= $4 \
             ORDER BY created_at LIMIT $3)) \
             RETURNING channel_id, user_id, name, created_at), \
             rolled AS (INSERT INTO user_event_stats (channel_id, user_id, name, count, first_at, last_at) \
             SELECT channel_id, user_id, name, count(*), min(created_at), max(created_at) FROM gone \
             GROUP BY channel_id, user_id, name \
             ON CONFLICT (channel_id, user_id, name) DO UPDATE \
             SET count = user_event_stats.count + excluded.count, \
             first_at = LEAST(user_event_stats.first_at, excluded.first_at), \
             last_at = GREATEST(user_event_stats.last_at, excluded.last_at)) \
             SELECT count(*) FROM gone",
        )
        .bind(channel_id)
        .bind(before)
        .bind(i64::from(limit))
        .bind(upto)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(u64::try_from(r).unwrap_or(0))
    }

    async fn delete_call_keys_before(
        &self,
        channel_id: i64,
        before: i64,
        limit: u32,
    ) -> Result<u64> {
        sqlx::query(
            "DELETE FROM call_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM call_keys \
             WHERE channel_id = $1 AND created_at < $2 LIMIT $3))",
        )
        .bind(channel_id)
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(backend)
    }

    async fn event_counts(&self, channel_id: i64, user_id: &str) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT name, CAST(sum(n) AS BIGINT) AS n FROM ( \
             SELECT name, count AS n FROM user_event_stats WHERE channel_id = $1 AND user_id = $2 \
             UNION ALL SELECT name, count(*) AS n FROM events \
             WHERE channel_id = $1 AND user_id = $2 GROUP BY name) t GROUP BY name ORDER BY name COLLATE \"C\"",
        )
        .bind(channel_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)
    }

    async fn merges_into(&self, channel_id: i64, user_id: &str) -> Result<Vec<Merge>> {
        let rows = sqlx::query(
            "SELECT * FROM user_merges WHERE channel_id = $1 AND into_user_id = $2 \
             ORDER BY merged_at DESC, id DESC",
        )
        .bind(channel_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(merge_from_row).collect()
    }

    async fn segments(&self, channel_id: i64) -> Result<Vec<Segment>> {
        let rows =
            sqlx::query("SELECT * FROM segments WHERE channel_id = $1 ORDER BY name COLLATE \"C\"")
                .bind(channel_id)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(segment_from_row).collect()
    }

    async fn segment(&self, channel_id: i64, id: &str) -> Result<Option<Segment>> {
        let row = sqlx::query("SELECT * FROM segments WHERE channel_id = $1 AND id = $2")
            .bind(channel_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(segment_from_row).transpose()
    }

    async fn insert_segment(&self, sg: &Segment) -> Result<()> {
        sqlx::query(
            "INSERT INTO segments (channel_id, id, name, filter, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(sg.channel_id)
        .bind(&sg.id)
        .bind(&sg.name)
        .bind(sg.filter.to_string())
        .bind(sg.created_at)
        .bind(sg.updated_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn update_segment(&self, sg: &Segment) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE segments SET name = $1, filter = $2, updated_at = $3 \
             WHERE channel_id = $4 AND id = $5",
        )
        .bind(&sg.name)
        .bind(sg.filter.to_string())
        .bind(sg.updated_at)
        .bind(sg.channel_id)
        .bind(&sg.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_segment(&self, channel_id: i64, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM segments WHERE channel_id = $1 AND id = $2")
            .bind(channel_id)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_reveal(&self, r: &RevealRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO reveal_audit (channel_id, id, manager_id, user_id, field, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.channel_id)
        .bind(&r.id)
        .bind(&r.manager_id)
        .bind(&r.user_id)
        .bind(&r.field)
        .bind(r.created_at)
        .execute(&self.pool)
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
            "SELECT * FROM reveal_audit WHERE channel_id = $1 AND ($2::text IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(channel_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(reveal_from_row).collect()
    }
}

/// The advisory lock that orders change numbers against `horizon`.
const CHANGE_LOCK: i64 = 7_261_002;

/// Takes the next change number. Call it first in a write transaction, before any row
/// lock: the shared advisory lock it takes (held to commit) is what `horizon` waits on,
/// and taking it after a row lock could deadlock with a waiting horizon.
async fn next_seq(tx: &mut sqlx::PgConnection) -> Result<i64> {
    sqlx::query_scalar(
        "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1)) \
         SELECT nextval('change_seq') FROM l",
    )
    .bind(CHANGE_LOCK)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)
}

/// Reads `COPY … TO STDOUT (FORMAT binary)` output of (created_at, user_id, name) rows,
/// fed in chunks that need not end on a row boundary.
#[derive(Default)]
struct EventCopy {
    buf: Vec<u8>,
    header_read: bool,
    ended: bool,
}

/// The binary COPY signature.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl EventCopy {
    fn feed(
        &mut self,
        chunk: &[u8],
        event: &mut (dyn for<'s> FnMut(i64, &'s str, &'s str) + Send),
    ) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        if !self.header_read {
            // Signature, flags, then the length of a header extension.
            let Some(ext) = read_i32(&self.buf, COPY_SIGNATURE.len() + 4) else {
                return Ok(());
            };
            if !self.buf.starts_with(COPY_SIGNATURE) || ext < 0 {
                return Err(StoreError::Corrupt("not a binary COPY stream".into()));
            }
            let body = COPY_SIGNATURE.len() + 8 + ext as usize;
            if self.buf.len() < body {
                return Ok(());
            }
            at = body;
            self.header_read = true;
        }
        while !self.ended {
            match copy_row(&self.buf[at..])? {
                CopyRow::Incomplete => break,
                CopyRow::End => {
                    self.ended = true;
                    at += 2;
                }
                CopyRow::Event {
                    len,
                    created_at,
                    user,
                    name,
                } => {
                    event(created_at, user, name);
                    at += len;
                }
            }
        }
        self.buf.drain(..at);
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.ended && self.buf.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Corrupt("binary COPY stream ended early".into()))
        }
    }
}

/// One row of a binary COPY stream, borrowed from the buffer.
enum CopyRow<'a> {
    Incomplete,
    End,
    Event {
        len: usize,
        created_at: i64,
        user: &'a str,
        name: &'a str,
    },
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn copy_row(b: &[u8]) -> Result<CopyRow<'_>> {
    let corrupt = || StoreError::Corrupt("bad binary COPY row".into());
    let Some(count) = b.get(..2) else {
        return Ok(CopyRow::Incomplete);
    };
    match i16::from_be_bytes([count[0], count[1]]) {
        -1 => return Ok(CopyRow::End),
        3 => {}
        _ => return Err(corrupt()),
    }
    let mut at = 2;
    let mut fields: [&[u8]; 3] = [&[]; 3];
    for f in &mut fields {
        let Some(len) = read_i32(b, at) else {
            return Ok(CopyRow::Incomplete);
        };
        let len = usize::try_from(len).map_err(|_| corrupt())?;
        let Some(v) = b.get(at + 4..at + 4 + len) else {
            return Ok(CopyRow::Incomplete);
        };
        *f = v;
        at += 4 + len;
    }
    let created_at = i64::from_be_bytes(fields[0].try_into().map_err(|_| corrupt())?);
    let text = |v| std::str::from_utf8(v).map_err(|_| corrupt());
    Ok(CopyRow::Event {
        len: at,
        created_at,
        user: text(fields[1])?,
        name: text(fields[2])?,
    })
}

/// Plans of the batch lookups that run on cached generic plans, on a real PostgreSQL
/// (`SORI_TEST_PG_URL`, as `scripts/test.sh` sets it): made on an empty, never analyzed
/// table (a fresh install's first batch), they must still probe the member index once per
/// key. A plan that joins instead walks the whole channel for every batch: measured at
/// 2,200 events/s against 15,000.
#[cfg(test)]
mod plan_tests {
    use sqlx::Connection;

    use super::*;

    #[tokio::test]
    async fn member_lookups_probe_the_index_on_generic_plans() {
        let Ok(admin) = std::env::var("SORI_TEST_PG_URL") else {
            eprintln!("SORI_TEST_PG_URL unset; skipping");
            return;
        };
        let name = format!("sori_plans_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("fresh database");
        }
        let (base, _) = admin.rsplit_once('/').expect("URL has a database part");
        let url = format!("{base}/{name}");
        let store = PostgresStore::connect(&url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut db)
            .await
            .expect("generic plans");
        for (stmt, sql) in [
            ("whole", MEMBERS_FOR_UPDATE),
            ("light", LIGHT_MEMBERS_FOR_UPDATE),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PREPARE {stmt}(bigint, text[]) AS {sql}"
            )))
            .execute(&mut db)
            .await
            .expect("prepare");
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN EXECUTE {stmt}(1, ARRAY['a', 'b'])"
            )))
            .fetch_all(&mut db)
            .await
            .expect("explain");
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Cond: ((channel_id = $1) AND (member_id = k.m))"),
                "{stmt}: no per-key member probe\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan") && !plan.contains("Join Filter"),
                "{stmt}: scans or joins users\n{plan}"
            );
        }
        drop((db, store));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop database");
    }
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    fn row(at: i64, user: &str, name: &str) -> Vec<u8> {
        let mut b = 3i16.to_be_bytes().to_vec();
        for v in [&at.to_be_bytes()[..], user.as_bytes(), name.as_bytes()] {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    #[test]
    fn binary_copy_in_any_chunks() {
        let mut stream = COPY_SIGNATURE.to_vec();
        stream.extend_from_slice(&0i32.to_be_bytes());
        stream.extend_from_slice(&4i32.to_be_bytes());
        stream.extend_from_slice(b"skip");
        stream.extend(row(1_700_000_000_000, "abc", "Order\tPaid"));
        stream.extend(row(-5, "유저", "PageView"));
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        let want = vec![
            (
                1_700_000_000_000,
                "abc".to_owned(),
                "Order\tPaid".to_owned(),
            ),
            (-5, "유저".to_owned(), "PageView".to_owned()),
        ];
        for size in [1, 2, 3, 7, 1000] {
            let mut got = Vec::new();
            let mut copy = EventCopy::default();
            for chunk in stream.chunks(size) {
                copy.feed(chunk, &mut |at, u, n| {
                    got.push((at, u.to_owned(), n.to_owned()))
                })
                .unwrap();
            }
            copy.finish().unwrap();
            assert_eq!(got, want, "chunks of {size}");
        }
        // Cut short, or a row of the wrong shape: an error, not a guess.
        let mut copy = EventCopy::default();
        copy.feed(&stream[..stream.len() - 3], &mut |_, _, _| {})
            .unwrap();
        assert!(copy.finish().is_err());
        let mut bad = COPY_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0; 8]);
        bad.extend_from_slice(&2i16.to_be_bytes());
        assert!(EventCopy::default().feed(&bad, &mut |_, _, _| {}).is_err());
    }
}
