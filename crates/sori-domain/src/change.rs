//! Committed changes to contacts, in the form the audience projection consumes them: the
//! store's change sequence reports users in their current state, and removals and merges
//! as they happened.

use crate::user::User;

/// One committed change, as the store reports it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A user written whole (created or updated).
    User(Box<User>),
    /// An anonymous user folded into a member: its events count for the member, it is gone.
    Merge {
        /// The anonymous user.
        from: String,
        /// The member.
        into: String,
    },
    /// A user whose only change is activity (events moved `lastSeenAt`, `createdAt` or
    /// `updatedAt`): the store reports the three instants instead of the whole row, so
    /// following a stream of events costs no profile decoding.
    Activity {
        /// The user.
        id: String,
        /// The user's last visit.
        last_seen_at: Option<i64>,
        /// The user's first activity.
        created_at: i64,
        /// The user's last real change.
        updated_at: i64,
    },
    /// A deleted user.
    Delete(String),
    /// Events removed by retention, already counted in the users' totals.
    Retire {
        /// Events strictly before this instant are gone.
        before: i64,
    },
}
