//! The Segment tracking spec mapped onto Sori (SPEC §4): `userId` is the member id,
//! `anonymousId` the browser's veil id, `traits` the profile, `context.campaign` the UTM
//! fields, `context.page` the page, `properties` the event property, and `messageId` makes a
//! retry idempotent. Pure: the caller passes the receive time.

use serde_json::{Map, Value};

use crate::error::{Errors, Invalid};
use crate::event::{self, EventInput, PAGE_VIEW};
use crate::phone;
use crate::update::{ProfilePatch, UserUpdate};
use crate::user::DeviceInfo;
use crate::value;

/// Which call an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Profile update.
    Identify,
    /// Custom event.
    Track,
    /// Page view (a visit).
    Page,
    /// Screen view of a mobile app: its page view (a visit; the page is the screen name).
    Screen,
}

impl Kind {
    /// The kind named by a batch item's `type`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "identify" => Some(Self::Identify),
            "track" => Some(Self::Track),
            "page" => Some(Self::Page),
            "screen" => Some(Self::Screen),
            _ => None,
        }
    }
}

/// One Segment call, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Kind of call.
    pub kind: Kind,
    /// `userId`.
    pub member_id: Option<String>,
    /// `anonymousId`.
    pub veil_id: Option<String>,
    /// Profile change from traits, campaign and referrer (`None` when nothing to change).
    pub update: Option<UserUpdate>,
    /// The event of a track or page call.
    pub event: Option<EventInput>,
    /// When it happened (ms), corrected for client clock skew, never in the future.
    pub at: i64,
    /// The field `at` was read from (`timestamp` or `originalTimestamp`), to name in an
    /// error about the time.
    pub time_field: &'static str,
    /// The field the event's page was read from (`context.page.url`, a page call's
    /// `properties.url`, a screen's `name`), to name in an error about the page.
    pub page_field: &'static str,
    /// `(profile key, path in the message)` for every profile value the call's traits
    /// set (`firstName` ← `traits.first_name`), to name the trait in an error.
    pub origins: Vec<(String, String)>,
    /// Idempotency key.
    pub message_id: Option<String>,
    /// `context.userAgent`, for page calls.
    pub user_agent: Option<String>,
    /// The app, OS and device of a call sent from a mobile app (`context.app`,
    /// `context.os`, `context.device`); `None` for other callers.
    pub app: Option<DeviceInfo>,
    /// `traits.createdAt`: when the business created this customer.
    pub created_at: Option<i64>,
    /// `traits.address.city` on `identify`, else `context.location.city`.
    pub city: Option<String>,
    /// `traits.address.country` on `identify`, else `context.location.country`.
    pub country: Option<String>,
    /// The place comes (at least in part) from an identify's `traits.address`, which
    /// applies whenever it is sent, rather than from `context.location`, which applies
    /// only when its call is not older than the user's last activity.
    pub addressed: bool,
}

/// Translates one message. `kind` is given by the endpoint (`/v1/track`) or read from the
/// item's `type` (batch). `prefix` names fields in errors (`batch[3]`).
pub fn parse(
    prefix: &str,
    msg: Value,
    kind: Option<Kind>,
    received_at: i64,
) -> Result<Call, Invalid> {
    let at = |f: &str| crate::error::field_path(prefix, f).into_owned();
    let Value::Object(mut m) = msg else {
        // A batch item that is not an object is the item's own error (`batch[3]`).
        let field = if prefix.is_empty() { "body" } else { prefix };
        return Err(Invalid::one(field, value::not_an_object(&msg)));
    };
    let kind = match kind {
        Some(k) => k,
        None => match m.get("type") {
            Some(Value::String(t)) => Kind::parse(t).ok_or_else(|| {
                Invalid::one(
                    at("type"),
                    format!("`{t}` is not supported (identify, track, page, screen)"),
                )
            })?,
            None | Some(Value::Null) => return Err(Invalid::one(at("type"), "is required")),
            Some(other) => {
                return Err(Invalid::one(
                    at("type"),
                    format!("must be a string, got {}", value::kind(other)),
                ));
            }
        },
    };
    let mut errs = Errors::default();
    let member_id = id_field(&m, "userId", &at, &mut errs);
    let veil_id = id_field(&m, "anonymousId", &at, &mut errs);
    if member_id.is_none() && veil_id.is_none() && errs.is_empty() {
        errs.push(at("userId"), "userId or anonymousId is required");
    }
    let message_id = match m.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match event::check_message_id("messageId", s) {
            Ok(()) => Some(s.clone()),
            Err(e) => {
                errs.push(at("messageId"), e.0[0].message.clone());
                None
            }
        },
        Some(other) => {
            errs.push(
                at("messageId"),
                format!("must be a string, got {}", value::kind(other)),
            );
            None
        }
    };
    let (when, time_field) = time_of(&m, received_at, &at, &mut errs);
    let empty = Map::new();
    let context = m
        .get("context")
        .and_then(Value::as_object)
        .unwrap_or(&empty);

    let mut profile = Map::new();
    let mut created_at = None;
    let (mut city, mut country) = (None, None);
    let (traits, traits_at) = match (kind, m.get("traits")) {
        (Kind::Identify, Some(t)) => (Some(t), "traits"),
        _ => (context.get("traits"), "context.traits"),
    };
    // Where each profile key came from in the message, so an error found when the profile
    // is applied names what the client sent.
    let mut origins: Vec<(String, String)> = Vec::new();
    if kind == Kind::Identify {
        match traits {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) => {
                for (k, v) in t {
                    let sent = format!("{traits_at}.{k}");
                    let path = at(&sent);
                    // Reserved traits by their camelCase name too (`created_at`), as
                    // every other trait key is camelCased.
                    match camel_case(k).as_str() {
                        "id" | "anonymousId" | "userId" => {}
                        "createdAt" if k == "createdAt" => {
                            created_at = time_value(v, &path, &mut errs);
                        }
                        // The snake_case spelling (Intercom's) counts in seconds; the
                        // exact key wins when both are sent.
                        "createdAt" if !t.contains_key("createdAt") => {
                            created_at = time_value(&seconds_as_millis(v), &path, &mut errs);
                        }
                        "createdAt" => {}
                        named @ ("phone" | "mobileNumber") if v.is_string() => {
                            let s = v.as_str().unwrap_or_default();
                            let key =
                                if phone::normalize_mobile(s).is_ok() || named == "mobileNumber" {
                                    "mobileNumber"
                                } else {
                                    "landlineNumber"
                                };
                            let exact = k == key;
                            put_trait(&mut profile, &mut origins, key.into(), v, sent, exact);
                        }
                        "address" => {
                            if let Value::Object(a) = v {
                                city = place(a, "city");
                                country = place(a, "country");
                            }
                        }
                        // Other objects (`company: {name, plan}`) are flattened one
                        // level (`companyName`, `companyPlan`): profiles hold no objects.
                        _ => match v {
                            Value::Object(inner) => {
                                for (ik, iv) in inner {
                                    let mut sub = camel_case(ik);
                                    if let Some(first) = sub.get(..1) {
                                        sub = first.to_uppercase() + &sub[1..];
                                    }
                                    let key = format!("{}{sub}", camel_case(k));
                                    let sent = format!("{sent}.{ik}");
                                    put_trait(&mut profile, &mut origins, key, iv, sent, false);
                                }
                            }
                            _ => {
                                let key = camel_case(k);
                                let exact = *k == key;
                                put_trait(&mut profile, &mut origins, key, v, sent, exact);
                            }
                        },
                    }
                }
            }
            Some(other) => errs.push(at(traits_at), value::not_an_object(other)),
        }
    }
    // An identify's address is the business's statement about now; a location is only
    // what the library saw when the call was made.
    let addressed = city.is_some() || country.is_some();
    // Segment's standard `context.location`, on any call, where traits name no address.
    if let Some(Value::Object(loc)) = context.get("location") {
        city = city.or_else(|| place(loc, "city"));
        country = country.or_else(|| place(loc, "country"));
    }
    // Collected by the library: cut to the limits rather than refused, and applied where the
    // traits name no such field and they fit (`UserUpdate::collected`).
    let mut collected = Map::new();
    if let Some(Value::Object(c)) = context.get("campaign") {
        for (from, to) in [
            ("source", "Source"),
            ("medium", "Medium"),
            ("name", "Campaign"),
            ("content", "Content"),
            ("term", "Term"),
        ] {
            if let Some(Value::String(v)) = c.get(from)
                && !v.is_empty()
            {
                let v = value::clip_text(v);
                for key in [format!("utm{to}"), format!("lastUtm{to}")] {
                    collected.insert(key, Value::String(v.to_owned()));
                }
            }
        }
    }
    let page_ctx = context.get("page").and_then(Value::as_object);
    if let Some(Value::String(r)) = page_ctx.and_then(|p| p.get("referrer"))
        && !r.is_empty()
    {
        collected.insert(
            "referrer".into(),
            Value::String(value::clip_text(r).to_owned()),
        );
    }
    let language = context
        .get("locale")
        .and_then(Value::as_str)
        .and_then(|l| crate::update::check_language(l.trim()).ok());

    // Like the other context strings, one that is not a string or holds control
    // characters is left out rather than failing the call.
    let ctx_page = page_ctx
        .and_then(|p| p.get("url"))
        .filter(|u| page_url(u))
        .cloned()
        .map(event::clip_page_value);
    let user_agent = context
        .get("userAgent")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let app = app_of(context);
    let mut page_field = "context.page.url";
    // The message is not read after this: its event parts move out rather than copy.
    let event = match kind {
        Kind::Identify => None,
        Kind::Track => Some(EventInput {
            name: m.remove("event").unwrap_or(Value::Null),
            property: m.remove("properties"),
            page: ctx_page,
        }),
        Kind::Screen => {
            page_field = "name";
            Some(EventInput {
                name: Value::String(PAGE_VIEW.into()),
                property: m.remove("properties"),
                page: m.remove("name").map(event::clip_page_value),
            })
        }
        Kind::Page => {
            let mut props = m.remove("properties");
            // As `context.page.url`: a URL with control characters is no page (it stays
            // a property) and the context's page is taken instead.
            let url = match props
                .as_ref()
                .and_then(|p| p.get("url"))
                .filter(|u| page_url(u))
            {
                Some(u) => {
                    page_field = "properties.url";
                    Some(event::clip_page_value(u.clone()))
                }
                None => ctx_page,
            };
            // Libraries fill these from the browser (analytics.js: `path`, `referrer`,
            // `search`, `title`, `url`); a long one is cut, not a reason to lose the page.
            if let Some(Value::Object(p)) = props.as_mut() {
                for key in ["path", "referrer", "search", "title", "url"] {
                    if let Some(Value::String(v)) = p.get_mut(key) {
                        v.truncate(v.floor_char_boundary(event::MAX_STRING_BYTES));
                    }
                }
            }
            Some(EventInput {
                name: Value::String(PAGE_VIEW.into()),
                property: props,
                page: url,
            })
        }
    };
    errs.check()?;
    let update =
        (!profile.is_empty() || !collected.is_empty() || language.is_some()).then(|| UserUpdate {
            profile: if profile.is_empty() {
                ProfilePatch::Keep
            } else {
                ProfilePatch::Set(profile)
            },
            collected: (!collected.is_empty()).then_some(collected),
            language,
            ..UserUpdate::default()
        });
    Ok(Call {
        kind,
        member_id,
        veil_id,
        update,
        event,
        at: when,
        time_field,
        page_field,
        origins,
        message_id,
        user_agent,
        app,
        created_at,
        city,
        country,
        addressed,
    })
}

/// A city or country: trimmed, cut to the string limit, absent when empty or not text
/// (like the rest of the context, it is the library's to fill, not the business's).
fn place(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| value::clip_text(s).to_owned())
}

/// Longest app, OS or device string kept (longer ones are left out).
const MAX_CONTEXT_BYTES: usize = 512;

/// The mobile app a call comes from: `context.device.type` is `ios` or `android`, or the
/// call names an app (`context.app`) running on a mobile OS (`context.os.name`). An app
/// object alone is not enough: RudderStack's browser SDK sends one (naming itself) on
/// every call. Strings that are not strings, or are empty, are left out rather than
/// refused: context is the library's, not the business's.
fn app_of(context: &Map<String, Value>) -> Option<DeviceInfo> {
    let obj = |k: &str| context.get(k).and_then(Value::as_object);
    let text = |o: Option<&Map<String, Value>>, k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_CONTEXT_BYTES)
            .map(str::to_owned)
    };
    let (app, os, device) = (obj("app"), obj("os"), obj("device"));
    let lower = |o, k| text(o, k).map(|t| t.to_ascii_lowercase());
    let mobile_device = matches!(lower(device, "type").as_deref(), Some("ios" | "android"));
    let mobile_os = matches!(
        lower(os, "name").as_deref(),
        Some("ios" | "ipados" | "android" | "tvos" | "watchos")
    );
    if !(mobile_device || (app.is_some() && mobile_os)) {
        return None;
    }
    let os_name = text(os, "name");
    Some(DeviceInfo {
        app_name: text(app, "name"),
        app_version: text(app, "version"),
        os: match (&os_name, text(os, "version")) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, _) => n.clone(),
        },
        os_name,
        device: text(device, "model").or_else(|| text(device, "manufacturer")),
        ..DeviceInfo::default()
    })
}

fn id_field(
    m: &Map<String, Value>,
    key: &str,
    at: &dyn Fn(&str) -> String,
    errs: &mut Errors,
) -> Option<String> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.chars().count() > 256 => {
            errs.push(at(key), "must be at most 256 characters");
            None
        }
        // Ids are compared and shown as written: a control character or padding is a bug
        // upstream that would make one visitor two.
        Some(Value::String(s)) if s.chars().any(crate::value::breaks_display) => {
            errs.push(at(key), crate::value::BREAKS_DISPLAY);
            None
        }
        Some(Value::String(s)) if s.trim() != s => {
            errs.push(at(key), "must not start or end with whitespace");
            None
        }
        Some(Value::String(s)) if !s.chars().any(value::shows) => {
            errs.push(at(key), value::NOTHING_VISIBLE);
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        // An integer id is its digits; any other number (`1e3`, `12.5`, digits past 64
        // bits) reaches us as a float whose text is not what the client had, so two
        // customers could end up with one id.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(Value::Number(_)) => {
            errs.push(
                at(key),
                "must be a string or an integer (a number with a fraction, an exponent or \
                 over 64 bits loses digits; send it as a string)",
            );
            None
        }
        Some(other) => {
            errs.push(
                at(key),
                format!("must be a string or an integer, got {}", value::kind(other)),
            );
            None
        }
    }
}

/// The event time: `timestamp` when given; else `originalTimestamp` corrected by the
/// client's clock skew (`sentAt` vs our receive time); else the receive time. Never later
/// than the receive time.
fn time_of(
    m: &Map<String, Value>,
    received_at: i64,
    at: &dyn Fn(&str) -> String,
    errs: &mut Errors,
) -> (i64, &'static str) {
    let get = |k: &str, errs: &mut Errors| match m.get(k) {
        None | Some(Value::Null) => None,
        Some(v) => time_value(v, &at(k), errs),
    };
    // Each time the call carries is checked, used or not: a broken one is a client bug to
    // report, whichever of them the event's time then comes from.
    let (timestamp, original, sent) = (
        get("timestamp", errs),
        get("originalTimestamp", errs),
        get("sentAt", errs),
    );
    let (t, field) = if let Some(t) = timestamp {
        (t, "timestamp")
    } else if let Some(o) = original {
        let t = match sent.map(|s| received_at - (s - o)) {
            Some(t) if t < 0 => {
                // The client claims to have held the call for longer than since 1970.
                errs.push(
                    at("originalTimestamp"),
                    "corrected by sentAt, lies before 1970",
                );
                received_at
            }
            Some(t) => t,
            None => o,
        };
        (t, "originalTimestamp")
    } else {
        (received_at, "timestamp")
    };
    (t.min(received_at), field)
}

/// Whether a URL the library collected can be a page: text without control characters or
/// direction overrides (anything else is left out rather than failing the call).
fn page_url(u: &Value) -> bool {
    u.as_str()
        .is_some_and(|u| !u.chars().any(crate::value::breaks_display))
}

/// A whole number below [`SECONDS_BELOW`] as milliseconds (it counts seconds); any other
/// value as it is.
fn seconds_as_millis(v: &Value) -> Value {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && (1.0..SECONDS_BELOW as f64).contains(&f) => {
            Value::from(f as i64 * 1000)
        }
        _ => v.clone(),
    }
}

/// Times Sori keeps, in epoch milliseconds: from 1970 to the end of 9999. Earlier ones
/// would be negative, and a user's `createdAt` follows its earliest event.
const TIMES: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// Epoch numbers below this (1973-03-03 in milliseconds) are refused: a time that early in
/// customer activity is a time in seconds read as milliseconds (seconds run from 1.0e9 in
/// 2001 to 9.9e9 in 2286), and taking it would put a migrated history in January 1970.
pub const SECONDS_BELOW: i64 = 100_000_000_000;

/// An ISO-8601 time or epoch milliseconds, from 1970 to 9999 (numbers from 1973: see
/// [`SECONDS_BELOW`]).
pub fn time_value(v: &Value, path: &str, errs: &mut Errors) -> Option<i64> {
    match v {
        Value::String(s) => match value::parse_instant(s) {
            Some(t) if TIMES.contains(&t.as_millisecond()) => Some(t.as_millisecond()),
            Some(_) => {
                errs.push(path, "must be a time between 1970 and 9999");
                None
            }
            None => {
                errs.push(
                    path,
                    "must be an ISO-8601 time with an offset (at most ±23:59) no later \
                     than 9999-12-30T22:00:00Z, or epoch milliseconds",
                );
                None
            }
        },
        // A whole number written as a float (`1793000000000.0`, `1.793e12`) is the same time.
        Value::Number(n) => {
            let whole = n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0);
            let ms = n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            });
            match ms {
                Some(0) => {
                    errs.push(path, "must be a time: 0 (1970-01-01) stands for no time");
                    None
                }
                Some(ms) if (0..SECONDS_BELOW).contains(&ms) => {
                    errs.push(
                        path,
                        format!(
                            "must be epoch milliseconds: {ms} would be a time in 1970–1973, \
                             so it looks like seconds (multiply by 1000)"
                        ),
                    );
                    None
                }
                Some(ms) if TIMES.contains(&ms) => Some(ms),
                _ if whole => {
                    errs.push(path, "must be epoch milliseconds between 1970 and 9999");
                    None
                }
                _ => {
                    errs.push(path, "must be whole epoch milliseconds");
                    None
                }
            }
        }
        other => {
            errs.push(path, format!("must be a time, got {}", value::kind(other)));
            None
        }
    }
}

/// Puts a trait's value under its profile key. Two traits can land on one key
/// (`first_name` and `firstName`, `company.name` and `companyName`): the one sent under
/// the key itself wins, whatever the order, and of two mapped ones the first (traits are
/// read in key order) stays.
fn put_trait(
    profile: &mut Map<String, Value>,
    origins: &mut Vec<(String, String)>,
    key: String,
    v: &Value,
    sent: String,
    exact: bool,
) {
    if let Some((_, held)) = origins.iter_mut().find(|(k, _)| *k == key) {
        let held_exact = held.rsplit('.').next() == Some(key.as_str());
        if held_exact || !exact {
            return;
        }
        *held = sent;
    } else {
        origins.push((key.clone(), sent));
    }
    profile.insert(key, v.clone());
}

/// `first_name` → `firstName`, so snake_case traits fit the profile key rule.
fn camel_case(k: &str) -> String {
    if !k.contains('_') {
        return k.to_owned();
    }
    let mut out = String::with_capacity(k.len());
    let mut upper = false;
    for c in k.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    /// An identify of member `m` with `traits`, parsed.
    fn identify_with(traits: Value) -> Call {
        parse(
            "",
            json!({"userId": "m", "traits": traits}),
            Some(Kind::Identify),
            NOW,
        )
        .unwrap()
    }

    /// The profile a parsed identify sets.
    fn profile_of(c: Call) -> Map<String, Value> {
        let ProfilePatch::Set(p) = c.update.unwrap().profile else {
            panic!("profile")
        };
        p
    }

    #[test]
    fn identify_maps_traits_campaign_and_phone() {
        let c = parse(
            "",
            json!({"type": "identify", "userId": "m1", "anonymousId": "a1",
                "traits": {"name": "Kim", "first_name": "Min", "phone": "010-1234-5678",
                           "createdAt": "2024-01-02T03:04:05Z", "address": {"city": "Seoul"}},
                "context": {"campaign": {"source": "news", "name": "fall"}, "locale": "ko-KR"}}),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(c.kind, Kind::Identify);
        assert_eq!(c.member_id.as_deref(), Some("m1"));
        assert_eq!(c.veil_id.as_deref(), Some("a1"));
        let u = c.update.unwrap();
        let ProfilePatch::Set(p) = u.profile else {
            panic!("profile")
        };
        assert_eq!(p["firstName"], json!("Min"));
        assert_eq!(p["mobileNumber"], json!("010-1234-5678"));
        let collected = u.collected.as_ref().unwrap();
        assert_eq!(collected["utmSource"], json!("news"));
        assert_eq!(collected["lastUtmCampaign"], json!("fall"));
        assert_eq!(u.language.as_deref(), Some("ko"));
        assert_eq!(c.created_at, Some(1_704_164_645_000));
        assert_eq!(c.city.as_deref(), Some("Seoul"));
        assert_eq!(c.at, NOW);
    }

    #[test]
    fn mobile_context_is_read_only_from_apps() {
        let call = |context: Value| {
            parse(
                "",
                json!({"type": "screen", "anonymousId": "a", "name": "Home", "context": context}),
                None,
                NOW,
            )
            .unwrap()
        };
        // A browser or server call has no app.
        let web = call(json!({"userAgent": "Mozilla/5.0", "os": {"name": "Windows"}}));
        assert_eq!(web.app, None);
        assert_eq!(web.event.unwrap().page, Some(json!("Home")));
        // RudderStack's browser SDK names itself as the app: still a browser.
        let rudder_web = call(json!({"app": {"name": "RudderLabs JavaScript SDK",
                                            "namespace": "com.rudderlabs.javascript"},
                                     "os": {"name": "", "version": ""},
                                     "userAgent": "Mozilla/5.0"}));
        assert_eq!(rudder_web.app, None);
        // An app on iOS counts without a device type.
        let ios = call(json!({"app": {"name": "Shop"}, "os": {"name": "iOS", "version": "17"}}));
        assert_eq!(ios.app.unwrap().app_name.as_deref(), Some("Shop"));
        // An Android device without an app object still counts; odd values are left out.
        let a = call(
            json!({"device": {"type": "Android", "manufacturer": "Samsung"},
                            "os": {"name": "Android", "version": 14}, "app": "x"}),
        )
        .app
        .unwrap();
        assert_eq!(a.os.as_deref(), Some("Android"));
        assert_eq!(a.device.as_deref(), Some("Samsung"));
        assert_eq!(a.app_name, None);
        let long = "x".repeat(MAX_CONTEXT_BYTES + 1);
        let a = call(json!({"app": {"name": long, "version": " 1.0 "}, "os": {"name": "iOS"}}))
            .app
            .unwrap();
        assert_eq!(a.app_name, None);
        assert_eq!(a.app_version.as_deref(), Some("1.0"));
    }

    #[test]
    fn nested_traits_are_flattened() {
        let c = identify_with(json!({"company": {"name": "Acme", "employee_count": 3}}));
        let p = profile_of(c);
        assert_eq!(p["companyName"], json!("Acme"));
        assert_eq!(p["companyEmployeeCount"], json!(3));
        // Two traits for one key: the one sent under the key itself wins.
        let traits = json!({"first_name": "A", "firstName": "B", "company": {"name": "X"}, "companyName": "Y"});
        let c = identify_with(traits);
        let p = profile_of(c);
        assert_eq!(
            (&p["firstName"], &p["companyName"]),
            (&json!("B"), &json!("Y"))
        );
        // Whichever comes first (serde_json's maps are sorted, so the order is set here).
        let (exact, mapped) = (json!("B"), json!("A"));
        for exact_first in [true, false] {
            let mut profile = Map::new();
            let mut origins = Vec::new();
            let mut put = |v: &Value, sent: &str, exact: bool| {
                put_trait(
                    &mut profile,
                    &mut origins,
                    "firstName".into(),
                    v,
                    sent.into(),
                    exact,
                )
            };
            if exact_first {
                put(&exact, "traits.firstName", true);
                put(&mapped, "traits.first_name", false);
            } else {
                put(&mapped, "traits.first_name", false);
                put(&exact, "traits.firstName", true);
            }
            assert_eq!(profile["firstName"], exact, "exact first: {exact_first}");
            assert_eq!(
                origins,
                vec![("firstName".to_owned(), "traits.firstName".to_owned())]
            );
        }
    }

    #[test]
    fn landline_phone_goes_to_landline() {
        let c = identify_with(json!({"phone": "02-123-4567"}));
        let p = profile_of(c);
        assert!(p.contains_key("landlineNumber"));
    }

    #[test]
    fn track_and_page_carry_time_and_page() {
        let c = parse(
            "",
            json!({"type": "track", "userId": "m", "event": "Order Completed", "properties": {"revenue": 3},
                "timestamp": "2024-01-02T03:04:05.000Z", "messageId": "x1",
                "context": {"page": {"url": "https://s/x"}}}),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(c.at, 1_704_164_645_000);
        assert_eq!(c.message_id.as_deref(), Some("x1"));
        for bad in [" ", "a\nb", "", "\u{200b}", "\u{feff} "] {
            let e = parse(
                "",
                json!({"userId": "m", "event": "e", "messageId": bad}),
                Some(Kind::Track),
                NOW,
            )
            .unwrap_err();
            assert_eq!(e.0[0].field, "messageId", "{bad:?}");
        }
        assert_eq!(c.event.as_ref().unwrap().page, Some(json!("https://s/x")));
        let p = parse(
            "",
            json!({"anonymousId": "a", "properties": {"url": "https://s/"}}),
            Some(Kind::Page),
            NOW,
        )
        .unwrap();
        let e = p.event.unwrap();
        assert_eq!(e.name, json!("PageView"));
        assert_eq!(e.page, Some(json!("https://s/")));
        // A context URL that is not a string, or holds a control character, is left out
        // like any other context string the library got wrong.
        for url in [json!(5), json!("https://s/\u{7}"), json!({"a": 1})] {
            let c = parse(
                "",
                json!({"userId": "m", "event": "e", "context": {"page": {"url": url}}}),
                Some(Kind::Track),
                NOW,
            )
            .unwrap();
            assert_eq!(c.event.unwrap().page, None, "{url}");
            // A page call's `properties.url` alike: the context's page is taken instead.
            let c = parse(
                "",
                json!({"userId": "m", "properties": {"url": url},
                       "context": {"page": {"url": "https://s/ctx"}}}),
                Some(Kind::Page),
                NOW,
            )
            .unwrap();
            assert_eq!(c.event.unwrap().page, Some(json!("https://s/ctx")), "{url}");
        }
    }

    #[test]
    fn skewed_clocks_are_corrected_and_the_future_is_clamped() {
        let c = parse(
            "",
            json!({"userId": "m", "event": "e", "originalTimestamp": NOW - 9000,
                "sentAt": NOW - 5000}),
            Some(Kind::Track),
            NOW,
        )
        .unwrap();
        assert_eq!(c.at, NOW - 4000);
        let f = parse(
            "",
            json!({"userId": "m", "event": "e", "timestamp": NOW + 10}),
            Some(Kind::Track),
            NOW,
        )
        .unwrap();
        assert_eq!(f.at, NOW);
        // A broken time is reported even where another one decides the event's time.
        for (body, field) in [
            (json!({"timestamp": NOW - 10, "sentAt": "nope"}), "sentAt"),
            (json!({"sentAt": "nope"}), "sentAt"),
            (
                json!({"timestamp": NOW - 10, "originalTimestamp": "nope"}),
                "originalTimestamp",
            ),
        ] {
            let mut call = json!({"userId": "m", "event": "e"});
            call.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            let e = parse("", call, Some(Kind::Track), NOW).unwrap_err();
            assert_eq!(e.0[0].field, field);
        }
    }

    #[test]
    fn times_before_1970_are_refused() {
        for (body, kind, field) in [
            (
                json!({"userId": "m", "event": "e", "timestamp": "1969-12-31T23:59:59Z"}),
                Kind::Track,
                "timestamp",
            ),
            (
                json!({"userId": "m", "event": "e", "originalTimestamp": 0,
                    "sentAt": NOW + 1}),
                Kind::Track,
                "originalTimestamp",
            ),
            (
                json!({"userId": "m", "traits": {"createdAt": "1900-01-01T00:00:00Z"}}),
                Kind::Identify,
                "traits.createdAt",
            ),
        ] {
            let e = parse("", body.clone(), Some(kind), NOW).unwrap_err();
            assert_eq!(e.0[0].field, field, "{body}");
        }
        let ok = parse(
            "",
            json!({"userId": "m", "event": "e", "timestamp": "1970-01-01T00:00:00Z"}),
            Some(Kind::Track),
            NOW,
        )
        .unwrap();
        assert_eq!(ok.at, 0);
    }

    #[test]
    fn reserved_traits_are_read_by_their_camel_case_name() {
        let c = parse(
            "",
            json!({"userId": "m", "traits": {"created_at": "2020-01-01T00:00:00Z",
                   "mobile_number": "010-1234-5678", "user_id": "x"}}),
            Some(Kind::Identify),
            NOW,
        )
        .unwrap();
        assert_eq!(c.created_at, Some(1_577_836_800_000));
        // In seconds, as Intercom-style traits send it; the exact key wins.
        for (traits, want) in [
            (json!({"created_at": 1_577_836_800}), 1_577_836_800_000_i64),
            (
                json!({"created_at": 1_577_836_800_000_i64}),
                1_577_836_800_000,
            ),
            (
                json!({"created_at": "bad", "createdAt": 1_600_000_000_000_i64}),
                1_600_000_000_000,
            ),
        ] {
            let c = identify_with(traits.clone());
            assert_eq!(c.created_at, Some(want), "{traits}");
        }
        let ProfilePatch::Set(p) = c.update.unwrap().profile else {
            panic!("a profile")
        };
        assert_eq!(p.keys().collect::<Vec<_>>(), ["mobileNumber"]);
    }

    #[test]
    fn ids_of_only_invisible_characters_are_refused() {
        for key in ["userId", "anonymousId"] {
            let e = parse(
                "",
                json!({key: "\u{200b}\u{feff}", "event": "e"}),
                Some(Kind::Track),
                NOW,
            )
            .unwrap_err();
            assert_eq!(e.0[0].field, key);
            assert!(e.0[0].message.contains("visible"), "{e:?}");
        }
        assert!(crate::update::check_member_id("\u{200b}").is_err());
        assert!(crate::update::check_member_id("a\u{200b}").is_ok());
    }

    #[test]
    fn epoch_seconds_are_refused_as_milliseconds() {
        for (body, kind, field) in [
            (
                json!({"userId": "m", "event": "e", "timestamp": 1_793_000_000}),
                Kind::Track,
                "timestamp",
            ),
            (
                json!({"userId": "m", "traits": {"createdAt": 1_600_000_000.0}}),
                Kind::Identify,
                "traits.createdAt",
            ),
        ] {
            let e = parse("", body.clone(), Some(kind), NOW).unwrap_err();
            assert_eq!(e.0[0].field, field, "{body}");
            assert!(e.0[0].message.contains("looks like seconds"), "{e:?}");
        }
        // The first millisecond taken, and the same time as text.
        for t in [json!(100_000_000_000_i64), json!("1971-01-01T00:00:00Z")] {
            let ok = parse(
                "",
                json!({"userId": "m", "event": "e", "timestamp": t}),
                Some(Kind::Track),
                NOW,
            );
            assert!(ok.is_ok(), "{t}: {ok:?}");
        }
    }

    #[test]
    fn places_come_from_the_address_or_the_location() {
        let loc = json!({"city": " Seoul ", "country": ""});
        let c = parse(
            "",
            json!({"userId": "m", "event": "e", "context": {"location": loc}}),
            Some(Kind::Track),
            NOW,
        )
        .unwrap();
        assert_eq!(c.city.as_deref(), Some("Seoul"));
        assert_eq!(c.country, None, "an empty value is no value");
        let c = parse(
            "",
            json!({"userId": "m", "traits": {"address": {"city": "Busan"}},
                   "context": {"location": {"city": "Seoul", "country": "x".repeat(600)}}}),
            Some(Kind::Identify),
            NOW,
        )
        .unwrap();
        assert_eq!(c.city.as_deref(), Some("Busan"), "the address wins");
        assert_eq!(c.country.map(|s| s.len()), Some(512));
    }

    #[test]
    fn errors_name_the_item_field() {
        let e = parse(
            "batch[2]",
            json!({"type": "alias", "userId": "m"}),
            None,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "batch[2].type");
        let e = parse(
            "batch[0]",
            json!({"type": "track", "event": "x"}),
            None,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "batch[0].userId");
        let e = parse(
            "",
            json!({"userId": "m", "timestamp": "yesterday"}),
            Some(Kind::Track),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "timestamp");
        assert_eq!(camel_case("first_name"), "firstName");
        assert_eq!(camel_case("_x_y"), "xY");
    }
}
