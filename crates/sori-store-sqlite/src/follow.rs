//! The change sequence (`Store::horizon`, `Store::changes`) read on a connection of its
//! own, driven synchronously. The audience projections follow every write four times a
//! second; through the async driver every row crossed a thread and was decoded by column
//! name, which took ~15 % of the server's CPU under single-event ingestion.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use sori_domain::change::Change;
use sori_store::{ChangeBatch, Cursor, StoreError};

use crate::batch::{USER_COLUMNS, db, user_row};
use sori_store_sqlx::WHOLE_CHANGES;

type Result<T> = std::result::Result<T, StoreError>;

/// Events by rowid (retention never deletes the newest row, so rowids never repeat).
const EVENT_CHANGES: &str = "SELECT channel_id, user_id, name, created_at FROM events \
    WHERE rowid > $1 AND rowid <= $2 ORDER BY rowid";

/// A user's activity instants.
const ACTIVITY: &str =
    "SELECT last_seen_at, created_at, updated_at FROM users WHERE channel_id = ?1 AND id = ?2";

/// The committed position: the last change number and the last event's rowid, from one
/// snapshot.
pub(crate) fn horizon(conn: &mut Connection) -> Result<Cursor> {
    let tx = conn.transaction().map_err(db)?;
    let seq = tx
        .prepare_cached("SELECT v FROM change_seq")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db)?;
    let event = tx
        .prepare_cached("SELECT ifnull(max(rowid), 0) FROM events")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(Cursor { seq, event })
}

/// Every change after `from` up to `to`, from one snapshot.
pub(crate) fn changes(conn: &mut Connection, from: Cursor, to: Cursor) -> Result<ChangeBatch> {
    let tx = conn.transaction().map_err(db)?;
    let mut out = ChangeBatch::default();
    let pruned: i64 = tx
        .prepare_cached(sori_store_sqlx::PRUNED_MARK)
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db)?;
    if from.seq < pruned {
        out.pruned = true;
        return Ok(out);
    }
    let users = format!("SELECT {USER_COLUMNS}, seq FROM users {WHOLE_CHANGES}");
    each(&tx, &users, (from.seq, to.seq), |r| {
        let seq: i64 = r.get(21).map_err(db)?;
        let user = user_row(r).map_err(db)?.into_user()?;
        out.users.push((r.get(0).map_err(db)?, seq, user));
        Ok(())
    })?;
    // Rowids are dense but for rolled-back inserts, so the range bounds the count: sized
    // once, the buffers are not regrown (regrowing a large one faulted in fresh pages on
    // every catch-up).
    let expected = usize::try_from(to.event - from.event).map_or(0, |n| n.min(1 << 20));
    out.events.reserve(expected);
    each(&tx, EVENT_CHANGES, (from.event, to.event), |r| {
        out.events.push((
            r.get(0).map_err(db)?,
            r.get(1).map_err(db)?,
            r.get(2).map_err(db)?,
            r.get(3).map_err(db)?,
        ));
        Ok(())
    })?;
    // The events' owners' activity, as of this snapshot (so stamped with the horizon's
    // number): events-only writes move it without a change number (migration 7). Their
    // owners come from the events just read, each looked up once.
    let mut owners: HashSet<(i64, &str)> = HashSet::with_capacity(out.events.len());
    out.activity.reserve(out.events.len());
    let mut st = tx.prepare_cached(ACTIVITY).map_err(db)?;
    for (ch, user, _, _) in &out.events {
        if !owners.insert((*ch, user.as_str())) {
            continue;
        }
        let found = st
            .query_row(params![ch, user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?;
        if let Some((last_seen_at, created_at, updated_at)) = found {
            let change = Change::Activity {
                id: user.clone(),
                last_seen_at,
                created_at,
                updated_at,
            };
            out.activity.push((*ch, to.seq, change));
        }
    }
    drop(st);
    each(&tx, sori_store_sqlx::LOG_CHANGES, (from.seq, to.seq), |r| {
        let kind: String = r.get(1).map_err(db)?;
        let change =
            sori_store_sqlx::log_change(&kind, r.get(2).map_err(db)?, r.get(3).map_err(db)?)?;
        out.log.push((r.get(0).map_err(db)?, change));
        Ok(())
    })?;
    tx.commit().map_err(db)?;
    Ok(out)
}

/// Runs `f` on every row of `sql` for the range `($1, $2]`.
fn each(
    conn: &Connection,
    sql: &str,
    (from, to): (i64, i64),
    mut f: impl FnMut(&rusqlite::Row<'_>) -> Result<()>,
) -> Result<()> {
    let mut st = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = st.query(params![from, to]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        f(r)?;
    }
    Ok(())
}
