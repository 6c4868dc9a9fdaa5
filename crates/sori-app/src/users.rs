//! The user writer: every user write funnels through a few shard tasks that batch whatever
//! is queued into one store transaction (group commit). One durable commit then answers
//! many requests, which is how SQLite reaches thousands of durable upserts a second with
//! a single writer connection. Shards are picked by user key, so two writes to the same
//! user are always ordered.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use sori_store::{Store, StoreError, UserOp, UserOpResult};
use tokio::sync::{mpsc, oneshot};

use crate::{AppError, AppResult};

/// Most ops in one transaction; bounds latency of the last op in a batch.
const MAX_BATCH: usize = 512;
/// Queued ops per shard before callers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 8192;
/// Times a batch is retried when another node or shard raced it on a unique key.
const RETRIES: usize = 3;

struct Job {
    op: UserOp,
    reply: oneshot::Sender<Result<UserOpResult, String>>,
}

/// Handle to the writer shards.
#[derive(Clone)]
pub struct UserWriter {
    shards: Arc<[mpsc::Sender<Job>]>,
}

impl UserWriter {
    /// Starts `shards` writer tasks (1 for SQLite's single writer, a few for PostgreSQL).
    pub fn spawn(store: Arc<dyn Store>, shards: usize) -> Self {
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(store.clone(), rx));
                tx
            })
            .collect();
        Self { shards: shards.into() }
    }

    /// Queues one write and waits until it is committed (or rejected).
    pub async fn write(&self, op: UserOp) -> AppResult<UserOpResult> {
        let mut h = DefaultHasher::new();
        op.channel_id.hash(&mut h);
        op.member_key().or(op.id_key()).hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        let (reply, rx) = oneshot::channel();
        shard.send(Job { op, reply }).await.map_err(|_| AppError::Unavailable)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(msg)) => Err(AppError::Store(StoreError::Backend(msg.into()))),
            Err(_) => Err(AppError::Unavailable),
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let ops: Vec<UserOp> = jobs.iter().map(|j| j.op.clone()).collect();
        metrics::histogram!("sori_user_write_batch_size").record(ops.len() as f64);
        let mut attempt = 0;
        let outcome = loop {
            match store.write_users(ops.clone()).await {
                Err(StoreError::Conflict(m)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, conflict = %m, "user batch raced; retrying");
                }
                other => break other,
            }
        };
        metrics::histogram!("sori_user_write_batch_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(results) => {
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "user write batch failed");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
