//! The batch write path: a writer shard's batch of user ops in one transaction of two round
//! trips (three with events). The first (`BEGIN`, change number, field registries, the
//! addressed rows locked `FOR UPDATE`) gives the planner what it needs; the last writes
//! everything the plan produced and commits. Statements and their lock order are the same as one statement per
//! round trip would be; only the sending differs (see `script`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sori_domain::event::NewEvent;
use sori_domain::{ProfileField, Registry, User};
use sori_store::{StoreError, UserKeys, UserOp, UserOpResult, UserRow, plan_user_writes};
use sori_store_sqlx::{EventAggregates, aggregate, field as field_from_row, user as user_from_row};
use std::sync::{Mutex, PoisonError};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::script::{Lit, Outcome, Script, bind};
use crate::{
    CATALOG_UPSERT, CHANGE_LOCK, LIGHT_FOR_UPDATE, LIGHT_MEMBERS_FOR_UPDATE, MEMBERS_FOR_UPDATE,
    USERS_FOR_UPDATE, backend, catalog_args,
};

type Result<T> = std::result::Result<T, StoreError>;

/// The shared change lock, taken before the change number and any row lock (see
/// `next_seq`), in a statement of its own: the registries are then read with a snapshot
/// taken once the lock is held. Read in the lock's statement, they were as they stood
/// before any wait for it, and a batch that waited for a profile field's deletion (which
/// holds the lock exclusively) wrote the deleted key back into profiles.
const CHANGE_LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// Locks the users a batch addresses in channel `$1` (ids `$2`, member ids `$3`, veil ids
/// `$4`, as the lookups take them) in id order.
const LOCK_IN_ID_ORDER: &str = "SELECT 1 FROM users WHERE channel_id = $1 \
     AND (id = ANY($2::text[]) OR member_id = ANY($3::text[]) \
     OR (member_id IS NULL AND veil_id = ANY($4::text[]))) ORDER BY id FOR UPDATE";

/// The change number, with the field registries of the batch's channels.
const SEQ_AND_FIELDS: &str = "WITH s AS MATERIALIZED (SELECT nextval('change_seq') AS seq) \
     SELECT s.seq, f.channel_id, f.key, f.name, f.type, f.sensitive, f.builtin, \
     f.created_at FROM s LEFT JOIN profile_fields f ON f.channel_id = ANY($1::bigint[])";

/// Moves `lastSeenAt` later and `createdAt` earlier for events-only writes; `updatedAt`
/// moves when either does (as on the full path: both are visible fields). The change
/// number stays (followers find these users through their new events), so only unindexed
/// columns change and the update can stay on the row's page (HOT; migration 8).
const LIGHT_ACTIVITY: &str = "UPDATE users SET \
    updated_at = CASE WHEN v.latest > COALESCE(users.last_seen_at, -1) \
        OR v.earliest < users.created_at THEN GREATEST(users.updated_at, v.now) ELSE users.updated_at END, \
    last_seen_at = GREATEST(COALESCE(users.last_seen_at, v.latest), v.latest), \
    created_at = LEAST(users.created_at, v.earliest) \
    FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
    AS v(ch, id, latest, earliest, now) \
    WHERE users.channel_id = v.ch AND users.id = v.id";

const USER_UPSERT: &str = "INSERT INTO users (channel_id, id, member_id, veil_id, name, profile, \
    tags, unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile, seq) \
    SELECT channel_id, id, member_id, veil_id, name, profile::jsonb, tags::jsonb, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web::jsonb, \
    mobile::jsonb, $22::bigint FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::text[], $8::bool[], $9::bool[], $10::bool[], $11::text[], $12::text[], $13::text[], \
    $14::bool[], $15::bool[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], \
    $20::text[], $21::text[]) AS t (channel_id, id, member_id, veil_id, name, profile, tags, \
    unsubscribe_email, unsubscribe_texting, blocked, city, country, language, has_chat, \
    has_push_token, sessions_count, last_seen_at, created_at, updated_at, web, mobile) \
    ON CONFLICT (channel_id, id) DO UPDATE SET member_id = EXCLUDED.member_id, \
    veil_id = EXCLUDED.veil_id, name = EXCLUDED.name, profile = EXCLUDED.profile, \
    tags = EXCLUDED.tags, unsubscribe_email = EXCLUDED.unsubscribe_email, \
    unsubscribe_texting = EXCLUDED.unsubscribe_texting, blocked = EXCLUDED.blocked, \
    city = EXCLUDED.city, country = EXCLUDED.country, language = EXCLUDED.language, \
    has_chat = EXCLUDED.has_chat, has_push_token = EXCLUDED.has_push_token, \
    sessions_count = EXCLUDED.sessions_count, last_seen_at = EXCLUDED.last_seen_at, \
    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
    web = EXCLUDED.web, mobile = EXCLUDED.mobile, seq = EXCLUDED.seq";

/// The dedupe key `message_key` is a generated column (migration 9).
const EVENT_INSERT: &str = "INSERT INTO events (channel_id, user_id, id, name, property, page, \
    source, message_id, created_at, seq) SELECT u.*, $10::bigint FROM UNNEST($1::bigint[], \
    $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
    $9::bigint[]) AS u ON CONFLICT DO NOTHING RETURNING id";

const FIELDS_INSERT: &str = "INSERT INTO profile_fields (channel_id, key, name, type, sensitive, \
    builtin, created_at) SELECT ch, k, n, ty, FALSE, FALSE, at \
    FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
    AS t (ch, k, n, ty, at) ON CONFLICT (channel_id, key) DO NOTHING";

/// A merge: the anonymous user's events and counts move to the member, the anonymous row
/// goes, the merge is recorded (arguments: channel, from, into, merge id, time, change).
const MERGE: [&str; 7] = [
    "INSERT INTO change_log (channel_id, seq, kind, user_id, into_id, at) \
     VALUES ($1, $6::bigint, 'merge', $2, $3, $5::bigint)",
    "UPDATE events SET user_id = $3 WHERE channel_id = $1 AND user_id = $2",
    "UPDATE call_keys SET user_id = $3 WHERE channel_id = $1 AND user_id = $2",
    "INSERT INTO user_event_stats (channel_id, user_id, name, count, first_at, last_at) \
     SELECT channel_id, $3, name, count, first_at, last_at FROM user_event_stats \
     WHERE channel_id = $1 AND user_id = $2 \
     ON CONFLICT (channel_id, user_id, name) DO UPDATE \
     SET count = user_event_stats.count + excluded.count, \
     first_at = LEAST(user_event_stats.first_at, excluded.first_at), \
     last_at = GREATEST(user_event_stats.last_at, excluded.last_at)",
    "DELETE FROM user_event_stats WHERE channel_id = $1 AND user_id = $2",
    "DELETE FROM users WHERE channel_id = $1 AND id = $2",
    "INSERT INTO user_merges (channel_id, id, from_user_id, into_user_id, merged_at) \
     VALUES ($1, $4, $2, $3, $5::bigint)",
];

/// The statements every batch runs, prepared on a connection at its first batch so
/// PostgreSQL parses and analyzes each once: sent as SQL text, parsing, analyzing and
/// planning them took a quarter of the machine under upsert load. (Event inserts go
/// separately, see `write_users`.) Lookups by several key kinds and joins keep custom
/// plans (a generic plan made before the table's first ANALYZE scans the whole channel;
/// all-generic plans measured 3,700 against 12,000 single events/s); the change number,
/// the member-only lookups, the event, catalog and user inserts, which have one sensible
/// plan whatever the data, run generic (see `GENERIC_PLANS`).
const PREPARED: [(&str, &str); 8] = [
    ("sori_seq", SEQ_AND_FIELDS),
    ("sori_users", USERS_FOR_UPDATE),
    ("sori_members", MEMBERS_FOR_UPDATE),
    ("sori_light_users", LIGHT_FOR_UPDATE),
    ("sori_light_members", LIGHT_MEMBERS_FOR_UPDATE),
    ("sori_light", LIGHT_ACTIVITY),
    ("sori_upsert", USER_UPSERT),
    ("sori_catalog", CATALOG_UPSERT),
];

/// Sessions force custom plans (lookups by arrays need them); a batch switches to cached
/// generic plans around the statements whose plan cannot go wrong, to skip planning.
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
/// Back to planning each statement for its arguments.
const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// `PREPARE`s the statements of `PREPARED` a connection lacks (all of them, unless an
/// earlier attempt stopped halfway).
async fn prepare(conn: &mut PgConnection) -> Result<()> {
    let have: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pg_prepared_statements WHERE name LIKE 'sori%'")
            .fetch_all(&mut *conn)
            .await
            .map_err(backend)?;
    let sql: String = PREPARED
        .iter()
        .filter(|(name, _)| !have.iter().any(|h| h == name))
        .map(|(name, sql)| format!("PREPARE {name} AS {sql};\n"))
        .collect();
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Whether `e` says a prepared statement is missing: the connection has not run a batch yet.
fn unprepared(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("26000"))
}

/// The keys a batch addresses in one channel.
#[derive(Default)]
struct ChannelKeys<'a> {
    ids: BTreeSet<&'a str>,
    members: BTreeSet<&'a str>,
    veils: BTreeSet<&'a str>,
}

impl ChannelKeys<'_> {
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.members.is_empty() && self.veils.is_empty()
    }

    /// Appends the lookup of these keys to `read` and returns its statement's place: by
    /// member ids only, `by_member` (one index probe per key, on its cached generic plan);
    /// otherwise `by_any`, planned for its arrays.
    fn lookup(
        &self,
        read: &mut Script,
        channel_id: i64,
        by_member: &'static str,
        by_any: &'static str,
    ) -> Result<usize> {
        if self.ids.is_empty() && self.veils.is_empty() {
            read.raw(GENERIC_PLANS);
            let [channel, _, members, _] = self.args(channel_id);
            read.exec(by_member, &[channel, members])
        } else {
            read.raw(CUSTOM_PLANS);
            read.exec(by_any, &self.args(channel_id))
        }
    }

    fn args(&self, channel_id: i64) -> [Lit<'_>; 4] {
        fn texts<'k>(s: &BTreeSet<&'k str>) -> Lit<'k> {
            Lit::Texts(s.iter().map(|k| Some(*k)).collect())
        }
        [
            Lit::Int(channel_id),
            texts(&self.ids),
            texts(&self.members),
            texts(&self.veils),
        ]
    }
}

/// Connections kept for batch writes, apart from the pool: the pool pings every connection
/// handed back to it (a round trip per batch), and a connection kept here also keeps the
/// batch statements prepared. There are at most as many as batches run at once (writer
/// shards × overlap), on top of the pool's.
pub(crate) struct Writers {
    opts: PgConnectOptions,
    spare: Mutex<Vec<PgConnection>>,
}

impl Writers {
    /// Connections will be opened with `opts`, as they are first needed.
    pub(crate) fn new(opts: PgConnectOptions) -> Self {
        Self {
            opts,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A connection for one batch.
    async fn take(&self) -> Result<OpenTx<'_>> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match spare {
            Some(c) => c,
            None => PgConnection::connect_with(&self.opts)
                .await
                .map_err(backend)?,
        };
        Ok(OpenTx {
            conn: Some(conn),
            home: self,
        })
    }
}

/// A batch's connection, inside a transaction the driver does not track (it began in a
/// script). Dropped before `release` — an error, or a cancelled batch — it is closed rather
/// than kept, so no later batch inherits the open transaction; PostgreSQL rolls back a
/// transaction whose connection ends.
struct OpenTx<'a> {
    conn: Option<PgConnection>,
    home: &'a Writers,
}

impl OpenTx<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("open until released")
    }

    /// Keeps the connection for the next batch: its transaction has ended.
    fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.home
                .spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(c);
        }
    }

    /// Ends the transaction after a failed statement and returns `e`.
    async fn abort(self, e: StoreError) -> StoreError {
        // A connection whose rollback failed is closed, not kept (see `roll_back`).
        let _ = self.roll_back().await;
        e
    }

    /// Ends the transaction without writing and keeps the connection; one whose rollback
    /// fails is dropped, which closes it (as is one already given up, see `begin`).
    async fn roll_back(mut self) -> Result<()> {
        if let Some(c) = self.conn.as_mut() {
            sqlx::raw_sql("ROLLBACK")
                .execute(c)
                .await
                .map_err(backend)?;
            self.release();
        }
        Ok(())
    }

    /// Runs the batch's first script, preparing the batch statements on this connection
    /// first if it has never run a batch. A connection whose preparation failed is closed
    /// (statements prepared before the failure would stay, and the check would not run
    /// again). Nothing is written yet, so a broken connection (a kept connection the server
    /// dropped, after a restart) is a `Transient` failure the writer retries on another.
    async fn begin(&mut self, read: &Script) -> Result<Vec<Outcome>> {
        let first = match read.run(self.conn()).await {
            Err(e) if unprepared(&e) => {
                sqlx::raw_sql("ROLLBACK")
                    .execute(self.conn())
                    .await
                    .map_err(backend)?;
                if let Err(e) = prepare(self.conn()).await {
                    self.conn = None;
                    return Err(e);
                }
                read.run(self.conn()).await
            }
            r => r,
        };
        first.map_err(|e| match e {
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => {
                self.conn = None;
                StoreError::Transient(format!("batch connection lost: {e}"))
            }
            e => backend(e),
        })
    }
}

/// The key of `messageId` `k.id` as SQL: the first 16 bytes of its SHA-256, computed as
/// the generated `events.message_key` is (migration 9), for events and calls alike.
macro_rules! message_key_of_k_id {
    () => {
        "substring(sha256(decode(replace(k.id, '\\', '\\\\'), 'escape')) FROM 1 FOR 16)"
    };
}

/// Owners of stored `messageId`s in `$table` (`events` or `call_keys`, told apart by
/// `$call`), for the keys in the arrays `$ch` and `$id`: recognising whole retries (see
/// `sori_store::RetryCheck`).
macro_rules! stored_owners_in {
    ($call:literal, $table:literal, $ch:literal, $id:literal) => {
        concat!(
            "SELECT ",
            $call,
            ", k.ch, k.id, t.user_id FROM UNNEST(",
            $ch,
            "::bigint[], ",
            $id,
            "::text[]) AS k(ch, id) JOIN ",
            $table,
            " t ON t.channel_id = k.ch AND t.message_key = ",
            message_key_of_k_id!()
        )
    };
}

/// Owners of stored events (`$1`, `$2`) and the users stored calls without events (`$3`,
/// `$4`; see `sori_store::UserOp::message_id`) were applied to, in one round trip.
const STORED_OWNERS: &str = concat!(
    stored_owners_in!("false", "events", "$1", "$2"),
    " UNION ALL ",
    stored_owners_in!("true", "call_keys", "$3", "$4")
);

/// Stores the `messageId`s of a batch's calls without events (see
/// `sori_store::WritePlan::call_keys`), in the commit's round trip. One stored by another
/// transaction since the batch read them fails the unique index: the batch is written
/// again (a `Conflict` is retried), and that read finds it.
const INSERT_CALL_KEYS: &str = concat!(
    "INSERT INTO call_keys (channel_id, message_key, user_id, created_at) SELECT k.ch, ",
    message_key_of_k_id!(),
    ", k.u, k.at FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
     AS k(ch, id, u, at)"
);

/// Writes a batch of user ops (see the module documentation). Calls already stored in
/// whole (see `sori_store::RetryCheck`) are answered, not written again; one stored by
/// another batch between the read and the write is written as before (its event row is
/// still refused), except a call without events, whose stored id sends the batch round
/// again.
pub(crate) async fn write_users(writers: &Writers, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
    let check = sori_store::RetryCheck::before_planning(ops);
    let (keys, call_keys) = (check.keys(), check.call_keys());
    if keys.is_empty() && call_keys.is_empty() {
        return write_planned(writers, ops).await;
    }
    let mut tx = writers.take().await?;
    let owners = match stored_owners(tx.conn(), &keys, &call_keys).await {
        Ok(owners) => owners,
        Err(e) => return Err(tx.abort(e).await),
    };
    tx.release();
    let done = check.retried(&owners);
    match sori_store::to_write(ops, &done) {
        None => write_planned(writers, ops).await,
        Some(rest) if rest.is_empty() => sori_store::with_retries(done, Vec::new()),
        Some(rest) => {
            let written = write_planned(writers, &rest).await?;
            sori_store::with_retries(done, written)
        }
    }
}

/// The users owning the stored events of these `messageId`s (`keys`), and the users the
/// stored calls without events were applied to (`call_keys`), by channel and `messageId`.
async fn stored_owners(
    conn: &mut PgConnection,
    keys: &[(i64, &str)],
    call_keys: &[(i64, &str)],
) -> Result<sori_store::StoredOwners> {
    let mut owners = sori_store::StoredOwners::default();
    let rows: Vec<(bool, i64, String, String)> = sqlx::query_as(STORED_OWNERS)
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(call_keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(call_keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    for (call, ch, id, owner) in rows {
        let found = if call {
            &mut owners.calls
        } else {
            &mut owners.events
        };
        found.insert((ch, id), owner);
    }
    Ok(owners)
}

/// Writes a batch: two round trips and the events' insert, planned by `plan_user_writes`.
async fn write_planned(writers: &Writers, ops: &[UserOp]) -> Result<Vec<UserOpResult>> {
    // Rows are locked channel by channel in ascending order, within a channel in id order
    // (member-only lookups too, see `by_members_in_id_order`); a batch with both whole-row
    // and light ops locks all its rows so first (`LOCK_IN_ID_ORDER`), so batches never
    // meet in opposite orders. (A deadlock PostgreSQL breaks is still retried.)
    let mut keys: BTreeMap<i64, ChannelKeys<'_>> = BTreeMap::new();
    let mut light_keys: BTreeMap<i64, ChannelKeys<'_>> = BTreeMap::new();
    for op in ops {
        keys.entry(op.channel_id).or_default();
        let k = if op.is_light() {
            light_keys.entry(op.channel_id).or_default()
        } else {
            keys.entry(op.channel_id).or_default()
        };
        // PostgreSQL text cannot hold U+0000, so no stored row has such a key; sending one
        // would fail the whole batch, while leaving it out lets the planner answer that op.
        if let Some(id) = op.id_key().filter(|s| !s.contains('\0')) {
            k.ids.insert(id);
        }
        if let Some(m) = op.member_key().filter(|s| !s.contains('\0')) {
            k.members.insert(m);
        }
        if let Some(v) = op.veil_key().filter(|s| !s.contains('\0')) {
            k.veils.insert(v);
        }
    }
    let channel_ids: Vec<i64> = keys.keys().copied().collect();

    // Round trip 1: begin, number, registries, locked rows.
    let mut read = Script::default();
    read.raw("BEGIN");
    read.raw(GENERIC_PLANS);
    read.push(CHANGE_LOCK_SHARED, &[Lit::Int(CHANGE_LOCK)])?;
    let fields_at = read.exec(
        "sori_seq",
        &[Lit::Ints(channel_ids.iter().map(|c| Some(*c)).collect())],
    )?;
    // A batch that writes some users whole and others events-only would lock them in two
    // runs (whole rows, then the others), and two batches (on two nodes) holding the same
    // two users in opposite roles would each wait for the other until PostgreSQL broke
    // the deadlock a second later. Such a batch locks all of them first, channel by
    // channel in id order, as every other batch's single run does.
    if keys.values().any(|k| !k.is_empty()) && !light_keys.is_empty() {
        read.raw(CUSTOM_PLANS);
        let mut all: BTreeMap<i64, ChannelKeys<'_>> = BTreeMap::new();
        for (ch, k) in keys.iter().chain(&light_keys) {
            let into = all.entry(*ch).or_default();
            into.ids.extend(&k.ids);
            into.members.extend(&k.members);
            into.veils.extend(&k.veils);
        }
        for (ch, k) in all.iter().filter(|(_, k)| !k.is_empty()) {
            read.push(LOCK_IN_ID_ORDER, &k.args(*ch))?;
        }
    }
    // Channels in ascending order, each on the plan its lookup can use.
    let mut lookups = Vec::new();
    for (ch, k) in keys.iter().filter(|(_, k)| !k.is_empty()) {
        lookups.push((*ch, k.lookup(&mut read, *ch, "sori_members", "sori_users")?));
    }
    let mut light_lookups = Vec::new();
    for (ch, k) in &light_keys {
        let at = k.lookup(&mut read, *ch, "sori_light_members", "sori_light_users")?;
        light_lookups.push((*ch, at));
    }
    // What follows in the transaction until the activity update (new fields, the event
    // insert) are `UNNEST` inserts with one plan whatever the data: generic.
    read.raw(GENERIC_PLANS);
    let mut tx = writers.take().await?;
    let got = match tx.begin(&read).await {
        Ok(got) => got,
        Err(e) => return Err(tx.abort(e).await),
    };

    let field_rows = &got[fields_at].rows;
    let seq: i64 = field_rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("no change number".into()))?
        .try_get("seq")
        .map_err(backend)?;
    let mut fields: HashMap<i64, Vec<ProfileField>> =
        channel_ids.iter().map(|ch| (*ch, Vec::new())).collect();
    for r in field_rows {
        if let Some(ch) = r.try_get::<Option<i64>, _>("channel_id").map_err(backend)? {
            fields.entry(ch).or_default().push(field_from_row(r)?);
        }
    }
    let registries = fields
        .into_iter()
        .map(|(ch, f)| (ch, Registry::new(f)))
        .collect();
    let mut loaded = Vec::new();
    for (ch, at) in lookups {
        for r in &got[at].rows {
            loaded.push((ch, user_from_row(r)?));
        }
    }
    let mut light = Vec::new();
    // Every events-only write addressed a member, and every one was found: the usual
    // case, in which no write creates a member.
    let mut members_found = true;
    for (ch, at) in light_lookups {
        members_found &= light_keys.get(&ch).is_some_and(|k| {
            k.ids.is_empty() && k.veils.is_empty() && got[at].rows.len() == k.members.len()
        });
        for r in &got[at].rows {
            light.push((
                ch,
                UserKeys {
                    id: r.try_get("id").map_err(backend)?,
                    member_id: r.try_get("member_id").map_err(backend)?,
                    veil_id: r.try_get("veil_id").map_err(backend)?,
                },
            ));
        }
    }

    // A write that would create a member for a `messageId` stored already (see
    // `sori_store::RetryCheck::creations`) is answered as a retry, and the rest planned
    // again.
    let check = (!members_found).then(|| sori_store::RetryCheck::creations(ops, &loaded, &light));
    let creating: Vec<(i64, &str)> = check.as_ref().map(|c| c.keys()).unwrap_or_default();
    if let Some(check) = check.filter(|_| !creating.is_empty()) {
        // (Creations are events-only writes: they carry no call keys.)
        let owners = match stored_owners(tx.conn(), &creating, &[]).await {
            Ok(owners) => owners,
            Err(e) => return Err(tx.abort(e).await),
        };
        let done = check.retried(&owners);
        if let Some(rest) = sori_store::to_write(ops, &done) {
            // Nothing is written yet: the transaction ends without writing.
            tx.roll_back().await?;
            let written = match rest.is_empty() {
                true => Vec::new(),
                false => Box::pin(write_planned(writers, &rest)).await?,
            };
            return sori_store::with_retries(done, written);
        }
    }

    let mut plan = plan_user_writes(ops, loaded, light, registries);
    if !plan.new_fields.is_empty() {
        // Rare (a key's first appearance), and its outcome decides whether to go on: alone.
        if let Err(e) = insert_new_fields(tx.conn(), &plan.new_fields).await {
            return Err(tx.abort(e).await);
        }
    }

    // Events go as a prepared statement with binary arrays, in their own round trip: as
    // literals, PostgreSQL's parsing of the escaped JSON properties cost more than the
    // round trip saved (batched ingestion 19,700 → 21,800 events/s with it apart).
    let agg = if plan.events.is_empty() {
        None
    } else {
        match insert_events(tx.conn(), &plan.events, seq).await {
            Ok(a) => Some(a),
            Err(e) => return Err(tx.abort(e).await),
        }
    };

    if let Some(agg) = &agg {
        plan.account_duplicates(ops, &agg.duplicates);
    }
    if plan.raced(ops) {
        let e =
            StoreError::Transient("another transaction stored the same Segment call first".into());
        return Err(tx.abort(e).await);
    }

    // Round trip 2: everything else the plan wrote, and the commit.
    let mut write = Script::default();
    for m in &plan.merges {
        let args = [
            Lit::Int(m.channel_id),
            Lit::Text(&m.from),
            Lit::Text(&m.into),
            Lit::Text(&m.id),
            Lit::Int(m.at),
            Lit::Int(seq),
        ];
        for sql in MERGE {
            write.push(sql, &args)?;
        }
    }
    if !plan.light.is_empty() {
        let (mut c, mut id, mut latest, mut earliest, mut now) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((ch, uid), (l, e, n)) in &plan.light {
            c.push(Some(*ch));
            id.push(Some(uid.as_str()));
            latest.push(Some(*l));
            earliest.push(Some(*e));
            now.push(Some(*n));
        }
        write.raw(CUSTOM_PLANS);
        write.exec(
            "sori_light",
            &[
                Lit::Ints(c),
                Lit::Texts(id),
                Lit::Ints(latest),
                Lit::Ints(earliest),
                Lit::Ints(now),
            ],
        )?;
    }
    write.raw(GENERIC_PLANS);
    if !plan.users.is_empty() {
        let rows = upsert_rows(&plan.users);
        write.exec("sori_upsert", &upsert_args(&rows, seq))?;
    }
    if !plan.call_keys.is_empty() {
        let keys = &plan.call_keys;
        write.push(
            INSERT_CALL_KEYS,
            &[
                Lit::Ints(keys.iter().map(|k| Some(k.0)).collect()),
                Lit::Texts(keys.iter().map(|k| Some(k.1)).collect()),
                Lit::Texts(keys.iter().map(|k| Some(k.2.as_str())).collect()),
                Lit::Ints(keys.iter().map(|k| Some(k.3)).collect()),
            ],
        )?;
    }
    // The catalog last, in the transaction: its rows are shared by every batch, so they
    // are locked only for the commit (in one order), and the batch needs no round trip or
    // commit of its own for them.
    if let Some(args) = agg.as_ref().and_then(catalog_args) {
        write.exec("sori_catalog", &args)?;
    }
    write.raw("COMMIT");
    if let Err(e) = write.run(tx.conn()).await {
        return Err(tx.abort(backend(e)).await);
    }
    tx.release();
    Ok(plan.results)
}

/// Registers inferred fields, in key order (concurrent batches registering the same keys
/// wait on each other in one order). If another transaction registered one of the keys
/// first (it may have inferred or been given another type), the batch was validated
/// against a stale registry: `Transient` makes the writer retry it with the fresh one.
async fn insert_new_fields(conn: &mut PgConnection, fields: &[(i64, ProfileField)]) -> Result<()> {
    let mut sorted: Vec<&(i64, ProfileField)> = fields.iter().collect();
    sorted.sort_by(|a, b| (a.0, a.1.key.as_str()).cmp(&(b.0, b.1.key.as_str())));
    let args = vec![
        Lit::Ints(sorted.iter().map(|(ch, _)| Some(*ch)).collect()),
        Lit::Texts(sorted.iter().map(|(_, f)| Some(f.key.as_str())).collect()),
        Lit::Texts(sorted.iter().map(|(_, f)| Some(f.name.as_str())).collect()),
        Lit::Texts(
            sorted
                .iter()
                .map(|(_, f)| Some(f.field_type.as_str()))
                .collect(),
        ),
        Lit::Ints(sorted.iter().map(|(_, f)| Some(f.created_at)).collect()),
    ];
    let inserted = bind(sqlx::query(FIELDS_INSERT), args)
        .execute(conn)
        .await
        .map_err(backend)?;
    if inserted.rows_affected() < sorted.len() as u64 {
        return Err(StoreError::Transient(
            "a profile field was registered concurrently".into(),
        ));
    }
    Ok(())
}

/// Appends events; returns the aggregates of those really inserted so the catalog can be
/// updated after commit.
pub(crate) async fn insert_events(
    conn: &mut PgConnection,
    events: &[(i64, String, &NewEvent)],
    seq: i64,
) -> Result<EventAggregates> {
    let rows = bind(sqlx::query(EVENT_INSERT), event_args(events, seq))
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    let inserted: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0).map_err(backend))
        .collect::<Result<_>>()?;
    Ok(aggregate(events, &inserted))
}

fn event_args<'a>(events: &'a [(i64, String, &NewEvent)], seq: i64) -> Vec<Lit<'a>> {
    let n = events.len();
    let (mut ch, mut user, mut id, mut name, mut prop, mut page, mut source, mut msg, mut at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (c, u, e) in events {
        ch.push(Some(*c));
        user.push(Some(u.as_str()));
        id.push(Some(e.id.as_str()));
        name.push(Some(e.name.as_str()));
        prop.push(Some(e.property_json.as_str()));
        page.push(e.page.as_deref());
        source.push(Some(e.source.as_str()));
        msg.push(e.message_id.as_deref());
        at.push(Some(e.created_at));
    }
    vec![
        Lit::Ints(ch),
        Lit::Texts(user),
        Lit::Texts(id),
        Lit::Texts(name),
        Lit::Texts(prop),
        Lit::Texts(page),
        Lit::Texts(source),
        Lit::Texts(msg),
        Lit::Ints(at),
        Lit::Int(seq),
    ]
}

/// Writes users with one statement outside the batch path (bulk loads).
pub(crate) async fn upsert_users(
    conn: &mut PgConnection,
    users: &BTreeMap<(i64, String), User>,
    seq: i64,
) -> Result<()> {
    let rows = upsert_rows(users);
    bind(sqlx::query(USER_UPSERT), upsert_args(&rows, seq))
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Rows in [`users_in_write_order`](sori_store::users_in_write_order): members in
/// (channel, member id) order, so the only waits left when they are written are on member
/// ids another batch is inserting, and taking them in one order turns a race for the same
/// new members into a `Conflict`, not a deadlock; anonymous users after them.
fn upsert_rows(users: &BTreeMap<(i64, String), User>) -> Vec<UserRow> {
    sori_store::users_in_write_order(users)
        .into_iter()
        .map(|(ch, user)| UserRow::from_user(ch, user))
        .collect()
}

fn upsert_args(rows: &[UserRow], seq: i64) -> Vec<Lit<'_>> {
    let ints = |f: fn(&UserRow) -> Option<i64>| Lit::Ints(rows.iter().map(f).collect());
    let bools = |f: fn(&UserRow) -> bool| Lit::Bools(rows.iter().map(|r| Some(f(r))).collect());
    let texts =
        |f: for<'r> fn(&'r UserRow) -> Option<&'r str>| Lit::Texts(rows.iter().map(f).collect());
    vec![
        ints(|r| Some(r.channel_id)),
        texts(|r| Some(&r.id)),
        texts(|r| r.member_id.as_deref()),
        texts(|r| r.veil_id.as_deref()),
        texts(|r| r.name.as_deref()),
        texts(|r| Some(&r.profile)),
        texts(|r| Some(&r.tags)),
        bools(|r| r.unsubscribe_email),
        bools(|r| r.unsubscribe_texting),
        bools(|r| r.blocked),
        texts(|r| r.city.as_deref()),
        texts(|r| r.country.as_deref()),
        texts(|r| r.language.as_deref()),
        bools(|r| r.has_chat),
        bools(|r| r.has_push_token),
        ints(|r| Some(r.sessions_count)),
        ints(|r| r.last_seen_at),
        ints(|r| Some(r.created_at)),
        ints(|r| Some(r.updated_at)),
        texts(|r| Some(&r.web)),
        texts(|r| Some(&r.mobile)),
        Lit::Int(seq),
    ]
}
