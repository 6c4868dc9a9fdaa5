//! The audience service: one in-memory projection per channel, built from the store at
//! start and kept in step by following the store's change sequence. Every query first
//! catches up to the committed horizon, so a count or search includes every write
//! acknowledged before it, whichever node or process made it; a background task keeps the
//! backlog small between queries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// How a search orders users; the HTTP layer parses it, the projection sorts by it.
pub use sori_audience::SortBy;
use sori_audience::{Bits, Change, EventPart, External, Projection, SortKey};
use sori_domain::filter::{Cond, Filter, Query, Schema};
use sori_domain::{Registry, User};
use sori_store::{Cursor, Segment, Store};

use crate::auth::ChannelInfo;
use crate::secrets::now_ms;
use crate::{App, AppError, AppResult};

type Shared = Arc<RwLock<Projection>>;

/// Every channel's projection.
#[derive(Default)]
pub struct Audience {
    channels: RwLock<HashMap<i64, Shared>>,
    /// How far the projections have followed the change sequence; held while catching up,
    /// so catch-ups never overlap.
    cursor: tokio::sync::Mutex<Cursor>,
}

fn poisoned<T>(_: T) -> AppError {
    AppError::Unavailable
}

impl Audience {
    /// Builds every channel's projection from the store. Writes made meanwhile (by this
    /// node's writer or another node) are followed by the next catch-up.
    pub async fn build(store: &Arc<dyn Store>) -> AppResult<Self> {
        let me = Self::default();
        let (channels, horizon) = build_all(store).await?;
        *me.channels.write().map_err(poisoned)? = channels;
        *me.cursor.lock().await = horizon;
        Ok(me)
    }

    fn get(&self, channel_id: i64) -> Shared {
        if let Some(p) = self
            .channels
            .read()
            .ok()
            .and_then(|m| m.get(&channel_id).cloned())
        {
            return p;
        }
        // A channel created after start: it began empty, and every write since was applied.
        match self.channels.write() {
            Ok(mut m) => m.entry(channel_id).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Follows the change sequence up to the committed horizon. Users come first (they
    /// give events their slots), then the activity of the events' owners, then removals
    /// and merges in order, then events.
    pub async fn catch_up(&self, store: &Arc<dyn Store>) -> AppResult<()> {
        let horizon = store.horizon().await?;
        self.catch_up_to(store, horizon).await
    }

    /// `catch_up` to a horizon read before (a later one is fine too: nothing is skipped).
    ///
    /// A follower that fell behind the change log's pruning (stopped or stalled for longer
    /// than the log is kept) rebuilds every projection from the store instead, as at start.
    pub async fn catch_up_to(&self, store: &Arc<dyn Store>, horizon: Cursor) -> AppResult<()> {
        let mut cursor = self.cursor.lock().await;
        if horizon.seq <= cursor.seq && horizon.event <= cursor.event {
            return Ok(());
        }
        let batch = store.changes(*cursor, horizon).await?;
        if batch.pruned {
            tracing::warn!("audience projection is behind the pruned change log; rebuilding");
            let (channels, rebuilt_at) = build_all(store).await?;
            let old = std::mem::replace(&mut *self.channels.write().map_err(poisoned)?, channels);
            // Freed outside the lock: a large projection takes a while to drop.
            drop(old);
            *cursor = rebuilt_at;
            return Ok(());
        }
        for (ch, seq, user) in batch.users {
            let p = self.get(ch);
            let mut p = p.write().map_err(poisoned)?;
            p.apply(seq.max(0) as u64, &Change::User(Box::new(user)));
        }
        for (ch, seq, change) in &batch.activity {
            let p = self.get(*ch);
            let mut p = p.write().map_err(poisoned)?;
            p.apply((*seq).max(0) as u64, change);
        }
        for (ch, change) in &batch.log {
            let p = self.get(*ch);
            let mut p = p.write().map_err(poisoned)?;
            p.apply(0, change);
        }
        // Events name their owner as it is now. One created after the horizon (the member
        // an anonymous user was merged into, say) has no slot yet; its row would come with
        // a later catch-up but the event would not, so such owners' rows are read now and
        // their events counted after.
        let mut orphans: BTreeMap<i64, Vec<&(i64, String, String, i64)>> = BTreeMap::new();
        let mut i = 0;
        while i < batch.events.len() {
            let ch = batch.events[i].0;
            let p = self.get(ch);
            let mut p = p.write().map_err(poisoned)?;
            while i < batch.events.len() && batch.events[i].0 == ch {
                let e = &batch.events[i];
                if !p.add_event(&e.1, &e.2, e.3) {
                    orphans.entry(ch).or_default().push(e);
                }
                i += 1;
            }
        }
        for (ch, events) in orphans {
            let events: Vec<_> = events.iter().map(|e| (&*e.1, &*e.2, e.3)).collect();
            let owners = owners_of(&**store, ch, &events).await?;
            let p = self.get(ch);
            adopt(&mut *p.write().map_err(poisoned)?, owners, &events);
        }
        *cursor = horizon;
        Ok(())
    }

    /// How far the projections have followed the change sequence.
    pub async fn followed(&self) -> Cursor {
        *self.cursor.lock().await
    }

    /// Drops event buckets that retention emptied (memory only: no window reaches them).
    pub fn retire(&self, channel_id: i64, before: i64) {
        if let Ok(mut p) = self.get(channel_id).write() {
            p.apply(0, &Change::Retire { before });
        }
    }

    /// Approximate heap bytes of every projection.
    pub fn bytes(&self) -> usize {
        let Ok(m) = self.channels.read() else {
            return 0;
        };
        m.values()
            .filter_map(|p| p.read().ok().map(|p| p.bytes()))
            .sum()
    }

    /// The matching users of a resolved query.
    pub async fn select(
        &self,
        store: &Arc<dyn Store>,
        channel_id: i64,
        q: &Query,
    ) -> AppResult<(Shared, Bits)> {
        // Event conditions with `where` clauses read the stored events' properties.
        let mut ext = External::new();
        for (gi, g) in q.groups.iter().enumerate() {
            for (ci, c) in g.iter().enumerate() {
                if let Cond::Event(e) = c
                    && !e.props.is_empty()
                {
                    let counts = store.event_counts_matching(channel_id, e).await?;
                    ext.insert((gi, ci), counts.into_iter().collect());
                }
            }
        }
        self.catch_up(store).await?;
        let p = self.get(channel_id);
        let set = p.read().map_err(poisoned)?.select(q, &ext);
        Ok((p, set))
    }
}

/// Builds every channel's projection; returns them with the horizon they follow from
/// (events up to it are scanned; everything after it is caught up later).
async fn build_all(store: &Arc<dyn Store>) -> AppResult<(HashMap<i64, Shared>, Cursor)> {
    let started = std::time::Instant::now();
    let horizon = store.horizon().await?;
    let mut channels = HashMap::new();
    let mut users = 0;
    for ch in store.channel_ids().await? {
        let p = build_channel(store, ch, horizon.event).await?;
        users += p.len();
        channels.insert(ch, Arc::new(RwLock::new(p)));
    }
    tracing::info!(
        users,
        seconds = started.elapsed().as_secs_f64(),
        "audience projection built"
    );
    Ok((channels, horizon))
}

/// The rows of the owners of `events` (`(userId, name, createdAt)`) that the projection has
/// no slot for. Events name their owner as it is now: the member an anonymous user was
/// merged into may have been created after the slots were fixed (by a build's id scan or
/// by the horizon a catch-up follows to), and its row would come with a later catch-up
/// but these events would not.
async fn owners_of(
    store: &dyn Store,
    ch: i64,
    events: &[(&str, &str, i64)],
) -> AppResult<Vec<User>> {
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok(store.users_by_ids(ch, &ids).await?)
}

/// Adds the owners read by [`owners_of`], then counts their events (those whose owner is
/// gone meanwhile are dropped, as the owner's removal would drop them).
fn adopt(p: &mut Projection, owners: Vec<User>, events: &[(&str, &str, i64)]) {
    for user in owners {
        // Stamp 0: the row's own change, when it comes, is newer.
        p.apply(0, &Change::User(Box::new(user)));
    }
    for (user, name, at) in events {
        p.add_event(user, name, *at);
    }
}

/// Users decoded by a scan part, sent in chunks to the task filling the projection.
type UserChunk = Vec<(i64, User)>;

/// Builds one channel. The user ids come first and fix the slots; then the users and the
/// events load concurrently, each in parts (one per core): the user parts decode rows and
/// hand them to one task filling the projection, the event parts count apart and are
/// merged at the end. A start-up rebuild so uses every core.
async fn build_channel(store: &Arc<dyn Store>, ch: i64, upto: i64) -> AppResult<Projection> {
    let t = std::time::Instant::now();
    let ids = store.user_ids(ch).await?;
    let mut p = Projection::with_ids(ids.iter().map(String::as_str));
    drop(ids);
    let slots = Arc::new(p.take_slots());
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let events: Vec<_> = (0..parts)
        .map(|part| {
            let (store, slots) = (store.clone(), slots.clone());
            tokio::spawn(async move {
                let mut ev = EventPart::default();
                // Owners without a slot (see `owners_of`): rare, so owned copies.
                let mut orphans: Vec<(String, String, i64)> = Vec::new();
                // Events come in runs of one user's (a session, a batch): remember the last
                // owner instead of looking every event's owner up.
                let mut last: (String, Option<u32>) = (String::new(), None);
                store
                    .scan_events(ch, upto, part, parts, &mut |at, user, name| {
                        if last.0 != user {
                            last.0.clear();
                            last.0.push_str(user);
                            last.1 = slots.get(user);
                        }
                        match last.1 {
                            Some(s) => ev.add(s, name, at),
                            None => orphans.push((user.to_owned(), name.to_owned(), at)),
                        }
                    })
                    .await
                    .map(|()| (ev, orphans))
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, UserChunk)>(64);
    let users: Vec<_> = (0..parts)
        .map(|part| {
            let (store, tx) = (store.clone(), tx.clone());
            tokio::spawn(async move {
                const CHUNK: usize = 1024;
                let mut chunk = Vec::with_capacity(CHUNK);
                store
                    .scan_users(ch, part, parts, &mut |seq, u| {
                        chunk.push((seq, u));
                        if chunk.len() == CHUNK {
                            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                            // The receiver only goes away on an error, reported below.
                            let _ = tx.send((part, full));
                        }
                    })
                    .await?;
                let _ = tx.send((part, chunk));
                Ok::<_, sori_store::StoreError>(())
            })
        })
        .collect();
    drop(tx);
    // A part's users come in the order of the ids (both are scans of the table), so the
    // part's next slot is nearly always the user's: check it before looking the id up.
    tokio::task::block_in_place(|| {
        let mut next = vec![0u32; parts as usize];
        for (part, chunk) in rx {
            let next = &mut next[part as usize];
            for (seq, u) in chunk {
                let slot = if p.holds(*next, &u.id) {
                    Some(*next)
                } else {
                    slots.get(&u.id)
                };
                if let Some(s) = slot {
                    p.load_user(s, seq.max(0) as u64, &u);
                    *next = s + 1;
                }
            }
        }
    });
    for task in users {
        task.await.map_err(|_| AppError::Unavailable)??;
    }
    let users_s = t.elapsed().as_secs_f64();
    let mut counted = Vec::with_capacity(events.len());
    let mut orphans = Vec::new();
    for task in events {
        let (ev, o) = task.await.map_err(|_| AppError::Unavailable)??;
        counted.push(ev);
        orphans.extend(o);
    }
    p.put_slots(Arc::try_unwrap(slots).map_err(|_| AppError::Unavailable)?);
    p.absorb(counted);
    if !orphans.is_empty() {
        let orphans: Vec<_> = orphans.iter().map(|(u, n, at)| (&**u, &**n, *at)).collect();
        let owners = owners_of(&**store, ch, &orphans).await?;
        adopt(&mut p, owners, &orphans);
    }
    for (user, name, count) in store.rolled_counts(ch).await? {
        p.add_rolled(&user, &name, count);
    }
    tracing::info!(
        channel = ch,
        users = p.len(),
        users_s,
        total_s = t.elapsed().as_secs_f64(),
        "channel projection built"
    );
    Ok(p)
}

/// Which engine answers a query: the projection (default) or the database's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The in-memory projection.
    #[default]
    Memory,
    /// The store's SQL.
    Sql,
}

impl App {
    /// Checks a filter against the channel's registry and retention.
    pub async fn check_filter(
        &self,
        ch: &ChannelInfo,
        path: &str,
        json: &serde_json::Value,
    ) -> AppResult<Filter> {
        self.parse_filter(ch, path, json, ch.channel.event_retention_days)
            .await
    }

    /// Reads a saved segment's filter. Its event windows were checked against the
    /// retention of the day it was saved; a retention lowered since shortens them when
    /// the filter is resolved, instead of making the segment unusable.
    async fn saved_filter(&self, ch: &ChannelInfo, json: &serde_json::Value) -> AppResult<Filter> {
        let longest = sori_domain::event::MAX_RETENTION_DAYS;
        self.parse_filter(ch, "segment.filter", json, longest).await
    }

    async fn parse_filter(
        &self,
        ch: &ChannelInfo,
        path: &str,
        json: &serde_json::Value,
        retention_days: i64,
    ) -> AppResult<Filter> {
        let registry = Registry::new(self.store.profile_fields(ch.channel.id).await?);
        Ok(Filter::parse(
            path,
            json,
            &Schema {
                registry: &registry,
                retention_days,
            },
        )?)
    }

    /// Fixes a filter's clock for the channel (now, its zone and retention).
    pub fn resolve(&self, ch: &ChannelInfo, f: &Filter) -> AppResult<Query> {
        let tz = sori_domain::channel::time_zone("timeZone", &ch.channel.time_zone)?;
        Ok(f.resolve(&tz, now_ms(), ch.channel.event_retention_days))
    }

    /// How many users match.
    pub async fn count_users(&self, ch: &ChannelInfo, q: &Query, engine: Engine) -> AppResult<u64> {
        match engine {
            Engine::Memory => {
                let (_, set) = self.audience.select(&self.store, ch.channel.id, q).await?;
                Ok(set.len())
            }
            Engine::Sql => Ok(self.store.count_matching(ch.channel.id, q).await?),
        }
    }

    /// Ids of the matching users, in id order.
    pub async fn matching_ids(
        &self,
        ch: &ChannelInfo,
        q: &Query,
        engine: Engine,
    ) -> AppResult<Vec<String>> {
        match engine {
            Engine::Memory => {
                let (p, set) = self.audience.select(&self.store, ch.channel.id, q).await?;
                let p = p.read().map_err(poisoned)?;
                let mut ids: Vec<String> = set.iter().map(|s| p.id(s).to_owned()).collect();
                ids.sort_unstable();
                Ok(ids)
            }
            Engine::Sql => Ok(self.store.ids_matching(ch.channel.id, q).await?),
        }
    }

    /// One page of matching users sorted by `by` (absent values last), starting at
    /// `offset`; also returns the total.
    pub async fn search_users(
        &self,
        ch: &ChannelInfo,
        q: &Query,
        by: &SortBy,
        descending: bool,
        offset: usize,
        limit: usize,
    ) -> AppResult<(Vec<User>, u64)> {
        let (p, set) = self.audience.select(&self.store, ch.channel.id, q).await?;
        let total = set.len();
        let ids: Vec<String> = {
            let p = p.read().map_err(poisoned)?;
            let mut keyed: Vec<(SortKey, u32)> =
                set.iter().map(|s| (p.sort_key(by, s), s)).collect();
            let cmp = |a: &(SortKey, u32), b: &(SortKey, u32)| {
                sort_cmp(&a.0, &b.0, descending).then_with(|| p.id(a.1).cmp(p.id(b.1)))
            };
            let end = (offset + limit).min(keyed.len());
            if offset >= keyed.len() {
                Vec::new()
            } else {
                // Only the requested page needs ordering: partition, then sort that slice.
                if end < keyed.len() {
                    keyed.select_nth_unstable_by(end, cmp);
                    keyed.truncate(end);
                }
                keyed.sort_unstable_by(cmp);
                keyed[offset..end]
                    .iter()
                    .map(|(_, s)| p.id(*s).to_owned())
                    .collect()
            }
        };
        let mut users = self.store.users_by_ids(ch.channel.id, &ids).await?;
        let pos: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        users.sort_by_key(|u| pos.get(u.id.as_str()).copied().unwrap_or(usize::MAX));
        Ok((users, total))
    }

    /// Whether one user matches.
    pub async fn user_matches(
        &self,
        ch: &ChannelInfo,
        q: &Query,
        user_id: &str,
    ) -> AppResult<bool> {
        let (p, set) = self.audience.select(&self.store, ch.channel.id, q).await?;
        let p = p.read().map_err(poisoned)?;
        Ok(p.slot_of(user_id).is_some_and(|s| set.contains(s)))
    }

    /// Keeps the projections close to the store between queries (queries catch up anyway;
    /// this keeps what they have to read small), every `every`, forever.
    pub async fn audience_loop(self, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.audience.catch_up(&self.store).await {
                tracing::warn!(error = %e, "audience catch-up failed; the next query retries");
            }
        }
    }
}

/// Orders sort keys; absent values go last whichever the direction.
fn sort_cmp(a: &SortKey, b: &SortKey, descending: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let rank = |k: &SortKey| match k {
        SortKey::Num(None) | SortKey::Str(None) => 2,
        SortKey::Num(Some(_)) => 0,
        SortKey::Str(Some(_)) => 1,
    };
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb || ra == 2 {
        return ra.cmp(&rb);
    }
    let o = match (a, b) {
        (SortKey::Num(Some(x)), SortKey::Num(Some(y))) => x.total_cmp(y),
        (SortKey::Str(Some(x)), SortKey::Str(Some(y))) => x.cmp(y),
        _ => Ordering::Equal,
    };
    if descending { o.reverse() } else { o }
}

/// Most saved segments per channel.
pub const MAX_SEGMENTS: usize = 1_000;
/// Longest segment name (characters).
pub const MAX_SEGMENT_NAME_CHARS: usize = 100;

fn check_segment_name(name: &str) -> AppResult<String> {
    Ok(sori_domain::value::display_name(
        "name",
        name,
        MAX_SEGMENT_NAME_CHARS,
    )?)
}

impl App {
    /// Saves a new segment after checking its filter.
    pub async fn create_segment(
        &self,
        ch: &ChannelInfo,
        name: &str,
        filter: &serde_json::Value,
    ) -> AppResult<Segment> {
        let name = check_segment_name(name)?;
        self.check_filter(ch, "filter", filter).await?;
        if self.store.segments(ch.channel.id).await?.len() >= MAX_SEGMENTS {
            return Err(AppError::Conflict(format!(
                "a channel keeps at most {MAX_SEGMENTS} segments; delete one first"
            )));
        }
        let now = now_ms();
        let sg = Segment {
            channel_id: ch.channel.id,
            id: crate::secrets::new_id(),
            name,
            filter: filter.clone(),
            created_at: now,
            updated_at: now,
        };
        self.store.insert_segment(&sg).await.map_err(|e| match e {
            sori_store::StoreError::Conflict(_) => {
                AppError::Conflict(format!("a segment named `{}` exists", sg.name))
            }
            other => other.into(),
        })?;
        Ok(sg)
    }

    /// A segment of the channel, or 404.
    pub async fn segment(&self, ch: &ChannelInfo, id: &str) -> AppResult<Segment> {
        let found = if crate::secrets::is_id(id) {
            self.store.segment(ch.channel.id, id).await?
        } else {
            None
        };
        found.ok_or_else(|| AppError::NotFound("segment not found".into()))
    }

    /// Renames a segment and/or replaces its filter.
    pub async fn update_segment(
        &self,
        ch: &ChannelInfo,
        id: &str,
        name: Option<&str>,
        filter: Option<&serde_json::Value>,
    ) -> AppResult<Segment> {
        let mut sg = self.segment(ch, id).await?;
        if let Some(n) = name {
            sg.name = check_segment_name(n)?;
        }
        if let Some(f) = filter {
            self.check_filter(ch, "filter", f).await?;
            sg.filter = f.clone();
        }
        sg.updated_at = now_ms();
        let updated = self.store.update_segment(&sg).await.map_err(|e| match e {
            sori_store::StoreError::Conflict(_) => {
                AppError::Conflict(format!("a segment named `{}` exists", sg.name))
            }
            other => other.into(),
        })?;
        if !updated {
            return Err(AppError::NotFound("segment not found".into()));
        }
        Ok(sg)
    }

    /// The query a target names: exactly one of a filter or a saved segment's id. A saved
    /// filter that no longer fits the registry (a field was deleted) is reported as such.
    pub async fn target(
        &self,
        ch: &ChannelInfo,
        filter: Option<&serde_json::Value>,
        segment_id: Option<&str>,
    ) -> AppResult<Query> {
        let f = match (filter, segment_id) {
            (Some(f), None) => self.check_filter(ch, "filter", f).await?,
            (None, Some(id)) => {
                let sg = self.segment(ch, id).await?;
                self.saved_filter(ch, &sg.filter).await?
            }
            _ => {
                return Err(sori_domain::Invalid::one(
                    "filter",
                    "send exactly one of `filter` and `segmentId`",
                )
                .into());
            }
        };
        self.resolve(ch, &f)
    }
}
