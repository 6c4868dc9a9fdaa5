//! A thin wrapper around SQLite's own page cache that spares every commit a scan of the
//! whole cache.
//!
//! When a B-tree page split hands out new pages out of order, SQLite swaps their numbers
//! through a temporary key, the "pending byte" page (page 262,145 with 4 KiB pages). The
//! built-in cache remembers the largest key it has seen, so the commit of every
//! transaction that split pages that way ("drop pages beyond the end of the database")
//! walks the entire hash table and every cached page, though none lies beyond the end. On the event writer that walk was 13 % of the
//! thread's time. This wrapper keeps its own largest key, leaving the temporary key out,
//! and skips truncations that cannot drop anything; every other call goes straight to the
//! built-in cache.
//!
//! Unsafe code (with `walbuf`, the only in Sori): SQLite takes a page cache as a table of C
//! functions.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rusqlite::ffi;

/// SQLite's `PENDING_BYTE` (a compile-time constant of the library).
const PENDING_BYTE: u32 = 0x4000_0000;

/// The built-in methods, captured once before the wrapper is installed.
static mut INNER: ffi::sqlite3_pcache_methods2 = ffi::sqlite3_pcache_methods2 {
    iVersion: 0,
    pArg: std::ptr::null_mut(),
    xInit: None,
    xShutdown: None,
    xCreate: None,
    xCachesize: None,
    xPagecount: None,
    xFetch: None,
    xUnpin: None,
    xRekey: None,
    xTruncate: None,
    xDestroy: None,
    xShrink: None,
};

/// Whether `install` succeeded (tests check it).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// How often each path ran, for the test to show it exercised them.
#[cfg(test)]
static COUNTS: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];
#[cfg(test)]
const SWAPS: usize = 0;
#[cfg(test)]
const SKIPPED: usize = 1;
#[cfg(test)]
const FORWARDED: usize = 2;

#[cfg(test)]
fn count(what: usize) {
    COUNTS[what].fetch_add(1, Ordering::Relaxed);
}

/// One cache: the built-in one plus the largest page number it may hold.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    pending: u32,
    max_key: AtomicU32,
}

fn inner() -> &'static ffi::sqlite3_pcache_methods2 {
    // SAFETY: written once in `install` before SQLite is initialized, read-only after.
    unsafe { &*std::ptr::addr_of!(INNER) }
}

/// # Safety
/// `p` is a pointer this module returned from `x_create` and not yet destroyed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    unsafe { &*(p as *const Cache) }
}

unsafe extern "C" fn x_init(arg: *mut c_void) -> c_int {
    unsafe { inner().xInit.map_or(ffi::SQLITE_OK, |f| f(arg)) }
}

unsafe extern "C" fn x_shutdown(arg: *mut c_void) {
    if let Some(f) = inner().xShutdown {
        unsafe { f(arg) }
    }
}

unsafe extern "C" fn x_create(
    sz_page: c_int,
    sz_extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(create) = inner().xCreate else {
        return std::ptr::null_mut();
    };
    let p = unsafe { create(sz_page, sz_extra, purgeable) };
    if p.is_null() {
        return p;
    }
    let pending = PENDING_BYTE / (sz_page.max(1) as u32) + 1;
    Box::into_raw(Box::new(Cache {
        inner: p,
        pending,
        max_key: AtomicU32::new(0),
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn x_cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(f) = inner().xCachesize {
        unsafe { f(cache(p).inner, n) }
    }
}

unsafe extern "C" fn x_pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    unsafe { inner().xPagecount.map_or(0, |f| f(cache(p).inner)) }
}

unsafe extern "C" fn x_fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = unsafe { cache(p) };
    let Some(fetch) = inner().xFetch else {
        return std::ptr::null_mut();
    };
    let page = unsafe { fetch(c.inner, key, create) };
    if !page.is_null() && create != 0 {
        c.max_key.fetch_max(key, Ordering::Relaxed);
    }
    page
}

unsafe extern "C" fn x_unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = inner().xUnpin {
        unsafe { f(cache(p).inner, page, discard) }
    }
}

unsafe extern "C" fn x_rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = unsafe { cache(p) };
    if let Some(f) = inner().xRekey {
        unsafe { f(c.inner, page, old, new) }
    }
    // The pending page only ever holds a page for the middle step of a swap; the page is
    // rekeyed to a real number before the swap returns.
    if new == c.pending {
        #[cfg(test)]
        count(SWAPS);
    } else {
        c.max_key.fetch_max(new, Ordering::Relaxed);
    }
}

unsafe extern "C" fn x_truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = unsafe { cache(p) };
    if limit > c.max_key.load(Ordering::Relaxed) {
        #[cfg(test)]
        count(SKIPPED);
        return;
    }
    #[cfg(test)]
    count(FORWARDED);
    if let Some(f) = inner().xTruncate {
        unsafe { f(c.inner, limit) }
    }
    c.max_key.store(limit.saturating_sub(1), Ordering::Relaxed);
}

unsafe extern "C" fn x_destroy(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: `p` came from `Box::into_raw` in `x_create`; SQLite destroys it once.
    let c = unsafe { Box::from_raw(p as *mut Cache) };
    if let Some(f) = inner().xDestroy {
        unsafe { f(c.inner) }
    }
}

unsafe extern "C" fn x_shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = inner().xShrink {
        unsafe { f(cache(p).inner) }
    }
}

/// Installs the wrapper. It must run before SQLite is first used in the process (and,
/// as `sqlite3_config` is not thread-safe, before any other thread opens a database):
/// the store calls it before opening its first connection. When it is too late, SQLite
/// keeps its own cache unchanged and only the scan comes back.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `INNER` is written here, before any connection exists (or not at all if
        // SQLite refuses the configuration), and only read afterwards.
        unsafe {
            let inner = std::ptr::addr_of_mut!(INNER);
            let rc = ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, inner);
            if rc != ffi::SQLITE_OK || (*inner).xFetch.is_none() {
                tracing::warn!(
                    rc,
                    "SQLite page cache wrapper not installed (SQLite already initialized)"
                );
                return;
            }
            let methods = ffi::sqlite3_pcache_methods2 {
                iVersion: 1,
                pArg: (*inner).pArg,
                xInit: Some(x_init),
                xShutdown: Some(x_shutdown),
                xCreate: Some(x_create),
                xCachesize: Some(x_cachesize),
                xPagecount: Some(x_pagecount),
                xFetch: Some(x_fetch),
                xUnpin: Some(x_unpin),
                xRekey: Some(x_rekey),
                xTruncate: Some(x_truncate),
                xDestroy: Some(x_destroy),
                xShrink: Some(x_shrink),
            };
            // SQLite copies the struct.
            let rc = ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &methods as *const _);
            if rc == ffi::SQLITE_OK {
                INSTALLED.store(true, Ordering::Relaxed);
            } else {
                tracing::warn!(
                    rc,
                    "SQLite page cache wrapper not installed (SQLite already initialized)"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    /// Page splits (which swap page numbers through the pending page) and a rolled-back
    /// transaction that grew the file (whose pages must be dropped, so the truncation the
    /// wrapper may skip is the one it must not) leave an intact database with the right rows.
    #[test]
    fn splits_and_rollbacks_keep_the_database_intact() {
        install();
        assert!(INSTALLED.load(Ordering::Relaxed), "wrapper installed");
        let dir = std::env::temp_dir().join(format!("sori-pcache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT NOT NULL, v TEXT NOT NULL); \
             CREATE INDEX t_k ON t (k);",
        )
        .unwrap();
        let key = |i: u64| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut n = 0u64;
        for round in 0..20 {
            let tx = conn.transaction().unwrap();
            for _ in 0..2_000 {
                tx.execute("INSERT INTO t VALUES (?1, ?2)", (key(n), "x".repeat(40)))
                    .unwrap();
                n += 1;
            }
            if round % 3 == 2 {
                tx.rollback().unwrap();
                n -= 2_000;
            } else {
                tx.commit().unwrap();
            }
        }
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count as u64, n);
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let last: String = conn
            .query_row("SELECT v FROM t WHERE k = ?1", [key(n - 1)], |r| r.get(0))
            .unwrap();
        assert_eq!(last, "x".repeat(40));
        let seen = |i: usize| COUNTS[i].load(Ordering::Relaxed);
        assert!(
            seen(SWAPS) > 0,
            "page splits swapped numbers through the pending page"
        );
        assert!(seen(SKIPPED) > 0, "commits skipped the empty truncation");
        assert!(seen(FORWARDED) > 0, "rollbacks truncated");
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
