//! Committed changes to contacts and events, in the form the audience projection consumes
//! them. The store reports these for every write so that in-memory views can follow the
//! database without reading it back.

use crate::user::User;

/// One committed change, as the store reports it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A user written whole (created or updated).
    User(Box<User>),
    /// An events-only write that moved a user's times without loading the row:
    /// `lastSeenAt = max(lastSeenAt, latest)`, `createdAt = min(createdAt, earliest)`,
    /// and `updatedAt` moves to `now` when `latest` is newer than the last visit.
    Seen {
        /// User.
        id: String,
        /// Latest event time.
        latest: i64,
        /// Earliest event time.
        earliest: i64,
        /// Time of the write.
        now: i64,
    },
    /// An anonymous user folded into a member: its events count for the member, it is gone.
    Merge {
        /// The anonymous user.
        from: String,
        /// The member.
        into: String,
    },
    /// A stored event.
    Event {
        /// Owner.
        user_id: String,
        /// Name.
        name: String,
        /// Time (ms).
        at: i64,
    },
    /// A deleted user.
    Delete(String),
    /// A profile field removed from every user.
    DropField(String),
    /// Events removed by retention, already counted in the users' totals.
    Retire {
        /// Events strictly before this instant are gone.
        before: i64,
    },
}
