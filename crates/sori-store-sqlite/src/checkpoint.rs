//! WAL checkpoints on their own thread. SQLite's default runs a checkpoint inside whichever
//! commit finds the log past 1,000 pages: that was a fifth of the batch writer's time under
//! event ingestion, spent while every queued request waited. Here the writer connections
//! never checkpoint (`wal_autocheckpoint = 0`); this thread copies the log into the
//! database between batches, on the other core, and keeps the log short so a restart does
//! not have to read a large one.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed while the store is open.
const EVERY: Duration = Duration::from_millis(200);
/// Log pages a passive checkpoint may leave behind (readers holding old snapshots) before
/// a truncating one, which waits for writers and readers, resets the log.
const TRUNCATE_AT: i64 = 262_144;

/// Keeps the checkpoint thread running; dropping it stops the thread.
pub(crate) struct Checkpointer {
    _stop: Sender<()>,
}

/// Starts checkpointing the database `conn` is open on.
pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = channel();
    std::thread::Builder::new()
        .name("sori-checkpoint".into())
        .spawn(move || run(&conn, &stopped))?;
    Ok(Checkpointer { _stop: stop })
}

fn run(conn: &Connection, stopped: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
        match checkpoint(conn, "PASSIVE") {
            Ok(left) if left > TRUNCATE_AT => {
                if let Err(e) = checkpoint(conn, "TRUNCATE") {
                    tracing::warn!(error = %e, "WAL truncate failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// Runs one checkpoint; returns the log pages not yet copied into the database.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        let log: i64 = r.get(1)?;
        let done: i64 = r.get(2)?;
        Ok(log - done)
    })
}
