//! WAL checkpoints on their own thread. SQLite's default runs a checkpoint inside whichever
//! commit finds the log past 1,000 pages: that was a fifth of the batch writer's time under
//! event ingestion, spent while every queued request waited. Here the writer connections
//! never checkpoint (`wal_autocheckpoint = 0`); this thread copies the log into the
//! database between batches, on the other core, and keeps the log short so a restart does
//! not have to read a large one. Only passive checkpoints: they never wait for readers or
//! block writers; the next writer restarts a fully copied log, and `journal_size_limit`
//! (set on the writer connections) trims the file then.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed while the store is open.
const EVERY: Duration = Duration::from_millis(200);

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
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}
