//! The per-channel registry of profile fields (`profile.*`) and the built-in user fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Invalid;
use crate::limits::{MAX_DISPLAY_NAME_CHARS, MAX_KEY_CHARS};

/// Type of a profile value; a value that does not fit its field's type is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FieldType {
    /// `true` / `false`.
    Boolean,
    /// Text up to 512 characters.
    String,
    /// A finite JSON number.
    Number,
    /// A calendar day, stored as `YYYY-MM-DD`.
    Date,
    /// An instant, stored as milliseconds since the epoch.
    Datetime,
    /// A list of strings.
    List,
    /// A list of numbers.
    ListOfNumber,
}

impl FieldType {
    /// Every type, in the order the console lists them.
    pub const ALL: [FieldType; 7] = [
        FieldType::Boolean,
        FieldType::String,
        FieldType::Number,
        FieldType::Date,
        FieldType::Datetime,
        FieldType::List,
        FieldType::ListOfNumber,
    ];

    /// The wire name, as used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Boolean => "boolean",
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::List => "list",
            FieldType::ListOfNumber => "listOfNumber",
        }
    }

    /// Parses a wire name; the error lists the accepted names.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown type `{s}`; expected one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile key that follows the key rule: starts with an English letter, then English
/// letters and digits only (camelCase), at most 50 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProfileKey(String);

impl ProfileKey {
    /// Validates `s` against the key rule.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match chars.next() {
            None => return Err("key must not be empty".into()),
            Some(c) if !c.is_ascii_alphabetic() => {
                return Err(format!(
                    "key `{}` must start with an English letter",
                    clip(s)
                ));
            }
            _ => {}
        }
        if s.chars().count() > MAX_KEY_CHARS {
            return Err(format!("key must be at most {MAX_KEY_CHARS} characters"));
        }
        if let Some(bad) = chars.find(|c| !c.is_ascii_alphanumeric()) {
            return Err(format!(
                "key `{}` may contain only English letters and digits (found `{bad}`)",
                clip(s)
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// One registered profile field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileField {
    /// Key under `profile.`.
    pub key: ProfileKey,
    /// Name shown in the console and filter builder.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Masked in the console for every manager; a reveal (audited) shows the value.
    pub sensitive: bool,
    /// Pre-registered by Sori; its type cannot change and it cannot be deleted.
    pub builtin: bool,
    /// Registration time (ms).
    pub created_at: i64,
}

impl ProfileField {
    /// Checks a display name (see [`crate::value::display_name`]).
    pub fn check_name(name: &str) -> Result<String, Invalid> {
        crate::value::display_name("name", name, MAX_DISPLAY_NAME_CHARS)
    }
}

/// Fields every channel starts with (seed 002, "바로 활용할 수 있는 데이터 목록").
pub const PREREGISTERED: &[(&str, &str, FieldType)] = &[
    ("name", "Name", FieldType::String),
    ("email", "Email", FieldType::String),
    ("mobileNumber", "Mobile number", FieldType::String),
    ("landlineNumber", "Landline number", FieldType::String),
    ("referrer", "Referrer", FieldType::String),
    ("utmSource", "UTM Source (initial)", FieldType::String),
    ("utmMedium", "UTM Medium (initial)", FieldType::String),
    ("utmCampaign", "UTM Campaign (initial)", FieldType::String),
    ("utmContent", "UTM Content (initial)", FieldType::String),
    ("utmTerm", "UTM Term (initial)", FieldType::String),
    ("lastUtmSource", "UTM Source", FieldType::String),
    ("lastUtmMedium", "UTM Medium", FieldType::String),
    ("lastUtmCampaign", "UTM Campaign", FieldType::String),
    ("lastUtmContent", "UTM Content", FieldType::String),
    ("lastUtmTerm", "UTM Term", FieldType::String),
    ("description", "Description", FieldType::String),
    (
        "lastCheckoutCompletedAt",
        "Last checkout completed at",
        FieldType::Datetime,
    ),
];

/// Profile keys written only while empty (seed 002: "한번 입력되면 갱신되지 않음").
pub const SET_ONCE_KEYS: &[&str] = &[
    "referrer",
    "utmSource",
    "utmMedium",
    "utmCampaign",
    "utmContent",
    "utmTerm",
];

/// Built-in user fields with their types (seed 002, "채널톡이 저장해주는 데이터 목록").
pub const BUILTIN_FIELDS: &[(&str, FieldType)] = &[
    ("id", FieldType::String),
    ("memberId", FieldType::String),
    ("name", FieldType::String),
    ("tags", FieldType::List),
    ("city", FieldType::String),
    ("country", FieldType::String),
    ("language", FieldType::String),
    ("member", FieldType::Boolean),
    ("lastSeenAt", FieldType::Datetime),
    ("createdAt", FieldType::Datetime),
    ("updatedAt", FieldType::Datetime),
    ("sessionsCount", FieldType::Number),
    ("hasChat", FieldType::Boolean),
    ("hasPushToken", FieldType::Boolean),
    ("unsubscribeEmail", FieldType::Boolean),
    ("unsubscribeTexting", FieldType::Boolean),
    ("web.browser", FieldType::String),
    ("web.browserName", FieldType::String),
    ("web.os", FieldType::String),
    ("web.osName", FieldType::String),
    ("web.device", FieldType::String),
    ("web.lastSeenAt", FieldType::Datetime),
    ("web.sessionsCount", FieldType::Number),
    ("mobile.appName", FieldType::String),
    ("mobile.appVersion", FieldType::String),
    ("mobile.os", FieldType::String),
    ("mobile.osName", FieldType::String),
    ("mobile.device", FieldType::String),
    ("mobile.lastSeenAt", FieldType::Datetime),
    ("mobile.sessionsCount", FieldType::Number),
];

/// Looks up a built-in field's type.
pub fn builtin_type(key: &str) -> Option<FieldType> {
    BUILTIN_FIELDS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, t)| *t)
}

/// Why a built-in user field cannot be marked sensitive, if it cannot: `id` is how a
/// manager opens a user (masked, a list would offer nothing to open).
pub fn builtin_unmaskable(key: &str) -> Option<String> {
    match (key, builtin_type(key)) {
        ("id", _) => Some("`id` cannot be sensitive: it is how a user is opened".into()),
        (_, None) => Some(format!("`{key}` is not a built-in user field")),
        _ => None,
    }
}

/// A channel's registered profile fields by key.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    fields: BTreeMap<String, ProfileField>,
}

impl Registry {
    /// Builds a registry from stored rows.
    pub fn new(fields: impl IntoIterator<Item = ProfileField>) -> Self {
        Self {
            fields: fields
                .into_iter()
                .map(|f| (f.key.as_str().to_owned(), f))
                .collect(),
        }
    }

    /// The field registered under `key`.
    pub fn get(&self, key: &str) -> Option<&ProfileField> {
        self.fields.get(key)
    }

    /// Adds a field (used when a write registers a new key).
    pub fn insert(&mut self, field: ProfileField) {
        self.fields.insert(field.key.as_str().to_owned(), field);
    }

    /// Every field, ordered by key.
    pub fn fields(&self) -> impl Iterator<Item = &ProfileField> {
        self.fields.values()
    }

    /// The pre-registered fields for a new channel.
    pub fn preregistered(now: i64) -> Vec<ProfileField> {
        PREREGISTERED
            .iter()
            .map(|(key, name, ty)| ProfileField {
                key: ProfileKey((*key).to_owned()),
                name: (*name).to_owned(),
                field_type: *ty,
                sensitive: false,
                builtin: true,
                created_at: now,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule() {
        assert!(ProfileKey::parse("cartCount").is_ok());
        assert!(ProfileKey::parse("a1").is_ok());
        assert!(ProfileKey::parse("1a").unwrap_err().contains("start with"));
        assert!(ProfileKey::parse("cart_count").unwrap_err().contains("`_`"));
        assert!(ProfileKey::parse("").is_err());
        assert!(ProfileKey::parse("한글").is_err());
        assert!(ProfileKey::parse(&"a".repeat(51)).is_err());
    }

    #[test]
    fn type_names_round_trip() {
        for t in FieldType::ALL {
            assert_eq!(FieldType::parse(t.as_str()), Ok(t));
        }
        assert!(
            FieldType::parse("object")
                .unwrap_err()
                .contains("listOfNumber")
        );
    }
}
