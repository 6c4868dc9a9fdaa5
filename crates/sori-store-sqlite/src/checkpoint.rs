//! WAL checkpoints on their own thread. SQLite's default runs a checkpoint inside whichever
//! commit finds the log past 1,000 pages: that was a fifth of the batch writer's time under
//! event ingestion, spent while every queued request waited. Here the writer connections
//! never checkpoint on their own (`wal_autocheckpoint = 0`); this thread copies the log
//! into the database between batches, on the other core. Only passive checkpoints: they
//! never wait for readers or block writers.
//!
//! Copying is not enough to keep the log short. SQLite starts the log over only when a
//! write transaction begins while every frame is copied, and under a steady load the
//! writer always has a commit newer than the last pass: the log grew by ~130 MB/s, to
//! over a gigabyte in a ten-second benchmark, and every commit then extended the file. So
//! once the log is long, the batch writer finishes the copy itself right after a commit,
//! when the background pass has left only a short tail to copy; its next transaction
//! then starts the log over. That copy stalls the writer (its pages are fsynced), so a
//! cycle is long: see `docs/storage.md` for the measurements behind the numbers.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed while the store is open.
const EVERY: Duration = Duration::from_millis(200);
/// The pause between passes once the log is three quarters of the way to `RESTART_AT`.
const CLOSE: Duration = Duration::from_millis(5);
/// Log length (frames, 4 KiB each) past which the writer makes the log start over.
const RESTART_AT: i64 = 131_072;
/// A tail the writer always copies itself when the log is long (1 MiB).
const SHORT_TAIL: i64 = 256;
/// Past this many times `RESTART_AT` the writer copies whatever is left (the background
/// thread is not keeping up). Twice the cycle is 1 GiB, the `journal_size_limit`.
const FORCE_FACTOR: i64 = 2;

thread_local! {
    /// Frames in the log after this thread's last commit (set by the WAL hook, which runs
    /// inside the commit on the committing thread; the caller holds the connection's lock
    /// from the commit to `after_commit`, so no other commit comes between).
    static LOG_FRAMES: Cell<i64> = const { Cell::new(0) };
}

fn record_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    LOG_FRAMES.with(|f| f.set(i64::from(frames)));
    Ok(())
}

/// Keeps the checkpoint thread running; dropping it stops the thread.
pub(crate) struct Checkpointer {
    _stop: Sender<()>,
    /// Frames of the log copied as of the last pass (the background thread's or the
    /// writer's).
    copied: Arc<AtomicI64>,
    /// The log length after the writer's previous commit.
    last: AtomicI64,
    /// Log length past which the writer makes the log start over (`RESTART_AT`; smaller
    /// in tests).
    restart_at: i64,
}

/// Starts checkpointing the database `conn` is open on.
pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = channel();
    let copied = Arc::new(AtomicI64::new(0));
    let seen = copied.clone();
    std::thread::Builder::new()
        .name("sori-checkpoint".into())
        .spawn(move || run(&conn, &stopped, &seen))?;
    Ok(Checkpointer {
        _stop: stop,
        copied,
        last: AtomicI64::new(0),
        restart_at: RESTART_AT,
    })
}

impl Checkpointer {
    /// Makes `conn` report its log length after each commit (see `after_commit`).
    pub(crate) fn watch(conn: &Connection) {
        conn.wal_hook(Some(record_frames));
    }

    /// Called on the writer's thread right after a commit on a watched connection: when the
    /// log is long and the background pass has left little to copy, copies the rest, so the
    /// next write transaction starts the log over.
    pub(crate) fn after_commit(&self, conn: &Connection) {
        let frames = LOG_FRAMES.with(|f| f.replace(0));
        if frames == 0 {
            // No commit (a failed or read-only batch).
            return;
        }
        let before = self.last.swap(frames, Ordering::Relaxed);
        // What the last commit wrote (the whole log if it started the log over).
        let commit = if frames > before {
            frames - before
        } else {
            frames
        };
        let copied = self.copied.load(Ordering::Relaxed);
        if !restart_due(self.restart_at, frames, copied, commit) {
            return;
        }
        match pass(conn) {
            Ok((_, n)) if n >= 0 => self.copied.store(n, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint on the writer failed"),
        }
    }
}

/// Whether the writer should finish the copy now, with `frames` in the log, `copied` of
/// them copied by the last background pass and `commit` written by the last commit.
fn restart_due(restart_at: i64, frames: i64, copied: i64, commit: i64) -> bool {
    // A pass never covers the commits made while it ran, so the shortest tail to wait for
    // is about two commits: a hundred frames with single events, thousands with batches.
    let short = SHORT_TAIL.max(2 * commit);
    frames >= restart_at && (frames - copied <= short || frames >= restart_at * FORCE_FACTOR)
}

/// One passive checkpoint: `(frames in the log, frames copied)`.
fn pass(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    // Columns: busy, frames in the log, frames copied.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

fn run(conn: &Connection, stopped: &Receiver<()>, copied: &AtomicI64) {
    let mut wait = EVERY;
    let mut seen = 0;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        match pass(conn) {
            Ok((frames, n)) => {
                // -1: another connection was checkpointing; its pass is not known here.
                if n >= 0 {
                    copied.store(n, Ordering::Relaxed);
                }
                // Close to a restart and while writes come in, passes follow each other
                // closely, so the tail the writer is left to copy stays short; an idle
                // store is polled at the normal pace.
                wait = if frames >= RESTART_AT / 4 * 3 && frames != seen {
                    CLOSE
                } else {
                    EVERY
                };
                seen = frames;
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = OFF; \
             CREATE TABLE IF NOT EXISTS t (v BLOB NOT NULL);",
        )
        .expect("pragmas");
        conn
    }

    /// Commits one page-sized row and returns the log length the hook saw.
    fn commit(conn: &Connection) -> i64 {
        conn.execute("INSERT INTO t (v) VALUES (zeroblob(4000))", [])
            .expect("insert");
        LOG_FRAMES.with(Cell::get)
    }

    /// Commits one row and lets the checkpointer look, as the batch writer does; returns
    /// the log length after the commit.
    fn step(ck: &Checkpointer, writer: &Connection) -> i64 {
        let frames = commit(writer);
        ck.after_commit(writer);
        frames
    }

    #[test]
    fn the_writer_finishes_a_short_copy_so_the_log_starts_over() {
        // The page-cache wrapper must be in place before this process first uses SQLite.
        crate::pcache::install();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        let writer = open(&path);
        Checkpointer::watch(&writer);
        let (stop, _) = channel();
        let ck = Checkpointer {
            _stop: stop,
            copied: Arc::new(AtomicI64::new(0)),
            last: AtomicI64::new(0),
            restart_at: 1024,
        };
        // Stands in for the background thread.
        let background = open(&path);
        let mut rows = 0;
        // A reader's snapshot keeps the background pass short of the newest commits, as a
        // steady load does.
        let reader = open(&path);
        for _ in 0..10 {
            step(&ck, &writer);
            rows += 1;
        }
        reader.execute_batch("BEGIN").expect("begin");
        reader
            .query_row("SELECT count(*) FROM t", [], |_| Ok(()))
            .expect("read");
        let mut frames = 0;
        while frames < 1024 + 2 * SHORT_TAIL {
            frames = step(&ck, &writer);
            rows += 1;
        }
        let (_, copied) = pass(&background).expect("pass");
        ck.copied.store(copied, Ordering::Relaxed);
        assert!(
            frames - copied > SHORT_TAIL,
            "the pass stopped at the snapshot"
        );
        reader.execute_batch("COMMIT").expect("end read");
        // The tail is long: the writer leaves it to the background thread, and with
        // nothing to start it over the log keeps growing.
        for _ in 0..3 {
            let next = step(&ck, &writer);
            rows += 1;
            assert!(next > frames, "log went on: {next} after {frames}");
            frames = next;
        }
        // The background pass catches up but for the commit made while it ran (again a
        // snapshot stands for the race); the next commit leaves a short tail, which the
        // writer copies, and its next transaction starts the log over.
        reader.execute_batch("BEGIN").expect("begin");
        reader
            .query_row("SELECT count(*) FROM t", [], |_| Ok(()))
            .expect("read");
        frames = step(&ck, &writer);
        let (_, copied) = pass(&background).expect("pass");
        ck.copied.store(copied, Ordering::Relaxed);
        reader.execute_batch("COMMIT").expect("end read");
        assert!(copied < frames);
        assert!(
            step(&ck, &writer) > frames,
            "no restart before the writer's copy"
        );
        assert!(commit(&writer) < 10, "the log started over");
        rows += 3;
        let (count, check): (i64, String) = writer
            .query_row(
                "SELECT (SELECT count(*) FROM t), (SELECT integrity_check FROM pragma_integrity_check)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("check");
        assert_eq!((count, check.as_str()), (rows, "ok"));
    }

    #[test]
    fn the_writer_copies_only_a_short_tail_unless_the_log_is_very_long() {
        let at = RESTART_AT;
        assert!(!restart_due(at, at - 1, at - 1, 10));
        assert!(restart_due(at, at, at - SHORT_TAIL, 10));
        assert!(!restart_due(at, at, at - SHORT_TAIL - 1, 10));
        // Batches of 2,000 frames: a tail of two of them is short.
        assert!(restart_due(at, at, at - 4000, 2000));
        assert!(!restart_due(at, at, at - 4001, 2000));
        assert!(!restart_due(at, at * FORCE_FACTOR - 1, 0, 10));
        assert!(restart_due(at, at * FORCE_FACTOR, 0, 10));
    }
}
