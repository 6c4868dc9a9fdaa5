//! Application services between the HTTP layer and the store: credentials, channel
//! creation, manager sessions and the group-committing user writer. No HTTP types here.

pub mod audience;
pub mod auth;
pub mod channels;
pub mod retention;
pub mod sdk;
pub mod secrets;
pub mod segment;
pub mod users;

use std::sync::Arc;

use sori_domain::Invalid;
use sori_domain::team::TeamRefusal;
use sori_store::{Store, StoreError};

pub use audience::{Audience, Engine};
pub use auth::{ChannelCache, ManagerContext};
pub use channels::{ChannelCredentials, ChannelSpec};
pub use users::UserWriter;

/// What can go wrong in a service call; the HTTP layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Input broke a rule (4xx with the field list).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// An SDK session opened without a member hash, used as a member of a channel that
    /// requires one (see `sdk::SdkSession`): the browser must boot again with the hash.
    #[error("{0}")]
    MemberHashRequired(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Absent, or belongs to another channel.
    #[error("{0}")]
    NotFound(String),
    /// Clashes with existing data.
    #[error("{0}")]
    Conflict(String),
    /// The store failed; the cause is logged, not shown.
    #[error(transparent)]
    Store(StoreError),
    /// The writer is shutting down.
    #[error("service is shutting down")]
    Unavailable,
    /// Too much of a costly operation at once; retry later.
    #[error("{0}")]
    Busy(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AppError::Conflict(m),
            StoreError::Refused(r) => match r {
                TeamRefusal::Forbidden(m) => AppError::Forbidden(m),
                TeamRefusal::NoSuchRole(_) => Invalid::one("roleId", r.to_string()).into(),
                TeamRefusal::NotFound(_) => AppError::NotFound(r.to_string()),
                TeamRefusal::TooManyRoles
                | TeamRefusal::BuiltIn
                | TeamRefusal::NameTaken(_)
                | TeamRefusal::LastOwner
                | TeamRefusal::RoleHeld => AppError::Conflict(r.to_string()),
            },
            StoreError::Transient(_) => AppError::Unavailable,
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                AppError::Unavailable
            }
            other => AppError::Store(other),
        }
    }
}

/// Shorthand for service results.
pub type AppResult<T> = Result<T, AppError>;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The store behind every service.
    pub store: Arc<dyn Store>,
    /// Key used to hash API secrets, session tokens and write keys.
    pub pepper: Arc<[u8]>,
    /// Channel lookups by access key, cached.
    pub channels: ChannelCache,
    /// The group-committing user writer.
    pub users: UserWriter,
    /// The in-memory audience projections, following the store's change sequence.
    pub audience: Arc<Audience>,
    /// Bounds concurrent Argon2 work (about 19 MiB and tens of ms each), so a flood of
    /// logins cannot exhaust memory or starve the API.
    pub login_slots: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// Wires the services over `store`, loading (or creating) the install's hashing key.
    ///
    /// Without `audience` the projections are not built (a command that counts no
    /// audience, `sori import` or `sori channel set`, would otherwise load every channel's
    /// users into memory first); audience queries then see empty channels.
    pub async fn new(
        store: Arc<dyn Store>,
        writer_shards: usize,
        audience: bool,
    ) -> AppResult<Self> {
        let fresh = secrets::random_hex(32);
        let pepper = store.meta_get_or_insert("secret_hash_key", &fresh).await?;
        let pepper: Arc<[u8]> = hex_or_bytes(&pepper).into();
        let audience = Arc::new(if audience {
            Audience::build(&store).await?
        } else {
            Audience::default()
        });
        // SQLite writes on one connection, so a second batch in flight would only queue.
        // On PostgreSQL a large batch (bulk ingestion) keeps one backend on one core busy,
        // and a second one (on other keys) puts the other core to work.
        let writer_overlap = if store.backend() == "sqlite" { 1 } else { 2 };
        Ok(Self {
            channels: ChannelCache::new(store.clone(), pepper.clone()),
            users: UserWriter::spawn(store.clone(), writer_shards, writer_overlap),
            audience,
            login_slots: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            store,
            pepper,
        })
    }
}

fn hex_or_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|_| s.as_bytes().to_vec())
}
