//! Planning a batch of user writes, shared by both backends: the backend loads the rows a
//! batch touches, this module applies the domain rules in order (so two writes to the same
//! user in one batch see each other), and the backend writes back what changed.

use std::collections::{BTreeMap, HashMap, HashSet};

use sori_domain::activity::{Activity, apply_activity};
use sori_domain::event::NewEvent;
use sori_domain::identity::merge_into;
use sori_domain::{ApplyContext, Invalid, ProfileField, Registry, User, UserUpdate, apply_update};

/// Which user a write addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum UserTarget {
    /// An existing user by id; not found is an error.
    Id(String),
    /// A member by member id, created with `new_id` when absent (upsert).
    MemberId {
        /// The business's id.
        member_id: String,
        /// Id to give the user if it has to be created.
        new_id: String,
    },
    /// A new user; fails when `member_id` is already taken.
    New {
        /// Id of the new user.
        id: String,
        /// Optional member id.
        member_id: Option<String>,
    },
    /// A browser or tracked customer (SDK boot, Segment): the member by `member_id`, else
    /// the anonymous user by `veil_id`, created when neither exists. When both exist the
    /// anonymous user is merged into the member (SPEC §3.4). At least one id is set.
    Identify {
        /// The business's id (`userId` in Segment).
        member_id: Option<String>,
        /// The browser's anonymous id (`anonymousId`).
        veil_id: Option<String>,
        /// Id for a created user, and for the merge record.
        new_id: String,
    },
}

/// One write request.
#[derive(Debug, Clone)]
pub struct UserOp {
    /// Tenant.
    pub channel_id: i64,
    /// Addressed user.
    pub target: UserTarget,
    /// Requested change.
    pub update: UserUpdate,
    /// Time, zone and limits for this request.
    pub ctx: ApplyContext,
    /// What the request says about the customer's activity.
    pub activity: Activity,
    /// Events to append to the resolved user.
    pub events: Vec<NewEvent>,
    /// The call's `messageId`. Stored on its own once the call is written when the call
    /// carries no event (a Segment `identify`), so that a retry is answered without
    /// applying it again; events carry theirs, and this one is then not used.
    pub message_id: Option<String>,
}

/// Why one write of a batch failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserOpError {
    /// No such user in the channel.
    #[error("user not found")]
    NotFound,
    /// The member id belongs to another user.
    #[error("memberId `{0}` is already taken")]
    MemberIdTaken(String),
    /// The update broke a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// A successful write.
#[derive(Debug, Clone)]
pub struct UserOpOutcome {
    /// Id of the written user.
    pub user_id: String,
    /// The user after the write; `None` for events-only writes to an existing user, which
    /// never load the whole row (see [`UserOp::is_light`]).
    pub user: Option<User>,
    /// The user did not exist before.
    pub created: bool,
    /// Something changed (and was written).
    pub changed: bool,
    /// The id of an anonymous user merged into this one by this write.
    pub merged_from: Option<String>,
    /// Events of this write not stored because one with the same `messageId` already was
    /// (a retry, or a file imported again), so that imports can report them.
    pub duplicate_events: usize,
}

/// Result of one write of a batch.
pub type UserOpResult = Result<UserOpOutcome, UserOpError>;

/// What a backend must write for a batch.
#[derive(Debug, Default)]
pub struct WritePlan<'a> {
    /// Users to insert or replace, keyed by (channel, id).
    pub users: BTreeMap<(i64, String), User>,
    /// Profile fields registered by the batch.
    pub new_fields: Vec<(i64, ProfileField)>,
    /// One result per op, in order.
    pub results: Vec<UserOpResult>,
    /// Events to append, with their final owner (after this batch's merges).
    /// (Borrowed from the ops: a batch's events are never copied.)
    pub events: Vec<(i64, String, &'a NewEvent)>,
    /// Merges to carry out before the events are appended.
    pub merges: Vec<Merge>,
    /// Activity of events-only writes to users not loaded whole: (channel, id) →
    /// (latest event time, earliest event time, time of the write).
    pub light: BTreeMap<(i64, String), (i64, i64, i64)>,
    /// Ops answered as second deliveries of an earlier op of the batch (see
    /// [`Earlier`]), by position: they write nothing, and their result already counts
    /// their events as stored.
    pub repeats: HashSet<usize>,
    /// The `messageId`s of the calls without events this batch applies (not those it
    /// answers as repeats, nor failed ones), to store with the batch: `(channel,
    /// messageId, user id, when)`, with their final user (after this batch's merges), as
    /// events have. A backend that finds one stored already by another transaction must
    /// roll the batch back and write it again, as for [`Self::raced`]. Sorted, so that
    /// batches that share some take them in one order.
    pub call_keys: Vec<(i64, &'a str, String, i64)>,
}

/// The `messageId`s of a batch's ops before the one being planned, gathered only once an
/// op needs them (a whole-guarded op, or an events-only write that would create its
/// member), so a batch of events to known members never builds the set. An op whose
/// every `messageId` an earlier op of the batch carries is a second delivery of that
/// call (a client's retry that reached the same batch): it is answered as the earlier
/// op was, instead of replaying a visit, session or merge or creating a member for a
/// `userId` the retry named differently.
#[derive(Default)]
struct Earlier<'a> {
    first: HashMap<(i64, &'a str, Keyed), usize>,
    upto: usize,
}

impl<'a> Earlier<'a> {
    /// The earlier op that carries every `messageId` of `ops[i]`, if any.
    fn repeat_of(&mut self, ops: &'a [UserOp], i: usize) -> Option<usize> {
        for (j, op) in ops.iter().enumerate().take(i).skip(self.upto) {
            for k in message_keys(op) {
                self.first.entry(k).or_insert(j);
            }
        }
        self.upto = self.upto.max(i);
        let mut earliest = None;
        for k in message_keys(&ops[i]) {
            let j = *self.first.get(&k)?;
            earliest = Some(earliest.map_or(j, |e: usize| e.min(j)));
        }
        earliest
    }
}

/// The identity columns of a user, enough to route an events-only write.
#[derive(Debug, Clone, PartialEq)]
pub struct UserKeys {
    /// User id.
    pub id: String,
    /// Member id.
    pub member_id: Option<String>,
    /// Veil id.
    pub veil_id: Option<String>,
}

/// An anonymous user folded into a member.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// Tenant.
    pub channel_id: i64,
    /// Id of the merge record.
    pub id: String,
    /// The anonymous user, deleted after its rows move.
    pub from: String,
    /// The member.
    pub into: String,
    /// When (ms).
    pub at: i64,
}

/// Applies `ops` in order over the loaded rows. `loaded` holds every existing user the ops
/// address (by id or member id); `registries` every involved channel's field registry.
/// `light` holds the identity columns of the users that light ops (events only, see
/// [`UserOp::is_light`]) address; such an op never needs the whole row unless another op of
/// the batch loaded it.
pub fn plan_user_writes<'a>(
    ops: &'a [UserOp],
    loaded: Vec<(i64, User)>,
    light: Vec<(i64, UserKeys)>,
    mut registries: HashMap<i64, Registry>,
) -> WritePlan<'a> {
    let light_by_id: HashMap<(i64, &str), &str> = light
        .iter()
        .map(|(ch, k)| ((*ch, k.id.as_str()), k.id.as_str()))
        .collect();
    let light_by_member: HashMap<(i64, &str), &str> = light
        .iter()
        .filter_map(|(ch, k)| k.member_id.as_deref().map(|m| ((*ch, m), k.id.as_str())))
        .collect();
    let light_by_veil: HashMap<(i64, &str), &str> = light
        .iter()
        .filter(|(_, k)| k.member_id.is_none())
        .filter_map(|(ch, k)| k.veil_id.as_deref().map(|v| ((*ch, v), k.id.as_str())))
        .collect();
    let mut users: HashMap<(i64, String), User> = loaded
        .into_iter()
        .map(|(ch, u)| ((ch, u.id.clone()), u))
        .collect();
    let mut by_member: HashMap<(i64, String), String> = users
        .iter()
        .filter_map(|((ch, id), u)| u.member_id.as_ref().map(|m| ((*ch, m.clone()), id.clone())))
        .collect();
    let mut plan = WritePlan::default();

    let mut by_veil: HashMap<(i64, String), String> = users
        .iter()
        .filter(|(_, u)| u.member_id.is_none())
        .filter_map(|((ch, id), u)| u.veil_id.as_ref().map(|v| ((*ch, v.clone()), id.clone())))
        .collect();

    let mut merged_into: HashMap<(i64, String), String> = HashMap::new();
    let mut earlier = Earlier::default();
    // `ops[i]` answered as the earlier op `j` that its `messageId`s repeat, when that op
    // was written (else it is written as any other).
    let repeat = |earlier: &mut Earlier<'a>,
                  plan: &mut WritePlan<'a>,
                  merged_into: &HashMap<(i64, String), String>,
                  i: usize| {
        let j = earlier.repeat_of(ops, i)?;
        let Ok(first) = &plan.results[j] else {
            return None;
        };
        let ch = ops[i].channel_id;
        let user_id = merged_into
            .get(&(ch, first.user_id.clone()))
            .unwrap_or(&first.user_id)
            .clone();
        plan.results.push(Ok(answered_as_stored(&ops[i], user_id)));
        plan.repeats.insert(i);
        Some(())
    };
    for (i, op) in ops.iter().enumerate() {
        let ch = op.channel_id;
        if guarded_whole(op) && repeat(&mut earlier, &mut plan, &merged_into, i).is_some() {
            continue;
        }
        if op.is_light() {
            // Resolved against whole rows first (another op of the batch may have changed
            // the user), then against the identity index; unknown users take the full path
            // and are created.
            let in_batch = match &op.target {
                UserTarget::Id(id) => users.contains_key(&(ch, id.clone())),
                _ => {
                    op.member_key()
                        .is_some_and(|m| by_member.contains_key(&(ch, m.to_owned())))
                        || op
                            .veil_key()
                            .is_some_and(|v| by_veil.contains_key(&(ch, v.to_owned())))
                }
            };
            let known = if in_batch {
                None
            } else {
                match &op.target {
                    UserTarget::Id(id) => light_by_id.get(&(ch, id.as_str())).copied(),
                    _ => op
                        .member_key()
                        .and_then(|m| light_by_member.get(&(ch, m)).copied())
                        .or_else(|| {
                            // Read before planning: an earlier op of this batch may have
                            // made that anonymous user a member, or merged it into one.
                            // The veilId then names no anonymous user (docs/identity.md),
                            // as it would for a call in a later request.
                            op.veil_key()
                                .and_then(|v| light_by_veil.get(&(ch, v)).copied())
                                .filter(|id| {
                                    let key = (ch, (*id).to_owned());
                                    !merged_into.contains_key(&key)
                                        && users.get(&key).is_none_or(|u| u.member_id.is_none())
                                })
                        }),
                }
            };
            if let Some(id) = known {
                // An earlier op of this batch may have merged this user away.
                let id = merged_into
                    .get(&(ch, id.to_owned()))
                    .cloned()
                    .unwrap_or_else(|| id.to_owned());
                let (mut latest, mut earliest) = (i64::MIN, i64::MAX);
                for e in &op.events {
                    latest = latest.max(e.created_at);
                    earliest = earliest.min(e.created_at);
                    plan.events.push((ch, id.clone(), e));
                }
                let slot = plan
                    .light
                    .entry((ch, id.clone()))
                    .or_insert((latest, earliest, op.ctx.now));
                slot.0 = slot.0.max(latest);
                slot.1 = slot.1.min(earliest);
                slot.2 = slot.2.max(op.ctx.now);
                plan.results.push(Ok(UserOpOutcome {
                    user_id: id,
                    user: None,
                    created: false,
                    changed: true,
                    merged_from: None,
                    duplicate_events: 0,
                }));
                continue;
            }
            // Not found: writing it would create its member.
            if !in_batch
                && keyed_by_member(op)
                && repeat(&mut earlier, &mut plan, &merged_into, i).is_some()
            {
                continue;
            }
        }
        let mut merge_from: Option<User> = None;
        // An anonymous user taking a member id: a change even when nothing else is.
        let mut became_member = false;
        let (mut base, created) = match &op.target {
            UserTarget::Id(id) => match users.get(&(ch, id.clone())) {
                Some(u) => (u.clone(), false),
                None => {
                    plan.results.push(Err(UserOpError::NotFound));
                    continue;
                }
            },
            UserTarget::MemberId { member_id, new_id } => {
                match by_member
                    .get(&(ch, member_id.clone()))
                    .and_then(|id| users.get(&(ch, id.clone())))
                {
                    Some(u) => (u.clone(), false),
                    None => {
                        let mut u = User::new(new_id.clone(), op.ctx.now);
                        u.member_id = Some(member_id.clone());
                        (u, true)
                    }
                }
            }
            UserTarget::New { id, member_id } => {
                if let Some(m) = member_id
                    && by_member.contains_key(&(ch, m.clone()))
                {
                    plan.results
                        .push(Err(UserOpError::MemberIdTaken(m.clone())));
                    continue;
                }
                let mut u = User::new(id.clone(), op.ctx.now);
                u.member_id = member_id.clone();
                (u, true)
            }
            UserTarget::Identify {
                member_id,
                veil_id,
                new_id,
            } => {
                let member = member_id
                    .as_ref()
                    .and_then(|m| by_member.get(&(ch, m.clone())))
                    .and_then(|id| users.get(&(ch, id.clone())));
                let anon = veil_id
                    .as_ref()
                    .and_then(|v| by_veil.get(&(ch, v.clone())))
                    .and_then(|id| users.get(&(ch, id.clone())));
                match (member, anon) {
                    (Some(m), Some(a)) => {
                        let mut merged = m.clone();
                        merge_into(&mut merged, a);
                        merge_from = Some(a.clone());
                        (merged, false)
                    }
                    (Some(m), None) => (m.clone(), false),
                    (None, Some(a)) => {
                        let mut u = a.clone();
                        u.member_id.clone_from(member_id);
                        became_member = u.member_id.is_some();
                        (u, false)
                    }
                    (None, None) => {
                        let mut u = User::new(new_id.clone(), op.ctx.now);
                        u.member_id.clone_from(member_id);
                        u.veil_id.clone_from(veil_id);
                        (u, true)
                    }
                }
            }
        };
        let registry = registries.entry(ch).or_default();
        let applied = match apply_update(&base, created, registry, &op.update, &op.ctx) {
            Ok(a) => a,
            Err(e) => {
                plan.results.push(Err(e.into()));
                continue;
            }
        };
        for f in applied.new_fields {
            registry.insert(f.clone());
            plan.new_fields.push((ch, f));
        }
        let identity_changed = became_member || merge_from.is_some();
        base = applied.user;
        let active = apply_activity(&mut base, &op.activity);
        let changed = applied.changed || active || identity_changed || created;
        if changed && !applied.changed {
            base.updated_at = base.updated_at.max(op.ctx.now);
        }
        let user = base;
        let merged_from = merge_from.map(|a| {
            by_veil.retain(|_, id| *id != a.id);
            users.remove(&(ch, a.id.clone()));
            plan.users.remove(&(ch, a.id.clone()));
            for (c, owner, _) in &mut plan.events {
                if *c == ch && *owner == a.id {
                    owner.clone_from(&user.id);
                }
            }
            for (c, _, owner, _) in &mut plan.call_keys {
                if *c == ch && *owner == a.id {
                    owner.clone_from(&user.id);
                }
            }
            let new_id = match &op.target {
                UserTarget::Identify { new_id, .. } => new_id.clone(),
                _ => a.id.clone(),
            };
            merged_into.insert((ch, a.id.clone()), user.id.clone());
            plan.merges.push(Merge {
                channel_id: ch,
                id: new_id,
                from: a.id.clone(),
                into: user.id.clone(),
                at: op.ctx.now,
            });
            a.id
        });
        if user.member_id.is_some() {
            by_veil.retain(|_, id| *id != user.id);
        } else if let Some(v) = &user.veil_id {
            by_veil.insert((ch, v.clone()), user.id.clone());
        }
        if changed {
            if let Some(m) = &user.member_id {
                by_member.insert((ch, m.clone()), user.id.clone());
            }
            users.insert((ch, user.id.clone()), user.clone());
            plan.users.insert((ch, user.id.clone()), user.clone());
        }
        for e in &op.events {
            plan.events.push((ch, user.id.clone(), e));
        }
        if let Some((_, id)) = call_key(op) {
            plan.call_keys.push((ch, id, user.id.clone(), op.ctx.now));
        }
        plan.results.push(Ok(UserOpOutcome {
            user_id: user.id.clone(),
            user: Some(user),
            created,
            changed,
            merged_from,
            duplicate_events: 0,
        }));
    }
    plan.call_keys.sort_unstable();
    plan
}

/// Users to write (a plan's, or a bulk load's), in the order both backends write them:
/// members first, by member id (concurrent batches then wait on the member index in one
/// order), then anonymous users. A visitor signing in and a new anonymous user for the
/// same veilId (its next anonymousId-only call, in the same batch) can then be written in
/// one statement: the unique index of anonymous veilIds sees the old row a member before
/// the new one arrives.
pub fn users_in_write_order(users: &BTreeMap<(i64, String), User>) -> Vec<(i64, &User)> {
    let mut rows: Vec<(i64, &User)> = users.iter().map(|((ch, _), u)| (*ch, u)).collect();
    rows.sort_by(|(a_ch, a), (b_ch, b)| {
        (a_ch, a.member_id.is_none(), &a.member_id, &a.id).cmp(&(
            b_ch,
            b.member_id.is_none(),
            &b.member_id,
            &b.id,
        ))
    });
    rows
}

impl WritePlan<'_> {
    /// Whether a whole-guarded op found every one of its events stored already though the
    /// read before planning had not: another transaction stored the same call in between
    /// (two deliveries racing, on two nodes or shards). The batch must be rolled back and
    /// written again, when the read finds the call and answers it as a retry; kept, it
    /// would replay the visit, session or merge. Call it after
    /// [`WritePlan::account_duplicates`].
    pub fn raced(&self, ops: &[UserOp]) -> bool {
        ops.iter()
            .zip(&self.results)
            .enumerate()
            .any(|(i, (op, r))| {
                guarded_whole(op)
                    && !op.events.is_empty()
                    && !self.repeats.contains(&i)
                    && matches!(r, Ok(o) if o.duplicate_events == op.events.len())
            })
    }

    /// Accounts for the batch's events the store did not insert (`duplicates`: their ids,
    /// already stored by `messageId`). Each write's outcome counts its own (imports report
    /// them), and `light` keeps only what stored events move: a retried event changes no
    /// user, so every activity change lies next to a new event row, which is where
    /// followers of the change sequence look for it (the activity update leaves the user's
    /// change number alone). Call it once the events are in and before `light` is written;
    /// `ops` are the batch's, in order.
    pub fn account_duplicates(
        &mut self,
        ops: &[UserOp],
        duplicates: &std::collections::HashSet<String>,
    ) {
        if duplicates.is_empty() {
            return;
        }
        for (i, (op, r)) in ops.iter().zip(&mut self.results).enumerate() {
            if self.repeats.contains(&i) {
                continue;
            }
            if let Ok(o) = r {
                o.duplicate_events = op
                    .events
                    .iter()
                    .filter(|e| duplicates.contains(&e.id))
                    .count();
                // An events-only write whose events were all stored before wrote nothing.
                if o.user.is_none() && o.duplicate_events == op.events.len() {
                    o.changed = false;
                }
            }
        }
        let mut stored: BTreeMap<(i64, &str), (i64, i64)> = BTreeMap::new();
        for (ch, user, e) in &self.events {
            if !duplicates.contains(&e.id) {
                let slot = stored
                    .entry((*ch, user.as_str()))
                    .or_insert((i64::MIN, i64::MAX));
                slot.0 = slot.0.max(e.created_at);
                slot.1 = slot.1.min(e.created_at);
            }
        }
        self.light.retain(|(ch, id), (latest, earliest, _)| {
            match stored.get(&(*ch, id.as_str())) {
                Some((l, e)) => {
                    (*latest, *earliest) = (*l, *e);
                    true
                }
                None => false,
            }
        });
    }
}

/// Whether a stored `messageId` makes this whole op a retry (not only its event rows): it
/// is more than an events-only write (a visit, an identify that comes with an event), and
/// every one of its events carries a `messageId`. Applying such a retry again would redo
/// what the first delivery did: a visit would start a session, and an anonymous visit
/// whose anonymous user the first delivery merged away would create a new one to merge.
///
/// An events-only write to an anonymous id is guarded too: its anonymous user may have
/// been merged away since, and a retry would create an empty one. Events-only writes to
/// a member or a user id skip the lookup (a retried event row is refused on its own).
fn guarded_whole(op: &UserOp) -> bool {
    all_keyed(op) && (!op.is_light() || (op.member_key().is_none() && op.veil_key().is_some()))
}

/// What a `messageId` keys. The two are kept apart, as the stores keep them: an
/// `identify` that reuses a `track`'s id repeats nothing, in one batch as across two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Keyed {
    /// An event (its row holds the id).
    Event,
    /// A call without events ([`UserOp::message_id`]).
    Call,
}

/// The `(channel, messageId, what it keys)`s of `op`: its events' that carry one, or its
/// own when it has no events.
fn message_keys(op: &UserOp) -> impl Iterator<Item = (i64, &str, Keyed)> {
    let events = event_keys(op).map(|(ch, id)| (ch, id, Keyed::Event));
    events.chain(call_key(op).map(|(ch, id)| (ch, id, Keyed::Call)))
}

/// The `(channel, messageId)`s of `op`'s events that carry one.
fn event_keys(op: &UserOp) -> impl Iterator<Item = (i64, &str)> {
    op.events
        .iter()
        .filter_map(|e| Some((op.channel_id, e.message_id.as_deref()?)))
}

/// The `(channel, messageId)` of a call without events.
fn call_key(op: &UserOp) -> Option<(i64, &str)> {
    let id = op.message_id.as_deref().filter(|_| op.events.is_empty())?;
    Some((op.channel_id, id))
}

/// Whether each op's `messageId`s are looked up before the batch is planned: whole-guarded
/// ops, and events-only writes to a user whom another op of the batch names for more than
/// events (an `identify` sent with a `track`). The planner applies such a write's activity
/// to the whole row it loaded, where a stored event can no longer hold `lastSeenAt` back
/// as it does on the events-only path, so a retried batch would move it.
fn looked_up(ops: &[UserOp]) -> Vec<bool> {
    // (Events-only writes by anonymous id alone are whole-guarded already.)
    let whole: HashSet<(i64, &str)> = ops
        .iter()
        .filter(|op| !op.is_light())
        .filter_map(|op| Some((op.channel_id, op.member_key()?)))
        .collect();
    ops.iter()
        .map(|op| {
            guarded_whole(op)
                || (!whole.is_empty()
                    && keyed_by_member(op)
                    && op
                        .member_key()
                        .is_some_and(|m| whole.contains(&(op.channel_id, m))))
        })
        .collect()
}

/// The ops of a batch whose `messageId`s are read before it is written, and the answers
/// for those found stored: whole retries, which write nothing. Read before planning (see
/// [`looked_up`]), or once the batch's members are found, for the writes that would create
/// a member (see [`creates_member`]; few, since a member is created once, so the hot path
/// of events to known members pays nothing).
pub struct RetryCheck<'a> {
    ops: &'a [UserOp],
    /// By position: whether the op's `messageId`s are read.
    checked: Vec<bool>,
}

impl<'a> RetryCheck<'a> {
    /// The check made before a batch is planned.
    pub fn before_planning(ops: &'a [UserOp]) -> Self {
        Self {
            ops,
            checked: looked_up(ops),
        }
    }

    /// The check of the writes that would create a member, once the batch's lookups found
    /// its members: whole rows (`loaded`) and identity rows (`light`), as
    /// [`plan_user_writes`] is given them.
    pub fn creations(ops: &'a [UserOp], loaded: &[(i64, User)], light: &[(i64, UserKeys)]) -> Self {
        let found = found_members(loaded, light);
        Self {
            ops,
            checked: ops.iter().map(|op| creates_member(op, &found)).collect(),
        }
    }

    /// The `(channel, messageId)`s to look up among stored events.
    pub fn keys(&self) -> Vec<(i64, &'a str)> {
        self.checked_ops().flat_map(event_keys).collect()
    }

    /// The `(channel, messageId)`s to look up among stored calls without events
    /// ([`UserOp::message_id`]).
    pub fn call_keys(&self) -> Vec<(i64, &'a str)> {
        self.checked_ops().filter_map(call_key).collect()
    }

    fn checked_ops(&self) -> impl Iterator<Item = &'a UserOp> + '_ {
        self.ops
            .iter()
            .zip(&self.checked)
            .filter(|(_, checked)| **checked)
            .map(|(op, _)| op)
    }

    /// For each op, by position, its result when it is a whole retry (every event's
    /// `messageId` is stored, or a call's without events; `owners` maps them to the
    /// users they were stored for), which writes nothing; `None` for an op to write. A
    /// creation answered so names the stored events' owner, another user than the one
    /// the write named (no caller shows it: Segment answers calls without user ids, and
    /// imports count such lines as stored).
    pub fn retried(&self, owners: &StoredOwners) -> Vec<Option<UserOpResult>> {
        self.ops
            .iter()
            .zip(&self.checked)
            .map(|(op, checked)| checked.then(|| stored_whole(op, owners)).flatten())
            .collect()
    }
}

/// The users stored `messageId`s belong to, as a backend found them for a
/// [`RetryCheck`], by channel and `messageId`.
#[derive(Debug, Default)]
pub struct StoredOwners {
    /// Owners of stored events ([`RetryCheck::keys`]).
    pub events: HashMap<(i64, String), String>,
    /// Users stored calls without events were applied to ([`RetryCheck::call_keys`]).
    pub calls: HashMap<(i64, String), String>,
}

/// `op`'s result when every one of its `messageId`s is stored (`owners`), which makes it
/// a retry to answer without writing.
fn stored_whole(op: &UserOp, owners: &StoredOwners) -> Option<UserOpResult> {
    let mut owner = None;
    for (ch, id, keyed) in message_keys(op) {
        let found = match keyed {
            Keyed::Event => &owners.events,
            Keyed::Call => &owners.calls,
        };
        owner = Some(found.get(&(ch, id.to_owned()))?.clone());
    }
    Some(Ok(answered_as_stored(op, owner?)))
}

/// The outcome of `op` answered as a delivery stored before (by `user_id`): nothing
/// written, every event counted as stored.
fn answered_as_stored(op: &UserOp, user_id: String) -> UserOpOutcome {
    UserOpOutcome {
        user_id,
        user: None,
        created: false,
        changed: false,
        merged_from: None,
        duplicate_events: op.events.len(),
    }
}

/// Whether `op` is an events-only write by member id, every event with a `messageId`,
/// whose member the batch's lookups did not find (`found`: channel and member id), so
/// that writing it would create the member. Such writes skip the whole-call guard (see
/// [`guarded_whole`]): the event row alone refuses a retry to a member that exists. But a
/// `messageId` reused for a member not known yet would then create that member, empty.
fn creates_member(op: &UserOp, found: &HashSet<(i64, &str)>) -> bool {
    keyed_by_member(op)
        && op
            .member_key()
            .is_some_and(|m| !found.contains(&(op.channel_id, m)))
}

/// Whether `op` is an events-only write by member id, every event with a `messageId`:
/// one that [`creates_member`] checks once the batch's members are looked up, and that
/// [`looked_up`] checks before when another op of the batch loads its member whole.
fn keyed_by_member(op: &UserOp) -> bool {
    op.is_light() && all_keyed(op) && op.member_key().is_some()
}

/// Whether `op` has events and every one carries a `messageId`, or has none and carries
/// its own.
fn all_keyed(op: &UserOp) -> bool {
    match op.events.is_empty() {
        true => op.message_id.is_some(),
        false => op.events.iter().all(|e| e.message_id.is_some()),
    }
}

/// The members the batch's lookups found, whole rows (`loaded`) and identity rows
/// (`light`), as [`plan_user_writes`] is given them.
fn found_members<'a>(
    loaded: &'a [(i64, User)],
    light: &'a [(i64, UserKeys)],
) -> HashSet<(i64, &'a str)> {
    loaded
        .iter()
        .filter_map(|(ch, u)| Some((*ch, u.member_id.as_deref()?)))
        .chain(
            light
                .iter()
                .filter_map(|(ch, k)| Some((*ch, k.member_id.as_deref()?))),
        )
        .collect()
}

/// The ops to write when some are whole retries (`done`, from [`RetryCheck::retried`]);
/// `None` when
/// none is, so the batch is written as it came.
pub fn to_write(ops: &[UserOp], done: &[Option<UserOpResult>]) -> Option<Vec<UserOp>> {
    if done.iter().all(Option::is_none) {
        return None;
    }
    Some(
        ops.iter()
            .zip(done)
            .filter(|(_, d)| d.is_none())
            .map(|(op, _)| op.clone())
            .collect(),
    )
}

/// The batch's results: the retries' from `done`, the written ops' in their places.
pub fn with_retries(
    done: Vec<Option<UserOpResult>>,
    written: Vec<UserOpResult>,
) -> crate::Result<Vec<UserOpResult>> {
    let mut written = written.into_iter();
    done.into_iter()
        .map(|d| match d {
            Some(r) => Ok(r),
            None => written.next().ok_or_else(|| {
                crate::StoreError::Corrupt("a batch answered fewer writes than it was given".into())
            }),
        })
        .collect()
}

impl UserOp {
    /// The user ids this op may read.
    pub fn id_key(&self) -> Option<&str> {
        match &self.target {
            UserTarget::Id(id) => Some(id),
            _ => None,
        }
    }

    /// The member id this op may read.
    pub fn member_key(&self) -> Option<&str> {
        match &self.target {
            UserTarget::MemberId { member_id, .. } => Some(member_id),
            UserTarget::New { member_id, .. } | UserTarget::Identify { member_id, .. } => {
                member_id.as_deref()
            }
            UserTarget::Id(_) => None,
        }
    }

    /// True for an events-only write (no profile change, no visit, no explicit times) to
    /// a user named by one key: it only appends events and moves `lastSeenAt`, so backends
    /// can route it by the user's identity columns without loading the whole row. This is
    /// what keeps event ingestion fast.
    pub fn is_light(&self) -> bool {
        let a = &self.activity;
        !self.events.is_empty()
            && self.update == UserUpdate::default()
            && a.visit.is_none()
            && a.created_at.is_none()
            && a.last_seen_at.is_none()
            && a.city.is_none()
            && a.country.is_none()
            && match &self.target {
                UserTarget::Id(_) | UserTarget::MemberId { .. } => true,
                UserTarget::Identify {
                    member_id, veil_id, ..
                } => member_id.is_some() != veil_id.is_some(),
                UserTarget::New { .. } => false,
            }
    }

    /// The anonymous veil id this op may read (only users without a member id match).
    pub fn veil_key(&self) -> Option<&str> {
        match &self.target {
            UserTarget::Identify { veil_id, .. } => veil_id.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sori_domain::update::UPDATE_FIELDS;

    fn op(target: UserTarget, body: serde_json::Value) -> UserOp {
        UserOp {
            channel_id: 1,
            target,
            update: UserUpdate::from_json(&body, UPDATE_FIELDS).expect("valid"),
            ctx: ApplyContext {
                now: 5,
                tz: jiff::tz::TimeZone::UTC,
                tag_limit_per_call: 20,
                may_resubscribe: true,
                new_keys: sori_domain::update::NewKeys::Register,
                sets_language: false,
            },
            activity: Activity::default(),
            events: Vec::new(),
            message_id: None,
        }
    }

    /// A Segment-style identify by both ids that changes nothing else (a sign-in).
    fn identify(member: Option<&str>, veil: &str, new_id: &str) -> UserOp {
        let mut o = op(
            UserTarget::Identify {
                member_id: member.map(Into::into),
                veil_id: Some(veil.into()),
                new_id: new_id.into(),
            },
            json!({}),
        );
        o.update = UserUpdate::default();
        o
    }

    /// A Segment event `id` at `at`.
    fn event(id: &str, at: i64) -> sori_domain::event::NewEvent {
        sori_domain::event::NewEvent::new(
            id.into(),
            "E".into(),
            serde_json::Map::new(),
            None,
            at,
            sori_domain::event::EventSource::Segment,
        )
    }

    fn upsert(m: &str, id: &str, body: serde_json::Value) -> UserOp {
        op(
            UserTarget::MemberId {
                member_id: m.into(),
                new_id: id.into(),
            },
            body,
        )
    }

    #[test]
    fn two_writes_to_one_new_member_in_a_batch_create_it_once() {
        let ops = [
            upsert("m1", "a", json!({"profile": {"name": "Kim"}})),
            upsert("m1", "b", json!({"profile": {"age": 3}})),
        ];
        let plan = plan_user_writes(&ops, vec![], vec![], HashMap::new());
        assert_eq!(plan.users.len(), 1);
        let u = &plan.users[&(1, "a".to_owned())];
        assert_eq!(u.profile["name"], json!("Kim"));
        assert_eq!(u.profile["age"], json!(3));
        assert!(plan.results[0].as_ref().expect("ok").created);
        assert!(!plan.results[1].as_ref().expect("ok").created);
        assert_eq!(plan.new_fields.len(), 2);
    }

    #[test]
    fn a_failing_op_leaves_the_others_alone() {
        let ops = [
            upsert("m1", "a", json!({"profile": {"name": 1}})),
            upsert("m2", "b", json!({"profile": {"name": "Lee"}})),
            op(UserTarget::Id("zz".into()), json!({})),
        ];
        let plan = plan_user_writes(
            &ops,
            vec![],
            vec![],
            HashMap::from([(1, Registry::new(Registry::preregistered(0)))]),
        );
        assert!(matches!(plan.results[0], Err(UserOpError::Invalid(_))));
        assert!(plan.results[1].is_ok());
        assert_eq!(plan.results[2].as_ref().err(), Some(&UserOpError::NotFound));
        assert_eq!(plan.users.len(), 1);
    }

    #[test]
    fn an_identify_with_both_ids_and_nothing_else_makes_the_anonymous_user_a_member() {
        let mut anon = User::new("a".into(), 1);
        anon.veil_id = Some("v1".into());
        let ops = [identify(Some("42"), "v1", "n")];
        let plan = plan_user_writes(&ops, vec![(1, anon)], Vec::new(), HashMap::new());
        let written = &plan.users[&(1, "a".to_owned())];
        assert_eq!(written.member_id.as_deref(), Some("42"));
        assert!(plan.results[0].as_ref().expect("ok").changed);
    }

    /// An anonymousId-only call after the identify that signed its visitor in, in one
    /// batch, is planned as it would be in a later request: the veilId names no anonymous
    /// user any more, so a new one is made, whether the identify made the anonymous user
    /// a member or merged it into one (QA: it landed on the member, or not, by chance).
    #[test]
    fn a_veil_only_write_after_a_sign_in_in_the_batch_makes_a_new_anonymous_user() {
        for member_exists in [false, true] {
            let mut loaded = Vec::new();
            if member_exists {
                let mut member = User::new("m".into(), 1);
                member.member_id = Some("42".into());
                loaded.push((1, member));
            }
            let mut anon = User::new("a".into(), 1);
            anon.veil_id = Some("v1".into());
            loaded.push((1, anon));
            let mut track = identify(None, "v1", "n2");
            track.events = vec![event("e1", 3)];
            assert!(track.is_light());
            let keys = UserKeys {
                id: "a".into(),
                member_id: None,
                veil_id: Some("v1".into()),
            };
            let ops = [identify(Some("42"), "v1", "n1"), track];
            let plan = plan_user_writes(&ops, loaded, vec![(1, keys)], HashMap::new());
            let owner = &plan.results[1].as_ref().expect("ok").user_id;
            assert_eq!(owner, "n2", "member exists: {member_exists}");
            assert_eq!(plan.events[0].1, "n2");
            assert!(plan.users[&(1, "n2".to_owned())].member_id.is_none());
        }
    }

    #[test]
    fn an_events_only_write_after_a_merge_lands_on_the_member() {
        let mut member = User::new("m".into(), 1);
        member.member_id = Some("42".into());
        let mut anon = User::new("a".into(), 1);
        anon.veil_id = Some("v1".into());
        let mut late = op(UserTarget::Id("a".into()), json!({}));
        late.update = UserUpdate::default();
        late.events = vec![event("e1", 3)];
        assert!(late.is_light());
        let keys = UserKeys {
            id: "a".into(),
            member_id: None,
            veil_id: Some("v1".into()),
        };
        let ops = [identify(Some("42"), "v1", "merge-1"), late];
        let plan = plan_user_writes(
            &ops,
            vec![(1, member), (1, anon)],
            vec![(1, keys)],
            HashMap::new(),
        );
        assert_eq!(plan.merges.len(), 1);
        assert_eq!(plan.events[0].1, "m");
        assert_eq!(plan.results[1].as_ref().expect("ok").user_id, "m");
    }

    #[test]
    fn retried_events_move_no_activity() {
        use sori_domain::event::NewEvent;
        let event = |id: &str, at: i64| {
            let mut e = event(id, at);
            e.message_id = Some(format!("m-{id}"));
            e
        };
        let light = |user: &str, events: Vec<NewEvent>| {
            let mut o = op(UserTarget::Id(user.into()), json!({}));
            o.update = UserUpdate::default();
            o.events = events;
            assert!(o.is_light());
            o
        };
        // u1: one new event among retries; u2: retries only.
        let ops = [
            light("u1", vec![event("a", 10), event("b", 30), event("c", 20)]),
            light("u2", vec![event("d", 40)]),
        ];
        let keys = |id: &str| UserKeys {
            id: id.into(),
            member_id: None,
            veil_id: None,
        };
        let mut plan = plan_user_writes(
            &ops,
            vec![],
            vec![(1, keys("u1")), (1, keys("u2"))],
            HashMap::new(),
        );
        assert_eq!(plan.light[&(1, "u1".to_owned())], (30, 10, 5));
        let duplicates = ["a", "b", "d"].map(String::from).into_iter().collect();
        plan.account_duplicates(&ops, &duplicates);
        assert_eq!(
            plan.light.into_iter().collect::<Vec<_>>(),
            vec![((1, "u1".to_owned()), (20, 20, 5))]
        );
        let outcomes: Vec<(bool, usize)> = plan
            .results
            .iter()
            .map(|r| {
                let o = r.as_ref().unwrap();
                (o.changed, o.duplicate_events)
            })
            .collect();
        assert_eq!(outcomes, vec![(true, 2), (false, 1)], "u2 wrote nothing");
    }

    #[test]
    fn second_deliveries_in_one_batch_are_answered_as_the_first() {
        use sori_domain::event::NewEvent;
        let event = |id: &str, message: &str| {
            let mut e = event(id, 3);
            e.message_id = Some(message.into());
            e
        };
        let track = |member: &str, new_id: &str, e: NewEvent| {
            let mut o = op(
                UserTarget::Identify {
                    member_id: Some(member.into()),
                    veil_id: None,
                    new_id: new_id.into(),
                },
                json!({}),
            );
            o.update = UserUpdate::default();
            o.events = vec![e];
            assert!(o.is_light());
            o
        };
        let visit = |veil: &str, new_id: &str, e: NewEvent| {
            let mut o = op(
                UserTarget::Identify {
                    member_id: None,
                    veil_id: Some(veil.into()),
                    new_id: new_id.into(),
                },
                json!({}),
            );
            o.update = UserUpdate::default();
            o.activity = Activity {
                at: Some(3),
                visit: Some(sori_domain::activity::Visit::default()),
                ..Activity::default()
            };
            o.events = vec![e];
            assert!(guarded_whole(&o));
            o
        };
        // Two new members sharing a messageId; an anonymous visit delivered twice (the
        // second copy naming another visitor); a known member's event, written as usual.
        let ops = [
            track("twin-1", "u1", event("e1", "M")),
            track("twin-2", "u2", event("e2", "M")),
            visit("v1", "u3", event("e3", "V")),
            visit("v2", "u4", event("e4", "V")),
            track("known", "u5", event("e5", "K")),
        ];
        let keys = UserKeys {
            id: "k".into(),
            member_id: Some("known".into()),
            veil_id: None,
        };
        let mut plan = plan_user_writes(&ops, vec![], vec![(1, keys)], HashMap::new());
        let ids: Vec<&str> = plan
            .results
            .iter()
            .map(|r| r.as_ref().expect("ok").user_id.as_str())
            .collect();
        assert_eq!(ids, ["u1", "u1", "u3", "u3", "k"]);
        assert_eq!(
            plan.users
                .keys()
                .map(|(_, id)| id.as_str())
                .collect::<Vec<_>>(),
            ["u1", "u3"],
            "no user for the second deliveries"
        );
        let events: Vec<&str> = plan.events.iter().map(|(_, _, e)| e.id.as_str()).collect();
        assert_eq!(events, ["e1", "e3", "e5"]);
        assert_eq!(plan.repeats, HashSet::from([1, 3]));
        // The store refuses nothing new; the repeats keep counting their events as stored,
        // and none of them reads as a race to roll back.
        plan.account_duplicates(&ops, &HashSet::from(["e5".to_owned()]));
        let counted: Vec<usize> = plan
            .results
            .iter()
            .map(|r| r.as_ref().expect("ok").duplicate_events)
            .collect();
        assert_eq!(counted, [0, 1, 0, 1, 1]);
        assert!(!plan.raced(&ops));
    }

    #[test]
    fn member_id_conflicts_on_create() {
        let mut existing = User::new("a".into(), 1);
        existing.member_id = Some("m1".into());
        let ops = [op(
            UserTarget::New {
                id: "b".into(),
                member_id: Some("m1".into()),
            },
            json!({}),
        )];
        let plan = plan_user_writes(&ops, vec![(1, existing)], vec![], HashMap::new());
        assert_eq!(
            plan.results[0].as_ref().err(),
            Some(&UserOpError::MemberIdTaken("m1".into()))
        );
    }
}
