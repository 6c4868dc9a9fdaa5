//! The group-commit batch writer: user writes, merges and events of one batch in one
//! transaction on a dedicated connection driven synchronously (rusqlite) from the writer
//! shard's own thread. Going through the async driver cost a thread hop per statement,
//! which dominated small batches; here every statement is a direct call into SQLite, so a
//! batch costs what SQLite costs.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use sori_domain::event::NewEvent;
use sori_domain::{FieldType, ProfileField, ProfileKey, Registry, User};
use sori_store::{
    Merge, StoreError, UserKeys, UserOp, UserOpResult, UserRow, plan_user_writes,
    users_in_write_order,
};
use sori_store_sqlx::EventAggregates;

type Result<T> = std::result::Result<T, StoreError>;

/// rusqlite failures: unique violations are conflicts (the writer retries), the rest
/// database errors.
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    {
        return StoreError::Conflict(e.to_string());
    }
    StoreError::Backend(Box::new(e))
}

/// Opens the batch connection on the database file of `url` (`sqlite://path?…`). It never
/// checkpoints the WAL itself (see `checkpoint`).
pub fn open(url: &str) -> Result<Connection> {
    // Its log writes go through the buffering shim (see `walbuf`), which is safe only
    // with `synchronous = FULL`: checked below.
    let conn = if crate::walbuf::register() {
        Connection::open_with_flags_and_vfs(
            path_of(url),
            rusqlite::OpenFlags::default(),
            crate::walbuf::NAME,
        )
    } else {
        tracing::warn!("WAL write buffering unavailable; writing frames one by one");
        Connection::open(path_of(url))
    }
    .map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 1073741824;",
    )
    .map_err(db)?;
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(db)?;
    if synchronous != 2 {
        return Err(StoreError::Corrupt(format!(
            "batch connection runs with synchronous = {synchronous}, not FULL"
        )));
    }
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a connection for one long sequential read (a projection build): a small page
/// cache, since a scan never returns to a page, and filling a large one costs an
/// allocation and a page fault per page read.
pub fn open_scan(url: &str) -> Result<Connection> {
    let conn = open(url)?;
    conn.execute_batch("PRAGMA cache_size = -1024;")
        .map_err(db)?;
    Ok(conn)
}

/// The file path of a database URL (`sqlite://path?…`).
fn path_of(url: &str) -> &str {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split('?').next().unwrap_or(path)
}

/// Opens the read-only connection the change sequence is read on (see `follow`): it reads
/// what was just written, so a modest page cache holds it.
pub fn open_follower(url: &str) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path_of(url),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db)?;
    conn.execute_batch("PRAGMA cache_size = -8192;")
        .map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    Ok(conn)
}

pub(crate) const USER_COLUMNS: &str = "channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile";

pub(crate) fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        channel_id: r.get(0)?,
        id: r.get(1)?,
        member_id: r.get(2)?,
        veil_id: r.get(3)?,
        name: r.get(4)?,
        profile: r.get(5)?,
        tags: r.get(6)?,
        unsubscribe_email: r.get(7)?,
        unsubscribe_texting: r.get(8)?,
        blocked: r.get(9)?,
        city: r.get(10)?,
        country: r.get(11)?,
        language: r.get(12)?,
        has_chat: r.get(13)?,
        has_push_token: r.get(14)?,
        sessions_count: r.get(15)?,
        last_seen_at: r.get(16)?,
        created_at: r.get(17)?,
        updated_at: r.get(18)?,
        web: r.get(19)?,
        mobile: r.get(20)?,
    })
}

fn registry(tx: &Connection, channel_id: i64) -> Result<Registry> {
    let mut st = tx
        .prepare_cached(
            "SELECT key, name, type, sensitive, builtin, created_at FROM profile_fields \
             WHERE channel_id = ?",
        )
        .map_err(db)?;
    let rows = st
        .query_map([channel_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(db)?;
    let mut fields = Vec::new();
    for row in rows {
        let (key, name, ty, sensitive, builtin, created_at) = row.map_err(db)?;
        fields.push(ProfileField {
            key: ProfileKey::parse(&key).map_err(StoreError::Corrupt)?,
            name,
            field_type: FieldType::parse(&ty).map_err(StoreError::Corrupt)?,
            sensitive,
            builtin,
            created_at,
        });
    }
    Ok(Registry::new(fields))
}

/// Keys a batch reads, per channel: ids, member ids, veil ids.
#[derive(Default)]
struct Keys<'a> {
    ids: HashSet<&'a str>,
    members: HashSet<&'a str>,
    veils: HashSet<&'a str>,
}

const BY_ID: &str = "WHERE channel_id = ?1 AND id = ?2";
const BY_MEMBER: &str = "WHERE channel_id = ?1 AND member_id = ?2";
const BY_VEIL: &str = "WHERE channel_id = ?1 AND member_id IS NULL AND veil_id = ?2";

/// The users of one channel that `keys` name (by id, member id or anonymous veil id),
/// read as `columns` and mapped by `map`; one indexed lookup per key.
fn lookup<T>(
    tx: &Connection,
    channel_id: i64,
    keys: &Keys<'_>,
    columns: &str,
    map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (filter, keys) in [
        (BY_ID, &keys.ids),
        (BY_MEMBER, &keys.members),
        (BY_VEIL, &keys.veils),
    ] {
        if keys.is_empty() {
            continue;
        }
        let mut st = tx
            .prepare_cached(&format!("SELECT {columns} FROM users {filter}"))
            .map_err(db)?;
        for key in keys {
            if let Some(row) = st
                .query_row(params![channel_id, key], &map)
                .optional()
                .map_err(db)?
            {
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// Runs one batch in one transaction.
pub fn write_users(conn: &mut Connection, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
    let check = sori_store::RetryCheck::before_planning(ops);
    let (keys, call_keys) = (check.keys(), check.call_keys());
    if keys.is_empty() && call_keys.is_empty() {
        return write_planned(conn, ops);
    }
    // Calls already stored in whole are answered, not written again (see `RetryCheck`).
    // One stored by another process between this read and the write (an import running
    // beside the server) is written as before: its event row is still refused, and a call
    // without events whose id is stored meanwhile sends the batch round again.
    let owners = stored_owners(conn, &keys, &call_keys)?;
    let done = check.retried(&owners);
    match sori_store::to_write(ops, &done) {
        None => write_planned(conn, ops),
        Some(rest) if rest.is_empty() => sori_store::with_retries(done, Vec::new()),
        Some(rest) => {
            let written = write_planned(conn, &rest)?;
            sori_store::with_retries(done, written)
        }
    }
}

/// The users owning the stored events of these `messageId`s (`keys`), and the users the
/// stored calls without events were applied to (`call_keys`), by channel and `messageId`.
fn stored_owners(
    conn: &Connection,
    keys: &[(i64, &str)],
    call_keys: &[(i64, &str)],
) -> Result<sori_store::StoredOwners> {
    let mut owners = sori_store::StoredOwners::default();
    for (sql, keys, found) in [
        (
            "SELECT user_id FROM events WHERE channel_id = ?1 AND message_key = ?2",
            keys,
            &mut owners.events,
        ),
        (
            "SELECT user_id FROM call_keys WHERE channel_id = ?1 AND message_key = ?2",
            call_keys,
            &mut owners.calls,
        ),
    ] {
        if keys.is_empty() {
            continue;
        }
        let mut st = conn.prepare_cached(sql).map_err(db)?;
        for &(ch, id) in keys {
            if let Some(owner) = st
                .query_row(params![ch, &message_key(id)[..]], |r| r.get::<_, String>(0))
                .optional()
                .map_err(db)?
            {
                found.insert((ch, id.to_owned()), owner);
            }
        }
    }
    Ok(owners)
}

/// Writes a batch: one transaction, planned by `plan_user_writes`.
fn write_planned(conn: &mut Connection, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
    let mut full: BTreeMap<i64, Keys<'_>> = BTreeMap::new();
    let mut light_keys: BTreeMap<i64, Keys<'_>> = BTreeMap::new();
    for op in ops {
        full.entry(op.channel_id).or_default();
        let k = if op.is_light() {
            light_keys.entry(op.channel_id).or_default()
        } else {
            full.entry(op.channel_id).or_default()
        };
        if let Some(id) = op.id_key() {
            k.ids.insert(id);
        }
        if let Some(m) = op.member_key() {
            k.members.insert(m);
        }
        if let Some(v) = op.veil_key() {
            k.veils.insert(v);
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let mut registries = HashMap::new();
    let mut loaded: Vec<(i64, User)> = Vec::new();
    for (ch, k) in &full {
        registries.insert(*ch, registry(&tx, *ch)?);
        for row in lookup(&tx, *ch, k, USER_COLUMNS, user_row)? {
            loaded.push((*ch, row.into_user()?));
        }
    }
    let mut light = Vec::new();
    // Every events-only write addressed a member, and every one was found: the usual
    // case, in which no write creates a member.
    let mut members_found = true;
    for (ch, k) in &light_keys {
        let found = lookup(&tx, *ch, k, "id, member_id, veil_id", |r| {
            Ok(UserKeys {
                id: r.get(0)?,
                member_id: r.get(1)?,
                veil_id: r.get(2)?,
            })
        })?;
        members_found &= k.ids.is_empty() && k.veils.is_empty() && found.len() == k.members.len();
        light.extend(found.into_iter().map(|keys| (*ch, keys)));
    }
    // A write that would create a member for a `messageId` stored already (see
    // `sori_store::RetryCheck::creations`) is answered as a retry, and the rest planned
    // again.
    let check = (!members_found).then(|| sori_store::RetryCheck::creations(ops, &loaded, &light));
    let keys = check.as_ref().map(|c| c.keys()).unwrap_or_default();
    let retries = match (check, keys.is_empty()) {
        (Some(check), false) => {
            // (Creations are events-only writes: they carry no call keys.)
            let owners = stored_owners(&tx, &keys, &[])?;
            let done = check.retried(&owners);
            sori_store::to_write(ops, &done).map(|rest| (done, rest))
        }
        _ => None,
    };
    if let Some((done, rest)) = retries {
        // Nothing is written yet: the transaction ends without writing.
        drop(tx);
        let written = match rest.is_empty() {
            true => Vec::new(),
            false => write_planned(conn, &rest)?,
        };
        return sori_store::with_retries(done, written);
    }

    let mut plan = plan_user_writes(ops, loaded, light, registries);
    if !plan.new_fields.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT INTO profile_fields (channel_id, key, name, type, sensitive, builtin, \
                 created_at) VALUES (?, ?, ?, ?, 0, 0, ?) ON CONFLICT (channel_id, key) DO NOTHING",
            )
            .map_err(db)?;
        for (ch, f) in &plan.new_fields {
            st.execute(params![
                ch,
                f.key.as_str(),
                f.name,
                f.field_type.as_str(),
                f.created_at
            ])
            .map_err(db)?;
        }
    }
    // A change number only for what carries one (whole rows, merges): events are
    // followed by rowid, so an events-only batch (most of ingestion) leaves the counter's
    // page alone. The transaction holds the write lock since it began, so numbers are
    // still handed out in commit order.
    let seq = (!plan.users.is_empty() || !plan.merges.is_empty())
        .then(|| next_seq(&tx))
        .transpose()?;
    if let Some(seq) = seq {
        for m in &plan.merges {
            merge(&tx, m, seq)?;
        }
    }
    let duplicates = if plan.events.is_empty() {
        Default::default()
    } else {
        insert_events(&tx, &plan.events)?
    };
    plan.account_duplicates(ops, &duplicates);
    if plan.raced(ops) || !insert_call_keys(&tx, &plan.call_keys)? {
        // Dropping the transaction rolls it back; the writer retries the batch.
        return Err(StoreError::Transient(
            "another process stored the same Segment call first".into(),
        ));
    }
    if !plan.light.is_empty() {
        // The change number stays: followers find these users through their new events
        // (see `follow`), and the seq index is left alone.
        let mut st = tx
            .prepare_cached(
                "UPDATE users SET \
                 updated_at = CASE WHEN ?3 > ifnull(last_seen_at, -1) OR ?4 < created_at \
                     THEN max(updated_at, ?5) ELSE updated_at END, \
                 last_seen_at = max(ifnull(last_seen_at, ?3), ?3), \
                 created_at = min(created_at, ?4) \
                 WHERE channel_id = ?1 AND id = ?2",
            )
            .map_err(db)?;
        for ((ch, id), (latest, earliest, now)) in &plan.light {
            st.execute(params![ch, id, latest, earliest, now])
                .map_err(db)?;
        }
    }
    if let Some(seq) = seq
        && !plan.users.is_empty()
    {
        upsert_users(&tx, seq, users_in_write_order(&plan.users).into_iter())?;
    }
    tx.commit().map_err(db)?;
    Ok(plan.results)
}

/// Stores the `messageId`s of the batch's calls without events (see
/// `sori_store::WritePlan::call_keys`); false when one was stored already, by another
/// transaction since the batch read them (the batch is then written again).
fn insert_call_keys(tx: &Connection, keys: &[(i64, &str, String, i64)]) -> Result<bool> {
    if keys.is_empty() {
        return Ok(true);
    }
    let mut st = tx
        .prepare_cached(
            "INSERT INTO call_keys (channel_id, message_key, user_id, created_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .map_err(db)?;
    for (ch, id, user, at) in keys {
        if st
            .execute(params![ch, &message_key(id)[..], user, at])
            .map_err(db)?
            == 0
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes the next change number; the write transaction holds the database's write lock,
/// so numbers are handed out in commit order.
pub fn next_seq(tx: &Connection) -> Result<i64> {
    tx.query_row("UPDATE change_seq SET v = v + 1 RETURNING v", [], |r| {
        r.get(0)
    })
    .map_err(db)
}

/// Inserts or replaces whole user rows.
fn upsert_users<'u>(
    tx: &Connection,
    seq: i64,
    users: impl Iterator<Item = (i64, &'u User)>,
) -> Result<()> {
    let mut st = tx
        .prepare_cached(&format!(
            "INSERT INTO users ({USER_COLUMNS}, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) \
             ON CONFLICT (channel_id, id) DO UPDATE SET member_id = excluded.member_id, \
             veil_id = excluded.veil_id, name = excluded.name, profile = excluded.profile, \
             tags = excluded.tags, unsubscribe_email = excluded.unsubscribe_email, \
             unsubscribe_texting = excluded.unsubscribe_texting, blocked = excluded.blocked, \
             city = excluded.city, country = excluded.country, language = excluded.language, \
             has_chat = excluded.has_chat, has_push_token = excluded.has_push_token, \
             sessions_count = excluded.sessions_count, last_seen_at = excluded.last_seen_at, \
             created_at = excluded.created_at, updated_at = excluded.updated_at, \
             web = excluded.web, mobile = excluded.mobile, seq = excluded.seq"
        ))
        .map_err(db)?;
    for (ch, u) in users {
        let r = UserRow::from_user(ch, u);
        st.execute(params![
            r.channel_id,
            r.id,
            r.member_id,
            r.veil_id,
            r.name,
            r.profile,
            r.tags,
            r.unsubscribe_email,
            r.unsubscribe_texting,
            r.blocked,
            r.city,
            r.country,
            r.language,
            r.has_chat,
            r.has_push_token,
            r.sessions_count,
            r.last_seen_at,
            r.created_at,
            r.updated_at,
            r.web,
            r.mobile,
            seq
        ])
        .map_err(db)?;
    }
    Ok(())
}

/// Loads users and events as they are (imports of generated or migrated data), in one
/// transaction; events with a known id are skipped.
pub fn bulk_load(
    conn: &mut Connection,
    channel_id: i64,
    users: &[User],
    events: &[(String, NewEvent)],
) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let seq = next_seq(&tx)?;
    upsert_users(&tx, seq, users.iter().map(|u| (channel_id, u)))?;
    let rows: Vec<(i64, String, &NewEvent)> = events
        .iter()
        .map(|(user, e)| (channel_id, user.clone(), e))
        .collect();
    insert_events(&tx, &rows)?;
    tx.commit().map_err(db)
}

/// Moves an anonymous user's events and counts to the member, deletes it, records the merge.
fn merge(tx: &Connection, m: &Merge, seq: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO change_log (channel_id, seq, kind, user_id, into_id, at) \
         VALUES (?, ?, 'merge', ?, ?, ?)",
    )
    .and_then(|mut st| st.execute(params![m.channel_id, seq, m.from, m.into, m.at]))
    .map_err(db)?;
    let stmts: [&str; 6] = [
        "UPDATE events SET user_id = ?3 WHERE channel_id = ?1 AND user_id = ?2",
        "UPDATE call_keys SET user_id = ?3 WHERE channel_id = ?1 AND user_id = ?2",
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
        let mut st = tx.prepare_cached(sql).map_err(db)?;
        let n = st.parameter_count();
        let all = params![m.channel_id, m.from, m.into, m.id, m.at];
        st.execute(&all[..n]).map_err(db)?;
    }
    Ok(())
}

/// What the dedupe index holds for a `messageId`: the first 16 bytes of its SHA-256, a
/// third of a typical id's size, so each of the index's random inserts is cheaper.
pub(crate) fn message_key(message_id: &str) -> [u8; 16] {
    let digest = Sha256::digest(message_id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Appends a batch's events (a repeated `messageId` is skipped) and adds what was really
/// stored to the catalog; returns the ids of the skipped ones.
fn insert_events(tx: &Connection, events: &[(i64, String, &NewEvent)]) -> Result<HashSet<String>> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO events (channel_id, user_id, id, name, property, page, source, \
             message_id, created_at, message_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .map_err(db)?;
    let mut agg = EventAggregates::default();
    for (ch, user, e) in events {
        let key = e.message_id.as_deref().map(message_key);
        let n = st
            .execute(params![
                ch,
                user,
                e.id,
                e.name,
                e.property_json,
                e.page,
                e.source.as_str(),
                e.message_id,
                e.created_at,
                key.as_ref().map(|k| &k[..])
            ])
            .map_err(db)?;
        if n == 1 {
            agg.add(*ch, &e.name, e.created_at, e.is_revenue());
        } else {
            agg.duplicates.insert(e.id.clone());
        }
    }
    let mut st = tx
        .prepare_cached(
            "INSERT INTO event_catalog (channel_id, name, count, first_seen_at, last_seen_at, \
             revenue) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id, name) DO UPDATE \
             SET count = count + excluded.count, \
             first_seen_at = min(first_seen_at, excluded.first_seen_at), \
             last_seen_at = max(last_seen_at, excluded.last_seen_at), \
             revenue = max(revenue, excluded.revenue)",
        )
        .map_err(db)?;
    for ((ch, name), (count, first, last, revenue)) in agg.catalog {
        st.execute(params![ch, name, count, first, last, revenue])
            .map_err(db)?;
    }
    Ok(agg.duplicates)
}

/// Every user id of a channel, in table order (the order of [`scan_users`]).
pub fn user_ids(conn: &Connection, channel_id: i64) -> Result<Vec<String>> {
    let mut st = conn
        .prepare("SELECT id FROM users NOT INDEXED WHERE channel_id = ?")
        .map_err(db)?;
    let ids = st
        .query_map([channel_id], |r| r.get(0))
        .map_err(db)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db)?;
    Ok(ids)
}

/// Streams part `part` of `parts` of a channel's users (audience projection build). Parts
/// are rowid ranges, each a plain table scan: going through the channel index would visit
/// the rows in random order.
pub fn scan_users(
    conn: &Connection,
    channel_id: i64,
    part: u32,
    parts: u32,
    f: &mut (dyn FnMut(i64, User) + Send),
) -> Result<()> {
    let (from, to) = rowid_part(conn, "users", i64::MAX, part, parts)?;
    let mut st = conn
        .prepare(&format!(
            "SELECT {USER_COLUMNS}, seq FROM users NOT INDEXED \
             WHERE rowid >= ? AND rowid < ? AND channel_id = ?"
        ))
        .map_err(db)?;
    let mut rows = st.query(params![from, to, channel_id]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let seq: i64 = r.get(21).map_err(db)?;
        f(seq, user_row(r).map_err(db)?.into_user()?);
    }
    Ok(())
}

/// The rowid range `[from, to)` of part `part` of `parts` of a table, up to rowid `upto`.
fn rowid_part(
    conn: &Connection,
    table: &str,
    upto: i64,
    part: u32,
    parts: u32,
) -> Result<(i64, i64)> {
    // Two bare min/max queries: SQLite answers each from the end of the rowid tree, while
    // any expression around them would scan the whole table.
    let bound = |f: &str| -> Result<Option<i64>> {
        conn.query_row(&format!("SELECT {f}(rowid) FROM {table}"), [], |r| r.get(0))
            .map_err(db)
    };
    let lo = bound("min")?.unwrap_or(0);
    let hi = bound("max")?.map_or(-1, |m| m.min(upto));
    let span = (hi - lo + 1).max(0);
    let parts = i64::from(parts.max(1));
    let from = lo + span * i64::from(part) / parts;
    let to = lo + span * (i64::from(part) + 1) / parts;
    Ok((from, to))
}

/// Streams part `part` of `parts` of a channel's events as (time, user, name), borrowing
/// the strings. Parts are rowid ranges, each a plain table scan: going through the
/// channel index would visit the rows in random order.
pub fn scan_events(
    conn: &Connection,
    channel_id: i64,
    upto: i64,
    part: u32,
    parts: u32,
    f: &mut (dyn for<'s> FnMut(i64, &'s str, &'s str) + Send),
) -> Result<()> {
    let (from, to) = rowid_part(conn, "events", upto, part, parts)?;
    let mut st = conn
        .prepare(
            "SELECT created_at, user_id, name FROM events NOT INDEXED \
             WHERE rowid >= ? AND rowid < ? AND channel_id = ?",
        )
        .map_err(db)?;
    let mut rows = st.query(params![from, to, channel_id]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let at: i64 = r.get(0).map_err(db)?;
        let corrupt = |e: rusqlite::types::FromSqlError| StoreError::Corrupt(e.to_string());
        let user = r.get_ref(1).map_err(db)?.as_str().map_err(corrupt)?;
        let name = r.get_ref(2).map_err(db)?.as_str().map_err(corrupt)?;
        f(at, user, name);
    }
    Ok(())
}
