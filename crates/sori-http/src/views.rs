//! JSON shapes of responses, and masking of sensitive values for the console.

use serde::Serialize;
use serde_json::{Map, Value};
use sori_domain::{DeviceInfo, ProfileField, User, mask};
use utoipa::ToSchema;

/// A user as the APIs return it. Times are epoch milliseconds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// User id.
    pub id: String,
    /// Channel id.
    pub channel_id: String,
    /// The business's customer id (members only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub member_id: Option<String>,
    /// Anonymous browser id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub veil_id: Option<String>,
    /// True exactly when `memberId` is set.
    pub member: bool,
    /// Display name (`profile.name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// Profile values by key. Always present, except in a browser's view of a member
    /// while the channel does not require member hashes (`docs/sdk.md`); never null.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    pub profile: Option<Map<String, Value>>,
    /// Tags; left out exactly when `profile` is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<String>, required = false)]
    pub tags: Option<Vec<String>>,
    /// Opted out of marketing e-mail.
    pub unsubscribe_email: bool,
    /// Opted out of marketing texts.
    pub unsubscribe_texting: bool,
    /// Blocked from chatting.
    pub blocked: bool,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub city: Option<String>,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub country: Option<String>,
    /// Language.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub language: Option<String>,
    /// Has chats.
    pub has_chat: bool,
    /// Has a push token.
    pub has_push_token: bool,
    /// Sessions.
    pub sessions_count: i64,
    /// Last activity.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_seen_at: Option<i64>,
    /// Creation.
    pub created_at: i64,
    /// Last real change.
    pub updated_at: i64,
    /// Web device facts.
    #[schema(value_type = Object)]
    pub web: DeviceInfo,
    /// App device facts.
    #[schema(value_type = Object)]
    pub mobile: DeviceInfo,
}

impl UserView {
    /// The view of `u` in `channel_id`.
    pub fn of(channel_id: i64, u: User) -> Self {
        Self {
            channel_id: channel_id.to_string(),
            member: u.member(),
            name: u.name().map(str::to_owned),
            id: u.id,
            member_id: u.member_id,
            veil_id: u.veil_id,
            profile: Some(u.profile),
            tags: Some(u.tags),
            unsubscribe_email: u.unsubscribe_email,
            unsubscribe_texting: u.unsubscribe_texting,
            blocked: u.blocked,
            city: u.city,
            country: u.country,
            language: u.language,
            has_chat: u.has_chat,
            has_push_token: u.has_push_token,
            sessions_count: u.sessions_count,
            last_seen_at: u.last_seen_at,
            created_at: u.created_at,
            updated_at: u.updated_at,
            web: u.web,
            mobile: u.mobile,
        }
    }
}

/// `{"user": …}` envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEnvelope {
    /// The user.
    pub user: UserView,
}

/// `{"users": […], "next": …}` envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsersPage {
    /// This page.
    pub users: Vec<Value>,
    /// Cursor for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

/// A profile field as the APIs return it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldView {
    /// Key under `profile.`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: String,
    /// Masked in the console for every manager; a reveal (audited) shows the value.
    pub sensitive: bool,
    /// Pre-registered (type fixed, cannot be deleted).
    pub builtin: bool,
    /// Registration time.
    pub created_at: i64,
}

impl From<ProfileField> for FieldView {
    fn from(f: ProfileField) -> Self {
        Self {
            key: f.key.as_str().to_owned(),
            name: f.name,
            field_type: f.field_type.as_str().to_owned(),
            sensitive: f.sensitive,
            builtin: f.builtin,
            created_at: f.created_at,
        }
    }
}

/// Which fields a console response masks: built-in keys (`memberId`, `web.os`) and
/// `profile.<key>` paths. Built-in `name` and `profile.name` are the same datum, so
/// marking either masks both.
#[derive(Debug, Clone, Default)]
pub struct MaskSet(Vec<String>);

impl MaskSet {
    /// Collects the sensitive paths of a channel.
    pub fn new(builtins: Vec<String>, fields: &[ProfileField]) -> Self {
        let mut paths = builtins;
        paths.extend(
            fields
                .iter()
                .filter(|f| f.sensitive)
                .map(|f| format!("profile.{}", f.key.as_str())),
        );
        if paths.iter().any(|p| p == "name" || p == "profile.name") {
            for p in ["name", "profile.name"] {
                if !paths.iter().any(|x| x == p) {
                    paths.push(p.to_owned());
                }
            }
        }
        Self(paths)
    }

    /// Whether `path` is sensitive.
    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }

    /// Masks every sensitive value of a serialized user in place.
    pub fn apply(&self, user: &mut Value) {
        for path in &self.0 {
            let (parent, key) = match path.split_once('.') {
                Some((a, b)) => (user.get_mut(a), b),
                None => (Some(&mut *user), path.as_str()),
            };
            if let Some(Value::Object(obj)) = parent
                && let Some(v) = obj.get_mut(key)
            {
                *v = mask::mask(key, v);
            }
        }
    }
}

/// The value at a field path of a serialized user (for reveals).
pub fn value_at<'a>(user: &'a Value, path: &str) -> Option<&'a Value> {
    match path.split_once('.') {
        Some((a, b)) => user.get(a)?.get(b),
        None => user.get(path),
    }
}
