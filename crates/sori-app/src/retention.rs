//! The retention job: deletes events older than each channel's retention, in small chunks
//! so ingestion keeps flowing meanwhile (per-user counts and the catalog stay), and prunes
//! the change log.

use std::time::Duration;

use crate::secrets::now_ms;
use crate::{App, AppResult};

/// Events deleted per statement.
const CHUNK: u32 = 5_000;
/// How long logged removals and merges stay in the change log: as far back as a follower
/// may lag and still catch up; one that lags further rebuilds its projection.
const CHANGE_LOG_DAYS: i64 = 7;

impl App {
    /// One pass over every channel; returns how many events went.
    pub async fn enforce_retention(&self) -> AppResult<u64> {
        // Only events this node's projections have read: a backdated event stored a moment
        // ago may have moved its user's createdAt, which followers learn from the event.
        self.audience.catch_up(&self.store).await?;
        let upto = self.audience.followed().await.event;
        let mut total = 0;
        for id in self.store.channel_ids().await? {
            let Some(ch) = self.store.channel(id).await? else {
                continue;
            };
            let tz = sori_domain::channel::time_zone("timeZone", &ch.time_zone)?;
            let cutoff =
                sori_domain::event::Retention::new(now_ms(), &tz, ch.event_retention_days).cutoff();
            loop {
                let n = self
                    .store
                    .delete_events_before(id, cutoff, upto, CHUNK)
                    .await?;
                total += n;
                // Until a chunk finds nothing: another node's pass may have taken part of
                // this one (both pick the oldest rows), which is no sign of the end.
                if n == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // The messageIds of calls without events are kept as long as events are.
            while self
                .store
                .delete_call_keys_before(id, cutoff, CHUNK)
                .await?
                > 0
            {
                tokio::task::yield_now().await;
            }
            self.audience.retire(id, cutoff);
        }
        let week_ago = now_ms() - CHANGE_LOG_DAYS * 24 * 3_600_000;
        let pruned = self.store.prune_changes(week_ago).await?;
        if pruned > 0 {
            tracing::info!(pruned, "old merges and removals left the change log");
        }
        Ok(total)
    }

    /// Runs [`App::enforce_retention`] after `first`, then every `every`, forever. The
    /// first pass waits a little so a starting server does not race its own setup, but
    /// not a whole interval: a server restarted more often than that would never clean up.
    pub async fn retention_loop(self, first: Duration, every: Duration) {
        let mut wait = first;
        loop {
            tokio::time::sleep(wait).await;
            wait = every;
            match self.enforce_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "retention removed old events"),
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    }
}
