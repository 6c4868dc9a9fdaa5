//! The retention job: deletes events older than each channel's retention, in small chunks
//! so ingestion keeps flowing meanwhile. Per-user counts and the catalog stay.

use std::time::Duration;

use crate::secrets::now_ms;
use crate::{App, AppResult};

/// Events deleted per statement.
const CHUNK: u32 = 5_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

impl App {
    /// One pass over every channel; returns how many events went.
    pub async fn enforce_retention(&self) -> AppResult<u64> {
        let mut total = 0;
        for id in self.store.channel_ids().await? {
            let Some(ch) = self.store.channel(id).await? else {
                continue;
            };
            let cutoff = now_ms() - ch.event_retention_days * DAY_MS;
            loop {
                let n = self.store.delete_events_before(id, cutoff, CHUNK).await?;
                total += n;
                if n < u64::from(CHUNK) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    /// Runs [`App::enforce_retention`] every `every`, forever (the first pass after one
    /// interval, so a starting server does not race its own setup).
    pub async fn retention_loop(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.enforce_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "retention removed old events"),
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    }
}
