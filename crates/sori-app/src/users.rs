//! The user writer: every user write funnels through a few shard tasks that batch whatever
//! is queued into one store transaction (group commit). One durable commit then answers
//! many requests, which is how SQLite reaches thousands of durable upserts a second with
//! a single writer connection. Shards are picked by user key, so two writes to the same
//! user are always ordered.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{self, Either};
use sori_store::{Store, StoreError, UserOp, UserOpResult};
use tokio::sync::{mpsc, oneshot};

use crate::{AppError, AppResult};

/// The `reason` labels of `sori_user_write_retries_total`: a unique key taken by another
/// writer between read and write, or a race the database broke (deadlock, serialization).
pub const RETRY_REASONS: [&str; 2] = ["conflict", "transient"];

/// Most ops in one transaction; bounds latency of the last op in a batch.
const MAX_BATCH: usize = 2048;
/// Queued ops that let a shard start a second batch while one is in flight (see `run`):
/// fewer would pay a batch's fixed cost for too little (measured on PostgreSQL with 32
/// upsert clients: 8 beat both 1 and 64).
const OVERLAP_MIN: usize = 8;
/// Queued ops per shard before callers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 8192;
/// Longest a request waits for room in a full writer queue before it gets a 503.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Times a batch is retried when another node or shard raced it on a unique key.
const RETRIES: usize = 3;

/// The op goes back with its result, so the requester's thread (not the writer's) pays
/// for freeing it.
type Reply = (Result<UserOpResult, BatchError>, UserOp);

/// Why a batch failed, as each of its writes hears it (a store error is not `Clone`): an
/// unreachable database is a 503 for every one of them, anything else a 500.
#[derive(Debug, Clone)]
enum BatchError {
    Unavailable,
    Failed(String),
}

struct Job {
    op: UserOp,
    reply: oneshot::Sender<Reply>,
}

/// Handle to the writer shards.
#[derive(Clone)]
pub struct UserWriter {
    shards: Arc<[mpsc::Sender<Job>]>,
}

impl UserWriter {
    /// Starts `shards` writer tasks (1 for SQLite's single writer, a few for PostgreSQL).
    /// Each shard runs on its own thread with its own small runtime, so a batch is never
    /// queued behind HTTP work on the request workers: the commit pipeline's latency is
    /// what bounds throughput for a fixed number of clients.
    pub fn spawn(store: Arc<dyn Store>, shards: usize, overlap: usize) -> Self {
        let overlap = overlap.max(1);
        let shards: Vec<_> = (0..shards.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let store = store.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("sori-writer-{i}"))
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(run(store, rx, overlap)),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start user writer runtime")
                            }
                        }
                    });
                if let Err(e) = thread {
                    tracing::error!(error = %e, "cannot start user writer thread");
                }
                tx
            })
            .collect();
        Self {
            shards: shards.into(),
        }
    }

    /// Queues one write and waits until it is committed (or rejected).
    pub fn write(&self, op: UserOp) -> impl Future<Output = AppResult<UserOpResult>> + use<'_> {
        self.write_many(vec![op])
            .map(|all| all?.pop().ok_or(AppError::Unavailable)?)
    }

    /// Queues the writes of one request on one shard, in order, and waits for all of them:
    /// a request's ops (a Segment batch, say) apply in the order they were sent, and each
    /// gets its own result.
    ///
    /// The ops are queued before the future exists (where the queue has room), so the
    /// future holds only their receivers. Not an `async fn`: every layer above (handler,
    /// middleware, connection) moves the future it awaits, and ops or a timed send kept in
    /// it cost kilobytes of copying per request.
    pub fn write_many(
        &self,
        ops: Vec<UserOp>,
    ) -> impl Future<Output = AppResult<Vec<AppResult<UserOpResult>>>> + use<'_> {
        let shard = ops.first().map(|first| {
            let mut h = DefaultHasher::new();
            first.channel_id.hash(&mut h);
            first
                .veil_key()
                .or(first.member_key())
                .or(first.id_key())
                .hash(&mut h);
            &self.shards[(h.finish() as usize) % self.shards.len()]
        });
        let mut waiting = Vec::with_capacity(ops.len());
        // Jobs that found the queue full (or closed: their send fails below), and every
        // one after them, to keep the order.
        let mut blocked = Vec::new();
        if let Some(shard) = shard {
            for op in ops {
                let (reply, rx) = oneshot::channel();
                waiting.push(rx);
                let job = Job { op, reply };
                if !blocked.is_empty() {
                    blocked.push(job);
                    continue;
                }
                if let Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) = shard.try_send(job)
                {
                    blocked.push(job);
                }
            }
        }
        async move {
            if let Some(shard) = shard
                && !blocked.is_empty()
            {
                Box::pin(send_blocked(shard, blocked)).await?;
            }
            let mut out = Vec::with_capacity(waiting.len());
            for rx in waiting {
                out.push(match rx.await {
                    Ok((Ok(r), _op)) => Ok(r),
                    Ok((Err(BatchError::Unavailable), _op)) => Err(AppError::Unavailable),
                    Ok((Err(BatchError::Failed(msg)), _op)) => {
                        Err(AppError::Store(StoreError::Backend(msg.into())))
                    }
                    Err(_) => Err(AppError::Unavailable),
                });
            }
            Ok(out)
        }
    }
}

/// Queues jobs that found the writer's queue full. A full queue means the store cannot
/// keep up: the caller gets a 503 after a while rather than let waiting requests pile up
/// without bound (a closed one, at once).
async fn send_blocked(shard: &mpsc::Sender<Job>, jobs: Vec<Job>) -> AppResult<()> {
    for job in jobs {
        match tokio::time::timeout(QUEUE_WAIT, shard.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(AppError::Unavailable),
        }
    }
    Ok(())
}

/// The (channel, key) pairs a batch addresses.
type Keys = HashSet<(i64, String)>;

/// A shard's loop: whatever is queued becomes one batch; up to `overlap` batches are in the
/// store at once.
async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, overlap: usize) {
    let mut jobs = Vec::new();
    let mut flying: VecDeque<(Keys, tokio::task::JoinHandle<()>)> = VecDeque::new();
    loop {
        // A second batch joins one in flight only when enough is queued to make it worth
        // its fixed cost; otherwise the queue keeps growing into the next batch.
        if rx.len() < OVERLAP_MIN
            && let Some((_, h)) = flying.pop_front()
        {
            let _ = h.await;
            continue;
        }
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            break;
        }
        let batch = std::mem::take(&mut jobs);
        // Only a shard that overlaps batches needs their keys.
        let keys: Keys = if overlap > 1 {
            batch
                .iter()
                .flat_map(|j| {
                    [j.op.id_key(), j.op.member_key(), j.op.veil_key()]
                        .into_iter()
                        .flatten()
                        .map(|k| (j.op.channel_id, k.to_owned()))
                })
                .collect()
        } else {
            Keys::new()
        };
        // Batches in flight together address disjoint keys: a batch sharing a key with an
        // earlier one waits for it, so writes to one user keep their order.
        while !may_join(&flying, &keys, overlap) {
            if let Some((_, h)) = flying.pop_front() {
                let _ = h.await;
            }
        }
        flying.push_back((keys, tokio::spawn(write_batch(store.clone(), batch))));
    }
    for (_, h) in flying {
        let _ = h.await;
    }
}

/// Whether a batch on `keys` may start beside the batches in flight: fewer than `overlap`
/// are, and none shares a key with it.
fn may_join<T>(flying: &VecDeque<(Keys, T)>, keys: &Keys, overlap: usize) -> bool {
    flying.len() < overlap && flying.iter().all(|(k, _)| k.is_disjoint(keys))
}

/// Writes one batch (retrying races) and answers its callers.
async fn write_batch(store: Arc<dyn Store>, jobs: Vec<Job>) {
    let started = Instant::now();
    let (ops, replies): (Vec<UserOp>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
    metrics::histogram!("sori_user_write_batch_size").record(ops.len() as f64);
    let mut attempt = 0;
    let outcome = loop {
        match store.write_users(&ops).await {
            Err(e @ (StoreError::Conflict(_) | StoreError::Transient(_))) if attempt < RETRIES => {
                attempt += 1;
                // Races are normal in small numbers (several nodes or shards, a deadlock
                // PostgreSQL broke); a rising count is worth an operator's look.
                let reason = if matches!(e, StoreError::Conflict(_)) {
                    RETRY_REASONS[0]
                } else {
                    RETRY_REASONS[1]
                };
                metrics::counter!("sori_user_write_retries_total", "reason" => reason).increment(1);
                tracing::debug!(attempt, conflict = %e, "user batch raced; retrying");
            }
            other => break other,
        }
    };
    metrics::histogram!("sori_user_write_batch_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            for ((reply, op), r) in replies.into_iter().zip(ops).zip(results) {
                let _ = reply.send((Ok(r), op));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = ops.len(), "user write batch failed");
            let err = match e {
                StoreError::Unavailable(_) => BatchError::Unavailable,
                e => BatchError::Failed(e.to_string()),
            };
            for (reply, op) in replies.into_iter().zip(ops) {
                let _ = reply.send((Err(err.clone()), op));
            }
        }
    }
}

/// Which path a write came from; decides per-call tag limits and consent rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Server-side Open API (full trust; tags ≤ 20 per call).
    OpenApi,
    /// A manager in the console (tags ≤ 20 per call); registering new profile keys needs
    /// the general-settings permission.
    Desk {
        /// The manager may register new profile fields.
        may_register: bool,
    },
    /// The browser SDK's boot (tags ≤ 10 per call; a boot can never resubscribe; registered
    /// profile keys only).
    SdkBoot,
    /// The customer's own action through the SDK (`updateUser`, tags ≤ 10 per call;
    /// registered profile keys only).
    Sdk,
    /// The Segment-compatible API (server-side, full trust).
    Server,
    /// An import line: a user's whole state moved from elsewhere, so its tag list may be
    /// as long as a user's (an export of a user with 30 tags must import).
    Import,
}

/// One request's change to one user: who, what to update, what it says about activity,
/// and which events to append. Every ingestion path builds these.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Addressed user.
    pub target: sori_store::UserTarget,
    /// Profile/tag/consent change (may be empty).
    pub update: sori_domain::UserUpdate,
    /// Activity (sessions, last seen, device).
    pub activity: sori_domain::activity::Activity,
    /// Events to append.
    pub events: Vec<sori_domain::event::NewEvent>,
    /// The Segment call's `messageId`, which makes the retries of a call without events
    /// (an `identify`) answered instead of applied again ([`sori_store::UserOp::message_id`]).
    pub message_id: Option<String>,
}

impl Ingest {
    /// A plain update without activity or events.
    pub fn update(target: sori_store::UserTarget, update: sori_domain::UserUpdate) -> Self {
        Self {
            target,
            update,
            activity: sori_domain::activity::Activity::default(),
            events: Vec::new(),
            message_id: None,
        }
    }
}

impl crate::App {
    fn context(&self, ch: &crate::auth::ChannelInfo, source: Source) -> sori_domain::ApplyContext {
        use sori_domain::limits::{
            MAX_TAGS_PER_API_CALL, MAX_TAGS_PER_SDK_CALL, MAX_TAGS_PER_USER,
        };
        sori_domain::ApplyContext {
            now: crate::secrets::now_ms(),
            tz: ch.tz.clone(),
            tag_limit_per_call: match source {
                Source::SdkBoot | Source::Sdk => MAX_TAGS_PER_SDK_CALL,
                Source::OpenApi | Source::Desk { .. } | Source::Server => MAX_TAGS_PER_API_CALL,
                Source::Import => MAX_TAGS_PER_USER,
            },
            may_resubscribe: source != Source::SdkBoot,
            new_keys: match source {
                Source::Desk {
                    may_register: false,
                } => sori_domain::update::NewKeys::NeedsPermission,
                Source::SdkBoot | Source::Sdk => sori_domain::update::NewKeys::RegisteredOnly,
                _ => sori_domain::update::NewKeys::Register,
            },
            sets_language: source == Source::Sdk,
        }
    }

    fn op(
        &self,
        ch: &crate::auth::ChannelInfo,
        ingest: Ingest,
        source: Source,
    ) -> AppResult<UserOp> {
        if let sori_store::UserTarget::MemberId { member_id, .. }
        | sori_store::UserTarget::New {
            member_id: Some(member_id),
            ..
        }
        | sori_store::UserTarget::Identify {
            member_id: Some(member_id),
            ..
        } = &ingest.target
        {
            sori_domain::update::check_member_id(member_id)?;
        }
        Ok(UserOp {
            channel_id: ch.channel.id,
            target: ingest.target,
            update: ingest.update,
            ctx: self.context(ch, source),
            activity: ingest.activity,
            events: ingest.events,
            message_id: ingest.message_id,
        })
    }

    /// Runs one user write through the group-committing writer and returns the user.
    pub async fn write_user(
        &self,
        ch: &crate::auth::ChannelInfo,
        target: sori_store::UserTarget,
        update: sori_domain::UserUpdate,
        source: Source,
    ) -> AppResult<sori_domain::User> {
        whole(
            self.ingest(ch, Ingest::update(target, update), source)
                .await?,
        )
    }

    /// Runs one ingest (update, activity, events) as one atomic write.
    ///
    /// Not an `async fn`: the op is built and queued before the future exists, so the
    /// future holds neither (see [`UserWriter::write_many`]).
    pub fn ingest(
        &self,
        ch: &crate::auth::ChannelInfo,
        ingest: Ingest,
        source: Source,
    ) -> impl Future<Output = AppResult<sori_store::UserOpOutcome>> + use<'_> {
        match self.op(ch, ingest, source) {
            Ok(op) => Either::Left(self.users.write(op).map(|r| outcome(r?))),
            Err(e) => Either::Right(future::ready(Err(e))),
        }
    }

    /// Runs several ingests of one request in order; each succeeds or fails on its own.
    pub async fn ingest_many(
        &self,
        ch: &crate::auth::ChannelInfo,
        items: Vec<Ingest>,
        source: Source,
    ) -> AppResult<Vec<AppResult<sori_store::UserOpOutcome>>> {
        let mut ops = Vec::with_capacity(items.len());
        let mut early: Vec<Option<AppError>> = Vec::with_capacity(items.len());
        for item in items {
            match self.op(ch, item, source) {
                Ok(op) => {
                    ops.push(op);
                    early.push(None);
                }
                Err(e) => early.push(Some(e)),
            }
        }
        let mut written = self.users.write_many(ops).await?.into_iter();
        Ok(early
            .into_iter()
            .map(|e| match e {
                Some(e) => Err(e),
                None => match written.next() {
                    Some(r) => r.and_then(outcome),
                    None => Err(AppError::Unavailable),
                },
            })
            .collect())
    }
}

/// The whole user of a write that is not events-only (those always load the row).
pub fn whole(o: sori_store::UserOpOutcome) -> AppResult<sori_domain::User> {
    o.user.ok_or_else(|| {
        AppError::Store(StoreError::Corrupt(
            "a profile write came back without its user".into(),
        ))
    })
}

fn outcome(r: UserOpResult) -> AppResult<sori_store::UserOpOutcome> {
    match r {
        Ok(outcome) => Ok(outcome),
        Err(sori_store::UserOpError::NotFound) => Err(AppError::NotFound("user not found".into())),
        Err(sori_store::UserOpError::MemberIdTaken(m)) => Err(AppError::Conflict(format!(
            "memberId `{m}` belongs to another user"
        ))),
        Err(sori_store::UserOpError::Invalid(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Keys {
        ks.iter().map(|k| (1, (*k).to_owned())).collect()
    }

    #[test]
    fn batches_overlap_only_on_disjoint_keys_and_within_the_limit() {
        let mut flying = VecDeque::new();
        assert!(may_join(&flying, &keys(&["a"]), 1));
        flying.push_back((keys(&["a", "b"]), ()));
        assert!(!may_join(&flying, &keys(&["c"]), 1), "limit of one");
        assert!(may_join(&flying, &keys(&["c"]), 2));
        assert!(!may_join(&flying, &keys(&["c", "b"]), 2), "shares b");
        let other_channel: Keys = [(2, "a".to_owned())].into();
        assert!(may_join(&flying, &other_channel, 2), "keys are per channel");
    }
}
