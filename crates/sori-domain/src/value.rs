//! Checking and normalizing one profile value against its field type.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::field::FieldType;
use crate::limits::{MAX_LIST_ITEMS, MAX_STRING_CHARS};
use crate::phone;

/// Infers the type of a value sent for an unregistered key. Dates and datetimes cannot be
/// told from strings and numbers, so such fields must be registered first.
pub fn infer_type(v: &Value) -> Result<FieldType, String> {
    match v {
        Value::Bool(_) => Ok(FieldType::Boolean),
        Value::Number(_) => Ok(FieldType::Number),
        Value::String(_) => Ok(FieldType::String),
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            Ok(FieldType::ListOfNumber)
        }
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(FieldType::List),
        Value::Array(_) => Err("a list must hold only strings or only numbers".into()),
        Value::Object(_) => Err("objects are not a profile value type".into()),
        Value::Null => Err("null cannot register a field".into()),
    }
}

/// Checks `v` against `ty` and returns the stored form: E.164 for `mobileNumber`,
/// `YYYY-MM-DD` for dates, epoch milliseconds for datetimes.
pub fn check(key: &str, ty: FieldType, v: &Value, tz: &TimeZone) -> Result<Value, String> {
    let normalized = match (ty, v) {
        (FieldType::Boolean, Value::Bool(_)) => v.clone(),
        (FieldType::Number, Value::Number(n)) => {
            if n.as_f64().is_none_or(|f| !f.is_finite()) {
                return Err("must be a finite number".into());
            }
            canonical_number(v.clone())
        }
        (FieldType::String, Value::String(s)) => Value::String(check_string(key, s)?),
        (FieldType::Date, _) => Value::String(to_date(v, tz)?),
        (FieldType::Datetime, _) => Value::from(to_millis(v)?),
        (FieldType::List, Value::Array(items)) => {
            check_list_len(items.len())?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(Value::String(
                        check_len(s).map_err(|e| format!("item {i}: {e}"))?,
                    )),
                    _ => return Err(format!("item {i} must be a string ({})", kind(item))),
                }
            }
            Value::Array(out)
        }
        (FieldType::ListOfNumber, Value::Array(items)) => {
            check_list_len(items.len())?;
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, x)| x.as_f64().is_none_or(|f| !f.is_finite()))
            {
                return Err(format!("item {i} must be a number ({})", kind(item)));
            }
            Value::Array(items.iter().cloned().map(canonical_number).collect())
        }
        _ => return Err(format!("must be a {ty} value, got {}", kind(v))),
    };
    Ok(normalized)
}

/// A number as both stores give it back. JSON's `-0` reaches us as a float with its sign,
/// which SQLite keeps and PostgreSQL's `numeric` drops: it becomes `0`. A whole float from
/// 10^16 up (written `1e16`) comes back from a PostgreSQL `jsonb` column as the integer
/// `10000000000000000`, longer than what was checked against the profile's size limit and
/// never equal to the float sent again: it becomes that integer here when it fits in 64
/// bits. (Smaller whole floats keep their `.0` in `jsonb`, and larger ones come back as
/// floats.)
pub fn canonical_number(v: Value) -> Value {
    let Some(f) = v.as_f64().filter(|_| v.is_f64()) else {
        return v;
    };
    if f == 0.0 && f.is_sign_negative() {
        return Value::from(0);
    }
    if f.fract() == 0.0 && f.abs() >= 1e16 {
        // (Both bounds are exact doubles; `as` rounds nothing in between.)
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
            return Value::from(f as i64);
        }
        if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
            return Value::from(f as u64);
        }
    }
    v
}

fn check_string(key: &str, s: &str) -> Result<String, String> {
    let s = check_len(s)?;
    match key {
        "mobileNumber" => phone::normalize_mobile(&s),
        "landlineNumber" => phone::normalize_landline(&s),
        "email" => check_email(&s),
        _ => Ok(s),
    }
}

fn check_len(s: &str) -> Result<String, String> {
    if s.contains('\0') {
        return Err(NUL_REJECTED.into());
    }
    if s.chars().count() > MAX_STRING_CHARS {
        return Err(format!("must be at most {MAX_STRING_CHARS} characters"));
    }
    Ok(s.to_owned())
}

fn check_list_len(n: usize) -> Result<(), String> {
    if n > MAX_LIST_ITEMS {
        return Err(format!(
            "must have at most {MAX_LIST_ITEMS} items (got {n})"
        ));
    }
    Ok(())
}

/// An e-mail address, trimmed: a local part, one `@`, a dotted domain that neither starts
/// nor ends with a dot, no white space. Deliberately loose (no length or label rules):
/// stored addresses must keep passing when they come back in a re-import, a Segment
/// `identify` or an SDK boot.
pub fn check_email(s: &str) -> Result<String, String> {
    let t = s.trim();
    let ok = match t.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !t.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(t.to_owned())
    } else {
        Err(format!("`{s}` is not an e-mail address"))
    }
}

/// Dates are stored as `YYYY-MM-DD` text, which sorts and compares as the dates do only
/// for years 0000 to 9999: an earlier one is written `-009999-01-01` and would compare as
/// text, so it is refused.
fn to_date(v: &Value, tz: &TimeZone) -> Result<String, String> {
    let date = match v {
        Value::String(s) => s
            .parse::<Date>()
            .map_err(|_| format!("`{s}` is not a date; use YYYY-MM-DD or epoch milliseconds"))?,
        Value::Number(_) => {
            let ts = Timestamp::from_millisecond(as_i64(v)?)
                .map_err(|_| "timestamp out of range".to_owned())?;
            ts.to_zoned(tz.clone()).date()
        }
        _ => {
            return Err(format!(
                "must be a date (YYYY-MM-DD or epoch milliseconds), got {}",
                kind(v)
            ));
        }
    };
    if date.year() < 0 {
        return Err("must be a date from 0000-01-01 to 9999-12-31".into());
    }
    Ok(date.to_string())
}

fn to_millis(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(_) => {
            let ms = as_i64(v)?;
            Timestamp::from_millisecond(ms).map_err(|_| "timestamp out of range".to_owned())?;
            Ok(ms)
        }
        Value::String(s) => parse_instant(s)
            .map(|t| t.as_millisecond())
            .ok_or_else(|| format!("`{s}` is not a datetime; use epoch milliseconds or RFC 3339")),
        _ => Err(format!(
            "must be a datetime in epoch milliseconds, got {}",
            kind(v)
        )),
    }
}

/// Parses JSON text, reading a lone UTF-16 surrogate escape as U+FFFD. JavaScript's
/// `JSON.stringify` writes one (`"\ud83d"`) for a string cut inside an emoji, as sites
/// cutting names and titles to a length do; strict parsing would refuse the whole body
/// for it, and with it every other call a page sent as it was left. Valid text is
/// parsed once; only text that fails is mended and parsed again.
pub fn json_text(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice(bytes).or_else(|e| match mend_surrogates(bytes) {
        Some(mended) => serde_json::from_slice(&mended),
        None => Err(e),
    })
}

/// `bytes` with every lone surrogate escape inside a string replaced by `\ufffd` (of the
/// same length, so error positions stay), or `None` when there is none.
fn mend_surrogates(bytes: &[u8]) -> Option<Vec<u8>> {
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match unit(i) {
                Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
                Some(0xD800..=0xDFFF) => {
                    out.get_or_insert_with(|| bytes.to_vec())[i..i + 6].copy_from_slice(br"\ufffd");
                    i += 6;
                }
                // Any other escape: its two characters (a `\u` escape's digits are plain).
                _ => i += 2,
            },
            _ => i += 1,
        }
    }
    out
}

/// Removes U+0000 from the strings of what a client library collected from the browser or
/// app rather than the business sent (a Segment call's `context`, but for its `traits`;
/// the SDK's UTM parameters): a link whose `utm_source` is `%00` must not switch off
/// tracking for every visitor who follows it (nor one whose parameter name holds it, as
/// libraries that keep every `utm_*` parameter make a key of it). Such values are cut to
/// their limits for the same reason.
pub fn strip_collected_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_collected_nul),
        Value::Object(m) => strip_collected_nul_map(m),
        _ => {}
    }
}

/// [`strip_collected_nul`] for an object's map, keys and values.
pub fn strip_collected_nul_map(m: &mut serde_json::Map<String, Value>) {
    if m.keys().any(|k| k.contains('\0')) {
        // Of two keys that become one, the one sent clean is kept.
        let (dirty, mut clean): (serde_json::Map<_, _>, serde_json::Map<_, _>) = std::mem::take(m)
            .into_iter()
            .partition(|(k, _)| k.contains('\0'));
        for (mut k, v) in dirty {
            k.retain(|c| c != '\0');
            clean.entry(k).or_insert(v);
        }
        *m = clean;
    }
    m.values_mut().for_each(strip_collected_nul);
}

/// Path of the first string (or key) holding U+0000, under `at` (a string at the root is
/// named `at` itself, empty for a whole body or line): no store can keep it as text, and
/// every way in refuses it alike.
pub fn nul_path(v: &Value, at: String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, format!("{at}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(p)
            } else {
                nul_path(x, p)
            }
        }),
        _ => None,
    }
}

/// An RFC 3339 / ISO-8601 instant with an offset. jiff takes offsets up to ±25:59, where
/// the standards stop at ±23:59: a larger one is a typo that would move the time by a day
/// or more, so it is refused.
pub fn parse_instant(s: &str) -> Option<Timestamp> {
    use jiff::fmt::temporal::{Pieces, PiecesOffset};
    let t = s.parse::<Timestamp>().ok()?;
    match Pieces::parse(s).ok()?.offset() {
        Some(PiecesOffset::Numeric(o)) if o.offset().seconds().abs() >= 86_400 => None,
        _ => Some(t),
    }
}

fn as_i64(v: &Value) -> Result<i64, String> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err("must be whole epoch milliseconds".into()),
    }
}

/// Why a string holding U+0000 is refused: PostgreSQL cannot store it in `text` or `jsonb`,
/// and both backends must accept the same data (one such op would fail a whole batch).
pub const NUL_REJECTED: &str = "must not contain the NUL character (U+0000)";

/// Whether `c` breaks how a name, key or id reads where it is shown: control characters
/// (a line break or an escape splits a CSV line or a log entry), the line and paragraph
/// separators, and the direction embeddings, overrides and isolates, which make text
/// display in another order than it is stored (`a\u{202e}b` shows as another name).
/// Direction marks (U+200E, U+200F) only nudge neighbouring characters and stay allowed.
pub fn breaks_display(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as a message quoting it should show it: what [`breaks_display`] refuses, and the
/// direction marks (U+200E, U+200F, U+061C, which names may hold but which would reorder
/// the message around them), written as JSON writes escapes (`\n`, `\u202e`). A quoted
/// key then cannot drive a terminal, split a log line or reorder what a reader sees.
pub fn escape_unseen(s: &str) -> std::borrow::Cow<'_, str> {
    let unseen = |c: char| breaks_display(c) || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}');
    if !s.chars().any(unseen) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unseen(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.into()
}

/// Whether `c` is drawn as nothing: format characters (U+200B, U+FEFF, U+00AD, joiners,
/// direction marks), combining marks (U+FE0F, U+034F), the Hangul fillers and the blank
/// Braille pattern (U+2800).
pub(crate) fn invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        GeneralCategory::Format | GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
    ) || matches!(
        c,
        '\u{115f}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{ffa0}'
    )
}

/// Whether `c` shows on screen (neither white space nor [`invisible`]): a name or key
/// without one would list as a blank in the catalog, the timeline and the filter builder.
pub(crate) fn shows(c: char) -> bool {
    !c.is_whitespace() && !invisible(c)
}

/// Why text with nothing [`shows`] is refused, in an error message's words.
pub const NOTHING_VISIBLE: &str =
    "must hold a visible character (it is only zero-width or blank ones)";

/// The rule [`breaks_display`] checks, in an error message's words.
pub const BREAKS_DISPLAY: &str =
    "must not contain control characters, line separators or direction overrides";

/// A name people read in the console (a field's, a segment's, a role's, a channel's, a
/// manager's): trimmed, 1 to `max` characters, something visible, and nothing that breaks
/// how it displays ([`breaks_display`]); `field` names it in the error.
pub fn display_name(field: &str, name: &str, max: usize) -> Result<String, crate::Invalid> {
    let n = name.trim();
    let rule = if n.is_empty() || n.chars().count() > max {
        format!("must be 1 to {max} characters")
    } else if n.chars().any(breaks_display) {
        BREAKS_DISPLAY.to_owned()
    } else if !n.chars().any(shows) {
        NOTHING_VISIBLE.to_owned()
    } else {
        return Ok(n.to_owned());
    };
    Err(crate::Invalid::one(field, rule))
}

/// Why `v` is refused where an object is taken, in the words every path uses.
pub fn not_an_object(v: &Value) -> String {
    format!("must be an object, got {}", kind(v))
}

/// The JSON kind of a value, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The longest prefix of `s` within [`MAX_STRING_CHARS`]. For values a client library
/// collects by itself (a referrer, UTM parameters): nobody typed them, so an over-long one
/// is cut rather than failing the call that carries it (docs/events.md).
pub fn clip_text(s: &str) -> &str {
    match s.char_indices().nth(MAX_STRING_CHARS) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_kept_as_the_stores_give_them_back() {
        let c = |text: &str| canonical_number(serde_json::from_str(text).unwrap()).to_string();
        assert_eq!(c("-0"), "0");
        assert_eq!(c("-0.0"), "0");
        assert_eq!(c("0.0"), "0.0");
        assert_eq!(c("4.0"), "4.0");
        assert_eq!(c("1e15"), "1000000000000000.0");
        assert_eq!(c("1e16"), "10000000000000000");
        assert_eq!(c("-1e16"), "-10000000000000000");
        assert_eq!(c("1.5e18"), "1500000000000000000");
        assert_eq!(c("-9.223372036854775808e18"), "-9223372036854775808");
        assert_eq!(c("1e19"), "10000000000000000000");
        assert_eq!(c("1.8446744073709552e19"), "1.8446744073709552e+19");
        assert_eq!(c("1e20"), "1e+20");
        assert_eq!(c("1.5e16"), "15000000000000000");
        assert_eq!(c("12345678901234567890"), "12345678901234567890");
        assert_eq!(c("0.5"), "0.5");
    }

    #[test]
    fn quoted_text_shows_its_escapes_as_json_writes_them() {
        // A terminal escape, a line break, a direction override: the operator's terminal
        // and the client's log see them as text.
        assert_eq!(
            escape_unseen("a\u{1b}[31mb\nc\t\u{85}\u{202e}\u{200f}"),
            "a\\u001b[31mb\\nc\\t\\u0085\\u202e\\u200f"
        );
        assert!(matches!(
            escape_unseen("plain 한글"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn display_names_are_trimmed_visible_and_read_as_stored() {
        assert_eq!(display_name("name", "  Plan  ", 10).unwrap(), "Plan");
        assert_eq!(display_name("name", "🙂", 1).unwrap(), "🙂");
        for bad in [
            "",
            "   ",
            "x".repeat(11).as_str(),
            "a\nb",
            "a\u{202e}b",
            "\u{200b}",
        ] {
            let e = display_name("title", bad, 10).unwrap_err();
            assert_eq!(e.0[0].field, "title", "{bad:?}");
        }
    }

    #[test]
    fn lone_surrogates_read_as_replacement_characters() {
        let v = |t: &str| json_text(t.as_bytes()).unwrap();
        // A high surrogate alone, before a quote, another escape or text; a low one alone.
        assert_eq!(v(r#"{"s": "\ud83d"}"#)["s"], "\u{fffd}");
        assert_eq!(
            v(r#"["a\uD83D\n", "\ude00b"]"#),
            json!(["a\u{fffd}\n", "\u{fffd}b"])
        );
        assert_eq!(v(r#"["\ud83d\ud83d\ude00"]"#)[0], "\u{fffd}😀");
        // Pairs, escaped backslashes and text outside strings are left alone.
        assert_eq!(
            v(r#"["\ud83d\ude00", "\\ud83d"]"#),
            json!(["😀", "\\ud83d"])
        );
        assert!(json_text(br#"{"s": "\ud83d" "#).is_err());
        assert!(mend_surrogates(br#"\ud83d"#).is_none());
        assert!(mend_surrogates(br#"{"a": "x"} \ud83d"#).is_none());
        assert!(mend_surrogates(br#"{"s": "\ud83d\ude00"}"#).is_none());
    }

    #[test]
    fn collected_text_loses_its_nuls_and_a_clean_key_wins() {
        let mut v =
            json!({"sour\u{0}ce": "B", "source": "A", "x": ["a\u{0}b"], "\u{0}y": "c\u{0}"});
        strip_collected_nul(&mut v);
        assert_eq!(v, json!({"source": "A", "x": ["ab"], "y": "c"}));
    }

    proptest::proptest! {
        /// Any UTF-16 text, as JavaScript escapes it, reads as Rust's lossy decoding of
        /// it: pairs as their character, each lone surrogate as U+FFFD.
        #[test]
        fn utf16_text_reads_as_its_lossy_decoding(
            units in proptest::collection::vec(
                proptest::prop_oneof![0xD7F0u16..0xE010, 0x20u16..0x80], 0..12),
        ) {
            let escaped: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let v = json_text(format!("[\"{escaped}\"]").as_bytes()).unwrap();
            proptest::prop_assert_eq!(v[0].as_str().unwrap(), String::from_utf16_lossy(&units));
        }
    }

    fn seoul() -> TimeZone {
        TimeZone::get("Asia/Seoul").expect("bundled tzdb")
    }

    #[test]
    fn inference() {
        assert_eq!(infer_type(&json!(true)), Ok(FieldType::Boolean));
        assert_eq!(infer_type(&json!(1.5)), Ok(FieldType::Number));
        assert_eq!(infer_type(&json!("x")), Ok(FieldType::String));
        assert_eq!(infer_type(&json!(["a"])), Ok(FieldType::List));
        assert_eq!(infer_type(&json!([])), Ok(FieldType::List));
        assert_eq!(infer_type(&json!([1, 2])), Ok(FieldType::ListOfNumber));
        assert!(infer_type(&json!([1, "a"])).is_err());
        assert!(infer_type(&json!({"a": 1})).is_err());
    }

    #[test]
    fn dates_and_datetimes() {
        let tz = seoul();
        assert_eq!(
            check("d", FieldType::Date, &json!("2024-02-29"), &tz),
            Ok(json!("2024-02-29"))
        );
        assert!(check("d", FieldType::Date, &json!("2023-02-29"), &tz).is_err());
        // Stored as text, a date before year 0 would compare as text.
        assert!(check("d", FieldType::Date, &json!("-009999-01-01"), &tz).is_err());
        assert!(check("d", FieldType::Date, &json!(-62_200_000_000_000_i64), &tz).is_err());
        assert_eq!(
            check("d", FieldType::Date, &json!("0000-01-01"), &tz),
            Ok(json!("0000-01-01"))
        );
        // 2024-01-01T15:00Z is already 2024-01-02 in Seoul.
        assert_eq!(
            check("d", FieldType::Date, &json!(1_704_121_200_000_i64), &tz),
            Ok(json!("2024-01-02"))
        );
        assert_eq!(
            check(
                "t",
                FieldType::Datetime,
                &json!("2024-01-01T00:00:00Z"),
                &tz
            ),
            Ok(json!(1_704_067_200_000_i64))
        );
        assert!(check("t", FieldType::Datetime, &json!(1.5), &tz).is_err());
        assert!(check("t", FieldType::Datetime, &json!(true), &tz).is_err());
    }

    #[test]
    fn strings_and_lists() {
        let tz = seoul();
        assert!(check("s", FieldType::String, &json!("가".repeat(512)), &tz).is_ok());
        assert!(check("s", FieldType::String, &json!("가".repeat(513)), &tz).is_err());
        assert!(check("l", FieldType::List, &json!(vec!["a"; 200]), &tz).is_ok());
        assert!(check("l", FieldType::List, &json!(vec!["a"; 201]), &tz).is_err());
        assert!(
            check("l", FieldType::List, &json!(["a", 1]), &tz)
                .unwrap_err()
                .contains("item 1")
        );
        assert!(check("n", FieldType::ListOfNumber, &json!([1, "a"]), &tz).is_err());
        assert!(
            check("n", FieldType::Number, &json!("1"), &tz)
                .unwrap_err()
                .contains("got string")
        );
        assert!(
            check("s", FieldType::String, &json!("a\u{0}b"), &tz)
                .unwrap_err()
                .contains("NUL")
        );
        assert!(
            check("l", FieldType::List, &json!(["a\u{0}"]), &tz)
                .unwrap_err()
                .contains("NUL")
        );
    }

    #[test]
    fn collected_text_is_cut_to_the_string_limit() {
        let long = "가".repeat(MAX_STRING_CHARS + 5);
        assert_eq!(clip_text(&long).chars().count(), MAX_STRING_CHARS);
        assert_eq!(clip_text("short"), "short");
        let exact = "a".repeat(MAX_STRING_CHARS);
        assert_eq!(clip_text(&exact), exact);
    }

    #[test]
    fn email_shape() {
        let tz = seoul();
        assert!(check("email", FieldType::String, &json!("a@b.co"), &tz).is_ok());
        assert!(check("email", FieldType::String, &json!("nope"), &tz).is_err());
        assert!(check("email", FieldType::String, &json!("a@b"), &tz).is_err());
        for bad in ["a@b@c.io", "a@.b.io", "a@b.io.", "a b@c.io"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
