//! The reference evaluator: a filter applied to one user at a time, written for obviousness
//! rather than speed. The fast engines are tested against it, and its value tests are
//! shared with them so that "what does `$ne` mean for a missing value" is decided once.

use std::collections::HashMap;

use jiff::civil::Date;
use serde_json::Value;

use super::{
    Builtin, Cond, Device, EventTest, Field, ListMode, NumTest, PropTarget, PropTest, Query,
    StrTest, Test,
};
use crate::event::Event;
use crate::field::FieldType;
use crate::user::{DeviceInfo, User};

/// One user's value of a field, as a filter sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// No value.
    Missing,
    /// Text.
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// An instant (ms).
    Time(i64),
    /// A calendar day.
    Day(Date),
    /// A list of strings (tags).
    Tags(&'a [String]),
    /// A list from the profile (strings or numbers).
    List(&'a [Value]),
}

/// Reads a field of a user.
pub fn value<'a>(user: &'a User, field: &Field) -> Val<'a> {
    match field {
        Field::Profile { key, ty } => profile_value(user.profile.get(key), *ty),
        Field::Builtin(b) => builtin_value(user, *b),
    }
}

/// Interprets a stored profile value by its registered type; a value of another type
/// (which the write path never stores) reads as missing.
pub fn profile_value(v: Option<&Value>, ty: FieldType) -> Val<'_> {
    let Some(v) = v else { return Val::Missing };
    let out = match ty {
        FieldType::String => v.as_str().map(Val::Str),
        FieldType::Number => v.as_f64().map(Val::Num),
        FieldType::Boolean => v.as_bool().map(Val::Bool),
        FieldType::Date => v
            .as_str()
            .and_then(|s| s.parse::<Date>().ok())
            .map(Val::Day),
        FieldType::Datetime => v.as_i64().map(Val::Time),
        FieldType::List | FieldType::ListOfNumber => v.as_array().map(|a| Val::List(a)),
    };
    out.unwrap_or(Val::Missing)
}

fn opt_str(s: &Option<String>) -> Val<'_> {
    s.as_deref().map_or(Val::Missing, Val::Str)
}

fn device_value(d: &DeviceInfo, f: Device) -> Val<'_> {
    match f {
        Device::Browser => opt_str(&d.browser),
        Device::BrowserName => opt_str(&d.browser_name),
        Device::Os => opt_str(&d.os),
        Device::OsName => opt_str(&d.os_name),
        Device::Device => opt_str(&d.device),
        Device::AppName => opt_str(&d.app_name),
        Device::AppVersion => opt_str(&d.app_version),
        Device::LastSeenAt => d.last_seen_at.map_or(Val::Missing, Val::Time),
        Device::SessionsCount => Val::Num(d.sessions_count as f64),
    }
}

fn builtin_value(u: &User, b: Builtin) -> Val<'_> {
    match b {
        Builtin::Id => Val::Str(&u.id),
        Builtin::MemberId => opt_str(&u.member_id),
        Builtin::Tags => Val::Tags(&u.tags),
        Builtin::City => opt_str(&u.city),
        Builtin::Country => opt_str(&u.country),
        Builtin::Language => opt_str(&u.language),
        Builtin::Member => Val::Bool(u.member()),
        Builtin::LastSeenAt => u.last_seen_at.map_or(Val::Missing, Val::Time),
        Builtin::CreatedAt => Val::Time(u.created_at),
        Builtin::UpdatedAt => Val::Time(u.updated_at),
        Builtin::SessionsCount => Val::Num(u.sessions_count as f64),
        Builtin::HasChat => Val::Bool(u.has_chat),
        Builtin::HasPushToken => Val::Bool(u.has_push_token),
        Builtin::UnsubscribeEmail => Val::Bool(u.unsubscribe_email),
        Builtin::UnsubscribeTexting => Val::Bool(u.unsubscribe_texting),
        Builtin::Web(d) => device_value(&u.web, d),
        Builtin::Mobile(d) => device_value(&u.mobile, d),
    }
}

/// A string test on an optional value.
pub fn test_str(t: &StrTest, v: Option<&str>) -> bool {
    match (t, v) {
        (StrTest::Eq(x), Some(s)) => s == x,
        (StrTest::Ne(x), s) => s != Some(x.as_str()),
        (StrTest::In(xs), Some(s)) => xs.iter().any(|x| x == s),
        (StrTest::Nin(xs), s) => s.is_none_or(|s| !xs.iter().any(|x| x == s)),
        (StrTest::Contains(x), Some(s)) => s.contains(x.as_str()),
        (StrTest::NotContains(x), s) => s.is_none_or(|s| !s.contains(x.as_str())),
        (StrTest::StartsWith(x), Some(s)) => s.starts_with(x.as_str()),
        (_, None) => false,
    }
}

/// A number test on an optional value.
pub fn test_num(t: &NumTest, v: Option<f64>) -> bool {
    match (t, v) {
        (NumTest::Eq(x), Some(n)) => n == *x,
        (NumTest::Ne(x), n) => n != Some(*x),
        (NumTest::In(xs), Some(n)) => xs.contains(&n),
        (NumTest::Nin(xs), n) => n.is_none_or(|n| !xs.contains(&n)),
        (NumTest::Range { lo, hi }, Some(n)) => in_range(n, *lo, *hi),
        (_, None) => false,
    }
}

/// Whether `n` lies within optional bounds, each with its inclusiveness.
pub fn in_range(n: f64, lo: Option<(f64, bool)>, hi: Option<(f64, bool)>) -> bool {
    lo.is_none_or(|(l, incl)| if incl { n >= l } else { n > l })
        && hi.is_none_or(|(h, incl)| if incl { n <= h } else { n < h })
}

/// A list test over the items present (an absent list is empty).
pub fn test_list<T: PartialEq>(mode: ListMode, items: &[T], has: impl Fn(&T) -> bool) -> bool {
    match mode {
        ListMode::Any => items.iter().any(has),
        ListMode::All => items.iter().all(has),
        ListMode::None => !items.iter().any(has),
    }
}

/// Applies a value test.
pub fn test(t: &Test, v: Val<'_>) -> bool {
    let present = match v {
        Val::Missing => false,
        Val::Tags(l) => !l.is_empty(),
        Val::List(l) => !l.is_empty(),
        _ => true,
    };
    match t {
        Test::Exists(want) => present == *want,
        Test::Str(s) => test_str(
            s,
            match v {
                Val::Str(x) => Some(x),
                _ => None,
            },
        ),
        Test::Num(n) => test_num(
            n,
            match v {
                Val::Num(x) => Some(x),
                _ => None,
            },
        ),
        Test::Bool(b) => v == Val::Bool(*b),
        Test::Time { from, to } => match v {
            Val::Time(t) => from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e),
            _ => false,
        },
        Test::Day { from, to } => match v {
            Val::Day(d) => from.is_none_or(|f| d >= f) && to.is_none_or(|e| d <= e),
            _ => false,
        },
        Test::List(mode, items) => match v {
            Val::Tags(l) => test_list(*mode, items, |x| l.contains(x)),
            Val::List(l) => test_list(*mode, items, |x| l.iter().any(|y| y.as_str() == Some(x))),
            _ => *mode == ListMode::None,
        },
        Test::NumList(mode, items) => match v {
            Val::List(l) => test_list(*mode, items, |x| l.iter().any(|y| y.as_f64() == Some(*x))),
            _ => *mode == ListMode::None,
        },
    }
}

/// Applies a `where` condition to one event.
pub fn test_prop(
    p: &PropTest,
    page: Option<&str>,
    property: &serde_json::Map<String, Value>,
) -> bool {
    let v = match &p.target {
        PropTarget::Page => page.map_or(Val::Missing, Val::Str),
        PropTarget::Property(k) => match property.get(k) {
            None | Some(Value::Null) => Val::Missing,
            Some(Value::String(s)) => Val::Str(s),
            Some(Value::Number(n)) => n.as_f64().map_or(Val::Missing, Val::Num),
            Some(Value::Bool(b)) => Val::Bool(*b),
            Some(Value::Array(a)) => Val::List(a),
            // An object property is present but comparable to nothing.
            Some(Value::Object(_)) => Val::Tags(&[]),
        },
    };
    match (&p.test, v) {
        (Test::Exists(want), Val::Tags(_)) => *want,
        (Test::Exists(want), Val::List(_)) => *want,
        (t, v) => test(t, v),
    }
}

/// Whether one event counts for an event condition.
pub fn event_counts(
    e: &EventTest,
    name: &str,
    at: i64,
    page: Option<&str>,
    property: &serde_json::Map<String, Value>,
) -> bool {
    name == e.name
        && e.since.is_none_or(|s| at >= s)
        && e.props.iter().all(|p| test_prop(p, page, property))
}

/// What the reference evaluator knows about one user.
pub struct Facts<'a> {
    /// The user.
    pub user: &'a User,
    /// The user's stored events.
    pub events: &'a [Event],
    /// Counts of events retention removed, by name.
    pub rolled: &'a HashMap<String, i64>,
}

/// Whether the user matches the query.
pub fn matches(q: &Query, f: &Facts<'_>) -> bool {
    q.groups.iter().all(|g| {
        g.iter().any(|c| match c {
            Cond::Field { field, test: t } => test(t, value(f.user, field)),
            Cond::Event(e) => e.count.passes(count(e, f)),
        })
    })
}

fn count(e: &EventTest, f: &Facts<'_>) -> i64 {
    let stored = f
        .events
        .iter()
        .filter(|ev| event_counts(e, &ev.name, ev.created_at, ev.page.as_deref(), &ev.property))
        .count() as i64;
    // Removed events still count towards all-history counts without property conditions.
    let rolled = if e.since.is_none() && e.props.is_empty() {
        f.rolled.get(&e.name).copied().unwrap_or(0)
    } else {
        0
    };
    stored + rolled
}
