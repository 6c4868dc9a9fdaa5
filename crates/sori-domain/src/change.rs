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
    /// A deleted user.
    Delete(String),
    /// Events removed by retention, already counted in the users' totals.
    Retire {
        /// Events strictly before this instant are gone.
        before: i64,
    },
}
