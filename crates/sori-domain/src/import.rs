//! Import lines (SPEC §4, `sori import`): a user line is an upsert body plus `memberId`,
//! `createdAt` and `lastSeenAt`; an event line is `{memberId or userId, name, property,
//! createdAt, page}`. CSV rows are first turned into the same JSON shape, so both formats
//! share one validation.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{Errors, Invalid};
use crate::event::EventInput;
use crate::field::{BUILTIN_FIELDS, FieldType, ProfileField, ProfileKey, Registry};
use crate::segment::time_value;
use crate::update::{UPDATE_FIELDS, UserUpdate, check_member_id};
use crate::value::{infer_type, kind};

/// The field of an error about a whole line (malformed JSON or CSV, not UTF-8, too many
/// cells): none, so it cannot be taken for a key named `line`.
pub const WHOLE_LINE: &str = "";

/// A parsed user line.
#[derive(Debug, Clone, PartialEq)]
pub struct UserLine {
    /// The member to upsert.
    pub member_id: String,
    /// The update.
    pub update: UserUpdate,
    /// Explicit creation time (moves `createdAt` earlier only).
    pub created_at: Option<i64>,
    /// Explicit last activity (moves `lastSeenAt` later only).
    pub last_seen_at: Option<i64>,
}

/// Whose event a line is.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// By member id (created when absent).
    Member(String),
    /// By user id (must exist).
    User(String),
}

/// A parsed event line.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    /// Owner.
    pub owner: Owner,
    /// The event.
    pub input: EventInput,
    /// When it happened; now when absent.
    pub created_at: Option<i64>,
}

fn object(v: &Value) -> Result<&Map<String, Value>, Invalid> {
    v.as_object()
        .ok_or_else(|| Invalid::one(WHOLE_LINE, crate::value::not_an_object(v)))
}

fn time(o: &Map<String, Value>, k: &str, errs: &mut Errors) -> Option<i64> {
    match o.get(k) {
        None | Some(Value::Null) => None,
        Some(v) => time_value(v, k, errs),
    }
}

/// Why a number with a fraction or an exponent is refused as an id: it reaches us as a
/// float whose text is not what the file had, so two customers could share one id.
const LOSSY_ID: &str =
    "must be a string or an integer (a number with a fraction or an exponent loses digits)";

/// Clock difference between the machine that wrote a file and this one that a time may
/// be ahead by; such a time counts as now.
pub const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Parses a user line; `now` (ms) bounds its times: a customer cannot have been created
/// or seen in the future, and a future `lastSeenAt` would never move back. Times up to
/// [`FUTURE_TOLERANCE_MS`] ahead (another server's clock) are taken as now.
pub fn user_line(v: &Value, now: i64) -> Result<UserLine, Invalid> {
    let o = object(v)?;
    let mut errs = Errors::default();
    let member_id = match o.get("memberId") {
        Some(Value::String(s)) => Some(s.clone()),
        // Digits of an integer; other numbers have lost digits on the way (as in Segment).
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(Value::Number(_)) => {
            errs.push("memberId", LOSSY_ID);
            None
        }
        _ => {
            errs.push("memberId", "is required (a string or an integer)");
            None
        }
    };
    if let Some(m) = &member_id
        && let Err(e) = check_member_id(m)
    {
        errs.push("memberId", e.0[0].message.clone());
    }
    let mut not_future = |k: &str| {
        let t = time(o, k, &mut errs)?;
        if t > now + FUTURE_TOLERANCE_MS {
            errs.push(k, "must not be in the future");
        }
        Some(t.min(now))
    };
    let created_at = not_future("createdAt");
    let last_seen_at = not_future("lastSeenAt");
    if let (Some(c), Some(l)) = (created_at, last_seen_at)
        && l < c
    {
        errs.push("lastSeenAt", "must not be before createdAt");
    }
    let mut body = Map::new();
    for (k, v) in o {
        match k.as_str() {
            "id" | "memberId" | "createdAt" | "lastSeenAt" => {}
            k if UPDATE_FIELDS.contains(&k) => {
                body.insert(k.to_owned(), v.clone());
            }
            _ => errs.push(
                k,
                format!(
                    "unknown field; expected one of memberId, createdAt, lastSeenAt, {}",
                    UPDATE_FIELDS.join(", ")
                ),
            ),
        }
    }
    let update = match UserUpdate::from_json(&Value::Object(body), UPDATE_FIELDS) {
        Ok(u) => Some(u),
        Err(e) => {
            for f in e.0 {
                errs.push(f.field, f.message);
            }
            None
        }
    };
    errs.check()?;
    Ok(UserLine {
        member_id: member_id.unwrap_or_default(),
        update: update.unwrap_or_default(),
        created_at,
        last_seen_at,
    })
}

/// Parses an event line.
pub fn event_line(v: &Value) -> Result<EventLine, Invalid> {
    let o = object(v)?;
    let mut errs = Errors::default();
    let mut id = |k: &str| match o.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(Value::Number(_)) => {
            errs.push(k, LOSSY_ID);
            None
        }
        _ => None,
    };
    let ids = (id("memberId"), id("userId"));
    let owner = match ids {
        (Some(m), None) => Some(Owner::Member(m)),
        (None, Some(u)) => Some(Owner::User(u)),
        (Some(_), Some(_)) => {
            errs.push("memberId", "send memberId or userId, not both");
            None
        }
        (None, None) if errs.is_empty() => {
            errs.push("memberId", "memberId or userId is required");
            None
        }
        (None, None) => None,
    };
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "memberId" | "userId" | "name" | "property" | "page" | "createdAt" | "id" | "source"
        ) {
            errs.push(
                k,
                "is not a known field (memberId, userId, name, property, page, createdAt; \
                 id and source, as exports write them, are ignored)",
            );
        }
    }
    let created_at = time(o, "createdAt", &mut errs);
    errs.check()?;
    Ok(EventLine {
        owner: owner.unwrap_or(Owner::User(String::new())),
        input: EventInput {
            name: o.get("name").cloned().unwrap_or(Value::Null),
            property: o.get("property").cloned(),
            page: o.get("page").cloned(),
        },
        created_at,
    })
}

/// A CSV cell as a JSON value: empty cells are absent; registered fields get their type;
/// unregistered cells become booleans, numbers (without leading zeros, so codes and phone
/// numbers stay text) or strings.
pub fn csv_cell(raw: &str, registered: Option<FieldType>) -> Option<Value> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    // `field`: the cell is a Number field's, read as the API reads a JSON number (with an
    // exponent, as exports write very small and large numbers, and whole numbers past 64
    // bits); in a column no field types, `1E5` and long order numbers are codes: text.
    let number = |field: bool| {
        let plain = s.strip_prefix('-').unwrap_or(s);
        let leading_zero = plain.len() > 1 && plain.starts_with('0') && !plain.starts_with("0.");
        if leading_zero || !plain_number(plain) || (!field && plain.contains(['e', 'E'])) {
            return None;
        }
        if !plain.contains(['.', 'e', 'E']) {
            return match s.parse::<i64>() {
                Ok(i) => Some(Value::from(i)),
                Err(_) => field.then(|| serde_json::from_str(s).ok()).flatten(),
            };
        }
        s.parse::<f64>().ok().and_then(|f| {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Some(Value::from(f as i64))
            } else {
                serde_json::Number::from_f64(f).map(Value::Number)
            }
        })
    };
    Some(match registered {
        Some(FieldType::String) => Value::String(s.to_owned()),
        Some(FieldType::List) => {
            Value::Array(csv_list_items(s).into_iter().map(Value::String).collect())
        }
        Some(FieldType::ListOfNumber) => Value::Array(
            csv_list_items(s)
                .iter()
                .map(|x| csv_cell(x, Some(FieldType::Number)).unwrap_or(Value::Null))
                .collect(),
        ),
        Some(FieldType::Number) => number(true).unwrap_or_else(|| Value::String(s.to_owned())),
        Some(FieldType::Boolean) | None if s == "true" || s == "false" => Value::Bool(s == "true"),
        Some(FieldType::Datetime) => number(false).unwrap_or_else(|| Value::String(s.to_owned())),
        _ => number(false).unwrap_or_else(|| Value::String(s.to_owned())),
    })
}

/// The items of a CSV list cell, split on `;`. `\;` is a `;` inside an item and `\\` a
/// backslash (any other backslash stays as it is), so an exported tag such as `a;b` comes
/// back whole. Items are trimmed and empty ones dropped.
pub fn csv_list_items(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ';' => items.push(std::mem::take(&mut item)),
            '\\' if matches!(chars.peek(), Some(';' | '\\')) => item.extend(chars.next()),
            c => item.push(c),
        }
    }
    items.push(item);
    items
        .into_iter()
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

/// One CSV cell holding `items`, written so that `csv_list_items` reads them back.
pub fn csv_list_cell<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|x| x.replace('\\', "\\\\").replace(';', "\\;"))
        .collect::<Vec<_>>()
        .join(";")
}

/// A value as the text of a CSV cell, as imports read it back: nothing for null, a string
/// as it is, a list as `csv_list_cell` writes it, anything else as JSON.
pub fn csv_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect();
            csv_list_cell(items.iter().map(String::as_str))
        }
        other => other.to_string(),
    }
}

/// Whether a spreadsheet would run `s` as a formula (or a DDE command) when it opens a CSV
/// file: it starts with a tab or a line end (some programs act on those first), or its
/// first visible character is `=` or `@`, or `+` or `-` not starting a plain number.
/// Profile values come from browsers, so anyone could plant one in a business's export.
fn runs_in_a_sheet(s: &str) -> bool {
    if s.starts_with(['\t', '\r', '\n']) {
        return true;
    }
    let t = s.trim_start();
    match t.chars().next() {
        Some('=' | '@') => true,
        Some('+' | '-') => !plain_number(&t[1..]),
        _ => false,
    }
}

/// Whether `t` is an unsigned decimal number a spreadsheet reads as one: digits with at
/// most one `.`, and an optional exponent (`1.5e-7`, as exports write small numbers).
/// Rust's float parser would also take `inf`, `NaN` and a second sign.
fn plain_number(t: &str) -> bool {
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (t, None),
    };
    mantissa.bytes().any(|b| b.is_ascii_digit())
        && mantissa.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && mantissa.bytes().filter(|&b| b == b'.').count() <= 1
        && exponent.is_none_or(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether [`from_sheet_safe`] drops the leading `'` of `'` + `rest`: before what a
/// spreadsheet would run, another `'`, or a sign (tools that protect every cell starting
/// with `+` or `-`, numbers included, write `'-5`).
fn quoted_by_us(rest: &str) -> bool {
    runs_in_a_sheet(rest) || rest.starts_with(['\'', '+', '-'])
}

/// A CSV cell's text as exports write it: one that a spreadsheet would run gets a
/// leading `'` (shown as text, not run), and so does one that starts with `'` where an
/// import would take that `'` for ours, so [`from_sheet_safe`] gives every text back
/// (imports then trim it, as they trim every cell). Numbers never change.
pub fn sheet_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let ours = runs_in_a_sheet(s) || s.strip_prefix('\'').is_some_and(quoted_by_us);
    match ours {
        true => format!("'{s}").into(),
        false => s.into(),
    }
}

/// A CSV cell as imports read it, before trimming: the `'` that [`sheet_safe`] (or a
/// spreadsheet user) put before a value a spreadsheet would run is dropped.
pub fn from_sheet_safe(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if quoted_by_us(rest) => rest,
        _ => s,
    }
}

/// The types CSV cells are read as: a registered field's, else the type a column took
/// from its first value in this file. That value registers the field when it is written,
/// so later rows are read as a re-run of the file reads them (a zip code column that
/// starts with `01234` stays text in every row).
pub struct CsvTypes {
    types: HashMap<String, FieldType>,
    /// Columns whose type was learned from a value, in order (see `forget_since`).
    learned: Vec<String>,
}

impl CsvTypes {
    /// Starts from the channel's registered fields.
    pub fn new(registry: &Registry) -> Self {
        Self {
            types: registry
                .fields()
                .map(|f| (f.key.as_str().to_owned(), f.field_type))
                .collect(),
            learned: Vec::new(),
        }
    }

    /// How many column types have been learned from values so far: the mark to give
    /// `forget_since` when a row turns out not to be imported.
    pub fn learned(&self) -> usize {
        self.learned.len()
    }

    /// Forgets the column types learned since `learned()` returned `mark`: a row that is
    /// not imported teaches nothing.
    pub fn forget_since(&mut self, mark: usize) {
        for key in self.learned.drain(mark.min(self.learned.len())..) {
            self.types.remove(&key);
        }
    }

    /// The cell of column `key` as a value of the column's type, with that type; `None`
    /// as the type when this cell is the column's first value, which decides it.
    fn read(&mut self, key: &str, raw: &str) -> Option<(Value, Option<FieldType>)> {
        let ty = self.types.get(key).copied();
        let v = csv_cell(raw, ty)?;
        if ty.is_none()
            && let Ok(learned) = infer_type(&v)
        {
            self.types.insert(key.to_owned(), learned);
            self.learned.push(key.to_owned());
        }
        Some((v, ty))
    }
}

/// The profile key a user CSV column writes to when it is not one of the named columns:
/// `profile.key` and `key` are the same column.
fn profile_column(h: &str) -> &str {
    h.strip_prefix("profile.").unwrap_or(h)
}

/// The columns of a user CSV that are the line's own fields, not profile fields, in the
/// order an export writes them.
pub const USER_LINE_COLUMNS: [&str; 8] = [
    "id",
    "memberId",
    "createdAt",
    "lastSeenAt",
    "tags",
    "unsubscribeEmail",
    "unsubscribeTexting",
    "blocked",
];

/// The column an export writes a profile field under: its key, or `profile.KEY` when a
/// bare column of that name would mean something else on import (a line field such as
/// `tags`, or a field Sori keeps itself such as `city`), so the file imports back.
pub fn profile_field_column(key: &str) -> std::borrow::Cow<'_, str> {
    if system_field(key) || USER_LINE_COLUMNS.contains(&key) {
        format!("profile.{key}").into()
    } else {
        key.into()
    }
}

/// Refuses a header row that names a column twice (for users, `email` and
/// `profile.email` are one column): which cell counted would be left to chance. Unnamed
/// columns (an editor's leftovers) may repeat; they hold nothing the import reads.
pub fn check_csv_header(headers: &[String], users: bool) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let twice = headers.iter().map(|h| h.trim()).find(|h| {
        // For users, a profile field is one column however it is named, and apart from a
        // line field of the same name (`profile.tags` is not `tags`).
        let key = match h.strip_prefix("profile.") {
            Some(field) if users => (true, field),
            _ => (users && !USER_LINE_COLUMNS.contains(h), *h),
        };
        !key.1.is_empty() && !names.insert(key)
    });
    if let Some(twice) = twice {
        return Err(format!(
            "the CSV header row names the column `{twice}` twice"
        ));
    }
    // A bare column named after a field Sori keeps itself (city, sessionsCount…) would
    // silently become a profile field of that name beside the real one.
    match headers
        .iter()
        .map(|h| h.trim())
        .find(|h| users && system_field(h))
    {
        Some(h) => Err(format!(
            "the column `{h}` names a field Sori keeps itself, which an import cannot set \
             (a user line sets profile fields, tags, consent, blocked, createdAt and \
             lastSeenAt); name it `profile.{h}` to import it as a profile field of that name"
        )),
        None => Ok(()),
    }
}

/// User fields Sori sets from activity, or derives, as a bare CSV column would name them
/// (an export writes a profile field of such a name as `profile.KEY`).
pub fn system_field(column: &str) -> bool {
    matches!(
        column,
        "city"
            | "country"
            | "language"
            | "member"
            | "veilId"
            | "hasChat"
            | "hasPushToken"
            | "sessionsCount"
            | "updatedAt"
            | "web"
            | "mobile"
    ) || column.starts_with("web.")
        || column.starts_with("mobile.")
}

/// Refuses a row with non-empty cells beyond the header's columns (they would be lost).
/// Fewer cells read as empty ones, and empty extra cells (trailing commas) are fine.
pub fn check_csv_width(headers: &[String], cells: &[String]) -> Result<(), Invalid> {
    let extra = cells.get(headers.len()..).unwrap_or_default();
    if extra.iter().any(|c| !c.trim().is_empty()) {
        return Err(Invalid::one(
            WHOLE_LINE,
            format!(
                "has {} cells but the header row names {} columns",
                cells.len(),
                headers.len()
            ),
        ));
    }
    Ok(())
}

/// A CSV user row as a user line: `memberId`, `createdAt`, `lastSeenAt`, `tags` (`;`
/// separated), `unsubscribeEmail`, `unsubscribeTexting`, `blocked`; every other column
/// (optionally written `profile.key`) is a profile value.
pub fn csv_user(headers: &[String], cells: &[String], types: &mut CsvTypes) -> Value {
    let mut line = Map::new();
    let mut profile = Map::new();
    for (h, c) in headers.iter().zip(cells) {
        let h = h.trim();
        match h {
            // Exports carry ids of the source store; they mean nothing on import.
            "id" => {}
            "memberId" => {
                line.insert(h.into(), Value::String(c.trim().to_owned()));
            }
            "createdAt" | "lastSeenAt" => {
                if let Some(v) = csv_cell(c, Some(FieldType::Datetime)) {
                    line.insert(h.into(), v);
                }
            }
            "tags" => {
                if let Some(v) = csv_cell(c, Some(FieldType::List)) {
                    line.insert(h.into(), v);
                }
            }
            "unsubscribeEmail" | "unsubscribeTexting" | "blocked" => {
                if let Some(v) = csv_cell(c, Some(FieldType::Boolean)) {
                    line.insert(h.into(), v);
                }
            }
            _ => {
                let key = profile_column(h);
                if let Some((v, _)) = types.read(key, c) {
                    profile.insert(key.to_owned(), v);
                }
            }
        }
    }
    if !profile.is_empty() {
        line.insert("profile".into(), Value::Object(profile));
    }
    Value::Object(line)
}

/// A CSV event row as an event line: `memberId` or `userId`, `name`, `createdAt`, `page`,
/// `property` (a JSON object) and `property.key` columns. A `property.key` column takes
/// its type from its first non-empty cell in the file (`types`, empty at the start), as a
/// user column does: a column of zip codes starting `01234` stays text in every row, so
/// the events of one column do not mix types that a filter would then tell apart.
pub fn csv_event(
    headers: &[String],
    cells: &[String],
    types: &mut CsvTypes,
) -> Result<Value, Invalid> {
    let mut line = Map::new();
    let mut property = Map::new();
    for (h, c) in headers.iter().zip(cells) {
        let h = h.trim();
        match h {
            "property" if !c.trim().is_empty() => match crate::value::json_text(c.as_bytes()) {
                Ok(Value::Object(m)) => {
                    for (k, v) in m {
                        if property.insert(k.clone(), v).is_some() {
                            return Err(twice(&k));
                        }
                    }
                }
                // `null`, as an NDJSON line may have it: no properties.
                Ok(Value::Null) => {}
                _ => return Err(Invalid::one("property", "must be a JSON object")),
            },
            "property" | "id" | "source" => {}
            // An unnamed column (an editor's leftover) may hold nothing.
            "" if c.trim().is_empty() => {}
            "createdAt" => {
                if let Some(v) = csv_cell(c, Some(FieldType::Datetime)) {
                    line.insert(h.into(), v);
                }
            }
            "memberId" | "userId" | "name" | "page" => {
                if !c.trim().is_empty() {
                    line.insert(h.into(), Value::String(c.trim().to_owned()));
                }
            }
            other => match other.strip_prefix("property.") {
                Some(k) => {
                    if let Some((v, ty)) = types.read(k, c) {
                        // One the column's type cannot read (text in a column of numbers)
                        // is refused rather than stored as another type.
                        if let Some(ty) = ty.filter(|&ty| infer_type(&v) != Ok(ty)) {
                            return Err(Invalid::one(
                                format!("property.{k}"),
                                format!(
                                    "must be a {} value, as the column's first value was",
                                    ty.as_str()
                                ),
                            ));
                        }
                        if property.insert(k.to_owned(), v).is_some() {
                            return Err(twice(k));
                        }
                    }
                }
                None => {
                    line.insert(other.to_owned(), Value::String(c.clone()));
                }
            },
        }
    }
    if !property.is_empty() {
        line.insert("property".into(), Value::Object(property));
    }
    Ok(Value::Object(line))
}

/// A line of `sori import fields`: a field's definition, as `sori export fields` writes it.
/// A user file says nothing of its fields' types (a Date reads as text, a Datetime as a
/// number), display names or sensitive flags, so a store is moved fields first, users
/// second.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldLine {
    /// A profile field (`profile.KEY`).
    Profile {
        /// The field.
        key: ProfileKey,
        /// Its type, which must agree with the target's where the target has the field.
        field_type: FieldType,
        /// Display name; `None` keeps the target's (a new field is named by its key).
        name: Option<String>,
        /// Masking; `None` keeps the target's (a new field is not sensitive).
        sensitive: Option<bool>,
    },
    /// A built-in user field (`memberId`, `web.browser`): only its masking moves, the rest
    /// is the same in every store.
    User {
        /// One of [`BUILTIN_FIELDS`].
        key: &'static str,
        /// Masking; `None` keeps the target's.
        sensitive: Option<bool>,
    },
}

/// The fields of a field line, in the order `sori export fields` writes them. `scope` is
/// `profile` (the default) or `user` (a built-in user field); `builtin` is informational:
/// every store has the same built-in fields.
pub const FIELD_LINE_COLUMNS: [&str; 6] = ["scope", "key", "name", "type", "sensitive", "builtin"];

/// Parses a field line.
pub fn field_line(v: &Value) -> Result<FieldLine, Invalid> {
    let o = object(v)?;
    let mut errs = Errors::default();
    for k in o.keys() {
        if !FIELD_LINE_COLUMNS.contains(&k.as_str()) {
            errs.push(
                k,
                "is not a known field (scope, key, name, type, sensitive; builtin, as exports \
                 write it, is ignored)",
            );
        }
    }
    let mut text = |k: &str, required: bool| match o.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) if !required => None,
        None | Some(Value::Null) => {
            errs.push(k, "is required");
            None
        }
        Some(other) => {
            errs.push(k, format!("must be a string, got {}", kind(other)));
            None
        }
    };
    let (scope, key, ty, name) = (
        text("scope", false),
        text("key", true),
        text("type", true),
        text("name", false),
    );
    let mut flag = |k: &str| match o.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            errs.push(k, format!("must be true or false, got {}", kind(other)));
            None
        }
    };
    // `builtin` is what an export says of the field; the target knows its own.
    let sensitive = flag("sensitive");
    let field_type = ty.and_then(|t| FieldType::parse(&t).map_err(|e| errs.push("type", e)).ok());
    let line = match scope.as_deref() {
        None | Some("profile") => {
            let key = key.and_then(|k| ProfileKey::parse(&k).map_err(|e| errs.push("key", e)).ok());
            let name = name.and_then(|n| match ProfileField::check_name(&n) {
                Ok(n) => Some(n),
                Err(e) => {
                    for f in e.0 {
                        errs.push(f.field, f.message);
                    }
                    None
                }
            });
            key.zip(field_type)
                .map(|(key, field_type)| FieldLine::Profile {
                    key,
                    field_type,
                    name,
                    sensitive,
                })
        }
        Some("user") => {
            if name.is_some() {
                errs.push("name", "a built-in user field has no display name to set");
            }
            let builtin = key.as_deref().and_then(|k| {
                let found = BUILTIN_FIELDS.iter().find(|(b, _)| *b == k);
                // A field that cannot be sensitive may still be said not to be.
                match crate::field::builtin_unmaskable(k) {
                    Some(_) if found.is_some() && sensitive != Some(true) => found,
                    Some(why) => {
                        errs.push("key", why);
                        None
                    }
                    None => found,
                }
            });
            match (builtin, field_type) {
                (Some((key, ty)), Some(given)) if *ty != given => {
                    errs.push(
                        "type",
                        format!("`{key}` is a {} field, not {}", ty.as_str(), given.as_str()),
                    );
                    None
                }
                (Some((key, _)), Some(_)) => Some(FieldLine::User { key, sensitive }),
                _ => None,
            }
        }
        Some(other) => {
            errs.push("scope", format!("must be profile or user, got `{other}`"));
            None
        }
    };
    errs.check()?;
    // Every way to `None` above said why, so this is not reached.
    line.ok_or_else(|| Invalid::one("key", "is required"))
}

/// A CSV row of `sori import fields` as a field line's JSON (empty cells are absent; the
/// two flags read `true` / `false` in any case).
pub fn csv_field(headers: &[String], cells: &[String]) -> Result<Value, Invalid> {
    let mut line = Map::new();
    for (h, c) in headers.iter().zip(cells) {
        let (h, c) = (h.trim(), c.trim());
        if c.is_empty() {
            continue;
        }
        let v = match h {
            "sensitive" | "builtin" => match c.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(Invalid::one(h, "must be true or false")),
            },
            _ => Value::String(c.to_owned()),
        };
        line.insert(h.to_owned(), v);
    }
    Ok(Value::Object(line))
}

/// A property given both in the `property` cell and as a `property.KEY` column: which one
/// counts would be a guess.
fn twice(key: &str) -> Invalid {
    Invalid::one(
        format!("property.{key}"),
        "is given both in the property column and as its own column",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn sheet_safe_cells() {
        for (text, written) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("\tx", "'\tx"),
            ("-5", "-5"),
            ("+82", "+82"),
            ("1.5", "1.5"),
            ("'=x", "''=x"),
            ("''a", "'''a"),
            ("'a", "'a"),
            ("'-5", "''-5"),
            ("+inf", "'+inf"),
            ("-NaN", "'-NaN"),
            ("--1", "'--1"),
            ("-1e", "'-1e"),
            ("-.", "'-."),
            ("-1e5", "-1e5"),
            ("1e-7", "1e-7"),
            ("-.5", "-.5"),
            (" =x", "' =x"),
            (" -5", " -5"),
            ("\nx", "'\nx"),
            ("'", "'"),
            ("", ""),
            ("김민준", "김민준"),
        ] {
            assert_eq!(sheet_safe(text), written, "{text:?}");
            assert_eq!(from_sheet_safe(written), text, "{written:?}");
        }
    }

    #[test]
    fn field_lines_name_every_bad_part() {
        let f = field_line(&json!({"key": "anniv", "type": "date", "builtin": false})).unwrap();
        let FieldLine::Profile {
            key,
            field_type,
            name,
            sensitive,
        } = f
        else {
            panic!("{f:?}")
        };
        assert_eq!((key.as_str(), field_type), ("anniv", FieldType::Date));
        assert_eq!((name, sensitive), (None, None));
        // Built-in user fields: only their masking, and their type must be theirs.
        let f = field_line(
            &json!({"scope": "user", "key": "web.browser", "type": "string",
            "sensitive": true}),
        );
        assert_eq!(
            f.unwrap(),
            FieldLine::User {
                key: "web.browser",
                sensitive: Some(true)
            }
        );
        // `id` cannot be sensitive, but a line may say it is not.
        let f = field_line(
            &json!({"scope": "user", "key": "id", "type": "string", "sensitive": false}),
        );
        assert_eq!(
            f.unwrap(),
            FieldLine::User {
                key: "id",
                sensitive: Some(false)
            }
        );
        for (bad, field) in [
            (
                json!({"scope": "user", "key": "nope", "type": "string"}),
                "key",
            ),
            (
                json!({"scope": "user", "key": "memberId", "type": "number"}),
                "type",
            ),
            (
                json!({"scope": "user", "key": "memberId", "type": "string", "name": "M"}),
                "name",
            ),
            (
                json!({"scope": "team", "key": "memberId", "type": "string"}),
                "scope",
            ),
            (
                json!({"scope": "user", "key": "id", "type": "string", "sensitive": true}),
                "key",
            ),
        ] {
            assert_eq!(field_line(&bad).unwrap_err().0[0].field, field, "{bad}");
        }

        let e = field_line(&json!({"key": "bad key", "type": "day", "sensitive": "yes", "x": 1}))
            .unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        for field in ["x", "key", "type", "sensitive"] {
            assert!(fields.contains(&field), "{field}: {e:?}");
        }
        let e = field_line(&json!({"name": "Plan"})).unwrap_err();
        assert_eq!(e.0.len(), 2, "key and type are required: {e:?}");
        // CSV cells: empty ones are absent, the flags read in any case.
        let headers = FIELD_LINE_COLUMNS.map(str::to_owned);
        let cells = ["", "plan", "", "string", "TRUE", ""].map(str::to_owned);
        let v = csv_field(&headers, &cells).unwrap();
        assert_eq!(
            v,
            json!({"key": "plan", "type": "string", "sensitive": true})
        );
        let cells = ["", "plan", "", "string", "ja", ""].map(str::to_owned);
        assert_eq!(
            csv_field(&headers, &cells).unwrap_err().0[0].field,
            "sensitive"
        );
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn future_user_times_are_refused_beyond_a_clock_skew() {
        for k in ["createdAt", "lastSeenAt"] {
            let late = NOW + FUTURE_TOLERANCE_MS + 1;
            let e = user_line(&json!({"memberId": "m", k: late}), NOW).unwrap_err();
            assert_eq!(e.0[0].field, k);
            assert_eq!(e.0[0].message, "must not be in the future");
            // A clock a little ahead counts as now.
            let l = user_line(&json!({"memberId": "m", k: NOW + 1000}), NOW).unwrap();
            assert_eq!(l.created_at.or(l.last_seen_at), Some(NOW));
        }
    }

    #[test]
    fn a_user_line_cannot_be_seen_before_it_was_created_or_have_a_lossy_id() {
        let e = user_line(
            &json!({"memberId": "m", "createdAt": NOW - 1_000, "lastSeenAt": NOW - 2_000}),
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            (e.0[0].field.as_str(), e.0[0].message.as_str()),
            ("lastSeenAt", "must not be before createdAt")
        );
        assert!(user_line(&json!({"memberId": 42}), NOW).is_ok());
        let e = user_line(&json!({"memberId": 1e3}), NOW).unwrap_err();
        assert_eq!(e.0[0].field, "memberId");
        let e = user_line(
            &json!({"memberId": "m", "createdAt": "2026-11-01T00:00:00+24:00"}),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "createdAt");
    }

    #[test]
    fn user_lines_carry_times_and_reject_unknown_fields() {
        let l = user_line(
            &json!({"memberId": "m", "createdAt": "2020-01-01T00:00:00Z",
            "lastSeenAt": 1_600_000_000_000_i64, "profile": {"name": "Kim"}, "tags": ["a"]}),
            NOW,
        )
        .unwrap();
        assert_eq!(l.member_id, "m");
        assert_eq!(l.created_at, Some(1_577_836_800_000));
        assert_eq!(l.last_seen_at, Some(1_600_000_000_000));
        let e = user_line(&json!({"profile": {"x": 1}, "color": "red"}), NOW).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["memberId", "color"]);
        assert!(
            e.0[1]
                .message
                .contains("memberId, createdAt, lastSeenAt, profile")
        );
    }

    #[test]
    fn event_lines_need_exactly_one_owner() {
        assert!(event_line(&json!({"memberId": "m", "name": "A"})).is_ok());
        assert!(event_line(&json!({"name": "A"})).is_err());
        assert!(event_line(&json!({"memberId": "m", "userId": "u", "name": "A"})).is_err());
        assert!(event_line(&json!({"userId": "u", "name": "A", "createdAt": "x"})).is_err());
    }

    #[test]
    fn csv_headers_name_each_column_once() {
        let h = |cols: &[&str]| cols.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert!(check_csv_header(&h(&["memberId", "name", "", ""]), true).is_ok());
        let e = check_csv_header(&h(&["memberId", "email", "profile.email"]), true);
        assert_eq!(
            e.unwrap_err(),
            "the CSV header row names the column `profile.email` twice"
        );
        assert!(check_csv_header(&h(&["name", " name"]), false).is_err());
        // Rows: trailing empty cells are fine, a non-empty extra cell is not.
        let cols = h(&["memberId", "name"]);
        assert!(check_csv_width(&cols, &h(&["m"])).is_ok());
        assert!(check_csv_width(&cols, &h(&["m", "n", " ", ""])).is_ok());
        let e = check_csv_width(&cols, &h(&["m", "n", "x"])).unwrap_err();
        assert_eq!(
            e.0[0].message,
            "has 3 cells but the header row names 2 columns"
        );
    }

    #[test]
    fn csv_cells_keep_codes_as_text() {
        assert_eq!(csv_cell("01234", None), Some(json!("01234")));
        assert_eq!(
            csv_cell("010-1234-5678", None),
            Some(json!("010-1234-5678"))
        );
        assert_eq!(csv_cell("42", None), Some(json!(42)));
        assert_eq!(csv_cell("4.5", None), Some(json!(4.5)));
        assert_eq!(
            csv_cell("-9223372036854775808", None),
            Some(json!(i64::MIN))
        );
        assert_eq!(
            csv_cell("12345678901234567890", None),
            Some(json!("12345678901234567890")),
            "past 64 bits a whole number would lose digits"
        );
        assert_eq!(csv_cell("true", None), Some(json!(true)));
        assert_eq!(csv_cell("42", Some(FieldType::String)), Some(json!("42")));
        assert_eq!(
            csv_cell("a; b", Some(FieldType::List)),
            Some(json!(["a", "b"]))
        );
        assert_eq!(csv_cell("  ", None), None);
        // Exports write small and large numbers with an exponent: a Number field reads
        // them back; an unregistered column keeps a code such as `1E5` as text.
        let number = Some(FieldType::Number);
        assert_eq!(csv_cell("1e-7", number), Some(json!(1e-7)));
        assert_eq!(csv_cell("-1.23e+20", number), Some(json!(-1.23e20)));
        assert_eq!(
            csv_cell("1.5e-7;2", Some(FieldType::ListOfNumber)),
            Some(json!([1.5e-7, 2]))
        );
        assert_eq!(csv_cell("1E5", None), Some(json!("1E5")));
        assert_eq!(csv_cell("1e", number), Some(json!("1e")));
        assert_eq!(csv_cell("01e5", number), Some(json!("01e5")));
        assert_eq!(csv_cell("1e400", number), Some(json!("1e400")));
        assert_eq!(
            csv_cell("12345678901234567890", number),
            Some(json!(12_345_678_901_234_567_890_u64)),
            "a Number field reads what its own export wrote"
        );
    }

    #[test]
    fn csv_user_columns_may_not_name_system_fields() {
        let h = |cols: &[&str]| cols.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let e = check_csv_header(&h(&["memberId", "city"]), true).unwrap_err();
        assert!(e.contains("`city` names a field Sori keeps itself"), "{e}");
        assert!(check_csv_header(&h(&["memberId", "web.browser"]), true).is_err());
        assert!(check_csv_header(&h(&["memberId", "profile.city"]), true).is_ok());
        assert!(check_csv_header(&h(&["memberId", "name", "createdAt"]), true).is_ok());
    }

    #[test]
    fn csv_list_cells_round_trip_items_holding_separators() {
        let items = ["a;b", "c\\d", "e\\;", "plain"];
        let cell = csv_list_cell(items);
        assert_eq!(csv_list_items(&cell), items);
        // A lone backslash before anything else is text, as in a hand-made file.
        assert_eq!(csv_list_items("C:\\x; y"), ["C:\\x", "y"]);
    }

    #[test]
    fn csv_user_columns_keep_the_type_of_their_first_value() {
        let headers = vec!["memberId".to_owned(), "zip".to_owned()];
        let mut types = CsvTypes::new(&Registry::default());
        let row = |zip: &str| vec!["m".to_owned(), zip.to_owned()];
        let first = csv_user(&headers, &row("01234"), &mut types);
        let second = csv_user(&headers, &row("12345"), &mut types);
        assert_eq!(first["profile"]["zip"], json!("01234"));
        assert_eq!(second["profile"]["zip"], json!("12345"));
    }

    #[test]
    fn csv_event_columns_keep_the_type_of_their_first_value() {
        let headers = vec!["memberId".into(), "name".into(), "property.zip".into()];
        let mut types = CsvTypes::new(&Registry::default());
        let row = |zip: &str| vec!["m".into(), "Ship".into(), zip.to_owned()];
        let first = csv_event(&headers, &row("01234"), &mut types).unwrap();
        let second = csv_event(&headers, &row("5678"), &mut types).unwrap();
        assert_eq!(first["property"]["zip"], json!("01234"));
        assert_eq!(second["property"]["zip"], json!("5678"));
        // A column of numbers refuses a cell that is not one, rather than mix types.
        let headers = vec!["memberId".into(), "name".into(), "property.n".into()];
        let row = |n: &str| vec!["m".into(), "Count".into(), n.to_owned()];
        assert_eq!(
            csv_event(&headers, &row("5"), &mut types).unwrap()["property"]["n"],
            json!(5)
        );
        let e = csv_event(&headers, &row("abc"), &mut types).unwrap_err();
        assert_eq!(e.0[0].field, "property.n");
        // A whole number past 64 bits is still a number there, read exactly.
        assert_eq!(
            csv_event(&headers, &row("12345678901234567890"), &mut types).unwrap()["property"]["n"],
            json!(12_345_678_901_234_567_890_u64)
        );
    }

    #[test]
    fn csv_event_refuses_a_property_given_twice() {
        let headers = vec![
            "memberId".to_owned(),
            "name".to_owned(),
            "property".to_owned(),
            "property.qty".to_owned(),
        ];
        let cells = |json: &str| vec!["m".into(), "Order".into(), json.into(), "3".into()];
        let types = &mut CsvTypes::new(&Registry::default());
        let e = csv_event(&headers, &cells(r#"{"qty": 9}"#), types).unwrap_err();
        assert_eq!(e.0[0].field, "property.qty");
        assert!(csv_event(&headers, &cells("null"), types).is_ok());
        let ok = csv_event(&headers, &cells(r#"{"sku": "A"}"#), types).unwrap();
        assert_eq!(ok["property"], json!({"sku": "A", "qty": 3}));
    }

    proptest! {
        /// Every text comes back from an export's cell exactly, and no cell an export
        /// writes runs in a spreadsheet.
        #[test]
        fn sheet_safe_round_trips(s in "['=+@\t\r\n 0-9.eEinfNa-]{0,7}") {
            let written = sheet_safe(&s);
            prop_assert!(!runs_in_a_sheet(&written), "{written:?}");
            prop_assert_eq!(from_sheet_safe(&written), s.as_str());
            // The CSV reader gives a line end inside a quoted cell as LF.
            let lf = |t: &str| t.replace("\r\n", "\n").replace('\r', "\n");
            let read = lf(&written);
            prop_assert_eq!(from_sheet_safe(&read), lf(&s));
        }
    }

    proptest! {
        #[test]
        fn csv_cells_never_panic(s in ".{0,40}") {
            let _ = csv_cell(&s, None);
            let _ = csv_cell(&s, Some(FieldType::ListOfNumber));
        }
    }
}
