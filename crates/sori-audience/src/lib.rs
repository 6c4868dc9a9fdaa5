//! The audience engine: a typed, columnar, in-memory projection of one channel's contacts
//! and the event counts filters need, answering a resolved filter with bitmaps.
//!
//! The projection holds no I/O. Its owner builds it from the store at start and feeds it
//! the store's committed changes ([`Projection::apply`]); a user change carries the change
//! number of its row, so an older row never overwrites a newer one. Event conditions with
//! `where` clauses need the events' properties, which the projection does not keep: the
//! caller evaluates them over the stored events and passes the per-user counts in
//! ([`External`]).

mod bits;
mod columns;
mod slots;
pub mod testgen;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

use serde_json::Value;
pub use sori_domain::change::Change;
use sori_domain::filter::eval::test_num;
use sori_domain::filter::{Builtin, Cond, Device, EventTest, Field, ListMode, Query, Test};
use sori_domain::{DeviceInfo, FieldType, User};

pub use bits::Bits;
use columns::{BoolCol, ListCol, NumCol, StrCol, TimeCol, num_key};
pub use slots::Slots;

/// Per-user counts of events that pass an event condition's `where` clauses, computed
/// by the caller from stored events; keyed by the condition's position (group, index).
pub type External = HashMap<(usize, usize), HashMap<String, i64>>;

#[derive(Debug, Default)]
struct DeviceCols {
    strs: [StrCol; 7],
    last_seen_at: TimeCol,
    sessions_count: NumCol,
}

impl DeviceCols {
    fn set(&mut self, slot: u32, d: &DeviceInfo) {
        for (c, v) in self.strs.iter_mut().zip(d.texts()) {
            c.set(slot, v.as_deref());
        }
        self.last_seen_at.set(slot, d.last_seen_at);
        self.sessions_count.set(slot, Some(d.sessions_count as f64));
    }

    fn bytes(&self) -> usize {
        self.strs.iter().map(StrCol::bytes).sum::<usize>()
            + self.last_seen_at.bytes()
            + self.sessions_count.bytes()
    }
}

/// One profile key's values; a key holds one type, but the projection does not need the
/// registry to store it: each value goes where its JSON shape says.
#[derive(Debug, Default)]
struct ProfileCol {
    strs: StrCol,
    nums: NumCol,
    bools: BoolCol,
    list: ListCol<Box<str>>,
    num_list: ListCol<u64>,
}

impl ProfileCol {
    fn set(&mut self, slot: u32, v: Option<&Value>) {
        self.strs.set(slot, v.and_then(Value::as_str));
        self.nums.set(slot, v.and_then(Value::as_f64));
        self.bools.set(slot, v.and_then(Value::as_bool));
        let arr = v.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        self.list
            .set(slot, arr.iter().filter_map(Value::as_str), |k: &str| {
                Box::from(k)
            });
        let nums: Vec<u64> = arr.iter().filter_map(|x| x.as_f64().map(num_key)).collect();
        self.num_list.set(slot, nums.iter(), |k| *k);
    }

    fn bytes(&self) -> usize {
        self.strs.bytes()
            + self.nums.bytes()
            + self.bools.bytes()
            + self.list.bytes()
            + self.num_list.bytes()
    }
}

/// Width of an event time bucket. Every time zone's offset is a multiple of 15 minutes, so
/// the start of any local day is a bucket boundary: windows are exact in any zone, and a
/// channel changing its zone needs no rebuild.
const BUCKET_MS: i64 = 15 * 60 * 1000;

fn bucket(at: i64) -> i64 {
    at.div_euclid(BUCKET_MS)
}

/// Event occurrences of one name: one slot entry per event in its time bucket, and
/// running totals per slot (never reduced by retention, so all-history counts stay whole).
#[derive(Debug, Default)]
struct EventCol {
    buckets: BTreeMap<i64, Vec<u32>>,
    totals: Vec<u32>,
}

impl EventCol {
    fn add(&mut self, slot: u32, at: i64) {
        self.buckets.entry(bucket(at)).or_default().push(slot);
        let i = slot as usize;
        if self.totals.len() <= i {
            self.totals.resize(i + 1, 0);
        }
        self.totals[i] += 1;
    }

    fn bytes(&self) -> usize {
        self.buckets
            .values()
            .map(|v| v.capacity() * 4 + 48)
            .sum::<usize>()
            + self.totals.capacity() * 4
    }
}

/// Events of one name counted apart: (bucket, slot) pairs packed in one number, pushed in
/// scan order. A build meets the buckets in random order; appending to one list and
/// sorting the pairs into buckets once, when the parts are absorbed, avoids a cache miss
/// and a growing list per event.
#[derive(Debug, Default)]
struct PartCol {
    pairs: Vec<u64>,
    /// Events whose bucket does not fit the packing (before 1970 or after year 124,000).
    odd: Vec<(i64, u32)>,
    totals: Vec<u32>,
}

impl PartCol {
    fn add(&mut self, slot: u32, at: i64) {
        match u32::try_from(bucket(at)) {
            Ok(b) => self.pairs.push(u64::from(b) << 32 | u64::from(slot)),
            Err(_) => self.odd.push((bucket(at), slot)),
        }
        let i = slot as usize;
        if self.totals.len() <= i {
            self.totals.resize(i + 1, 0);
        }
        self.totals[i] += 1;
    }
}

/// Events counted apart from a projection (one part of a parallel build), merged in with
/// [`Projection::absorb`].
#[derive(Debug, Default)]
pub struct EventPart {
    events: FxHashMap<String, PartCol>,
}

impl EventPart {
    /// Counts one event of the user in `slot`.
    pub fn add(&mut self, slot: u32, name: &str, at: i64) {
        match self.events.get_mut(name) {
            Some(col) => col.add(slot, at),
            None => self
                .events
                .entry(name.to_owned())
                .or_default()
                .add(slot, at),
        }
    }
}

/// Sorts the pairs of one name's parts into `col`: a counting sort, so every bucket's list
/// is allocated once at its final size.
fn absorb_pairs(col: &mut EventCol, parts: &[PartCol]) {
    let buckets = || {
        parts
            .iter()
            .flat_map(|p| &p.pairs)
            .map(|x| (x >> 32) as u32)
    };
    let Some((lo, hi)) = buckets().fold(None, |r, b| match r {
        None => Some((b, b)),
        Some((lo, hi)) => Some((b.min(lo), b.max(hi))),
    }) else {
        return;
    };
    let mut counts = vec![0u32; (hi - lo) as usize + 1];
    for b in buckets() {
        counts[(b - lo) as usize] += 1;
    }
    let mut lists: Vec<Vec<u32>> = counts
        .iter()
        .map(|&c| Vec::with_capacity(c as usize))
        .collect();
    for &x in parts.iter().flat_map(|p| &p.pairs) {
        lists[((x >> 32) as u32 - lo) as usize].push(x as u32);
    }
    for (i, mut list) in lists.into_iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        match col.buckets.entry(i64::from(lo) + i as i64) {
            Entry::Vacant(e) => {
                e.insert(list);
            }
            Entry::Occupied(mut e) => e.get_mut().append(&mut list),
        }
    }
}

/// The projection of one channel.
#[derive(Debug, Default)]
pub struct Projection {
    ids: Vec<Box<str>>,
    slot_of: Slots,
    stamps: Vec<u64>,
    live: Bits,
    /// Members (users with a member id), kept so `member` is never a scan.
    members: Bits,
    /// Merged slot → the slot its events now count for.
    redirect: FxHashMap<u32, u32>,
    member_id: StrCol,
    city: StrCol,
    country: StrCol,
    language: StrCol,
    tags: ListCol<Box<str>>,
    last_seen_at: TimeCol,
    created_at: TimeCol,
    updated_at: TimeCol,
    sessions_count: NumCol,
    has_chat: BoolCol,
    has_push_token: BoolCol,
    unsubscribe_email: BoolCol,
    unsubscribe_texting: BoolCol,
    web: DeviceCols,
    mobile: DeviceCols,
    profile: FxHashMap<String, ProfileCol>,
    events: FxHashMap<String, EventCol>,
}

impl Projection {
    /// An empty projection.
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            slot_of: Slots::default(),
            stamps: Vec::new(),
            live: Bits::default(),
            members: Bits::default(),
            redirect: FxHashMap::default(),
            member_id: StrCol::default(),
            city: StrCol::default(),
            country: StrCol::default(),
            language: StrCol::default(),
            tags: ListCol::default(),
            last_seen_at: TimeCol::default(),
            created_at: TimeCol::default(),
            updated_at: TimeCol::default(),
            sessions_count: NumCol::default(),
            has_chat: BoolCol::default(),
            has_push_token: BoolCol::default(),
            unsubscribe_email: BoolCol::default(),
            unsubscribe_texting: BoolCol::default(),
            web: DeviceCols::default(),
            mobile: DeviceCols::default(),
            profile: FxHashMap::default(),
            events: FxHashMap::default(),
        }
    }

    /// Users the projection knows.
    pub fn len(&self) -> u64 {
        self.live.len()
    }

    /// True when the channel has no users.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn slot(&mut self, id: &str) -> u32 {
        if let Some(s) = self.slot_of.get(id) {
            return s;
        }
        let s = self.ids.len() as u32;
        self.ids.push(id.into());
        self.slot_of.insert(id, s);
        self.stamps.push(0);
        s
    }

    /// The user id of a slot.
    pub fn id(&self, slot: u32) -> &str {
        &self.ids[slot as usize]
    }

    /// True when `slot` holds `id` (a build checks its guess before trusting it).
    pub fn holds(&self, slot: u32, id: &str) -> bool {
        self.ids.get(slot as usize).is_some_and(|x| **x == *id)
    }

    /// The slot of a live user.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.slot_of.get(id).filter(|s| self.live.contains(*s))
    }

    /// Applies one committed change. `stamp` orders whole-row writes of the same user:
    /// a row older than the one already applied is ignored.
    pub fn apply(&mut self, stamp: u64, change: &Change) {
        match change {
            Change::User(u) => {
                let slot = self.slot(&u.id);
                let i = slot as usize;
                if self.stamps[i] > stamp || (self.stamps[i] == u64::MAX) {
                    return;
                }
                self.stamps[i] = stamp;
                self.set_user(slot, u, false);
            }
            Change::Merge { from, into } => {
                let (Some(f), Some(t)) = (self.slot_of.get(from), self.slot_of(into)) else {
                    return;
                };
                for col in self.events.values_mut() {
                    let moved = col.totals.get(f as usize).copied().unwrap_or(0);
                    if moved > 0 {
                        col.totals[f as usize] = 0;
                        if col.totals.len() <= t as usize {
                            col.totals.resize(t as usize + 1, 0);
                        }
                        col.totals[t as usize] += moved;
                    }
                }
                // Slots that were merged into `from` now count for `into` as well.
                for v in self.redirect.values_mut() {
                    if *v == f {
                        *v = t;
                    }
                }
                self.redirect.insert(f, t);
                self.kill(f);
            }
            Change::Activity {
                id,
                last_seen_at,
                created_at,
                updated_at,
            } => {
                let Some(slot) = self.slot_of(id) else {
                    return;
                };
                let i = slot as usize;
                if self.stamps[i] > stamp {
                    return;
                }
                self.stamps[i] = stamp;
                self.last_seen_at.set(slot, *last_seen_at);
                self.created_at.set(slot, Some(*created_at));
                self.updated_at.set(slot, Some(*updated_at));
            }
            Change::Delete(id) => {
                if let Some(s) = self.slot_of.get(id) {
                    self.kill(s);
                }
            }
            Change::Retire { before } => {
                // The cutoff is the start of a local day, so a bucket boundary; the
                // removed events stay in the totals.
                for col in self.events.values_mut() {
                    col.buckets = col.buckets.split_off(&bucket(*before));
                }
            }
        }
    }

    /// A projection with a slot for each of `ids` and nothing else yet: a parallel build
    /// assigns the slots first, then loads users and events concurrently.
    pub fn with_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let mut p = Self::new();
        p.ids.reserve_exact(ids.len());
        p.stamps.reserve_exact(ids.len());
        p.slot_of.reserve(ids.len());
        // The ids are a table's keys, so distinct: no need to look each up first.
        for (s, id) in ids.enumerate() {
            let s = s as u32;
            p.ids.push(id.into());
            p.slot_of.insert(id, s);
            p.stamps.push(0);
            p.live.set(s, true);
        }
        p
    }

    /// Loads a user into its slot (the build's users phase, with the index set aside);
    /// `stamp` is the change number of the row.
    pub fn load_user(&mut self, slot: u32, stamp: u64, u: &User) {
        if (slot as usize) < self.ids.len() {
            self.stamps[slot as usize] = stamp;
            self.set_user(slot, u, true);
        }
    }

    /// The user-id index, for a parallel build to resolve event owners while the projection
    /// is set aside; give it back with [`Projection::put_slots`].
    pub fn take_slots(&mut self) -> Slots {
        std::mem::take(&mut self.slot_of)
    }

    /// Restores the index taken by [`Projection::take_slots`].
    pub fn put_slots(&mut self, slots: Slots) {
        self.slot_of = slots;
    }

    /// Merges the parts of a parallel build.
    pub fn absorb(&mut self, parts: Vec<EventPart>) {
        let mut by_name: FxHashMap<String, Vec<PartCol>> = FxHashMap::default();
        for part in parts {
            for (name, col) in part.events {
                by_name.entry(name).or_default().push(col);
            }
        }
        for (name, cols) in by_name {
            let mine = self.events.entry(name).or_default();
            absorb_pairs(mine, &cols);
            for col in cols {
                for (b, slot) in col.odd {
                    mine.buckets.entry(b).or_default().push(slot);
                }
                if mine.totals.len() < col.totals.len() {
                    mine.totals.resize(col.totals.len(), 0);
                }
                for (t, c) in mine.totals.iter_mut().zip(&col.totals) {
                    *t += c;
                }
            }
        }
    }

    /// Counts one stored event (a name is allocated once, not per event); false, counting
    /// nothing, when the projection holds no user `user_id`.
    pub fn add_event(&mut self, user_id: &str, name: &str, at: i64) -> bool {
        let Some(slot) = self.slot_of(user_id) else {
            return false;
        };
        match self.events.get_mut(name) {
            Some(col) => col.add(slot, at),
            None => self
                .events
                .entry(name.to_owned())
                .or_default()
                .add(slot, at),
        }
        true
    }

    /// Adds events that retention already removed from the store (rebuild): they count in
    /// all-history totals only.
    pub fn add_rolled(&mut self, user_id: &str, name: &str, count: i64) {
        let Some(slot) = self.slot_of(user_id) else {
            return;
        };
        let col = self.events.entry(name.to_owned()).or_default();
        let i = slot as usize;
        if col.totals.len() <= i {
            col.totals.resize(i + 1, 0);
        }
        col.totals[i] += count.clamp(0, i64::from(u32::MAX)) as u32;
    }

    fn kill(&mut self, slot: u32) {
        self.live.set(slot, false);
        // A dead slot never comes back: ids are never reused, and a late write is ignored.
        self.stamps[slot as usize] = u64::MAX;
        let blank = User::new(String::new(), 0);
        self.set_user(slot, &blank, false);
        self.created_at.set(slot, None);
        self.updated_at.set(slot, None);
    }

    /// Writes a user's values into its slot; `fresh` when the slot holds nothing yet (a
    /// build), so keys the user lacks need no clearing.
    fn set_user(&mut self, slot: u32, u: &User, fresh: bool) {
        if !u.id.is_empty() {
            self.live.set(slot, true);
        }
        self.members.set(slot, u.member_id.is_some());
        self.member_id.set(slot, u.member_id.as_deref());
        self.city.set(slot, u.city.as_deref());
        self.country.set(slot, u.country.as_deref());
        self.language.set(slot, u.language.as_deref());
        self.tags
            .set(slot, u.tags.iter().map(String::as_str), |k: &str| {
                Box::from(k)
            });
        self.last_seen_at.set(slot, u.last_seen_at);
        self.created_at.set(slot, Some(u.created_at));
        self.updated_at.set(slot, Some(u.updated_at));
        self.sessions_count.set(slot, Some(u.sessions_count as f64));
        self.has_chat.set(slot, Some(u.has_chat));
        self.has_push_token.set(slot, Some(u.has_push_token));
        self.unsubscribe_email.set(slot, Some(u.unsubscribe_email));
        self.unsubscribe_texting
            .set(slot, Some(u.unsubscribe_texting));
        self.web.set(slot, &u.web);
        self.mobile.set(slot, &u.mobile);
        if !fresh {
            for (k, col) in self.profile.iter_mut() {
                if !u.profile.contains_key(k) {
                    col.set(slot, None);
                }
            }
        }
        for (k, v) in &u.profile {
            match self.profile.get_mut(k) {
                Some(col) => col.set(slot, Some(v)),
                None => self
                    .profile
                    .entry(k.clone())
                    .or_default()
                    .set(slot, Some(v)),
            }
        }
    }

    /// The users matching a query, as slots. `external` holds the counts of event
    /// conditions with `where` clauses. Groups without event conditions run first, so an
    /// event count only has to look at the users still in the running.
    pub fn select(&self, q: &Query, external: &External) -> Bits {
        let mut acc = self.live.clone();
        let mut order: Vec<usize> = (0..q.groups.len()).collect();
        order.sort_by_key(|&g| q.groups[g].iter().any(|c| matches!(c, Cond::Event(_))));
        for gi in order {
            let mut any = Bits::zeros(self.n());
            for (ci, c) in q.groups[gi].iter().enumerate() {
                match c {
                    Cond::Field { field, test } => any.or(&self.field(field, test)),
                    Cond::Event(e) => any.or(&self.event(e, external.get(&(gi, ci)), &acc)),
                }
            }
            acc.and(&any);
            if acc.is_empty() {
                break;
            }
        }
        acc
    }

    fn n(&self) -> u32 {
        self.ids.len() as u32
    }

    fn not(&self, b: &Bits) -> Bits {
        let mut out = self.live.clone();
        out.and_not(b);
        out
    }

    fn bool_test(&self, col: &BoolCol, t: &Test) -> Bits {
        match t {
            Test::Bool(true) => col.yes.clone(),
            Test::Bool(false) => col.no.clone(),
            Test::Exists(true) => col.present(),
            Test::Exists(false) => self.not(&col.present()),
            _ => Bits::default(),
        }
    }

    fn str_test(&self, col: &StrCol, t: &Test) -> Bits {
        match t {
            Test::Exists(want) => col.select(self.n(), |v| v.is_some() == *want),
            Test::Str(s) => col.test(self.n(), s),
            Test::Day { from, to } => col.days(self.n(), *from, *to),
            _ => Bits::default(),
        }
    }

    fn time_test(&self, col: &TimeCol, t: &Test) -> Bits {
        match t {
            Test::Exists(true) => col.range(self.n(), None, None),
            Test::Exists(false) => self.not(&col.range(self.n(), None, None)),
            Test::Time { from, to } => col.range(self.n(), *from, *to),
            _ => Bits::default(),
        }
    }

    fn num_test(&self, col: &NumCol, t: &Test) -> Bits {
        match t {
            Test::Exists(true) => col.present(self.n()),
            Test::Exists(false) => self.not(&col.present(self.n())),
            Test::Num(n) => col.test(self.n(), n),
            _ => Bits::default(),
        }
    }

    fn device(&self, cols: &DeviceCols, d: Device, t: &Test) -> Bits {
        match d {
            Device::LastSeenAt => self.time_test(&cols.last_seen_at, t),
            Device::SessionsCount => self.num_test(&cols.sessions_count, t),
            Device::Browser => self.str_test(&cols.strs[0], t),
            Device::BrowserName => self.str_test(&cols.strs[1], t),
            Device::Os => self.str_test(&cols.strs[2], t),
            Device::OsName => self.str_test(&cols.strs[3], t),
            Device::Device => self.str_test(&cols.strs[4], t),
            Device::AppName => self.str_test(&cols.strs[5], t),
            Device::AppVersion => self.str_test(&cols.strs[6], t),
        }
    }

    fn field(&self, field: &Field, t: &Test) -> Bits {
        match field {
            Field::Builtin(b) => match b {
                Builtin::Id => match t {
                    Test::Exists(true) => self.live.clone(),
                    Test::Str(s) => Bits::select(&self.ids, self.n(), false, |id| {
                        sori_domain::filter::eval::test_str(s, Some(id))
                    }),
                    _ => Bits::default(),
                },
                Builtin::MemberId => self.str_test(&self.member_id, t),
                Builtin::City => self.str_test(&self.city, t),
                Builtin::Country => self.str_test(&self.country, t),
                Builtin::Language => self.str_test(&self.language, t),
                Builtin::Member => match t {
                    Test::Bool(true) => self.members.clone(),
                    Test::Bool(false) => self.not(&self.members),
                    Test::Exists(true) => self.live.clone(),
                    _ => Bits::default(),
                },
                Builtin::Tags => match t {
                    Test::Exists(true) => self.tags.present().clone(),
                    Test::Exists(false) => self.not(self.tags.present()),
                    Test::List(mode, items) => {
                        let keys: Vec<Box<str>> =
                            items.iter().map(|s| Box::from(s.as_str())).collect();
                        self.tags.test(*mode, &keys, self.n(), &self.live)
                    }
                    _ => Bits::default(),
                },
                Builtin::LastSeenAt => self.time_test(&self.last_seen_at, t),
                Builtin::CreatedAt => self.time_test(&self.created_at, t),
                Builtin::UpdatedAt => self.time_test(&self.updated_at, t),
                Builtin::SessionsCount => self.num_test(&self.sessions_count, t),
                Builtin::HasChat => self.bool_test(&self.has_chat, t),
                Builtin::HasPushToken => self.bool_test(&self.has_push_token, t),
                Builtin::UnsubscribeEmail => self.bool_test(&self.unsubscribe_email, t),
                Builtin::UnsubscribeTexting => self.bool_test(&self.unsubscribe_texting, t),
                Builtin::Web(d) => self.device(&self.web, *d, t),
                Builtin::Mobile(d) => self.device(&self.mobile, *d, t),
            },
            Field::Profile { key, ty } => self.profile_field(key, *ty, t),
        }
    }

    fn profile_field(&self, key: &str, ty: FieldType, t: &Test) -> Bits {
        let Some(col) = self.profile.get(key) else {
            // Nobody has a value: only tests that match absence pass.
            return if absent_passes(t) {
                self.live.clone()
            } else {
                Bits::default()
            };
        };
        let n = self.n();
        let present = || -> Bits {
            match ty {
                FieldType::String => col.strs.select(n, |v| v.is_some()),
                FieldType::Date => col.strs.select(n, |v| {
                    v.is_some_and(|s| s.parse::<jiff::civil::Date>().is_ok())
                }),
                FieldType::Number => col.nums.present(n),
                FieldType::Datetime => col.nums.times(n, None, None),
                FieldType::Boolean => col.bools.present(),
                FieldType::List => col.list.present().clone(),
                FieldType::ListOfNumber => col.num_list.present().clone(),
            }
        };
        match t {
            Test::Exists(true) => present(),
            Test::Exists(false) => self.not(&present()),
            Test::Str(_) | Test::Day { .. } => self.str_test(&col.strs, t),
            Test::Num(_) => self.num_test(&col.nums, t),
            Test::Time { from, to } => col.nums.times(n, *from, *to),
            Test::Bool(_) => self.bool_test(&col.bools, t),
            Test::List(mode, items) => {
                let keys: Vec<Box<str>> = items.iter().map(|s| Box::from(s.as_str())).collect();
                col.list.test(*mode, &keys, n, &self.live)
            }
            Test::NumList(mode, items) => {
                let keys: Vec<u64> = items.iter().map(|x| num_key(*x)).collect();
                col.num_list.test(*mode, &keys, n, &self.live)
            }
        }
    }

    /// Users among `candidates` whose event count passes (others are left out: the caller
    /// intersects with them anyway).
    fn event(
        &self,
        e: &EventTest,
        external: Option<&HashMap<String, i64>>,
        candidates: &Bits,
    ) -> Bits {
        let n = self.ids.len();
        let mut counts = vec![0u32; n];
        if !e.props.is_empty() {
            if let Some(ext) = external {
                for (id, c) in ext {
                    if let Some(s) = self.slot_of.get(id) {
                        counts[s as usize] = (*c).clamp(0, i64::from(u32::MAX)) as u32;
                    }
                }
            }
        } else if let Some(col) = self.events.get(&e.name) {
            match e.since {
                None => {
                    counts[..col.totals.len()].copy_from_slice(&col.totals);
                }
                Some(since) => {
                    // Merged slots count for their member: fold them as candidates too.
                    let mut wanted = candidates.clone();
                    for (from, into) in &self.redirect {
                        if candidates.contains(*into) {
                            wanted.set(*from, true);
                        }
                    }
                    for b in col.buckets.range(bucket(since)..).map(|(_, b)| b) {
                        for &s in b {
                            if wanted.contains(s) {
                                counts[s as usize] += 1;
                            }
                        }
                    }
                    for (from, into) in &self.redirect {
                        let c = std::mem::take(&mut counts[*from as usize]);
                        counts[*into as usize] += c;
                    }
                }
            }
        }
        let test = e.count;
        let mut out = Bits::select(&counts, self.n(), false, |c| test.passes(i64::from(*c)));
        out.and(candidates);
        out
    }

    /// Sort keys for listing users: `(slot, key)` pairs where the key orders as requested.
    pub fn sort_key(&self, by: &SortBy, slot: u32) -> SortKey {
        match by {
            SortBy::LastSeenAt => SortKey::Num(self.last_seen_at.get(slot).map(|t| t as f64)),
            SortBy::CreatedAt => SortKey::Num(self.created_at.get(slot).map(|t| t as f64)),
            SortBy::Name => SortKey::Str(
                self.profile
                    .get("name")
                    .and_then(|c| c.strs.get(slot))
                    .map(str::to_owned),
            ),
            SortBy::Profile(k) => match self.profile.get(k) {
                Some(c) => match c.strs.get(slot) {
                    Some(s) => SortKey::Str(Some(s.to_owned())),
                    None => SortKey::Num(c.nums.get(slot)),
                },
                None => SortKey::Num(None),
            },
        }
    }

    /// Approximate heap bytes, for `/metrics`.
    pub fn bytes(&self) -> usize {
        self.ids.iter().map(|s| s.len() + 16).sum::<usize>()
            + self.slot_of.bytes()
            + self.ids.iter().map(|s| s.len()).sum::<usize>()
            + self.stamps.capacity() * 8
            + self.live.bytes()
            + self.members.bytes()
            + self.member_id.bytes()
            + self.city.bytes()
            + self.country.bytes()
            + self.language.bytes()
            + self.tags.bytes()
            + self.last_seen_at.bytes()
            + self.created_at.bytes()
            + self.updated_at.bytes()
            + self.sessions_count.bytes()
            + self.has_chat.bytes()
            + self.has_push_token.bytes()
            + self.unsubscribe_email.bytes()
            + self.unsubscribe_texting.bytes()
            + self.web.bytes()
            + self.mobile.bytes()
            + self.profile.values().map(ProfileCol::bytes).sum::<usize>()
            + self.events.values().map(EventCol::bytes).sum::<usize>()
    }
}

/// What users are listed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    /// Last visit.
    LastSeenAt,
    /// Creation.
    CreatedAt,
    /// `profile.name`.
    Name,
    /// Any profile field.
    Profile(String),
}

/// A sort key; absent values sort last in both directions.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum SortKey {
    /// Numbers and instants.
    Num(Option<f64>),
    /// Text.
    Str(Option<String>),
}

/// Tests whose answer for a user without the value is "yes".
fn absent_passes(t: &Test) -> bool {
    use sori_domain::filter::StrTest;
    match t {
        Test::Exists(want) => !want,
        Test::Str(StrTest::Ne(_) | StrTest::Nin(_) | StrTest::NotContains(_)) => true,
        Test::Num(n) => test_num(n, None),
        Test::List(ListMode::None, _) | Test::NumList(ListMode::None, _) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
