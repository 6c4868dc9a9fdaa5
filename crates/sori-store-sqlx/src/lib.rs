//! Row decoding shared by the SQL backends. Both schemas use the same column names and
//! compatible types, so turning a row into a domain value is written once, generically over
//! sqlx's `Row`; each backend keeps its own SQL, migrations and error mapping.

pub mod filter_sql;
pub mod team_sql;

use sori_domain::event::{Event, EventSource};
use sori_domain::team::Seat;
use sori_domain::{FieldType, InboxScope, ProfileField, ProfileKey, Role, User};
use sori_store::{
    CatalogEntry, Channel, Manager, Merge, RevealRecord, Segment, StoreError, UserRow,
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
        member_hash_epoch: r.col("member_hash_epoch")?,
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

/// A manager as the team rules see them (rows of `SELECT id, role_id FROM managers`).
pub fn seat<R: SoriRow>(r: &R) -> Result<Seat, StoreError> {
    Ok(Seat {
        id: r.col("id")?,
        role_id: r.col("role_id")?,
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

/// A page of events in `(createdAt, id)` order from a cursor (exclusive), of one user or of
/// the whole channel: the timeline and the export page the same way, on either backend.
pub async fn events_from<'e, DB>(
    db: impl sqlx::Executor<'e, Database = DB>,
    dialect: filter_sql::Dialect,
    channel_id: i64,
    user_id: Option<&str>,
    cursor: Option<(i64, &str)>,
    limit: u32,
    oldest_first: bool,
) -> Result<Vec<Event>, StoreError>
where
    DB: sqlx::Database,
    DB::Row: SoriRow,
    i64: for<'q> sqlx::Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + Type<DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    use filter_sql::Dialect;
    // SQLite numbers `$n` by first appearance, so it gets `?n`; PostgreSQL needs the
    // cursor's types spelled out and byte order for the ids.
    let (time, id) = match dialect {
        Dialect::Postgres => ("$2::bigint", "$3::text COLLATE \"C\""),
        Dialect::Sqlite => ("?2", "?3"),
    };
    let (channel, limit_p, user_p) = match dialect {
        Dialect::Postgres => ("$1", "$4", "$5"),
        Dialect::Sqlite => ("?1", "?4", "?5"),
    };
    let (cmp, dir) = if oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    // The channel's time index ends with the id, so the cursor seeks to its place; the
    // per-user index ends with `created_at` (ties are sorted when read), so there the
    // cursor's time is also a plain bound to seek to. SQLite is told which index a
    // user's page reads: without statistics it would take the time index, whose order
    // matches the ORDER BY, and walk the whole channel.
    let by_user = user_id.is_some();
    let from = if by_user && matches!(dialect, Dialect::Sqlite) {
        "events INDEXED BY events_by_user"
    } else {
        "events"
    };
    let (user, after) = if by_user {
        (
            format!("AND user_id = {user_p}"),
            format!("created_at {cmp}= {time} AND "),
        )
    } else {
        (String::new(), String::new())
    };
    let cursor_sql = if cursor.is_some() {
        format!("{after}(created_at, id) {cmp} ({time}, {id})")
    } else {
        // Still names the cursor's parameters, so both shapes bind the same arguments.
        format!("{time} IS NULL AND {id} IS NULL")
    };
    let sql = format!(
        "SELECT * FROM {from} WHERE channel_id = {channel} {user} AND {cursor_sql} \
         ORDER BY created_at {dir}, id {dir} LIMIT {limit_p}"
    );
    let (t, id) = cursor.map_or((None, None), |(t, id)| (Some(t), Some(id)));
    let mut q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
        .bind(channel_id)
        .bind(t)
        .bind(id)
        .bind(i64::from(limit));
    if let Some(u) = user_id {
        q = q.bind(u);
    }
    let rows = q
        .fetch_all(db)
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?;
    rows.iter().map(event).collect()
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

/// How far pruning has taken the change log (see `Store::prune_changes`).
pub const PRUNED_MARK: &str = "SELECT v FROM change_log_pruned";

/// `WHERE …` of the users written whole in the range `($1, $2]` of the change sequence.
pub const WHOLE_CHANGES: &str = "WHERE seq > $1 AND seq <= $2 ORDER BY seq";

/// Removals and merges in the range `($1, $2]` (`channel_id, kind, user_id, into_id`, see
/// [`log_change`]).
pub const LOG_CHANGES: &str = "SELECT channel_id, kind, user_id, into_id FROM change_log \
    WHERE seq > $1 AND seq <= $2 ORDER BY seq";
