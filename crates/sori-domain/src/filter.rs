//! Audience filters (SPEC §5): an AND of OR-groups of conditions on built-in fields,
//! `profile.*`, `tags` and events.
//!
//! A filter goes through two steps. [`Filter::parse`] checks the JSON against the channel's
//! field registry and resolves every key to a typed field, so a bad filter is rejected with
//! a precise message before anything runs. [`Filter::resolve`] then fixes the clock: every
//! relative date becomes an absolute bound in the channel's time zone. Every engine (the
//! in-memory projection, the SQL builder, the reference evaluator in [`eval`]) consumes
//! the same resolved [`Query`], which is why their answers can be compared exactly.

pub mod eval;
#[cfg(test)]
mod tests;

use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use crate::error::{Errors, Invalid};
use crate::field::{FieldType, Registry, builtin_type};
use crate::limits::MAX_STRING_CHARS;

/// Most OR-groups in a filter.
pub const MAX_GROUPS: usize = 20;
/// Most conditions in one OR-group.
pub const MAX_CONDITIONS_PER_GROUP: usize = 20;
/// Most conditions in a whole filter (event `where` conditions included).
pub const MAX_CONDITIONS: usize = 100;
/// Most values one condition may list.
pub const MAX_VALUES: usize = 100;
/// Most `where` conditions on one event condition.
pub const MAX_WHERE: usize = 10;
/// Largest day count for `$daysAgoGte` / `$daysAgoLte` (a century).
pub const MAX_DAYS_AGO: i64 = 36_500;
/// Largest event count a condition may ask for.
pub const MAX_COUNT: i64 = 1_000_000_000;

/// A checked filter: every key resolved to a typed field, every value of the right type.
/// Relative dates are still relative; [`Filter::resolve`] fixes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    groups: Vec<Vec<Check>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Check {
    Field { field: Field, op: FieldOp },
    Event(EventCheck),
}

#[derive(Debug, Clone, PartialEq)]
enum FieldOp {
    Ready(Test),
    /// Date/Datetime operators that need the clock and the time zone.
    Date(DateOp),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DateOp {
    /// Before the start of this day.
    BeforeDay(Date),
    /// At or after the start of the day after this one.
    AfterDay(Date),
    /// Strictly before this instant (ms).
    BeforeMs(i64),
    /// Strictly after this instant (ms).
    AfterMs(i64),
    /// On this calendar day.
    On(Date),
    /// At least this many calendar days ago.
    DaysAgoGte(i64),
    /// At most this many calendar days ago (the future included).
    DaysAgoLte(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct EventCheck {
    name: String,
    count: CountTest,
    within_days: Option<i64>,
    props: Vec<PropTest>,
}

/// A field a condition reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// A built-in field (SPEC §3.1).
    Builtin(Builtin),
    /// A registered profile field with its type.
    Profile {
        /// Profile key.
        key: String,
        /// Registered type.
        ty: FieldType,
    },
}

impl Field {
    /// The field's type, which decides the operators it takes.
    pub fn ty(&self) -> FieldType {
        match self {
            Field::Builtin(b) => b.ty(),
            Field::Profile { ty, .. } => *ty,
        }
    }
}

/// Built-in fields a filter can read (`name` is `profile.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// `id`.
    Id,
    /// `memberId`.
    MemberId,
    /// `tags`.
    Tags,
    /// `city`.
    City,
    /// `country`.
    Country,
    /// `language`.
    Language,
    /// `member`.
    Member,
    /// `lastSeenAt`.
    LastSeenAt,
    /// `createdAt`.
    CreatedAt,
    /// `updatedAt`.
    UpdatedAt,
    /// `sessionsCount`.
    SessionsCount,
    /// `hasChat`.
    HasChat,
    /// `hasPushToken`.
    HasPushToken,
    /// `unsubscribeEmail`.
    UnsubscribeEmail,
    /// `unsubscribeTexting`.
    UnsubscribeTexting,
    /// `web.*`.
    Web(Device),
    /// `mobile.*`.
    Mobile(Device),
}

/// Per-platform device fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// `browser` (web) .
    Browser,
    /// `browserName`.
    BrowserName,
    /// `os`.
    Os,
    /// `osName`.
    OsName,
    /// `device`.
    Device,
    /// `appName` (mobile).
    AppName,
    /// `appVersion` (mobile).
    AppVersion,
    /// `lastSeenAt`.
    LastSeenAt,
    /// `sessionsCount`.
    SessionsCount,
}

impl Device {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "browser" => Device::Browser,
            "browserName" => Device::BrowserName,
            "os" => Device::Os,
            "osName" => Device::OsName,
            "device" => Device::Device,
            "appName" => Device::AppName,
            "appVersion" => Device::AppVersion,
            "lastSeenAt" => Device::LastSeenAt,
            "sessionsCount" => Device::SessionsCount,
            _ => return None,
        })
    }
}

impl Builtin {
    /// Resolves a built-in key (`name` is not one: it is `profile.name`).
    pub fn parse(key: &str) -> Option<Self> {
        builtin_type(key)?;
        Some(match key {
            "id" => Builtin::Id,
            "memberId" => Builtin::MemberId,
            "tags" => Builtin::Tags,
            "city" => Builtin::City,
            "country" => Builtin::Country,
            "language" => Builtin::Language,
            "member" => Builtin::Member,
            "lastSeenAt" => Builtin::LastSeenAt,
            "createdAt" => Builtin::CreatedAt,
            "updatedAt" => Builtin::UpdatedAt,
            "sessionsCount" => Builtin::SessionsCount,
            "hasChat" => Builtin::HasChat,
            "hasPushToken" => Builtin::HasPushToken,
            "unsubscribeEmail" => Builtin::UnsubscribeEmail,
            "unsubscribeTexting" => Builtin::UnsubscribeTexting,
            _ => {
                let (platform, rest) = key.split_once('.')?;
                let d = Device::parse(rest)?;
                match platform {
                    "web" => Builtin::Web(d),
                    "mobile" => Builtin::Mobile(d),
                    _ => return None,
                }
            }
        })
    }

    /// The field's type.
    pub fn ty(self) -> FieldType {
        match self {
            Builtin::Id
            | Builtin::MemberId
            | Builtin::City
            | Builtin::Country
            | Builtin::Language => FieldType::String,
            Builtin::Tags => FieldType::List,
            Builtin::Member
            | Builtin::HasChat
            | Builtin::HasPushToken
            | Builtin::UnsubscribeEmail
            | Builtin::UnsubscribeTexting => FieldType::Boolean,
            Builtin::LastSeenAt | Builtin::CreatedAt | Builtin::UpdatedAt => FieldType::Datetime,
            Builtin::SessionsCount => FieldType::Number,
            Builtin::Web(d) | Builtin::Mobile(d) => match d {
                Device::LastSeenAt => FieldType::Datetime,
                Device::SessionsCount => FieldType::Number,
                _ => FieldType::String,
            },
        }
    }

    /// Fields that every user has a value for (`$notExists` never matches them).
    pub fn always_present(self) -> bool {
        matches!(
            self,
            Builtin::Id
                | Builtin::Member
                | Builtin::CreatedAt
                | Builtin::UpdatedAt
                | Builtin::SessionsCount
                | Builtin::HasChat
                | Builtin::HasPushToken
                | Builtin::UnsubscribeEmail
                | Builtin::UnsubscribeTexting
                | Builtin::Web(Device::SessionsCount)
                | Builtin::Mobile(Device::SessionsCount)
        )
    }
}

/// A resolved filter: AND of OR-groups. An empty filter matches every user.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The OR-groups, all of which must hold.
    pub groups: Vec<Vec<Cond>>,
}

/// One resolved condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// A test on one field of the user.
    Field {
        /// The field read.
        field: Field,
        /// What its value must satisfy.
        test: Test,
    },
    /// A count of the user's events.
    Event(EventTest),
}

/// A value test with every bound absolute. Negative tests (`Ne`, `Nin`, `NotContains`,
/// list `None`) also match users without a value: they do not have the excluded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// `$exists` (true) or `$notExists` (false). An empty list counts as absent.
    Exists(bool),
    /// String tests.
    Str(StrTest),
    /// Number tests.
    Num(NumTest),
    /// Boolean equality.
    Bool(bool),
    /// Datetime in `[from, to)` (ms); open ends are `None`.
    Time {
        /// Inclusive lower bound.
        from: Option<i64>,
        /// Exclusive upper bound.
        to: Option<i64>,
    },
    /// Date (`YYYY-MM-DD`) in `[from, to]`, compared as calendar days.
    Day {
        /// Inclusive first day.
        from: Option<Date>,
        /// Inclusive last day.
        to: Option<Date>,
    },
    /// List of strings.
    List(ListMode, Vec<String>),
    /// List of numbers.
    NumList(ListMode, Vec<f64>),
}

/// String comparisons (case-sensitive, exact).
#[derive(Debug, Clone, PartialEq)]
pub enum StrTest {
    /// Equal.
    Eq(String),
    /// Not equal (absent matches).
    Ne(String),
    /// One of.
    In(Vec<String>),
    /// None of (absent matches).
    Nin(Vec<String>),
    /// Contains the substring.
    Contains(String),
    /// Does not contain the substring (absent matches).
    NotContains(String),
    /// Starts with.
    StartsWith(String),
}

/// Number comparisons.
#[derive(Debug, Clone, PartialEq)]
pub enum NumTest {
    /// Equal.
    Eq(f64),
    /// Not equal (absent matches).
    Ne(f64),
    /// One of (event properties).
    In(Vec<f64>),
    /// None of (event properties; absent matches).
    Nin(Vec<f64>),
    /// Within bounds; each bound with its inclusiveness.
    Range {
        /// Lower bound and whether it is inclusive.
        lo: Option<(f64, bool)>,
        /// Upper bound and whether it is inclusive.
        hi: Option<(f64, bool)>,
    },
}

/// How a list condition relates the user's list to the given items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMode {
    /// Contains at least one (`$in`).
    Any,
    /// Contains every one (`$all`).
    All,
    /// Contains none (`$nin`; empty and absent lists match).
    None,
}

/// How many events a user must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountTest {
    /// At least n.
    Gte(i64),
    /// At most n (zero included).
    Lte(i64),
    /// Exactly n (`$notPerformed` is `Eq(0)`).
    Eq(i64),
}

impl CountTest {
    /// Whether `count` passes.
    pub fn passes(self, count: i64) -> bool {
        match self {
            CountTest::Gte(n) => count >= n,
            CountTest::Lte(n) => count <= n,
            CountTest::Eq(n) => count == n,
        }
    }

    /// True when a user with no such events passes (the test then ranges over everyone).
    pub fn passes_zero(self) -> bool {
        self.passes(0)
    }
}

/// A resolved event condition.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTest {
    /// Event name.
    pub name: String,
    /// Required count.
    pub count: CountTest,
    /// Window start: events at or after this instant (ms), the start of a local day, count;
    /// `None` counts all history.
    pub since: Option<i64>,
    /// Conditions every counted event must meet.
    pub props: Vec<PropTest>,
}

/// A condition on one event attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct PropTest {
    /// What is read.
    pub target: PropTarget,
    /// What it must satisfy: `Exists`, `Str`, `Num` or `Bool`.
    pub test: Test,
}

/// What an event `where` condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropTarget {
    /// The event's page (`page` or `url`).
    Page,
    /// A property by key.
    Property(String),
}

/// First instant (ms) of a local day in a zone.
pub fn start_of_day(d: Date, tz: &TimeZone) -> i64 {
    d.to_zoned(tz.clone())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(if d.year() < 1970 {
            i64::MIN / 2
        } else {
            i64::MAX / 2
        })
}

fn next_day(d: Date) -> Date {
    d.tomorrow().unwrap_or(d)
}

fn prev_day(d: Date) -> Date {
    d.yesterday().unwrap_or(d)
}

/// What a filter check needs to know about the channel.
pub struct Schema<'a> {
    /// Registered profile fields.
    pub registry: &'a Registry,
    /// Event retention (days): the longest event window.
    pub retention_days: i64,
}

impl Filter {
    /// Checks a filter given as JSON; `path` prefixes error fields (`filter`).
    pub fn parse(path: &str, json: &Value, schema: &Schema<'_>) -> Result<Self, Invalid> {
        let mut errs = Errors::default();
        let Some(obj) = json.as_object() else {
            return Err(Invalid::one(path, "must be an object {\"and\": [...]}"));
        };
        for k in obj.keys() {
            if k != "and" {
                errs.push(
                    format!("{path}.{k}"),
                    "unknown key; a filter has only `and`",
                );
            }
        }
        let groups = match obj.get("and") {
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => {
                errs.push(format!("{path}.and"), "must be an array of OR-groups");
                &[]
            }
            None => {
                errs.push(format!("{path}.and"), "is required");
                &[]
            }
        };
        if groups.len() > MAX_GROUPS {
            errs.push(
                format!("{path}.and"),
                format!("must have at most {MAX_GROUPS} groups"),
            );
            return Err(errs.check().err().unwrap_or_else(|| Invalid(vec![])));
        }
        let mut total = 0;
        let mut out = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            let gp = format!("{path}.and[{gi}]");
            let conds = match g.as_object() {
                Some(o) => {
                    for k in o.keys() {
                        if k != "or" {
                            errs.push(format!("{gp}.{k}"), "unknown key; a group has only `or`");
                        }
                    }
                    match o.get("or") {
                        Some(Value::Array(a)) => a.as_slice(),
                        _ => {
                            errs.push(format!("{gp}.or"), "must be an array of conditions");
                            continue;
                        }
                    }
                }
                None => {
                    errs.push(&gp, "must be an object {\"or\": [...]}");
                    continue;
                }
            };
            if conds.is_empty() {
                errs.push(format!("{gp}.or"), "must not be empty");
                continue;
            }
            if conds.len() > MAX_CONDITIONS_PER_GROUP {
                errs.push(
                    format!("{gp}.or"),
                    format!("must have at most {MAX_CONDITIONS_PER_GROUP} conditions"),
                );
                continue;
            }
            let mut group = Vec::with_capacity(conds.len());
            for (ci, c) in conds.iter().enumerate() {
                let cp = format!("{gp}.or[{ci}]");
                total += 1 + c.get("where").and_then(Value::as_array).map_or(0, Vec::len);
                if let Some(check) = parse_condition(&cp, c, schema, &mut errs) {
                    group.push(check);
                }
            }
            out.push(group);
        }
        if total > MAX_CONDITIONS {
            errs.push(
                format!("{path}.and"),
                format!("must have at most {MAX_CONDITIONS} conditions in all"),
            );
        }
        errs.check()?;
        Ok(Self { groups: out })
    }

    /// Fixes the clock: relative dates become absolute bounds in `tz` as of `now` (ms).
    /// Event windows longer than `retention_days` are shortened to it (a retention that
    /// was lowered after the filter was saved).
    pub fn resolve(&self, tz: &TimeZone, now: i64, retention_days: i64) -> Query {
        let today = jiff::Timestamp::from_millisecond(now)
            .map(|t| t.to_zoned(tz.clone()).date())
            .unwrap_or(Date::constant(1970, 1, 1));
        let groups = self
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| match c {
                        Check::Field { field, op } => Cond::Field {
                            field: field.clone(),
                            test: match op {
                                FieldOp::Ready(t) => t.clone(),
                                FieldOp::Date(d) => resolve_date(*d, field.ty(), today, tz),
                            },
                        },
                        Check::Event(e) => Cond::Event(EventTest {
                            name: e.name.clone(),
                            count: e.count,
                            since: e.within_days.map(|n| {
                                let n = n.clamp(1, retention_days.max(1));
                                let first = today
                                    .checked_sub((n - 1).days())
                                    .unwrap_or(Date::constant(1970, 1, 1));
                                start_of_day(first, tz)
                            }),
                            props: e.props.clone(),
                        }),
                    })
                    .collect()
            })
            .collect();
        Query { groups }
    }
}

fn days_before(today: Date, n: i64) -> Date {
    today
        .checked_sub(n.days())
        .unwrap_or(Date::constant(1, 1, 1))
}

fn resolve_date(op: DateOp, ty: FieldType, today: Date, tz: &TimeZone) -> Test {
    if ty == FieldType::Date {
        let (from, to) = match op {
            DateOp::BeforeDay(d) => (None, Some(prev_day(d))),
            DateOp::AfterDay(d) => (Some(next_day(d)), None),
            DateOp::On(d) => (Some(d), Some(d)),
            DateOp::DaysAgoGte(n) => (None, Some(days_before(today, n))),
            DateOp::DaysAgoLte(n) => (Some(days_before(today, n)), None),
            // Parsing never gives a Date field an instant bound.
            DateOp::BeforeMs(_) | DateOp::AfterMs(_) => (None, None),
        };
        return Test::Day { from, to };
    }
    let (from, to) = match op {
        DateOp::BeforeDay(d) => (None, Some(start_of_day(d, tz))),
        DateOp::AfterDay(d) => (Some(start_of_day(next_day(d), tz)), None),
        DateOp::BeforeMs(t) => (None, Some(t)),
        DateOp::AfterMs(t) => (Some(t.saturating_add(1)), None),
        DateOp::On(d) => (
            Some(start_of_day(d, tz)),
            Some(start_of_day(next_day(d), tz)),
        ),
        DateOp::DaysAgoGte(n) => (
            None,
            Some(start_of_day(next_day(days_before(today, n)), tz)),
        ),
        DateOp::DaysAgoLte(n) => (Some(start_of_day(days_before(today, n), tz)), None),
    };
    Test::Time { from, to }
}

fn parse_condition(path: &str, c: &Value, schema: &Schema<'_>, errs: &mut Errors) -> Option<Check> {
    let Some(o) = c.as_object() else {
        errs.push(path, "must be an object with `key` or `event`");
        return None;
    };
    let is_event = o.contains_key("event");
    let allowed: &[&str] = if is_event {
        &["event", "operator", "values", "withinDays", "where"]
    } else {
        &["key", "operator", "values"]
    };
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            let msg = if is_event {
                "unknown key; an event condition has `event`, `operator`, `values`, `withinDays`, `where`"
            } else {
                "unknown key; a field condition has `key`, `operator`, `values`"
            };
            errs.push(format!("{path}.{k}"), msg);
            return None;
        }
    }
    let Some(operator) = o.get("operator").and_then(Value::as_str) else {
        errs.push(
            format!("{path}.operator"),
            "is required and must be a string",
        );
        return None;
    };
    let values = match o.get("values") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => {
            if a.len() > MAX_VALUES {
                errs.push(
                    format!("{path}.values"),
                    format!("must have at most {MAX_VALUES} values"),
                );
                return None;
            }
            a.as_slice()
        }
        Some(_) => {
            errs.push(format!("{path}.values"), "must be an array");
            return None;
        }
    };
    if is_event {
        return parse_event(path, o, operator, values, schema, errs).map(Check::Event);
    }
    let Some(key) = o.get("key").and_then(Value::as_str) else {
        errs.push(
            format!("{path}.key"),
            "is required (or `event` for an event condition)",
        );
        return None;
    };
    let field = if let Some(pk) = key.strip_prefix("profile.") {
        match schema.registry.get(pk) {
            Some(f) => Field::Profile {
                key: pk.to_owned(),
                ty: f.field_type,
            },
            None => {
                errs.push(
                    format!("{path}.key"),
                    format!("`{key}` is not a registered profile field"),
                );
                return None;
            }
        }
    } else if key == "name" {
        Field::Profile {
            key: "name".into(),
            ty: FieldType::String,
        }
    } else if let Some(b) = Builtin::parse(key) {
        Field::Builtin(b)
    } else {
        errs.push(
            format!("{path}.key"),
            format!("`{key}` is not a built-in field; profile fields are written `profile.<key>`"),
        );
        return None;
    };
    let mut op = parse_field_op(path, operator, values, field.ty(), errs)?;
    if let (Field::Builtin(Builtin::Tags), FieldOp::Ready(Test::List(_, items))) = (&field, &mut op)
    {
        // Every write stores tags lowercase; a filter on tags compares the same way.
        items.iter_mut().for_each(|s| *s = s.to_lowercase());
    }
    Some(Check::Field { field, op })
}

fn expect_count(path: &str, operator: &str, values: &[Value], n: usize, errs: &mut Errors) -> bool {
    if values.len() == n {
        return true;
    }
    let what = match n {
        0 => "takes no values".to_owned(),
        1 => "takes exactly one value".to_owned(),
        n => format!("takes exactly {n} values"),
    };
    errs.push(format!("{path}.values"), format!("`{operator}` {what}"));
    false
}

fn expect_some(path: &str, operator: &str, values: &[Value], errs: &mut Errors) -> bool {
    if values.is_empty() {
        errs.push(
            format!("{path}.values"),
            format!("`{operator}` needs at least one value"),
        );
        false
    } else {
        true
    }
}

fn strings(path: &str, values: &[Value], errs: &mut Errors) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(values.len());
    let mut ok = true;
    for (i, v) in values.iter().enumerate() {
        match v.as_str() {
            Some(s) if s.chars().count() <= MAX_STRING_CHARS => out.push(s.to_owned()),
            Some(_) => {
                errs.push(
                    format!("{path}.values[{i}]"),
                    format!("must be at most {MAX_STRING_CHARS} characters"),
                );
                ok = false;
            }
            None => {
                errs.push(format!("{path}.values[{i}]"), "must be a string");
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn numbers(path: &str, values: &[Value], errs: &mut Errors) -> Option<Vec<f64>> {
    let mut out = Vec::with_capacity(values.len());
    let mut ok = true;
    for (i, v) in values.iter().enumerate() {
        match v.as_f64().filter(|x| x.is_finite()) {
            Some(x) => out.push(x),
            None => {
                errs.push(format!("{path}.values[{i}]"), "must be a number");
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn first_string(path: &str, values: &[Value], errs: &mut Errors) -> Option<String> {
    strings(path, values, errs)?.into_iter().next()
}

fn parse_date(path: &str, v: &Value, errs: &mut Errors) -> Option<Date> {
    match v.as_str().and_then(|s| s.parse::<Date>().ok()) {
        Some(d) if s_is_date(v) => Some(d),
        _ => {
            errs.push(format!("{path}.values[0]"), "must be a date `YYYY-MM-DD`");
            None
        }
    }
}

fn s_is_date(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 10)
}

fn parse_days(path: &str, v: &Value, errs: &mut Errors) -> Option<i64> {
    match v.as_i64() {
        Some(n) if (0..=MAX_DAYS_AGO).contains(&n) => Some(n),
        _ => {
            errs.push(
                format!("{path}.values[0]"),
                format!("must be a whole number of days from 0 to {MAX_DAYS_AGO}"),
            );
            None
        }
    }
}

fn type_error(path: &str, operator: &str, ty: FieldType, errs: &mut Errors) {
    let ops = match ty {
        FieldType::String => "$eq, $ne, $in, $nin, $contains, $notContains, $startsWith",
        FieldType::Number => "$eq, $ne, $gt, $gte, $lt, $lte, $between",
        FieldType::Boolean => "$eq",
        FieldType::Date | FieldType::Datetime => "$before, $after, $on, $daysAgoGte, $daysAgoLte",
        FieldType::List | FieldType::ListOfNumber => "$in, $all, $nin",
    };
    errs.push(
        format!("{path}.operator"),
        format!("`{operator}` does not apply to a {ty} field; use $exists, $notExists or {ops}"),
    );
}

fn parse_field_op(
    path: &str,
    operator: &str,
    values: &[Value],
    ty: FieldType,
    errs: &mut Errors,
) -> Option<FieldOp> {
    if operator == "$exists" || operator == "$notExists" {
        return expect_count(path, operator, values, 0, errs)
            .then_some(FieldOp::Ready(Test::Exists(operator == "$exists")));
    }
    let test = match ty {
        FieldType::String => Test::Str(parse_str_op(path, operator, values, ty, errs)?),
        FieldType::Number => Test::Num(parse_num_op(path, operator, values, ty, false, errs)?),
        FieldType::Boolean => {
            if operator != "$eq" {
                type_error(path, operator, ty, errs);
                return None;
            }
            if !expect_count(path, operator, values, 1, errs) {
                return None;
            }
            match values[0].as_bool() {
                Some(b) => Test::Bool(b),
                None => {
                    errs.push(format!("{path}.values[0]"), "must be true or false");
                    return None;
                }
            }
        }
        FieldType::Date | FieldType::Datetime => {
            if !matches!(
                operator,
                "$before" | "$after" | "$on" | "$daysAgoGte" | "$daysAgoLte"
            ) {
                type_error(path, operator, ty, errs);
                return None;
            }
            if !expect_count(path, operator, values, 1, errs) {
                return None;
            }
            let v = &values[0];
            let op = match operator {
                "$daysAgoGte" => DateOp::DaysAgoGte(parse_days(path, v, errs)?),
                "$daysAgoLte" => DateOp::DaysAgoLte(parse_days(path, v, errs)?),
                "$on" => DateOp::On(parse_date(path, v, errs)?),
                before_after => {
                    let before = before_after == "$before";
                    if ty == FieldType::Datetime && v.is_number() {
                        match v.as_i64() {
                            Some(t) if before => DateOp::BeforeMs(t),
                            Some(t) => DateOp::AfterMs(t),
                            None => {
                                errs.push(
                                    format!("{path}.values[0]"),
                                    "must be milliseconds since the epoch or a date `YYYY-MM-DD`",
                                );
                                return None;
                            }
                        }
                    } else {
                        let d = parse_date(path, v, errs)?;
                        if before {
                            DateOp::BeforeDay(d)
                        } else {
                            DateOp::AfterDay(d)
                        }
                    }
                }
            };
            return Some(FieldOp::Date(op));
        }
        FieldType::List | FieldType::ListOfNumber => {
            let mode = match operator {
                "$in" => ListMode::Any,
                "$all" => ListMode::All,
                "$nin" => ListMode::None,
                _ => {
                    type_error(path, operator, ty, errs);
                    return None;
                }
            };
            if !expect_some(path, operator, values, errs) {
                return None;
            }
            if ty == FieldType::List {
                Test::List(mode, strings(path, values, errs)?)
            } else {
                Test::NumList(mode, numbers(path, values, errs)?)
            }
        }
    };
    Some(FieldOp::Ready(test))
}

fn parse_str_op(
    path: &str,
    operator: &str,
    values: &[Value],
    ty: FieldType,
    errs: &mut Errors,
) -> Option<StrTest> {
    Some(match operator {
        "$eq" | "$ne" | "$contains" | "$notContains" | "$startsWith" => {
            if !expect_count(path, operator, values, 1, errs) {
                return None;
            }
            let s = first_string(path, values, errs)?;
            match operator {
                "$eq" => StrTest::Eq(s),
                "$ne" => StrTest::Ne(s),
                "$contains" => StrTest::Contains(s),
                "$notContains" => StrTest::NotContains(s),
                _ => StrTest::StartsWith(s),
            }
        }
        "$in" | "$nin" => {
            if !expect_some(path, operator, values, errs) {
                return None;
            }
            let v = strings(path, values, errs)?;
            if operator == "$in" {
                StrTest::In(v)
            } else {
                StrTest::Nin(v)
            }
        }
        _ => {
            type_error(path, operator, ty, errs);
            return None;
        }
    })
}

fn parse_num_op(
    path: &str,
    operator: &str,
    values: &[Value],
    ty: FieldType,
    allow_sets: bool,
    errs: &mut Errors,
) -> Option<NumTest> {
    if allow_sets && (operator == "$in" || operator == "$nin") {
        if !expect_some(path, operator, values, errs) {
            return None;
        }
        let v = numbers(path, values, errs)?;
        return Some(if operator == "$in" {
            NumTest::In(v)
        } else {
            NumTest::Nin(v)
        });
    }
    if operator == "$between" {
        if !expect_count(path, operator, values, 2, errs) {
            return None;
        }
        let v = numbers(path, values, errs)?;
        if v[0] > v[1] {
            errs.push(
                format!("{path}.values"),
                "`$between` takes [low, high] with low ≤ high",
            );
            return None;
        }
        return Some(NumTest::Range {
            lo: Some((v[0], true)),
            hi: Some((v[1], true)),
        });
    }
    if !matches!(operator, "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte") {
        type_error(path, operator, ty, errs);
        return None;
    }
    if !expect_count(path, operator, values, 1, errs) {
        return None;
    }
    let x = numbers(path, values, errs)?[0];
    Some(match operator {
        "$eq" => NumTest::Eq(x),
        "$ne" => NumTest::Ne(x),
        "$gt" => NumTest::Range {
            lo: Some((x, false)),
            hi: None,
        },
        "$gte" => NumTest::Range {
            lo: Some((x, true)),
            hi: None,
        },
        "$lt" => NumTest::Range {
            lo: None,
            hi: Some((x, false)),
        },
        _ => NumTest::Range {
            lo: None,
            hi: Some((x, true)),
        },
    })
}

fn parse_event(
    path: &str,
    o: &Map<String, Value>,
    operator: &str,
    values: &[Value],
    schema: &Schema<'_>,
    errs: &mut Errors,
) -> Option<EventCheck> {
    let name = match crate::event::check_name(&format!("{path}.event"), &o["event"], false) {
        Ok(n) => n,
        Err(e) => {
            for fe in e.0 {
                errs.push(fe.field, fe.message);
            }
            return None;
        }
    };
    let count = match operator {
        "$notPerformed" => {
            if !expect_count(path, operator, values, 0, errs) {
                return None;
            }
            CountTest::Eq(0)
        }
        "$countGte" | "$countLte" | "$countEq" => {
            if !expect_count(path, operator, values, 1, errs) {
                return None;
            }
            let n = match values[0].as_i64() {
                Some(n) if (0..=MAX_COUNT).contains(&n) => n,
                _ => {
                    errs.push(
                        format!("{path}.values[0]"),
                        format!("must be a whole number from 0 to {MAX_COUNT}"),
                    );
                    return None;
                }
            };
            match operator {
                "$countGte" => CountTest::Gte(n),
                "$countLte" => CountTest::Lte(n),
                _ => CountTest::Eq(n),
            }
        }
        _ => {
            errs.push(
                format!("{path}.operator"),
                format!(
                    "`{operator}` does not apply to an event; use $countGte, $countLte, $countEq or $notPerformed"
                ),
            );
            return None;
        }
    };
    let within_days = match o.get("withinDays") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 && n <= schema.retention_days => Some(n),
            _ => {
                errs.push(
                    format!("{path}.withinDays"),
                    format!(
                        "must be a whole number of days from 1 to {} (the channel keeps events that long)",
                        schema.retention_days
                    ),
                );
                return None;
            }
        },
    };
    let mut props = Vec::new();
    match o.get("where") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ws)) => {
            if ws.len() > MAX_WHERE {
                errs.push(
                    format!("{path}.where"),
                    format!("must have at most {MAX_WHERE} conditions"),
                );
                return None;
            }
            for (i, w) in ws.iter().enumerate() {
                props.push(parse_prop(&format!("{path}.where[{i}]"), w, errs)?);
            }
        }
        Some(_) => {
            errs.push(format!("{path}.where"), "must be an array of conditions");
            return None;
        }
    }
    Some(EventCheck {
        name,
        count,
        within_days,
        props,
    })
}

fn parse_prop(path: &str, w: &Value, errs: &mut Errors) -> Option<PropTest> {
    let Some(o) = w.as_object() else {
        errs.push(path, "must be an object with `key`, `operator`, `values`");
        return None;
    };
    for k in o.keys() {
        if !["key", "operator", "values"].contains(&k.as_str()) {
            errs.push(
                format!("{path}.{k}"),
                "unknown key; a where condition has `key`, `operator`, `values`",
            );
            return None;
        }
    }
    let key = match o.get("key").and_then(Value::as_str) {
        Some(k)
            if !k.is_empty()
                && k.chars().count() <= crate::event::MAX_PROPERTY_KEY_CHARS
                && !k.contains(['"', '\\']) =>
        {
            k
        }
        _ => {
            errs.push(
                format!("{path}.key"),
                format!(
                    "is required: a property key of 1 to {} characters without `\"` or `\\`, or `page`",
                    crate::event::MAX_PROPERTY_KEY_CHARS
                ),
            );
            return None;
        }
    };
    let target = if key == "page" || key == "url" {
        PropTarget::Page
    } else {
        PropTarget::Property(key.to_owned())
    };
    let Some(operator) = o.get("operator").and_then(Value::as_str) else {
        errs.push(
            format!("{path}.operator"),
            "is required and must be a string",
        );
        return None;
    };
    let values = match o.get("values") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) if a.len() <= MAX_VALUES => a.as_slice(),
        Some(_) => {
            errs.push(
                format!("{path}.values"),
                format!("must be an array of at most {MAX_VALUES} values"),
            );
            return None;
        }
    };
    if operator == "$exists" || operator == "$notExists" {
        return expect_count(path, operator, values, 0, errs).then_some(PropTest {
            target,
            test: Test::Exists(operator == "$exists"),
        });
    }
    // Event properties have no registered types: the values say which comparison is meant.
    let numeric = matches!(operator, "$gt" | "$gte" | "$lt" | "$lte" | "$between")
        || values.first().is_some_and(Value::is_number);
    let boolean = values.first().is_some_and(Value::is_boolean);
    let test = if boolean {
        if operator != "$eq" || !expect_count(path, operator, values, 1, errs) {
            if operator != "$eq" {
                type_error(path, operator, FieldType::Boolean, errs);
            }
            return None;
        }
        Test::Bool(values[0].as_bool().unwrap_or(false))
    } else if numeric {
        Test::Num(parse_num_op(
            path,
            operator,
            values,
            FieldType::Number,
            true,
            errs,
        )?)
    } else {
        Test::Str(parse_str_op(
            path,
            operator,
            values,
            FieldType::String,
            errs,
        )?)
    };
    Some(PropTest { target, test })
}
