//! Row decoding shared by the SQL backends. Both schemas use the same column names and
//! compatible types, so turning a row into a domain value is written once, generically over
//! sqlx's `Row`; each backend keeps its own SQL, migrations and error mapping.

pub mod filter_sql;

use sori_domain::event::{Event, EventSource};
use sori_domain::{FieldType, InboxScope, ProfileField, ProfileKey, Role, User};
use sori_store::{
    CatalogEntry, ChangeBatch, Channel, Cursor, Manager, Merge, RevealRecord, Segment, StoreError,
    UserRow,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// A row whose columns decode into the plain types Sori stores.
pub trait SoriRow:
    Row
    + for<'r> RowDecode<'r, String>
    + for<'r> RowDecode<'r, Option<String>>
    + for<'r> RowDecode<'r, i64>
    + for<'r> RowDecode<'r, Option<i64>>
    + for<'r> RowDecode<'r, bool>
{
}

impl<R> SoriRow for R where
    R: Row
        + for<'r> RowDecode<'r, String>
        + for<'r> RowDecode<'r, Option<String>>
        + for<'r> RowDecode<'r, i64>
        + for<'r> RowDecode<'r, Option<i64>>
        + for<'r> RowDecode<'r, bool>
{
}

/// Reads one named column as `T`.
pub trait RowDecode<'r, T> {
    /// The value of column `name`.
    fn col(&'r self, name: &'static str) -> Result<T, StoreError>;
}

impl<'r, R, T> RowDecode<'r, T> for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    fn col(&'r self, name: &'static str) -> Result<T, StoreError> {
        self.try_get(name)
            .map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

/// A user from a row with every `users` column (JSON columns as text).
pub fn user<R: SoriRow>(r: &R) -> Result<User, StoreError> {
    UserRow {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        member_id: r.col("member_id")?,
        veil_id: r.col("veil_id")?,
        name: r.col("name")?,
        profile: r.col("profile")?,
        tags: r.col("tags")?,
        unsubscribe_email: r.col("unsubscribe_email")?,
        unsubscribe_texting: r.col("unsubscribe_texting")?,
        blocked: r.col("blocked")?,
        city: r.col("city")?,
        country: r.col("country")?,
        language: r.col("language")?,
        has_chat: r.col("has_chat")?,
        has_push_token: r.col("has_push_token")?,
        sessions_count: r.col("sessions_count")?,
        last_seen_at: r.col("last_seen_at")?,
        created_at: r.col("created_at")?,
        updated_at: r.col("updated_at")?,
        web: r.col("web")?,
        mobile: r.col("mobile")?,
    }
    .into_user()
}

/// A profile field.
pub fn field<R: SoriRow>(r: &R) -> Result<ProfileField, StoreError> {
    let key: String = r.col("key")?;
    let ty: String = r.col("type")?;
    Ok(ProfileField {
        key: ProfileKey::parse(&key).map_err(StoreError::Corrupt)?,
        name: r.col("name")?,
        field_type: FieldType::parse(&ty).map_err(StoreError::Corrupt)?,
        sensitive: r.col("sensitive")?,
        builtin: r.col("builtin")?,
        created_at: r.col("created_at")?,
    })
}

/// A channel.
pub fn channel<R: SoriRow>(r: &R) -> Result<Channel, StoreError> {
    Ok(Channel {
        id: r.col("id")?,
        name: r.col("name")?,
        time_zone: r.col("time_zone")?,
        default_language: r.col("default_language")?,
        plugin_key: r.col("plugin_key")?,
        access_key: r.col("access_key")?,
        access_secret_hash: r.col("access_secret_hash")?,
        write_key_hash: r.col("write_key_hash")?,
        member_hash_secret: r.col("member_hash_secret")?,
        member_hash_required: r.col("member_hash_required")?,
        event_retention_days: r.col("event_retention_days")?,
        created_at: r.col("created_at")?,
    })
}

/// A manager.
pub fn manager<R: SoriRow>(r: &R) -> Result<Manager, StoreError> {
    Ok(Manager {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        email: r.col("email")?,
        name: r.col("name")?,
        role_id: r.col("role_id")?,
        password_hash: r.col("password_hash")?,
        created_at: r.col("created_at")?,
    })
}

/// A role (permissions stored as a JSON array, scope as its wire name).
pub fn role<R: SoriRow>(r: &R) -> Result<Role, StoreError> {
    let perms: String = r.col("permissions")?;
    let scope: String = r.col("inbox_scope")?;
    Ok(Role {
        id: r.col("id")?,
        name: r.col("name")?,
        permissions: serde_json::from_str(&perms)
            .map_err(|e| StoreError::Corrupt(format!("roles.permissions: {e}")))?,
        inbox_scope: serde_json::from_value::<InboxScope>(serde_json::Value::String(scope))
            .map_err(|e| StoreError::Corrupt(format!("roles.inbox_scope: {e}")))?,
        builtin: r.col("builtin")?,
    })
}

/// A reveal audit record.
pub fn reveal<R: SoriRow>(r: &R) -> Result<RevealRecord, StoreError> {
    Ok(RevealRecord {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        manager_id: r.col("manager_id")?,
        user_id: r.col("user_id")?,
        field: r.col("field")?,
        created_at: r.col("created_at")?,
    })
}

/// The stored form of an inbox scope.
pub fn scope_str(s: InboxScope) -> &'static str {
    match s {
        InboxScope::All => "all",
        InboxScope::Assigned => "assigned",
    }
}

/// The stored form of a role's permissions.
pub fn perms_json(role: &Role) -> String {
    serde_json::to_string(&role.permissions).unwrap_or_else(|_| "[]".into())
}

/// An event (`property` as JSON text).
pub fn event<R: SoriRow>(r: &R) -> Result<Event, StoreError> {
    let source: String = r.col("source")?;
    let property: String = r.col("property")?;
    Ok(Event {
        id: r.col("id")?,
        user_id: r.col("user_id")?,
        name: r.col("name")?,
        property: serde_json::from_str(&property)
            .map_err(|e| StoreError::Corrupt(format!("event property: {e}")))?,
        page: r.col("page")?,
        created_at: r.col("created_at")?,
        source: EventSource::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("event source `{source}`")))?,
    })
}

/// A catalog entry.
pub fn catalog_entry<R: SoriRow>(r: &R) -> Result<CatalogEntry, StoreError> {
    Ok(CatalogEntry {
        name: r.col("name")?,
        count: r.col("count")?,
        first_seen_at: r.col("first_seen_at")?,
        last_seen_at: r.col("last_seen_at")?,
        revenue: r.col("revenue")?,
    })
}

/// A merge record.
pub fn merge<R: SoriRow>(r: &R) -> Result<Merge, StoreError> {
    Ok(Merge {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        from: r.col("from_user_id")?,
        into: r.col("into_user_id")?,
        at: r.col("merged_at")?,
    })
}

/// Per-batch aggregates of inserted events: the catalog rows a batch adds, so each backend
/// upserts them in one statement.
#[derive(Debug, Default)]
pub struct EventAggregates {
    /// (channel, name) → (count, first, last, revenue).
    pub catalog: std::collections::BTreeMap<(i64, String), (i64, i64, i64, bool)>,
    /// Ids of the batch's events not inserted: an event with their `messageId` was
    /// already stored.
    pub duplicates: std::collections::HashSet<String>,
}

impl EventAggregates {
    /// Counts one inserted event.
    pub fn add(&mut self, channel_id: i64, name: &str, at: i64, revenue: bool) {
        let c = self
            .catalog
            .entry((channel_id, name.to_owned()))
            .or_insert((0, at, at, false));
        c.0 += 1;
        c.1 = c.1.min(at);
        c.2 = c.2.max(at);
        c.3 |= revenue;
    }
}

/// Aggregates of the events of a batch that were really inserted (`inserted` ids, as the
/// insert's RETURNING gave them; duplicates by `messageId` are left out).
pub fn aggregate(
    events: &[(i64, String, &sori_domain::event::NewEvent)],
    inserted: &[String],
) -> EventAggregates {
    let mut agg = EventAggregates::default();
    let all = inserted.len() == events.len();
    let ids: std::collections::HashSet<&str> = if all {
        std::collections::HashSet::new()
    } else {
        inserted.iter().map(String::as_str).collect()
    };
    for (ch, _, e) in events {
        if all || ids.contains(e.id.as_str()) {
            agg.add(*ch, &e.name, e.created_at, e.is_revenue());
        } else {
            agg.duplicates.insert(e.id.clone());
        }
    }
    agg
}

/// Decodes a `segments` row.
pub fn segment<R: SoriRow>(r: &R) -> Result<Segment, StoreError> {
    let filter: String = r.col("filter")?;
    Ok(Segment {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        name: r.col("name")?,
        filter: serde_json::from_str(&filter)
            .map_err(|e| StoreError::Corrupt(format!("segment filter: {e}")))?,
        created_at: r.col("created_at")?,
        updated_at: r.col("updated_at")?,
    })
}

/// Decodes a `change_log` row into its channel and change.
fn log_entry<R: SoriRow>(r: &R) -> Result<(i64, sori_domain::change::Change), StoreError> {
    let kind: String = r.col("kind")?;
    let change = log_change(&kind, r.col("user_id")?, r.col("into_id")?)?;
    Ok((r.col("channel_id")?, change))
}

/// The change a `change_log` row (`kind`, `user_id`, `into_id`) records.
pub fn log_change(
    kind: &str,
    user: String,
    into: Option<String>,
) -> Result<sori_domain::change::Change, StoreError> {
    use sori_domain::change::Change;
    match (kind, into) {
        ("merge", Some(into)) => Ok(Change::Merge { from: user, into }),
        ("delete", _) => Ok(Change::Delete(user)),
        (other, _) => Err(StoreError::Corrupt(format!("change_log kind `{other}`"))),
    }
}

/// `WHERE …` of the users written whole in the range `($1, $2]` of the change sequence:
/// every row changed there except those whose changes were all activity (see
/// [`ACTIVITY_CHANGES`]).
pub const WHOLE_CHANGES: &str = "WHERE seq > $1 AND seq <= $2 \
    AND NOT (light_seq IS NOT NULL AND light_seq = seq AND full_seq <= $1) ORDER BY seq";

/// Users whose changes in the range `($1, $2]` were all activity (`light_seq = seq`: the
/// last write was an activity update; `full_seq <= $1`: the last whole write was already
/// followed; SQLite migration 5, PostgreSQL 6), as `channel_id, seq, id, last_seen_at,
/// created_at, updated_at`.
pub const ACTIVITY_CHANGES: &str = "SELECT channel_id, seq, id, last_seen_at, created_at, \
    updated_at FROM users WHERE seq > $1 AND seq <= $2 AND light_seq = seq \
    AND full_seq <= $1 ORDER BY seq";

/// Removals and merges in the range `($1, $2]` (`channel_id, kind, user_id, into_id`, see
/// [`log_change`]).
pub const LOG_CHANGES: &str = "SELECT channel_id, kind, user_id, into_id FROM change_log \
    WHERE seq > $1 AND seq <= $2 ORDER BY seq";

/// What differs between the backends when reading the change sequence.
pub struct ChangeSql<'a> {
    /// Every users column (JSON as text) and `seq` of the users written whole in the range
    /// `($1, $2]`, in sequence order.
    pub users: &'a str,
    /// The users whose changes in the range were all activity ([`ACTIVITY_CHANGES`]).
    pub activity: &'static str,
    /// `channel_id, user_id, name, created_at` of the events with position in `($1, $2]`,
    /// in position order.
    pub events: &'static str,
}

/// Reads the changes between two cursors inside the caller's transaction (one snapshot).
/// PostgreSQL reads its change sequence here; SQLite reads its own on a rusqlite
/// connection (`sori-store-sqlite/src/follow.rs`).
pub async fn changes_between<DB>(
    conn: &mut DB::Connection,
    sql: &ChangeSql<'_>,
    from: Cursor,
    to: Cursor,
) -> Result<ChangeBatch, StoreError>
where
    DB: sqlx::Database,
    DB::Row: SoriRow,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let mut out = ChangeBatch::default();
    let users = sqlx::AssertSqlSafe(sql.users.to_owned());
    for r in rows_between::<DB>(conn, users, from.seq, to.seq).await? {
        out.users
            .push((r.col("channel_id")?, r.col("seq")?, user(&r)?));
    }
    for r in rows_between::<DB>(conn, sql.activity, from.seq, to.seq).await? {
        out.activity.push(activity_row(&r)?);
    }
    for r in rows_between::<DB>(conn, sql.events, from.event, to.event).await? {
        out.events.push((
            r.col("channel_id")?,
            r.col("user_id")?,
            r.col("name")?,
            r.col("created_at")?,
        ));
    }
    for r in rows_between::<DB>(conn, LOG_CHANGES, from.seq, to.seq).await? {
        out.log.push(log_entry(&r)?);
    }
    Ok(out)
}

/// The rows of a change query for the range `(from, to]` of its position (`$1`, `$2`).
async fn rows_between<DB>(
    conn: &mut DB::Connection,
    sql: impl sqlx::SqlSafeStr,
    from: i64,
    to: i64,
) -> Result<Vec<DB::Row>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query::<DB>(sql)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))
}

/// Decodes an activity-only user change (`channel_id, seq, id, last_seen_at, created_at,
/// updated_at`) into its channel, change number and change.
fn activity_row<R: SoriRow>(r: &R) -> Result<(i64, i64, sori_domain::change::Change), StoreError> {
    Ok((
        r.col("channel_id")?,
        r.col("seq")?,
        sori_domain::change::Change::Activity {
            id: r.col("id")?,
            last_seen_at: r.col("last_seen_at")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        },
    ))
}
