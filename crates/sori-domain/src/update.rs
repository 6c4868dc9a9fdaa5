//! Update semantics of a user, the same on every path (Open API, SDK, Segment, import):
//! `profile` sets keys, `null` clears one key, `profile: null` clears all, `profileOnce`
//! sets only empty keys, tags are normalized and limited. An update either applies whole or
//! is rejected with every problem listed; nothing is half-applied. The one exception is
//! what a client library collected (`collected`): left out, as a whole, where it does not
//! fit, since nobody typed it.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use crate::error::{Errors, Invalid};
use crate::field::{ProfileField, ProfileKey, Registry, SET_ONCE_KEYS};
use crate::limits::{
    MAX_MEMBER_ID_CHARS, MAX_PROFILE_BYTES, MAX_PROFILE_KEYS, MAX_TAG_CHARS, MAX_TAGS_PER_USER,
};
use crate::user::User;
use crate::value::{self, kind};

/// What an update does to `profile`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ProfilePatch {
    /// `profile` absent: leave it.
    #[default]
    Keep,
    /// `profile: null`: clear every key.
    ClearAll,
    /// `profile: {...}`: set (or with `null`, clear) the given keys.
    Set(Map<String, Value>),
}

/// What an update does to tags.
#[derive(Debug, Clone, PartialEq)]
pub enum TagOp {
    /// Replace all tags (Open API `tags`).
    Set(Vec<String>),
    /// Remove every tag (Open API `tags: null`, as `profile: null` clears the profile): an
    /// empty list is refused as a likely mistake, so emptying needs a value of its own.
    Clear,
    /// Add tags (SDK `addTags`).
    Add(Vec<String>),
    /// Remove tags (SDK `removeTags`).
    Remove(Vec<String>),
}

/// A parsed update request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserUpdate {
    /// Profile change.
    pub profile: ProfilePatch,
    /// Keys to set only where empty.
    pub profile_once: Option<Map<String, Value>>,
    /// Profile values a client library collected rather than the business sent (UTM
    /// parameters, referrer): applied after `profile`, except keys `profile` itself sets,
    /// and left out together when they would take the profile past its limits, so that
    /// they never fail a call the business did not fill in.
    pub collected: Option<Map<String, Value>>,
    /// Tag change.
    pub tags: Option<TagOp>,
    /// Marketing e-mail consent.
    pub unsubscribe_email: Option<bool>,
    /// Marketing SMS consent.
    pub unsubscribe_texting: Option<bool>,
    /// Block from chatting.
    pub blocked: Option<bool>,
    /// Language: set by the customer's own `updateUser`; elsewhere (boot, Segment
    /// `context.locale`) applied only to a new user (see `ApplyContext::sets_language`).
    pub language: Option<String>,
}

/// Fields the SDK's `updateUser`, `addTags` and `removeTags` may carry.
pub const SDK_UPDATE_FIELDS: &[&str] = &[
    "profile",
    "profileOnce",
    "language",
    "unsubscribeEmail",
    "unsubscribeTexting",
    "addTags",
    "removeTags",
];

/// Fields a JSON update body may carry, so each path can say what it accepts.
pub const UPDATE_FIELDS: &[&str] = &[
    "profile",
    "profileOnce",
    "tags",
    "unsubscribeEmail",
    "unsubscribeTexting",
    "blocked",
];

impl UserUpdate {
    /// Parses a JSON body, accepting only `allowed` top-level fields; every wrong type is
    /// reported with its field name.
    pub fn from_json(body: &Value, allowed: &[&str]) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        let Value::Object(obj) = body else {
            return Err(Invalid::one("body", value::not_an_object(body)));
        };
        let mut upd = UserUpdate::default();
        for (k, v) in obj {
            if !allowed.contains(&k.as_str()) {
                errs.push(
                    k,
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
                continue;
            }
            match (k.as_str(), v) {
                ("profile", Value::Null) => upd.profile = ProfilePatch::ClearAll,
                ("profile", Value::Object(m)) => upd.profile = ProfilePatch::Set(m.clone()),
                ("profileOnce", Value::Object(m)) => upd.profile_once = Some(m.clone()),
                ("tags", Value::Null) => upd.tags = Some(TagOp::Clear),
                ("tags", Value::Array(items)) => match strings(items, "tags", &mut errs) {
                    Some(tags) => upd.tags = Some(TagOp::Set(tags)),
                    None => continue,
                },
                ("addTags", Value::Array(items)) => match strings(items, "addTags", &mut errs) {
                    Some(tags) => upd.tags = Some(TagOp::Add(tags)),
                    None => continue,
                },
                ("removeTags", Value::Array(items)) => {
                    match strings(items, "removeTags", &mut errs) {
                        Some(tags) => upd.tags = Some(TagOp::Remove(tags)),
                        None => continue,
                    }
                }
                ("unsubscribeEmail", Value::Bool(b)) => upd.unsubscribe_email = Some(*b),
                ("unsubscribeTexting", Value::Bool(b)) => upd.unsubscribe_texting = Some(*b),
                ("blocked", Value::Bool(b)) => upd.blocked = Some(*b),
                ("language", Value::String(s)) => upd.language = Some(s.clone()),
                // Set-once values cannot be cleared: `null` says nothing here.
                ("profileOnce", _) => errs.push(k, format!("must be an object, got {}", kind(v))),
                ("profile", _) => {
                    errs.push(k, format!("must be an object or null, got {}", kind(v)))
                }
                ("tags", _) => errs.push(
                    k,
                    format!(
                        "must be a list of strings, or null to remove every tag, got {}",
                        kind(v)
                    ),
                ),
                ("addTags" | "removeTags", _) => {
                    errs.push(k, format!("must be a list of strings, got {}", kind(v)))
                }
                ("language", _) => errs.push(k, format!("must be a string, got {}", kind(v))),
                _ => errs.push(k, format!("must be a boolean, got {}", kind(v))),
            }
        }
        errs.check()?;
        Ok(upd)
    }
}

fn strings(items: &[Value], field: &str, errs: &mut Errors) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) => out.push(s.to_owned()),
            None => {
                ok = false;
                errs.push(
                    format!("{field}[{i}]"),
                    format!("must be a string, got {}", kind(item)),
                );
            }
        }
    }
    ok.then_some(out)
}

/// Checks a `memberId`: 1–256 characters, no surrounding whitespace, no NUL or control
/// characters, at least one visible character.
pub fn check_member_id(s: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::one("memberId", "must not be empty"));
    }
    if s.trim() != s {
        return Err(Invalid::one(
            "memberId",
            "must not start or end with whitespace",
        ));
    }
    if s.contains('\0') {
        return Err(Invalid::one("memberId", value::NUL_REJECTED));
    }
    // A line break or escape in an id is a bug upstream, and one that would show as a
    // different id in every CSV and log line.
    if s.chars().any(value::breaks_display) {
        return Err(Invalid::one("memberId", value::BREAKS_DISPLAY));
    }
    if s.chars().count() > MAX_MEMBER_ID_CHARS {
        return Err(Invalid::one(
            "memberId",
            format!("must be at most {MAX_MEMBER_ID_CHARS} characters"),
        ));
    }
    // Only zero-width or blank characters: an id that lists as a blank in the console and
    // every export, and is a bug upstream (as with event names).
    if !s.chars().any(value::shows) {
        return Err(Invalid::one("memberId", value::NOTHING_VISIBLE));
    }
    Ok(())
}

/// A profile's size as stored (compact JSON), the measure of its 15 KB limit.
pub(crate) fn profile_bytes(profile: &Map<String, Value>) -> usize {
    serde_json::to_vec(profile).map_or(usize::MAX, |v| v.len())
}

/// Inputs of an update that do not come from the request.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// Current time (ms).
    pub now: i64,
    /// Channel time zone, to turn timestamps into calendar days.
    pub tz: TimeZone,
    /// Tags one call may carry (10 on the SDK, 20 on the Open API).
    pub tag_limit_per_call: usize,
    /// False on SDK boots: a boot can unsubscribe but never subscribe again.
    pub may_resubscribe: bool,
    /// Whether an unknown profile key registers a new field, and if not, why.
    pub new_keys: NewKeys,
    /// True for the customer's own `updateUser`, whose `language` is a choice to apply;
    /// a boot's or a Segment locale applies only to a new user (the language a customer
    /// first came with stays theirs until they change it).
    pub sets_language: bool,
}

/// What a write may do with a profile key the channel has not registered (SPEC §3.2: a
/// value for an unregistered key registers it, from trusted callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeys {
    /// The key is registered with the type of its value (Open API, Segment, imports).
    Register,
    /// A manager without the general-settings permission may not change the schema.
    NeedsPermission,
    /// The browser SDK writes registered keys only: its plugin key is public, so any
    /// visitor could otherwise add fields without end and fix their types before the
    /// business does (seed 002: a site's keys are added in the settings).
    RegisteredOnly,
}

/// The result of a successful update.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The user after the update.
    pub user: User,
    /// Whether anything changed (when false, nothing needs writing).
    pub changed: bool,
    /// Profile fields registered by this update, inferred from the values.
    pub new_fields: Vec<ProfileField>,
}

/// Applies `upd` to `base` (a stored user, or a fresh one when `created`).
pub fn apply_update(
    base: &User,
    created: bool,
    registry: &Registry,
    upd: &UserUpdate,
    ctx: &ApplyContext,
) -> Result<Applied, Invalid> {
    let mut errs = Errors::default();
    let mut user = base.clone();
    let mut new_fields: BTreeMap<String, ProfileField> = BTreeMap::new();

    match &upd.profile {
        ProfilePatch::Keep => {}
        ProfilePatch::ClearAll => user.profile.clear(),
        ProfilePatch::Set(m) if m.is_empty() => errs.push(
            "profile",
            "must not be an empty object; send null to clear every field or omit it",
        ),
        ProfilePatch::Set(m) => {
            for (k, v) in m {
                let path = format!("profile.{k}");
                if v.is_null() {
                    match ProfileKey::parse(k) {
                        Ok(_) => {
                            user.profile.remove(k);
                        }
                        Err(e) => errs.push(path, e),
                    }
                    continue;
                }
                let Some(stored) =
                    checked_value(k, v, &path, registry, &mut new_fields, ctx, &mut errs)
                else {
                    continue;
                };
                if SET_ONCE_KEYS.contains(&k.as_str()) && has_value(&user, k) {
                    continue;
                }
                user.profile.insert(k.clone(), stored);
            }
        }
    }

    if let Some(m) = &upd.profile_once {
        if m.is_empty() {
            errs.push("profileOnce", "must not be an empty object");
        }
        for (k, v) in m {
            let path = format!("profileOnce.{k}");
            if v.is_null() {
                errs.push(path, "must not be null; profileOnce only sets values");
                continue;
            }
            if let Some(stored) =
                checked_value(k, v, &path, registry, &mut new_fields, ctx, &mut errs)
                && !has_value(&user, k)
            {
                user.profile.insert(k.clone(), stored);
            }
        }
    }

    // Collected values go in whole or not at all, undone key by key (a handful of keys;
    // the profile itself is not copied on every call).
    if let Some(m) = &upd.collected {
        let registered: Vec<&String> = m.keys().filter(|k| new_fields.contains_key(*k)).collect();
        let mut refused = Errors::default();
        let mut before: Vec<(&String, Option<Value>)> = Vec::new();
        let sent = match &upd.profile {
            ProfilePatch::Set(p) => Some(p),
            _ => None,
        };
        for (k, v) in m {
            if sent.is_some_and(|p| p.contains_key(k)) {
                continue;
            }
            let path = format!("profile.{k}");
            if let Some(stored) =
                checked_value(k, v, &path, registry, &mut new_fields, ctx, &mut refused)
                && !(SET_ONCE_KEYS.contains(&k.as_str()) && has_value(&user, k))
            {
                before.push((k, user.profile.insert(k.clone(), stored)));
            }
        }
        let over = !before.is_empty()
            && (user.profile.len() > MAX_PROFILE_KEYS
                || profile_bytes(&user.profile) > MAX_PROFILE_BYTES);
        if over || !refused.is_empty() {
            for (k, old) in before.into_iter().rev() {
                match old {
                    Some(v) => user.profile.insert(k.clone(), v),
                    None => user.profile.remove(k),
                };
            }
            new_fields.retain(|k, _| !m.contains_key(k) || registered.contains(&k));
        }
    }

    if user.profile.len() > MAX_PROFILE_KEYS {
        errs.push(
            "profile",
            format!(
                "has {} keys; at most {MAX_PROFILE_KEYS} are allowed",
                user.profile.len()
            ),
        );
    }
    let size = profile_bytes(&user.profile);
    if size > MAX_PROFILE_BYTES {
        errs.push(
            "profile",
            format!("is {size} bytes; the whole profile may be at most {MAX_PROFILE_BYTES} bytes"),
        );
    }

    if let Some(op) = &upd.tags {
        apply_tags(&mut user.tags, op, ctx.tag_limit_per_call, &mut errs);
    }

    if let Some(b) = upd.unsubscribe_email {
        user.unsubscribe_email = consent(base.unsubscribe_email, b, ctx.may_resubscribe);
    }
    if let Some(b) = upd.unsubscribe_texting {
        user.unsubscribe_texting = consent(base.unsubscribe_texting, b, ctx.may_resubscribe);
    }
    if let Some(b) = upd.blocked {
        user.blocked = b;
    }
    // Checked on every update, applied only to a new user (the language a customer first
    // came with stays theirs).
    if let Some(lang) = &upd.language {
        match check_language(lang) {
            Ok(l) if created || ctx.sets_language => user.language = Some(l),
            Ok(_) => {}
            Err(e) => errs.push("language", e),
        }
    }

    errs.check()?;
    let changed = created || !user.same_content(base);
    if changed && !created {
        user.updated_at = ctx.now;
    }
    Ok(Applied {
        user,
        changed,
        new_fields: new_fields.into_values().collect(),
    })
}

fn has_value(user: &User, key: &str) -> bool {
    user.profile.get(key).is_some_and(|v| !v.is_null())
}

fn consent(old: bool, requested: bool, may_resubscribe: bool) -> bool {
    if old && !requested && !may_resubscribe {
        old
    } else {
        requested
    }
}

#[allow(clippy::too_many_arguments)]
fn checked_value(
    key: &str,
    v: &Value,
    path: &str,
    registry: &Registry,
    new_fields: &mut BTreeMap<String, ProfileField>,
    ctx: &ApplyContext,
    errs: &mut Errors,
) -> Option<Value> {
    let ty = if let Some(f) = registry.get(key).or_else(|| new_fields.get(key)) {
        f.field_type
    } else if ctx.new_keys == NewKeys::NeedsPermission {
        errs.push(path, "is not a registered profile field; registering one needs the general-settings permission");
        return None;
    } else if ctx.new_keys == NewKeys::RegisteredOnly {
        errs.push(
            path,
            "is not a registered profile field; the web SDK writes registered fields only \
             (register it in the console or with POST /open/v5/profile-fields)",
        );
        return None;
    } else {
        let parsed = match ProfileKey::parse(key) {
            Ok(k) => k,
            Err(e) => {
                errs.push(path, e);
                return None;
            }
        };
        let ty = match value::infer_type(v) {
            Ok(t) => t,
            Err(e) => {
                errs.push(path, format!("cannot register a new field: {e}"));
                return None;
            }
        };
        new_fields.insert(
            key.to_owned(),
            ProfileField {
                key: parsed,
                name: key.to_owned(),
                field_type: ty,
                sensitive: false,
                builtin: false,
                created_at: ctx.now,
            },
        );
        ty
    };
    match value::check(key, ty, v, &ctx.tz) {
        Ok(stored) => Some(stored),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

/// Normalizes one tag: trimmed, lowercase, 1–50 characters. As with member ids, a tag with
/// control characters or with nothing visible is refused: it is a bug upstream, and it
/// would show as a blank or a broken line in the console, filters and every export.
pub fn normalize_tag(raw: &str) -> Result<String, String> {
    let t = raw.trim().to_lowercase();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.contains('\0') {
        return Err(value::NUL_REJECTED.into());
    }
    if t.chars().any(value::breaks_display) {
        return Err(value::BREAKS_DISPLAY.into());
    }
    if !t.chars().any(value::shows) {
        return Err(value::NOTHING_VISIBLE.into());
    }
    if t.chars().count() > MAX_TAG_CHARS {
        return Err(format!("must be at most {MAX_TAG_CHARS} characters"));
    }
    Ok(t)
}

fn apply_tags(tags: &mut Vec<String>, op: &TagOp, per_call: usize, errs: &mut Errors) {
    // Errors name the field the caller sent.
    let (field, given) = match op {
        TagOp::Clear => {
            tags.clear();
            return;
        }
        TagOp::Set(t) => ("tags", t),
        TagOp::Add(t) => ("addTags", t),
        TagOp::Remove(t) => ("removeTags", t),
    };
    if given.is_empty() {
        errs.push(field, "must not be an empty list");
        return;
    }
    if given.len() > per_call {
        errs.push(
            field,
            format!("at most {per_call} tags per call (got {})", given.len()),
        );
        return;
    }
    let mut normalized: Vec<String> = Vec::with_capacity(given.len());
    for (i, raw) in given.iter().enumerate() {
        // A tag being removed need only name a stored one: one stored before the rules
        // of [`normalize_tag`] grew stricter must still be removable.
        let checked = match op {
            TagOp::Remove(_) if tags.contains(&raw.trim().to_lowercase()) => {
                Ok(raw.trim().to_lowercase())
            }
            _ => normalize_tag(raw),
        };
        match checked {
            Ok(t) if !normalized.contains(&t) => normalized.push(t),
            Ok(_) => {}
            Err(e) => errs.push(format!("{field}[{i}]"), e),
        }
    }
    match op {
        TagOp::Set(_) | TagOp::Clear => *tags = normalized,
        TagOp::Add(_) => {
            for t in normalized {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        TagOp::Remove(_) => tags.retain(|t| !normalized.contains(t)),
    }
    if tags.len() > MAX_TAGS_PER_USER {
        errs.push(
            field,
            format!(
                "a user may have at most {MAX_TAGS_PER_USER} tags (would have {})",
                tags.len()
            ),
        );
    }
}

/// A language tag (`ko`, `ko-KR`, `en_US`, `zh-Hans-CN`) as the language it names: its
/// primary subtag in lower case. Every path (SDK, Segment `context.locale`, Open API)
/// stores the same form, so a filter `language = ko` finds every Korean speaker whatever
/// region their browser or app reported.
pub fn check_language(s: &str) -> Result<String, String> {
    let well_formed = s.len() <= 35
        && s.split(['-', '_'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    let primary = s.split(['-', '_']).next().unwrap_or_default();
    // `und` (undetermined) and `zxx` (no linguistic content) are tags that name no language.
    let names_one = !["und", "zxx"]
        .iter()
        .any(|n| primary.eq_ignore_ascii_case(n));
    if well_formed
        && names_one
        && (2..=3).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_alphabetic())
    {
        Ok(primary.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a language tag such as ko or en-US",
            crate::value::clip_text(s)
        ))
    }
}

#[cfg(test)]
mod tests;
