//! Rows that cross the storage seam.

use serde_json::{Map, Value};
use sori_domain::team::TeamChange;
use sori_domain::{DeviceInfo, Role, User};

use crate::StoreError;

/// A tenant. Secrets that must only be checked are stored as keyed hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// Numeric id, leading every tenant table's key.
    pub id: i64,
    /// Business name.
    pub name: String,
    /// IANA time zone for calendar computations.
    pub time_zone: String,
    /// Default language of the messenger (`ko`, `en`).
    pub default_language: String,
    /// Public key the SDK boots with.
    pub plugin_key: String,
    /// Public half of the Open API credentials.
    pub access_key: String,
    /// Keyed hash of the Open API secret.
    pub access_secret_hash: String,
    /// Keyed hash of the Segment-compatible write key.
    pub write_key_hash: String,
    /// Hex HMAC key for member hashes (must stay readable to verify them).
    pub member_hash_secret: String,
    /// Boots with a `memberId` must carry a valid `memberHash`.
    pub member_hash_required: bool,
    /// How many times member hashes were turned on: SDK sessions carry the value they
    /// were opened under (see `sori_app::sdk::SdkSession`).
    pub member_hash_epoch: i64,
    /// Events older than this many days are deleted by the retention job.
    pub event_retention_days: i64,
    /// Creation time (ms).
    pub created_at: i64,
}

/// Settings a manager or the Open API may change on a channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelSettingsPatch {
    /// New name.
    pub name: Option<String>,
    /// New time zone (already validated).
    pub time_zone: Option<String>,
    /// New default language.
    pub default_language: Option<String>,
    /// Member-hash checking on or off.
    pub member_hash_required: Option<bool>,
    /// New event retention (days, already validated).
    pub event_retention_days: Option<i64>,
}

/// One event name of a channel's catalog, for the filter builder.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// Event name.
    pub name: String,
    /// Events recorded under this name (not reduced by retention).
    pub count: i64,
    /// Earliest event time (ms).
    pub first_seen_at: i64,
    /// Latest event time (ms).
    pub last_seen_at: i64,
    /// Some event of this name carried a numeric `revenue`.
    pub revenue: bool,
}

/// A channel to create, with its owner.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// Channel row; `id` is ignored and assigned by the store.
    pub channel: Channel,
    /// Owner account; `channel_id` is filled in by the store.
    pub owner: Manager,
}

/// A manager account.
#[derive(Debug, Clone, PartialEq)]
pub struct Manager {
    /// Channel the manager belongs to.
    pub channel_id: i64,
    /// Id (24 hex).
    pub id: String,
    /// Login e-mail, lowercase.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role id (`owner`, `basic` or a custom role's id).
    pub role_id: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Creation time (ms).
    pub created_at: i64,
}

/// A change of a channel's team as the store applies it: one of
/// [`sori_domain::team::TeamChange`] with what the store writes for it.
#[derive(Debug, Clone, PartialEq)]
pub enum TeamWrite {
    /// Adds a custom role.
    CreateRole(Role),
    /// Replaces a custom role's name, permissions and scope.
    UpdateRole(Role),
    /// Deletes a custom role.
    DeleteRole(String),
    /// Adds a manager (`Conflict` when the e-mail is taken in the channel).
    AddManager(Manager),
    /// Gives a manager another role.
    SetRole {
        /// The manager.
        manager_id: String,
        /// The role they are to hold.
        role_id: String,
    },
    /// Removes a manager and their sessions.
    RemoveManager(String),
}

impl TeamWrite {
    /// The change the team rules judge.
    pub fn change(&self) -> TeamChange<'_> {
        match self {
            TeamWrite::CreateRole(r) => TeamChange::CreateRole(r),
            TeamWrite::UpdateRole(r) => TeamChange::UpdateRole(r),
            TeamWrite::DeleteRole(id) => TeamChange::DeleteRole(id),
            TeamWrite::AddManager(m) => TeamChange::AddManager {
                role_id: &m.role_id,
            },
            TeamWrite::SetRole {
                manager_id,
                role_id,
            } => TeamChange::SetRole {
                manager_id,
                role_id,
            },
            TeamWrite::RemoveManager(id) => TeamChange::RemoveManager(id),
        }
    }
}

/// A console login session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Keyed hash of the cookie token.
    pub token_hash: String,
    /// Channel of the manager.
    pub channel_id: i64,
    /// Manager id.
    pub manager_id: String,
    /// Token the console must echo in `x-csrf-token` on every state-changing call.
    pub csrf_token: String,
    /// Expiry (ms).
    pub expires_at: i64,
}

/// One reveal of a masked value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevealRecord {
    /// Channel.
    #[serde(skip)]
    pub channel_id: i64,
    /// Record id (24 hex, time ordered).
    pub id: String,
    /// Who revealed.
    pub manager_id: String,
    /// Whose data.
    pub user_id: String,
    /// Which field (`profile.email`, `memberId`, ...).
    pub field: String,
    /// When (ms).
    pub created_at: i64,
}

/// A user flattened into columns, shared by both backends so their mapping cannot drift.
/// JSON-valued columns travel as text.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Channel.
    pub channel_id: i64,
    /// User id.
    pub id: String,
    /// Member id.
    pub member_id: Option<String>,
    /// Anonymous browser id.
    pub veil_id: Option<String>,
    /// `profile.name`, copied for sorting.
    pub name: Option<String>,
    /// Profile as JSON text.
    pub profile: String,
    /// Tags as a JSON array.
    pub tags: String,
    /// Consent.
    pub unsubscribe_email: bool,
    /// Consent.
    pub unsubscribe_texting: bool,
    /// Blocked.
    pub blocked: bool,
    /// City.
    pub city: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// Language.
    pub language: Option<String>,
    /// Has chats.
    pub has_chat: bool,
    /// Has a push token.
    pub has_push_token: bool,
    /// Session count.
    pub sessions_count: i64,
    /// Last activity.
    pub last_seen_at: Option<i64>,
    /// Creation.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Web device facts as JSON.
    pub web: String,
    /// Mobile device facts as JSON.
    pub mobile: String,
}

impl UserRow {
    /// Flattens a user of `channel_id`.
    pub fn from_user(channel_id: i64, u: &User) -> Self {
        Self {
            channel_id,
            id: u.id.clone(),
            member_id: u.member_id.clone(),
            veil_id: u.veil_id.clone(),
            name: u.name().map(str::to_owned),
            profile: Value::Object(u.profile.clone()).to_string(),
            tags: Value::from(u.tags.clone()).to_string(),
            unsubscribe_email: u.unsubscribe_email,
            unsubscribe_texting: u.unsubscribe_texting,
            blocked: u.blocked,
            city: u.city.clone(),
            country: u.country.clone(),
            language: u.language.clone(),
            has_chat: u.has_chat,
            has_push_token: u.has_push_token,
            sessions_count: u.sessions_count,
            last_seen_at: u.last_seen_at,
            created_at: u.created_at,
            updated_at: u.updated_at,
            web: device_json(&u.web),
            mobile: device_json(&u.mobile),
        }
    }

    /// Rebuilds the user.
    pub fn into_user(self) -> Result<User, StoreError> {
        let profile: Map<String, Value> = parse(&self.profile, "profile")?;
        let tags: Vec<String> = parse(&self.tags, "tags")?;
        Ok(User {
            id: self.id,
            member_id: self.member_id,
            veil_id: self.veil_id,
            profile,
            tags,
            unsubscribe_email: self.unsubscribe_email,
            unsubscribe_texting: self.unsubscribe_texting,
            blocked: self.blocked,
            city: self.city,
            country: self.country,
            language: self.language,
            has_chat: self.has_chat,
            has_push_token: self.has_push_token,
            sessions_count: self.sessions_count,
            last_seen_at: self.last_seen_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            web: device(&self.web)?,
            mobile: device(&self.mobile)?,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("users.{what}: {e}")))
}

fn device_json(d: &DeviceInfo) -> String {
    serde_json::to_string(d).unwrap_or_else(|_| "{}".to_owned())
}

fn device(s: &str) -> Result<DeviceInfo, StoreError> {
    parse(s, "device")
}

/// A saved audience: a name and a filter (kept as the JSON the client sent, checked again
/// against the registry whenever it is used).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Tenant.
    pub channel_id: i64,
    /// Id (24 hex characters, time ordered).
    pub id: String,
    /// Unique name within the channel.
    pub name: String,
    /// The filter.
    pub filter: serde_json::Value,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}
