//! Pure business rules of Sori: identifiers, the contact profile schema and its limits,
//! update semantics, phone numbers, masking, roles and the member hash.
//!
//! Nothing in this crate performs I/O or reads the clock: callers pass the current time and
//! freshly generated identifiers in, so every rule can be tested without a database.

pub mod activity;
pub mod change;
pub mod channel;
pub mod error;
pub mod event;
pub mod field;
pub mod filter;
pub mod identity;
pub mod import;
pub mod limits;
pub mod mask;
pub mod member_hash;
pub mod phone;
pub mod role;
pub mod segment;
pub mod team;
pub mod update;
pub mod user;
pub mod user_agent;
pub mod value;

pub use error::{FieldError, Invalid};
pub use field::{FieldType, ProfileField, ProfileKey, Registry};
pub use role::{InboxScope, Permission, Role};
pub use update::{Applied, ApplyContext, TagOp, UserUpdate, apply_update};
pub use user::{DeviceInfo, User};
