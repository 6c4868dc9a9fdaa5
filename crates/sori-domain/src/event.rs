//! Events (SPEC §4): what a customer did, with typed properties, the page it happened on and
//! the path it came in by. Every ingestion path (SDK, Open API, Segment, import) validates
//! through [`EventInput::check`], so they all accept and reject the same things.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Errors, Invalid};
use crate::value::{invisible, kind, shows};

/// Maximum characters of an event name.
pub const MAX_NAME_CHARS: usize = 30;
/// Maximum bytes of a string property.
pub const MAX_STRING_BYTES: usize = 512;
/// Maximum bytes (compact JSON) of an array or object property.
pub const MAX_COMPOSITE_BYTES: usize = 4 * 1024;
/// Maximum properties on one event.
pub const MAX_PROPERTIES: usize = 100;
/// Maximum characters of a property key.
pub const MAX_PROPERTY_KEY_CHARS: usize = 128;
/// Maximum bytes of a page.
pub const MAX_PAGE_BYTES: usize = 2048;
/// Maximum characters of a client-chosen `messageId`.
pub const MAX_MESSAGE_ID_CHARS: usize = 128;

/// Days events are kept unless the channel says otherwise.
pub const DEFAULT_RETENTION_DAYS: i64 = 90;
/// Longest retention a channel may choose (10 years).
pub const MAX_RETENTION_DAYS: i64 = 3650;

/// Built-in event recorded on page arrival.
pub const PAGE_VIEW: &str = "PageView";
/// Names only the system may record: clients cannot forge marketing or chat statistics.
pub const RESERVED: &[&str] = &[
    "UserChatOpen",
    "MarketingSend",
    "MarketingView",
    "MarketingClick",
    "MarketingGoal",
];

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventSource {
    /// The browser SDK.
    Sdk,
    /// The server-side Open API.
    OpenApi,
    /// The Segment-compatible API.
    Segment,
    /// `sori import events`.
    Import,
    /// Recorded by Sori itself (marketing, chats).
    System,
}

impl EventSource {
    /// Stable name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sdk => "sdk",
            Self::OpenApi => "openApi",
            Self::Segment => "segment",
            Self::Import => "import",
            Self::System => "system",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sdk" => Self::Sdk,
            "openApi" => Self::OpenApi,
            "segment" => Self::Segment,
            "import" => Self::Import,
            "system" => Self::System,
            _ => return None,
        })
    }
}

/// An event as a client sent it, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventInput {
    /// Event name.
    pub name: Value,
    /// Properties (object, or absent).
    pub property: Option<Value>,
    /// Page, or absent.
    pub page: Option<Value>,
}

/// A validated event, ready to store once its user is known.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Event id (time ordered).
    pub id: String,
    /// Event name.
    pub name: String,
    /// Properties.
    pub property: Map<String, Value>,
    /// `property` as stored (compact JSON), serialized once where the event is validated so
    /// the single writer thread only binds it.
    pub property_json: String,
    /// Page the event happened on.
    pub page: Option<String>,
    /// When it happened (ms); may be in the past for imported and Segment events.
    pub created_at: i64,
    /// Ingestion path.
    pub source: EventSource,
    /// Client id that makes a retry idempotent.
    pub message_id: Option<String>,
    /// [`is_revenue`] of the property, fixed when the event is made: the writer needs only
    /// this and `property_json`, so a caller may take `property` (for its answer) while the
    /// event is being stored.
    revenue: bool,
}

impl NewEvent {
    /// An event with what the writer binds computed here, once, on the caller's thread:
    /// the property as compact JSON and whether it is a revenue event.
    pub fn new(
        id: String,
        name: String,
        property: Map<String, Value>,
        page: Option<String>,
        created_at: i64,
        source: EventSource,
    ) -> Self {
        Self {
            id,
            name,
            // A map of JSON values always serializes.
            property_json: serde_json::to_string(&property).unwrap_or_default(),
            revenue: is_revenue(&property),
            property,
            page,
            created_at,
            source,
            message_id: None,
        }
    }

    /// True when a numeric `revenue` property makes this an order or payment event.
    pub fn is_revenue(&self) -> bool {
        self.revenue
    }
}

/// True when `property` carries a numeric `revenue`.
pub fn is_revenue(property: &Map<String, Value>) -> bool {
    property.get("revenue").is_some_and(Value::is_number)
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Event name.
    pub name: String,
    /// Properties.
    pub property: Map<String, Value>,
    /// Page.
    pub page: Option<String>,
    /// Time (ms).
    pub created_at: i64,
    /// Ingestion path.
    pub source: EventSource,
}

/// Checks an event name; `by_client` refuses the reserved system names.
pub fn check_name(path: &str, name: &Value, by_client: bool) -> Result<String, Invalid> {
    if name.is_null() {
        return Err(Invalid::one(path, "is required"));
    }
    let Value::String(s) = name else {
        return Err(Invalid::one(
            path,
            format!("must be a string, got {}", kind(name)),
        ));
    };
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(Invalid::one(path, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::one(
            path,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(crate::value::breaks_display) {
        return Err(Invalid::one(path, crate::value::BREAKS_DISPLAY));
    }
    if !trimmed.chars().any(shows) {
        return Err(Invalid::one(
            path,
            "must not be blank (it has only characters that do not show)",
        ));
    }
    if by_client && looks_reserved(trimmed) {
        return Err(Invalid::one(
            path,
            format!("`{trimmed}` is recorded by Sori itself and cannot be sent by a client"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// Whether `name` reads as a reserved name once the [`invisible`] characters are left
/// out: such a name would pass for the system's own `MarketingGoal` in the catalog and
/// the timeline. Names are otherwise free to hold them (emoji sequences need joiners, a
/// flag needs tag characters), and spaced names (`Marketing Goal`) are not reserved.
fn looks_reserved(name: &str) -> bool {
    RESERVED
        .iter()
        .any(|r| r.chars().eq(name.chars().filter(|&c| !invisible(c))))
}

/// Checks a page value.
pub fn check_page(path: &str, page: &Value) -> Result<Option<String>, Invalid> {
    match page {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.len() > MAX_PAGE_BYTES => Err(Invalid::one(
            path,
            format!("must be at most {MAX_PAGE_BYTES} bytes"),
        )),
        Value::String(s) if s.chars().any(crate::value::breaks_display) => {
            Err(Invalid::one(path, crate::value::BREAKS_DISPLAY))
        }
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(Invalid::one(
            path,
            format!("must be a string, got {}", kind(other)),
        )),
    }
}

/// Checks a channel's event retention setting.
pub fn check_retention_days(field: &str, days: i64) -> Result<(), Invalid> {
    if (1..=MAX_RETENTION_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(Invalid::one(
            field,
            format!("must be from 1 to {MAX_RETENTION_DAYS} days"),
        ))
    }
}

/// A channel's event retention as of `now` (ms): what an incoming event's time is checked
/// against, and where the retention job cuts.
#[derive(Debug, Clone, Copy)]
pub struct Retention<'a> {
    now: i64,
    tz: &'a jiff::tz::TimeZone,
    days: i64,
}

impl<'a> Retention<'a> {
    /// Keeping events `days` days in zone `tz`, at `now`.
    pub fn new(now: i64, tz: &'a jiff::tz::TimeZone, days: i64) -> Self {
        Self { now, tz, days }
    }

    /// The first instant kept: the start of the day `days` before today in the channel's
    /// zone. Whole local days, so an event window (whole days, at most the retention)
    /// never loses part of a day. An unreadable `now` keeps everything.
    pub fn cutoff(&self) -> i64 {
        let Ok(today) =
            jiff::Timestamp::from_millisecond(self.now).map(|t| t.to_zoned(self.tz.clone()).date())
        else {
            return i64::MIN;
        };
        let first_kept = today
            .checked_sub(jiff::Span::new().days(self.days))
            .unwrap_or(today);
        crate::filter::start_of_day(first_kept, self.tz)
    }

    /// Refuses an event from before [`Self::cutoff`]: the next retention pass would delete
    /// it, and its `messageId` with it, so storing it would make counts depend on when a
    /// file is re-run. Raising the channel's retention first keeps older history.
    pub fn check(&self, path: &str, created_at: i64) -> Result<(), Invalid> {
        // Time-zone arithmetic only near the edge: the cutoff lies at most `days` local
        // days back, which is never shorter than `days - 2` days of 24 hours (zone shifts
        // stay under 48 hours), so anything newer is kept. Live events never get further.
        const DAY: i64 = 24 * 3600 * 1000;
        if created_at >= self.now.saturating_sub((self.days - 2).max(0) * DAY)
            || created_at >= self.cutoff()
        {
            return Ok(());
        }
        Err(Invalid::one(
            path,
            format!(
                "is older than the channel keeps events ({} days); raise \
                 eventRetentionDays first to store older history (`PATCH /open/v5/channel`, \
                 or `sori channel set --event-retention-days N`)",
                self.days
            ),
        ))
    }
}

/// A JSON page value cut to its longest prefix within [`MAX_PAGE_BYTES`], between
/// characters: pages a client library takes from the browser or app (the SDK, Segment's
/// `context.page`) are cut rather than failing the call, like
/// [`crate::value::clip_text`]. Anything but a string is left for [`check_page`] to refuse.
pub fn clip_page_value(page: Value) -> Value {
    match page {
        Value::String(mut s) => {
            s.truncate(s.floor_char_boundary(MAX_PAGE_BYTES));
            Value::String(s)
        }
        other => other,
    }
}

/// Checks a `messageId`. Libraries send UUID-like ids; a blank one, or one with control
/// characters, is a bug that as an idempotency key could silently drop unrelated events.
pub fn check_message_id(path: &str, id: &str) -> Result<(), Invalid> {
    if !id.chars().any(shows) || id.chars().count() > MAX_MESSAGE_ID_CHARS {
        return Err(Invalid::one(
            path,
            format!(
                "must be 1 to {MAX_MESSAGE_ID_CHARS} characters, not only white space or \
                 characters that show nothing"
            ),
        ));
    }
    if id.chars().any(crate::value::breaks_display) {
        return Err(Invalid::one(path, crate::value::BREAKS_DISPLAY));
    }
    Ok(())
}

/// Checks event properties: strings ≤ 512 bytes (also inside arrays and objects), finite
/// numbers, booleans, and arrays/objects of at most 4 KB. `null` values are dropped, as if
/// the key had not been sent.
pub fn check_property(path: &str, property: Option<Value>) -> Result<Map<String, Value>, Invalid> {
    let mut obj = match property {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(Invalid::one(path, crate::value::not_an_object(&other)));
        }
    };
    let mut errs = Errors::default();
    // `null` values are dropped, so they do not count.
    if obj.len() > MAX_PROPERTIES && obj.values().filter(|v| !v.is_null()).count() > MAX_PROPERTIES
    {
        errs.push(path, format!("must have at most {MAX_PROPERTIES} keys"));
    }
    // Checked in place: the map is kept, not rebuilt key by key.
    let mut nulls = false;
    for (k, v) in &obj {
        // The key's path is only spelled out for an error.
        let p = || format!("{path}.{k}");
        // A key no longer in bytes than the limit in characters needs no count.
        if k.is_empty()
            || (k.len() > MAX_PROPERTY_KEY_CHARS && k.chars().count() > MAX_PROPERTY_KEY_CHARS)
        {
            errs.push(
                p(),
                format!("key must be 1 to {MAX_PROPERTY_KEY_CHARS} characters"),
            );
            continue;
        }
        if k.chars().any(crate::value::breaks_display) {
            errs.push(p(), format!("key {}", crate::value::BREAKS_DISPLAY));
            continue;
        }
        if !k.chars().any(shows) {
            errs.push(p(), "key must not be blank");
            continue;
        }
        match v {
            Value::Null => nulls = true,
            Value::Array(_) | Value::Object(_) => {
                let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
                if size > MAX_COMPOSITE_BYTES {
                    errs.push(
                        p(),
                        format!("arrays and objects must be at most {MAX_COMPOSITE_BYTES} bytes"),
                    );
                    continue;
                }
                if let Some(bad) = long_string(v) {
                    errs.push(
                        p(),
                        format!("strings must be at most {MAX_STRING_BYTES} bytes (`{bad}…`)"),
                    );
                }
            }
            Value::String(s) if s.len() > MAX_STRING_BYTES => {
                errs.push(p(), format!("must be at most {MAX_STRING_BYTES} bytes"));
            }
            _ => {}
        }
    }
    errs.check()?;
    if nulls {
        obj.retain(|_, v| !v.is_null());
    }
    for v in obj.values_mut() {
        if v.is_f64() {
            *v = crate::value::canonical_number(std::mem::take(v));
        }
    }
    Ok(obj)
}

/// The start of the first over-long string inside `v`.
fn long_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Some(s.chars().take(16).collect()),
        Value::Array(a) => a.iter().find_map(long_string),
        Value::Object(o) => o.values().find_map(long_string),
        _ => None,
    }
}

impl EventInput {
    /// Parses a `{name, property, page}` object, taking its parts.
    pub fn from_json(body: Value) -> Result<Self, Invalid> {
        let Value::Object(mut o) = body else {
            return Err(Invalid::one("body", crate::value::not_an_object(&body)));
        };
        let mut errs = Errors::default();
        for k in o.keys() {
            if !matches!(k.as_str(), "name" | "property" | "page") {
                errs.push(k, "is not a known field (name, property, page)");
            }
        }
        errs.check()?;
        Ok(Self {
            name: o.remove("name").unwrap_or(Value::Null),
            property: o.remove("property"),
            page: o.remove("page"),
        })
    }

    /// Validates into a [`NewEvent`] (all problems at once).
    pub fn check(
        self,
        prefix: &str,
        id: String,
        created_at: i64,
        source: EventSource,
        default_page: Option<&str>,
    ) -> Result<NewEvent, Invalid> {
        let at = |f| crate::error::field_path(prefix, f);
        let by_client = source != EventSource::System;
        let name = check_name(&at("name"), &self.name, by_client);
        let property = check_property(&at("property"), self.property);
        let page = match &self.page {
            Some(p) => check_page(&at("page"), p),
            None => Ok(default_page.map(str::to_owned)),
        };
        match (name, property, page) {
            (Ok(name), Ok(property), Ok(page)) => {
                Ok(NewEvent::new(id, name, property, page, created_at, source))
            }
            (n, p, g) => {
                let mut all = Vec::new();
                for e in [n.err(), p.err(), g.err()].into_iter().flatten() {
                    all.extend(e.0);
                }
                Err(Invalid(all))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(v: Value) -> Result<NewEvent, Invalid> {
        EventInput::from_json(v)?.check("", "e1".into(), 1, EventSource::OpenApi, None)
    }

    #[test]
    fn blank_property_keys_and_missing_names_are_named() {
        let e = check(json!({"name": "A", "property": {" ": 1}})).unwrap_err();
        assert_eq!(
            (e.0[0].field.as_str(), e.0[0].message.as_str()),
            ("property. ", "key must not be blank")
        );
        let e = check(json!({"property": {}})).unwrap_err();
        assert_eq!(
            (e.0[0].field.as_str(), e.0[0].message.as_str()),
            ("name", "is required")
        );
        // Names and keys of characters that show nothing are blank too.
        for blank in [
            "\u{2800}",
            "\u{200b}",
            "\u{3164}",
            "\u{feff}",
            "\u{200b}\u{200b}",
            "\u{ad}",
            "\u{fe0f}",
        ] {
            let e = check(json!({ "name": blank })).unwrap_err();
            assert_eq!(e.0[0].field, "name", "{blank:?}");
            let e = check(json!({"name": "A", "property": { blank: 1 }})).unwrap_err();
            assert_eq!(e.0[0].message, "key must not be blank", "{blank:?}");
        }
        assert!(check(json!({"name": "👩\u{200d}💻", "property": {"a\u{200b}": 1}})).is_ok());
        // Object-Action names with spaces are ordinary names, not reserved look-alikes.
        for spaced in ["Marketing Goal", "Marketing Click", "Marketing\u{a0}View"] {
            assert!(
                EventInput::from_json(json!({ "name": spaced }))
                    .unwrap()
                    .check("", "e".into(), 1, EventSource::Segment, None)
                    .is_ok(),
                "{spaced:?}"
            );
        }
    }

    #[test]
    fn negative_zero_is_zero() {
        let v: Value =
            serde_json::from_str(r#"{"name": "A", "property": {"a": -0, "b": -0.0, "c": [-0]}}"#)
                .unwrap();
        let e = check(v).unwrap();
        let stored: Value = serde_json::from_str(&e.property_json).unwrap();
        // Top-level numbers (what filters read) are normalized; a payload is kept as sent.
        assert_eq!(stored["a"].to_string(), "0");
        assert_eq!(stored["b"].to_string(), "0");
        assert_eq!(stored["c"].to_string(), "[-0.0]");
        let tz = jiff::tz::TimeZone::UTC;
        let zero = crate::value::check(
            "n",
            crate::FieldType::Number,
            &serde_json::from_str("-0").unwrap(),
            &tz,
        );
        assert_eq!(zero.unwrap().to_string(), "0");
    }

    #[test]
    fn names_keys_and_pages_that_would_display_otherwise_are_refused() {
        for bad in ["a\u{202e}b", "a\u{2028}b", "a\u{2066}b\u{2069}", "a\u{7}b"] {
            let e = check(json!({ "name": bad })).unwrap_err();
            assert_eq!(e.0[0].message, crate::value::BREAKS_DISPLAY, "{bad:?}");
            let e = check(json!({"name": "A", "property": { bad: 1 }})).unwrap_err();
            assert!(
                e.0[0].message.ends_with(crate::value::BREAKS_DISPLAY),
                "{bad:?}"
            );
            assert!(check_page("page", &json!(bad)).is_err(), "{bad:?}");
        }
        // Direction marks only nudge their neighbours, and values are free text.
        assert!(check(json!({"name": "a\u{200f}b", "property": {"k": "a\u{202e}b"}})).is_ok());
    }

    #[test]
    fn names_are_limited_and_reserved_ones_refused() {
        assert!(check(json!({"name": "x".repeat(30)})).is_ok());
        assert_eq!(
            check(json!({"name": "x".repeat(31)})).unwrap_err().0[0].field,
            "name"
        );
        assert!(check(json!({"name": "MarketingClick"})).is_err());
        // Look-alikes of a reserved name are refused; characters that show nothing are
        // otherwise allowed (emoji sequences and flags need some).
        for fake in [
            "\u{feff}MarketingGoal",
            "MarketingGoal\u{200b}",
            "Marketing\u{2060}Goal",
            "Marketing\u{200d}Goal",
            "MarketingGoal\u{fe0f}",
            "Marketing\u{34f}Goal",
            "\u{3164}MarketingGoal",
        ] {
            let e = check(json!({"name": fake})).unwrap_err();
            assert_eq!(e.0[0].field, "name", "{fake:?}");
        }
        assert!(check(json!({"name": "Family 👨\u{200d}👩\u{200d}👧"})).is_ok());
        let wales = "Wales 🏴\u{e0067}\u{e0062}\u{e0077}\u{e006c}\u{e0073}\u{e007f}";
        assert!(check(json!({"name": wales})).is_ok());
        assert!(
            check(json!({"name": "\u{feff}Order"})).is_ok(),
            "not reserved"
        );
        assert!(check(json!({"name": "PageView"})).is_ok());
        assert!(check(json!({"name": "  "})).is_err());
        assert!(check(json!({"property": {}})).is_err());
        assert!(
            EventInput::from_json(json!({"name": "MarketingSend"}))
                .unwrap()
                .check("", "e".into(), 1, EventSource::System, None)
                .is_ok()
        );
    }

    #[test]
    fn the_retention_cutoff_is_the_start_of_a_local_day() {
        let ms = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let seoul = jiff::tz::TimeZone::get("Asia/Seoul").unwrap();
        // 10:00 on 30 November in Seoul; kept for 7 days from 00:00 on 23 November there.
        let r = Retention::new(ms("2026-11-30T01:00:00Z"), &seoul, 7);
        let cutoff = r.cutoff();
        assert_eq!(cutoff, ms("2026-11-22T15:00:00Z"));
        assert!(r.check("t", cutoff).is_ok());
        let e = r.check("t", cutoff - 1).unwrap_err();
        assert_eq!(e.0[0].field, "t");
        assert!(e.0[0].message.contains("(7 days)"));
        // Both problems of a line at once.
        let both = Invalid::both(Err(e), Err::<(), _>(Invalid::one("name", "bad")));
        let fields: Vec<String> = both.unwrap_err().0.into_iter().map(|f| f.field).collect();
        assert_eq!(fields, ["t", "name"]);
    }

    proptest::proptest! {
        /// The check's shortcut for recent times agrees with the cutoff, in zones with
        /// daylight saving and without, for any retention.
        #[test]
        fn the_retention_check_agrees_with_the_cutoff(
            now in 0i64..4_000_000_000_000,
            days in 1i64..=MAX_RETENTION_DAYS,
            off in -3 * 86_400_000i64..3 * 86_400_000,
            zone in 0usize..4,
        ) {
            let name = ["Asia/Seoul", "America/New_York", "Australia/Lord_Howe", "UTC"][zone];
            let tz = jiff::tz::TimeZone::get(name).unwrap();
            let r = Retention::new(now, &tz, days);
            // Around the edge, where the shortcut and the cutoff could disagree.
            let t = now - days * 86_400_000 + off;
            proptest::prop_assert_eq!(r.check("t", t).is_ok(), t >= r.cutoff());
        }
    }

    #[test]
    fn collected_pages_are_cut_between_characters() {
        let long = format!("https://shop.example/?q={}", "가".repeat(1000));
        let v = clip_page_value(Value::String(long.clone()));
        let cut = v.as_str().unwrap();
        assert!(cut.len() <= MAX_PAGE_BYTES && cut.len() > MAX_PAGE_BYTES - 3);
        assert!(long.starts_with(cut));
        assert_eq!(
            clip_page_value(json!("https://a.example/")),
            json!("https://a.example/")
        );
        assert!(check_page("page", &v).is_ok());
        assert_eq!(
            clip_page_value(json!(7)),
            json!(7),
            "non-strings are left to refuse"
        );
    }

    #[test]
    fn property_limits_name_the_key() {
        let e = check(json!({"name": "a", "property": {"s": "é".repeat(257)}})).unwrap_err();
        assert_eq!(e.0[0].field, "property.s");
        let e =
            check(json!({"name": "a", "property": {"l": vec!["y".repeat(300); 14]}})).unwrap_err();
        assert_eq!(e.0[0].field, "property.l");
        let ok = check(json!({"name": "a", "property": {"n": 1.5, "b": true, "l": ["a"], "o": {"k": 1}, "z": null}}))
            .unwrap();
        assert_eq!(ok.property.len(), 4);
        // `null` values are dropped before the key count: 100 keys and a `null` pass.
        let mut hundred: serde_json::Map<String, Value> = (0..MAX_PROPERTIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        hundred.insert("z".into(), Value::Null);
        let ok = check(json!({"name": "a", "property": hundred.clone()})).unwrap();
        assert_eq!(ok.property.len(), MAX_PROPERTIES);
        hundred.insert("y".into(), json!(1));
        let e = check(json!({"name": "a", "property": hundred})).unwrap_err();
        assert_eq!(e.0[0].field, "property");
        assert!(check(json!({"name": "a", "property": [1]})).is_err());
        assert!(check(json!({"name": "a", "extra": 1})).is_err());
    }

    #[test]
    fn revenue_needs_a_number() {
        assert!(
            check(json!({"name": "Buy", "property": {"revenue": 10}}))
                .unwrap()
                .is_revenue()
        );
        assert!(
            !check(json!({"name": "Buy", "property": {"revenue": "10"}}))
                .unwrap()
                .is_revenue()
        );
    }

    proptest! {
        #[test]
        fn strings_pass_exactly_up_to_the_byte_limit(n in 0usize..1200) {
            let r = check(json!({"name": "a", "property": {"s": "a".repeat(n)}}));
            prop_assert_eq!(r.is_ok(), n <= MAX_STRING_BYTES);
        }

        #[test]
        fn property_keys_pass_exactly_up_to_the_char_limit(k in "[가-힣a-z]{1,200}") {
            let mut property = serde_json::Map::new();
            property.insert(k.clone(), json!(1));
            let r = check(json!({"name": "a", "property": property}));
            prop_assert_eq!(r.is_ok(), k.chars().count() <= MAX_PROPERTY_KEY_CHARS);
        }

        #[test]
        fn names_pass_exactly_up_to_the_char_limit(s in "[가-힣a-z]{1,40}") {
            let r = check(json!({"name": s.clone()}));
            prop_assert_eq!(r.is_ok(), s.chars().count() <= MAX_NAME_CHARS);
        }
    }
}
