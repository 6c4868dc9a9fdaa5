//! A contact (user) of a channel: anonymous, lead or member.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Device facts kept per platform (`web.*`, `mobile.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceInfo {
    /// Browser with version (web) or app name (mobile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// Browser name without version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_name: Option<String>,
    /// Operating system with version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Operating system name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// Device model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// App name (mobile only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// App version (mobile only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// Last activity on this platform (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    /// Sessions on this platform.
    pub sessions_count: i64,
}

impl DeviceInfo {
    /// The text fields that describe the device, in one order for every reader (the
    /// audience columns, the newest-visit rule).
    pub fn texts(&self) -> [&Option<String>; 7] {
        [
            &self.browser,
            &self.browser_name,
            &self.os,
            &self.os_name,
            &self.device,
            &self.app_name,
            &self.app_version,
        ]
    }

    /// Takes every text field of `from`, empty ones included: a visit describes its device
    /// as a whole.
    pub fn replace_texts(&mut self, from: &DeviceInfo) {
        self.browser.clone_from(&from.browser);
        self.browser_name.clone_from(&from.browser_name);
        self.os.clone_from(&from.os);
        self.os_name.clone_from(&from.os_name);
        self.device.clone_from(&from.device);
        self.app_name.clone_from(&from.app_name);
        self.app_version.clone_from(&from.app_version);
    }
}

/// A user as stored. `member` and `name` are derived, never stored separately in the domain.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Channel-unique id (24 hex characters, time ordered).
    pub id: String,
    /// The business's own customer id; set exactly for members.
    pub member_id: Option<String>,
    /// Anonymous browser id kept by the SDK.
    pub veil_id: Option<String>,
    /// `profile.*` values, by key.
    pub profile: Map<String, Value>,
    /// Lowercase, de-duplicated tags in insertion order.
    pub tags: Vec<String>,
    /// Opted out of marketing e-mail.
    pub unsubscribe_email: bool,
    /// Opted out of marketing SMS/AlimTalk.
    pub unsubscribe_texting: bool,
    /// Blocked from chatting.
    pub blocked: bool,
    /// City, when a client reported it.
    pub city: Option<String>,
    /// Country, when a client reported it.
    pub country: Option<String>,
    /// Preferred language.
    pub language: Option<String>,
    /// Has at least one chat.
    pub has_chat: bool,
    /// Has a registered push token.
    pub has_push_token: bool,
    /// Sessions on all platforms.
    pub sessions_count: i64,
    /// Last activity (ms).
    pub last_seen_at: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last real change (ms); a change counts the user as monthly active.
    pub updated_at: i64,
    /// Web device facts.
    pub web: DeviceInfo,
    /// Mobile app device facts.
    pub mobile: DeviceInfo,
}

impl User {
    /// A fresh user with nothing but an id and a creation time.
    pub fn new(id: String, now: i64) -> Self {
        Self {
            id,
            member_id: None,
            veil_id: None,
            profile: Map::new(),
            tags: Vec::new(),
            unsubscribe_email: false,
            unsubscribe_texting: false,
            blocked: false,
            city: None,
            country: None,
            language: None,
            has_chat: false,
            has_push_token: false,
            sessions_count: 0,
            last_seen_at: None,
            created_at: now,
            updated_at: now,
            web: DeviceInfo::default(),
            mobile: DeviceInfo::default(),
        }
    }

    /// True exactly when the business identified this user.
    pub fn member(&self) -> bool {
        self.member_id.is_some()
    }

    /// The display name, from `profile.name`.
    pub fn name(&self) -> Option<&str> {
        self.profile.get("name").and_then(Value::as_str)
    }

    /// Equal in everything a client can change, ignoring timestamps; decides whether an
    /// update really changed the user (and so whether `updatedAt` moves).
    pub fn same_content(&self, other: &User) -> bool {
        let mut a = self.clone();
        a.updated_at = other.updated_at;
        a == *other
    }
}
