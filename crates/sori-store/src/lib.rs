//! The storage seam: one narrow trait that the SQLite and PostgreSQL crates implement, the
//! row types that cross it, and the dialect-free planning of user writes that both
//! backends share. No SQL lives here.

mod plan;
mod types;

use async_trait::async_trait;
use sori_domain::event::{Event, NewEvent};
use sori_domain::filter::{EventTest, Query};
use sori_domain::team::TeamRefusal;
use sori_domain::{ProfileField, Role, User};

pub use plan::{
    Merge, RetryCheck, StoredOwners, UserKeys, UserOp, UserOpError, UserOpOutcome, UserOpResult,
    UserTarget, WritePlan, plan_user_writes, to_write, users_in_write_order, with_retries,
};
pub use types::{
    CatalogEntry, Channel, ChannelSettingsPatch, Manager, NewChannel, RevealRecord, Segment,
    Session, TeamWrite, UserRow,
};

/// Failures of the store that are not the caller's fault, except `Conflict` and `Refused`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key is taken (e-mail of a manager, key of a profile field, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A race with another transaction (deadlock, serialization failure) or a connection
    /// lost on the way; retrying may succeed.
    #[error("temporary failure, another attempt may succeed: {0}")]
    Transient(String),
    /// The database failed; the cause is logged, never shown to clients. The cause is
    /// part of the message rather than a `source`, so a report of the chain does not
    /// print it twice.
    #[error("database error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The database cannot be reached (down, restarting, every connection busy for
    /// seconds): requests get 503 at once, as a health check or a client's retry expects,
    /// instead of waiting out a pool's timeout for a 500.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A team change the team rules refuse (checked inside the write).
    #[error("refused: {0}")]
    Refused(#[from] TeamRefusal),
    /// Stored data could not be decoded (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// A position in the change sequence: `seq` orders user writes, removals and merges;
/// `event` orders stored events (the same number on PostgreSQL, the rowid on SQLite).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Last change number seen.
    pub seq: i64,
    /// Last event position seen.
    pub event: i64,
}

/// The changes between two cursors.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    /// Users written, as `(channel, seq, user)` in their current state.
    pub users: Vec<(i64, i64, User)>,
    /// The activity instants of every owner of an event in the range, as `(channel, seq,
    /// Change::Activity)`: events-only writes move them without a change number.
    pub activity: Vec<(i64, i64, sori_domain::change::Change)>,
    /// Events stored, as `(channel, userId, name, createdAt)`, owned by their current user.
    pub events: Vec<(i64, String, String, i64)>,
    /// Removals and merges, as `(channel, change)` in sequence order.
    pub log: Vec<(i64, sori_domain::change::Change)>,
    /// Pruning took log entries after `from` (see [`Store::prune_changes`]): the batch is
    /// empty, and a follower must rebuild rather than catch up.
    pub pruned: bool,
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything Sori keeps. Implementations must make every write durable before returning
/// and must never let one channel's call touch another channel's rows.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;

    /// Returns the stored value for `key`, storing `value` first when absent.
    async fn meta_get_or_insert(&self, key: &str, value: &str) -> Result<String>;

    /// Creates a channel with its built-in roles, owner and pre-registered fields, atomically.
    async fn create_channel(&self, new: NewChannel) -> Result<(Channel, Manager)>;
    /// Number of channels (zero on a fresh store).
    async fn count_channels(&self) -> Result<i64>;
    /// A channel by id.
    async fn channel(&self, id: i64) -> Result<Option<Channel>>;
    /// A channel by its public access key.
    async fn channel_by_access_key(&self, access_key: &str) -> Result<Option<Channel>>;
    /// A channel by its public SDK plugin key.
    async fn channel_by_plugin_key(&self, plugin_key: &str) -> Result<Option<Channel>>;
    /// A channel by the keyed hash of its Segment write key.
    async fn channel_by_write_key_hash(&self, hash: &str) -> Result<Option<Channel>>;
    /// Every channel id (for background jobs).
    async fn channel_ids(&self) -> Result<Vec<i64>>;
    /// Changes channel settings; `None` when the channel does not exist.
    async fn update_channel(
        &self,
        id: i64,
        patch: &ChannelSettingsPatch,
    ) -> Result<Option<Channel>>;

    /// Replaces a channel's hashed Open API secret and write key (a rotation after a leak
    /// or a loss); false when the channel does not exist.
    async fn set_channel_secrets(
        &self,
        id: i64,
        access_secret_hash: &str,
        write_key_hash: &str,
    ) -> Result<bool>;

    /// Roles of a channel, built-in first.
    async fn roles(&self, channel_id: i64) -> Result<Vec<Role>>;
    /// Applies a team change made by the manager `actor_id` if the team rules allow it
    /// against the team as stored: the check and the write are one transaction, taken one
    /// at a time per channel across every node (`Refused` otherwise).
    async fn change_team(&self, channel_id: i64, actor_id: &str, write: &TeamWrite) -> Result<()>;

    /// Managers of a channel.
    async fn managers(&self, channel_id: i64) -> Result<Vec<Manager>>;
    /// Managers with this e-mail in any channel (login picks among them).
    async fn managers_by_email(&self, email: &str) -> Result<Vec<Manager>>;
    /// One manager.
    async fn manager(&self, channel_id: i64, id: &str) -> Result<Option<Manager>>;

    /// Sets a manager's password hash and ends their sessions; false when absent.
    async fn set_manager_password(
        &self,
        channel_id: i64,
        manager_id: &str,
        password_hash: &str,
    ) -> Result<bool>;

    /// Stores a login session.
    async fn insert_session(&self, session: &Session) -> Result<()>;
    /// A session by the hash of its token.
    async fn session(&self, channel_id: i64, token_hash: &str) -> Result<Option<Session>>;
    /// Ends a session.
    async fn delete_session(&self, channel_id: i64, token_hash: &str) -> Result<()>;

    /// Registered profile fields of a channel.
    async fn profile_fields(&self, channel_id: i64) -> Result<Vec<ProfileField>>;
    /// Registers a field; `Conflict` when the key exists.
    async fn insert_profile_field(&self, channel_id: i64, field: &ProfileField) -> Result<()>;
    /// Renames a field or flips its sensitive flag.
    async fn update_profile_field(
        &self,
        channel_id: i64,
        key: &str,
        name: Option<&str>,
        sensitive: Option<bool>,
    ) -> Result<Option<ProfileField>>;
    /// Removes a custom field and its values from every user of the channel.
    async fn delete_profile_field(&self, channel_id: i64, key: &str) -> Result<bool>;
    /// Built-in fields marked sensitive.
    async fn sensitive_builtins(&self, channel_id: i64) -> Result<Vec<String>>;
    /// Marks or unmarks a built-in field as sensitive.
    async fn set_builtin_sensitive(
        &self,
        channel_id: i64,
        key: &str,
        sensitive: bool,
    ) -> Result<()>;

    /// Runs user writes in one transaction (group commit); per-op failures do not abort the
    /// others. The whole call fails only when the database does.
    async fn write_users(&self, ops: &[UserOp]) -> Result<Vec<UserOpResult>>;
    /// A user by id.
    async fn user(&self, channel_id: i64, id: &str) -> Result<Option<User>>;
    /// A user by member id.
    async fn user_by_member_id(&self, channel_id: i64, member_id: &str) -> Result<Option<User>>;
    /// Users ordered by id after (or, descending, before) the cursor `after`.
    async fn users_page(
        &self,
        channel_id: i64,
        after: Option<&str>,
        limit: u32,
        descending: bool,
    ) -> Result<Vec<User>>;
    /// Deletes a user; false when absent.
    async fn delete_user(&self, channel_id: i64, id: &str) -> Result<bool>;
    /// Loads users and events as given (generated or migrated data), replacing users with
    /// the same id and skipping events whose id is known.
    async fn bulk_load(
        &self,
        channel_id: i64,
        users: &[User],
        events: &[(String, NewEvent)],
    ) -> Result<()>;
    /// Users by id, in no particular order; missing ids are skipped.
    async fn users_by_ids(&self, channel_id: i64, ids: &[String]) -> Result<Vec<User>>;

    /// How many users match a filter, answered by the database (the SQL path).
    async fn count_matching(&self, channel_id: i64, query: &Query) -> Result<u64>;
    /// Ids of the users matching a filter, in id order (the SQL path).
    async fn ids_matching(&self, channel_id: i64, query: &Query) -> Result<Vec<String>>;
    /// Per-user counts of the stored events that pass an event condition (its window and
    /// `where` clauses); users without such events are left out.
    async fn event_counts_matching(
        &self,
        channel_id: i64,
        test: &EventTest,
    ) -> Result<Vec<(String, i64)>>;
    /// Every user id of a channel, in the order `scan_users` gives the users when nothing
    /// changed in between (a build uses it to guess each user's slot).
    async fn user_ids(&self, channel_id: i64) -> Result<Vec<String>>;
    /// Calls `user(seq, user)` for every user of part `part` of `parts` of a channel, `seq`
    /// being the change number of its last write: the bulk read that builds the audience
    /// projection at start (a streaming scan, not pages). The parts together cover every
    /// user once and may be scanned concurrently.
    async fn scan_users(
        &self,
        channel_id: i64,
        part: u32,
        parts: u32,
        user: &mut (dyn FnMut(i64, User) + Send),
    ) -> Result<()>;
    /// Calls `event(createdAt, userId, name)` for every stored event up to the event cursor
    /// `upto` of part `part` of `parts` of a channel's events, borrowing the strings so that
    /// tens of millions of rows cost no allocation each. The parts together cover every
    /// event once and may be scanned concurrently.
    async fn scan_events(
        &self,
        channel_id: i64,
        upto: i64,
        part: u32,
        parts: u32,
        event: &mut (dyn for<'s> FnMut(i64, &'s str, &'s str) + Send),
    ) -> Result<()>;
    /// How far the change sequence is committed: every change up to it is visible, and no
    /// change at or below it can still appear.
    async fn horizon(&self) -> Result<Cursor>;
    /// Every committed change after `from` up to `to` (a horizon), in every channel; or,
    /// when pruning took log entries after `from`, a batch marked `pruned`.
    async fn changes(&self, from: Cursor, to: Cursor) -> Result<ChangeBatch>;
    /// Deletes logged removals and merges older than `before` (ms), and remembers the
    /// newest change number deleted, so that a follower still behind it learns from
    /// [`Store::changes`] to rebuild; returns how many went. Without it the log would grow
    /// with every merge and removal for ever.
    async fn prune_changes(&self, before: i64) -> Result<u64>;
    /// Counts of events retention removed, as `(userId, name, count)`.
    async fn rolled_counts(&self, channel_id: i64) -> Result<Vec<(String, String, i64)>>;

    /// A user's events, newest first and strictly before the cursor `(createdAt, id)`, or
    /// with `oldest_first` oldest first and strictly after it.
    async fn user_events(
        &self,
        channel_id: i64,
        user_id: &str,
        cursor: Option<(i64, &str)>,
        limit: u32,
        oldest_first: bool,
    ) -> Result<Vec<Event>>;
    /// Events of a channel in time order, strictly after the cursor `(createdAt, id)`
    /// (exports).
    async fn events_page(
        &self,
        channel_id: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Event>>;
    /// The channel's event catalog, by name.
    async fn event_catalog(&self, channel_id: i64) -> Result<Vec<CatalogEntry>>;
    /// Deletes at most `limit` events older than `before` (ms) whose position is at most
    /// `upto` (`Cursor::event`: what the caller's followers have read, so no follower
    /// misses the activity a just-stored backdated event moved); returns how many went.
    /// The deleted events are first rolled up into per-user counts (`user_event_stats`),
    /// and the catalog keeps its totals, so segments still count them.
    async fn delete_events_before(
        &self,
        channel_id: i64,
        before: i64,
        upto: i64,
        limit: u32,
    ) -> Result<u64>;
    /// Deletes at most `limit` stored `messageId`s of calls without events (`call_keys`)
    /// stored before `before` (ms): they are kept as long as the channel keeps events.
    /// Returns how many went.
    async fn delete_call_keys_before(
        &self,
        channel_id: i64,
        before: i64,
        limit: u32,
    ) -> Result<u64>;
    /// How many events of each name a user has, counting those retention already removed
    /// (rolled up into `user_event_stats`) and those still stored; by name.
    async fn event_counts(&self, channel_id: i64, user_id: &str) -> Result<Vec<(String, i64)>>;
    /// Merges recorded into `user_id`, newest first.
    async fn merges_into(&self, channel_id: i64, user_id: &str) -> Result<Vec<Merge>>;

    /// A channel's segments, by name.
    async fn segments(&self, channel_id: i64) -> Result<Vec<Segment>>;
    /// One segment.
    async fn segment(&self, channel_id: i64, id: &str) -> Result<Option<Segment>>;
    /// Saves a new segment; `Conflict` when the name is taken.
    async fn insert_segment(&self, segment: &Segment) -> Result<()>;
    /// Replaces a segment's name and filter; false when absent, `Conflict` on a taken name.
    async fn update_segment(&self, segment: &Segment) -> Result<bool>;
    /// Deletes a segment; false when absent.
    async fn delete_segment(&self, channel_id: i64, id: &str) -> Result<bool>;

    /// Appends to the reveal audit log.
    async fn insert_reveal(&self, record: &RevealRecord) -> Result<()>;
    /// Reveal audit log, newest first, before the cursor id.
    async fn reveals(
        &self,
        channel_id: i64,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RevealRecord>>;
}

/// Refuses a store a newer Sori has migrated past what this build knows: this build would
/// run on a schema it does not understand (an operator rolling back without restoring a
/// backup, say).
pub fn refuse_newer_schema(applied: &[i64], known: i64) -> Result<()> {
    match applied.iter().copied().filter(|v| *v > known).max() {
        Some(v) => Err(StoreError::Corrupt(format!(
            "the store was migrated by a newer Sori (migration {v}; this build knows up to \
             {known}): run that version or newer, or restore a backup made for this one"
        ))),
        None => Ok(()),
    }
}
