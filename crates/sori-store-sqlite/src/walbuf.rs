//! A VFS shim that gathers a commit's WAL writes into a few large writes.
//!
//! SQLite writes each page of a commit to the log as its own frame, with two `pwrite`s:
//! the 24-byte frame header, then the page. A frame is 4,120 bytes, so every frame also
//! straddles two kernel pages, and the kernel does its per-page work (look up, lock, mark
//! dirty) three times per frame. Under event ingestion a commit writes thousands of frames
//! (every event dirties a few scattered index pages), and those calls were a quarter of
//! the batch writer's time. This shim keeps consecutive writes to a log file in a buffer
//! and hands them to the real file as one write when they stop being consecutive, when
//! the buffer is full, and before anything that must see the file as written: a read, a
//! sync, a size query, a truncation, a file control, closing. The default VFS takes at
//! most 128 KiB per write, so the buffer goes out 64 KiB at a time.
//!
//! Why that is safe: a commit becomes visible to other connections when SQLite updates
//! the shared-memory index after writing its frames, and with `synchronous = FULL` it
//! syncs the log in between, so every buffered byte is in the file before anyone can look
//! for it. The shim therefore serves only connections that run with FULL, which
//! [`crate::batch::open`] checks. A crash before the sync loses only an unacknowledged
//! commit, exactly as without the shim.
//!
//! Only log files (opened with `SQLITE_OPEN_WAL`) are buffered; every other file and every
//! other call goes straight to the default VFS.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::ffi;

/// The name connections open the shim by.
pub const NAME: &str = "sori-walbuf";
const NAME_C: &CStr = c"sori-walbuf";

/// Largest buffer: small enough to stay in the core's cache between the copy in and the
/// write out (4 MiB measured no better).
const CAPACITY: usize = 256 << 10;
/// Largest single write: the default VFS writes at most 128 KiB per call (it masks the
/// length to 17 bits), so the buffer goes out in pieces of 64 KiB, sixteen frames each.
const CHUNK: usize = 64 << 10;

/// Registers the shim once (not as the default VFS); false when that failed.
pub fn register() -> bool {
    static ONCE: Once = Once::new();
    static OK: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which lives for the
        // process; the shim copies it and is leaked, so SQLite may keep its pointer.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() {
                return;
            }
            let mut vfs = *real;
            vfs.szOsFile = (size_of::<File>() + (*real).szOsFile as usize) as c_int;
            vfs.zName = NAME_C.as_ptr();
            vfs.pAppData = real.cast();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(x_open);
            let vfs = Box::leak(Box::new(vfs));
            OK.store(
                ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK,
                Ordering::Release,
            );
        }
    });
    OK.load(Ordering::Acquire)
}

/// Pending bytes of a log file: `data` goes at offset `start`.
struct Buffer {
    start: i64,
    data: Vec<u8>,
}

/// The shim's file: SQLite's header, the pending writes (log files only) and, right after
/// this struct, the real file.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    buffer: *mut Buffer,
    real: *mut ffi::sqlite3_file,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};

/// # Safety
/// `f` is a file this shim opened.
unsafe fn file<'a>(f: *mut ffi::sqlite3_file) -> &'a mut File {
    unsafe { &mut *f.cast::<File>() }
}

/// The real file and its methods.
///
/// # Safety
/// `f` is a file this shim opened successfully.
unsafe fn real(
    f: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    unsafe {
        let r = file(f).real;
        (r, &*(*r).pMethods)
    }
}

/// Writes the pending bytes to the real file.
///
/// # Safety
/// `f` is a file this shim opened successfully.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let me = file(f);
        if me.buffer.is_null() {
            return ffi::SQLITE_OK;
        }
        let b = &mut *me.buffer;
        if b.data.is_empty() {
            return ffi::SQLITE_OK;
        }
        let (r, m) = real(f);
        let Some(write) = m.xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = ffi::SQLITE_OK;
        let mut at = b.start;
        for chunk in b.data.chunks(CHUNK) {
            rc = write(r, chunk.as_ptr().cast(), chunk.len() as c_int, at);
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += chunk.len() as i64;
        }
        b.data.clear();
        rc
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    unsafe {
        let real_vfs = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
        let me = f.cast::<File>();
        let real_file = me.add(1).cast::<ffi::sqlite3_file>();
        (*me).real = real_file;
        (*me).buffer = std::ptr::null_mut();
        let Some(open) = (*real_vfs).xOpen else {
            (*me).base.pMethods = std::ptr::null();
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(real_vfs, name, real_file, flags, out_flags);
        if (*real_file).pMethods.is_null() {
            // SQLite calls no method, not even xClose, on a file whose open failed.
            (*me).base.pMethods = std::ptr::null();
            return rc;
        }
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 {
            (*me).buffer = Box::into_raw(Box::new(Buffer {
                start: 0,
                data: Vec::new(),
            }));
        }
        (*me).base.pMethods = &METHODS;
        rc
    }
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let flushed = flush(f);
        let me = file(f);
        if !me.buffer.is_null() {
            drop(Box::from_raw(me.buffer));
            me.buffer = std::ptr::null_mut();
        }
        let (r, m) = real(f);
        let closed = m.xClose.map_or(ffi::SQLITE_OK, |c| c(r));
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    n: c_int,
    off: i64,
) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xRead
            .map_or(ffi::SQLITE_IOERR_READ, |g| g(r, buf, n, off))
    }
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    n: c_int,
    off: i64,
) -> c_int {
    unsafe {
        let me = file(f);
        let (r, m) = real(f);
        let Some(write) = m.xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        if me.buffer.is_null() || n < 0 {
            return write(r, buf, n, off);
        }
        let b = &mut *me.buffer;
        let n = n as usize;
        let follows = !b.data.is_empty() && off == b.start + b.data.len() as i64;
        if !follows || b.data.len() + n > CAPACITY {
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            if n >= CHUNK {
                return write(r, buf, n as c_int, off);
            }
            b.start = off;
        }
        if b.data.capacity() == 0 {
            b.data.reserve_exact(CAPACITY);
        }
        b.data
            .extend_from_slice(std::slice::from_raw_parts(buf.cast::<u8>(), n));
        #[cfg(test)]
        tests::BUFFERED.fetch_add(1, Ordering::Relaxed);
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xTruncate
            .map_or(ffi::SQLITE_IOERR_TRUNCATE, |t| t(r, size))
    }
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xSync.map_or(ffi::SQLITE_IOERR_FSYNC, |s| s(r, flags))
    }
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xFileSize.map_or(ffi::SQLITE_IOERR_FSTAT, |s| s(r, size))
    }
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xLock.map_or(ffi::SQLITE_IOERR_LOCK, |l| l(r, level))
    }
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xUnlock.map_or(ffi::SQLITE_IOERR_UNLOCK, |u| u(r, level))
    }
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xCheckReservedLock
            .map_or(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |c| c(r, out))
    }
}

unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        m.xFileControl
            .map_or(ffi::SQLITE_NOTFOUND, |c| c(r, op, arg))
    }
}

unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xSectorSize.map_or(4096, |s| s(r))
    }
}

unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xDeviceCharacteristics.map_or(0, |d| d(r))
    }
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |s| {
            s(r, region, size, extend, out)
        })
    }
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xShmLock
            .map_or(ffi::SQLITE_IOERR_SHMLOCK, |s| s(r, offset, n, flags))
    }
}

unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    unsafe {
        let (r, m) = real(f);
        if let Some(b) = m.xShmBarrier {
            b(r);
        }
    }
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xShmUnmap.map_or(ffi::SQLITE_OK, |u| u(r, delete))
    }
}

unsafe extern "C" fn x_fetch(
    f: *mut ffi::sqlite3_file,
    off: i64,
    n: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (r, m) = real(f);
        match m.xFetch {
            Some(g) => g(r, off, n, out),
            None => {
                *out = std::ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn x_unfetch(f: *mut ffi::sqlite3_file, off: i64, p: *mut c_void) -> c_int {
    unsafe {
        let (r, m) = real(f);
        m.xUnfetch.map_or(ffi::SQLITE_OK, |u| u(r, off, p))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use rusqlite::{Connection, OpenFlags, params};

    /// Writes that went into a buffer (the test shows the shim was on the path).
    pub(super) static BUFFERED: AtomicU64 = AtomicU64::new(0);

    fn state(c: &Connection) -> (i64, i64, String) {
        let (n, sum) = c
            .query_row(
                "SELECT count(*), ifnull(sum(length(v)), 0) FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        (n, sum, ok)
    }

    /// Commits of every size (one frame, several buffers' worth, a transaction larger than
    /// the page cache, which spills and rewrites frames) read back through the default
    /// VFS, and the log left on disk recovers on its own.
    #[test]
    fn buffered_log_reads_back_and_recovers() {
        assert!(super::register());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w =
            Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), super::NAME).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = 64; \
             PRAGMA wal_autocheckpoint = 0; \
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t (v);",
        )
        .unwrap();
        let r = Connection::open(&path).unwrap();
        let before = BUFFERED.load(Ordering::Relaxed);
        let (mut rows, mut bytes) = (0_i64, 0_i64);
        for (round, size) in [1_usize, 40, 3_000, 25_000, 7].into_iter().enumerate() {
            w.execute_batch("BEGIN").unwrap();
            {
                let mut st = w
                    .prepare("INSERT INTO t (v) VALUES (randomblob(?))")
                    .unwrap();
                for i in 0..size {
                    let len = 100 + (i * 37 + round) % 400;
                    st.execute(params![len as i64]).unwrap();
                    rows += 1;
                    bytes += len as i64;
                }
            }
            w.execute_batch("COMMIT").unwrap();
            assert_eq!(state(&r), (rows, bytes, "ok".to_owned()), "round {round}");
        }
        assert!(
            BUFFERED.load(Ordering::Relaxed) > before,
            "no write was buffered"
        );

        // What a crash leaves: the database and its log, no shared-memory index.
        let copy = tempfile::tempdir().unwrap();
        for suffix in ["", "-wal"] {
            std::fs::copy(
                format!("{}{suffix}", path.display()),
                copy.path().join(format!("t.db{suffix}")),
            )
            .unwrap();
        }
        let recovered = Connection::open(copy.path().join("t.db")).unwrap();
        assert_eq!(state(&recovered), (rows, bytes, "ok".to_owned()));
        drop(w);
        assert_eq!(state(&r), (rows, bytes, "ok".to_owned()));
    }
}
