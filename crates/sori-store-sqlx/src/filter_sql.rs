//! Audience filters compiled to SQL: one builder for SQLite and PostgreSQL. The dialects
//! differ only in how a JSON value is read and typed and in a few function names; the
//! shape of every condition, and so its meaning, is written once. Every value is bound,
//! never spliced into the text.
//!
//! Semantics follow `sori_domain::filter::eval` exactly (the differential test holds the
//! two together): a value of the wrong JSON type reads as absent, negative tests match
//! absent values, an empty list is absent.

use sori_domain::FieldType;
use sori_domain::filter::{
    Builtin, Cond, CountTest, Device, EventTest, Field, ListMode, NumTest, PropTarget, Query,
    StrTest, Test,
};

/// Which SQL to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.45+ (JSON stored as text).
    Sqlite,
    /// PostgreSQL 15 (JSONB columns; event properties as text).
    Postgres,
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Text.
    Text(String),
    /// Text array (PostgreSQL only).
    TextArray(Vec<String>),
}

/// SQL text with its arguments in order.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    /// The statement.
    pub text: String,
    /// Arguments for its placeholders.
    pub args: Vec<Arg>,
}

struct Builder {
    d: Dialect,
    channel_id: i64,
    args: Vec<Arg>,
}

/// A JSON value inside a document column: `doc` is the SQL of the document.
#[derive(Clone, Copy)]
enum Json<'a> {
    Key { doc: &'a str, key: &'a str },
}

impl Builder {
    fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        // Numbered in both dialects: an expression's text may appear twice in a statement
        // (`x IS NOT NULL AND x < ?`), and must then refer to the same arguments.
        match self.d {
            Dialect::Sqlite => format!("?{}", self.args.len()),
            Dialect::Postgres => format!("${}", self.args.len()),
        }
    }

    fn text(&mut self, s: &str) -> String {
        self.arg(Arg::Text(s.to_owned()))
    }

    fn texts(&mut self, xs: &[String]) -> String {
        let parts: Vec<String> = xs.iter().map(|x| self.text(x)).collect();
        parts.join(", ")
    }

    fn floats(&mut self, xs: &[f64]) -> String {
        let parts: Vec<String> = xs.iter().map(|x| self.arg(Arg::Float(*x))).collect();
        parts.join(", ")
    }

    /// The JSON value at a key, as JSON (SQLite: JSON text; PostgreSQL: jsonb).
    fn json(&mut self, j: Json<'_>) -> String {
        let Json::Key { doc, key } = j;
        match self.d {
            Dialect::Sqlite => {
                let path = self.text(&format!("$.\"{key}\""));
                format!("({doc} -> {path})")
            }
            Dialect::Postgres => {
                let k = self.text(key);
                format!("({doc} -> {k})")
            }
        }
    }

    /// A predicate: the JSON value has type `ty` (`string`, `number`, `integer`, `true`,
    /// `false`, `array`, `present`).
    fn json_is(&mut self, j: Json<'_>, ty: &str) -> String {
        let v = self.json(j);
        match (self.d, ty) {
            (_, "present") => match self.d {
                Dialect::Sqlite => format!("coalesce(json_type({v}) <> 'null', FALSE)"),
                Dialect::Postgres => format!("coalesce(jsonb_typeof({v}) <> 'null', FALSE)"),
            },
            (Dialect::Sqlite, "string") => format!("coalesce(json_type({v}) = 'text', FALSE)"),
            (Dialect::Sqlite, "number") => {
                format!("coalesce(json_type({v}) IN ('integer', 'real'), FALSE)")
            }
            (Dialect::Sqlite, "integer") => format!("coalesce(json_type({v}) = 'integer', FALSE)"),
            (Dialect::Sqlite, "true" | "false" | "array") => {
                format!("coalesce(json_type({v}) = '{ty}', FALSE)")
            }
            (Dialect::Postgres, "string" | "number" | "array") => {
                format!("coalesce(jsonb_typeof({v}) = '{ty}', FALSE)")
            }
            (Dialect::Postgres, "integer") => format!(
                "coalesce(jsonb_typeof({v}) = 'number' AND ({v} #>> '{{}}')::numeric = \
                 trunc(({v} #>> '{{}}')::numeric), FALSE)"
            ),
            (Dialect::Postgres, _) => format!("coalesce({v} = '{ty}'::jsonb, FALSE)"),
            _ => "FALSE".to_owned(),
        }
    }

    /// The JSON value as SQL text when it is a string, else NULL.
    fn json_text(&mut self, j: Json<'_>) -> String {
        let is = self.json_is(j, "string");
        let v = self.json(j);
        match self.d {
            Dialect::Sqlite => format!("(CASE WHEN {is} THEN {v} ->> '$' END)"),
            Dialect::Postgres => format!("(CASE WHEN {is} THEN {v} #>> '{{}}' END)"),
        }
    }

    /// The JSON value as a number when it is one, else NULL. A double on both backends,
    /// as filter values are: SQLite compares a 64-bit integer with a double exactly, so
    /// an integer beyond 2^53 would match there what it does not on PostgreSQL.
    fn json_num(&mut self, j: Json<'_>) -> String {
        let is = self.json_is(j, "number");
        let v = self.json(j);
        match self.d {
            Dialect::Sqlite => format!("(CASE WHEN {is} THEN CAST({v} ->> '$' AS REAL) END)"),
            Dialect::Postgres => format!("(CASE WHEN {is} THEN ({v} #>> '{{}}')::float8 END)"),
        }
    }

    /// The JSON value as an integer instant when it is a whole number, else NULL.
    fn json_int(&mut self, j: Json<'_>) -> String {
        let is = self.json_is(j, "integer");
        let v = self.json(j);
        match self.d {
            Dialect::Sqlite => format!("(CASE WHEN {is} THEN {v} ->> '$' END)"),
            Dialect::Postgres => format!("(CASE WHEN {is} THEN ({v} #>> '{{}}')::numeric END)"),
        }
    }

    fn pos(&self, e: &str) -> String {
        format!("coalesce(({e}), FALSE)")
    }

    /// A string test on a text expression (NULL = absent).
    fn str_test(&mut self, s: &str, t: &StrTest) -> String {
        let positive = |b: &mut Self, t: &StrTest| -> String {
            match t {
                StrTest::Eq(x) | StrTest::Ne(x) => {
                    let a = b.text(x);
                    format!("{s} = {a}")
                }
                StrTest::In(xs) | StrTest::Nin(xs) => {
                    let a = b.texts(xs);
                    format!("{s} IN ({a})")
                }
                StrTest::Contains(x) | StrTest::NotContains(x) => {
                    let a = b.text(x);
                    match b.d {
                        Dialect::Sqlite => format!("instr({s}, {a}) > 0"),
                        Dialect::Postgres => format!("strpos({s}, {a}) > 0"),
                    }
                }
                StrTest::StartsWith(x) => {
                    let a = b.text(x);
                    match b.d {
                        // substr counts characters, like length: a prefix test.
                        Dialect::Sqlite => format!("substr({s}, 1, length({a})) = {a}"),
                        Dialect::Postgres => format!("starts_with({s}, {a})"),
                    }
                }
            }
        };
        let p = positive(self, t);
        let p = self.pos(&p);
        match t {
            StrTest::Ne(_) | StrTest::Nin(_) | StrTest::NotContains(_) => format!("NOT {p}"),
            _ => p,
        }
    }

    fn num_test(&mut self, n: &str, t: &NumTest) -> String {
        let cmp = |b: &mut Self, op: &str, x: f64| {
            let a = b.arg(Arg::Float(x));
            format!("{n} {op} {a}")
        };
        let p = match t {
            NumTest::Eq(x) | NumTest::Ne(x) => cmp(self, "=", *x),
            NumTest::In(xs) | NumTest::Nin(xs) => {
                let a = self.floats(xs);
                format!("{n} IN ({a})")
            }
            NumTest::Range { lo, hi } => {
                let mut parts = vec![format!("{n} IS NOT NULL")];
                if let Some((x, incl)) = lo {
                    parts.push(cmp(self, if *incl { ">=" } else { ">" }, *x));
                }
                if let Some((x, incl)) = hi {
                    parts.push(cmp(self, if *incl { "<=" } else { "<" }, *x));
                }
                parts.join(" AND ")
            }
        };
        let p = self.pos(&p);
        match t {
            NumTest::Ne(_) | NumTest::Nin(_) => format!("NOT {p}"),
            _ => p,
        }
    }

    fn time_test(&mut self, v: &str, from: Option<i64>, to: Option<i64>) -> String {
        let mut parts = vec![format!("{v} IS NOT NULL")];
        if let Some(f) = from {
            let a = self.arg(Arg::Int(f));
            parts.push(format!("{v} >= {a}"));
        }
        if let Some(t) = to {
            let a = self.arg(Arg::Int(t));
            parts.push(format!("{v} < {a}"));
        }
        self.pos(&parts.join(" AND "))
    }

    fn column_bool(&mut self, col: &str, t: &Test) -> String {
        match t {
            Test::Bool(b) => format!("{col} = {}", if *b { "TRUE" } else { "FALSE" }),
            Test::Exists(w) => bool_sql(*w).to_owned(),
            _ => "FALSE".to_owned(),
        }
    }

    fn column(&mut self, col: &str, ty: FieldType, always: bool, t: &Test) -> String {
        if let Test::Exists(w) = t {
            if always {
                return bool_sql(*w).to_owned();
            }
            return if *w {
                format!("{col} IS NOT NULL")
            } else {
                format!("{col} IS NULL")
            };
        }
        match (ty, t) {
            (FieldType::Boolean, _) => self.column_bool(col, t),
            (_, Test::Str(s)) => self.str_test(col, s),
            (_, Test::Num(n)) => self.num_test(col, n),
            (_, Test::Time { from, to }) => self.time_test(col, *from, *to),
            _ => "FALSE".to_owned(),
        }
    }

    /// A list test over a JSON array of strings or numbers.
    fn list(
        &mut self,
        arr: Json<'_>,
        numbers: bool,
        mode: ListMode,
        items: ListItems<'_>,
    ) -> String {
        let is_array = self.json_is(arr, "array");
        let v = self.json(arr);
        let has = |b: &mut Self, cond: String| -> String {
            match b.d {
                Dialect::Sqlite => {
                    format!("({is_array} AND EXISTS (SELECT 1 FROM json_each({v}) WHERE {cond}))")
                }
                Dialect::Postgres => format!(
                    "({is_array} AND EXISTS (SELECT 1 FROM jsonb_array_elements({v}) AS e(value) \
                     WHERE {cond}))"
                ),
            }
        };
        let elem = |b: &mut Self, one: Option<usize>| -> String {
            match (b.d, numbers) {
                (Dialect::Sqlite, false) => {
                    let a = match one {
                        Some(i) => b.text(items.text(i)),
                        None => b.texts(items.texts()),
                    };
                    format!("type = 'text' AND value IN ({a})")
                }
                (Dialect::Sqlite, true) => {
                    let a = match one {
                        Some(i) => b.floats(&[items.num(i)]),
                        None => b.floats(items.nums()),
                    };
                    format!("type IN ('integer', 'real') AND CAST(value AS REAL) IN ({a})")
                }
                (Dialect::Postgres, false) => {
                    let a = match one {
                        Some(i) => b.text(items.text(i)),
                        None => b.texts(items.texts()),
                    };
                    format!("jsonb_typeof(value) = 'string' AND value #>> '{{}}' IN ({a})")
                }
                (Dialect::Postgres, true) => {
                    let a = match one {
                        Some(i) => b.floats(&[items.num(i)]),
                        None => b.floats(items.nums()),
                    };
                    format!(
                        "jsonb_typeof(value) = 'number' AND (value #>> '{{}}')::float8 IN ({a})"
                    )
                }
            }
        };
        match mode {
            ListMode::Any => {
                let c = elem(self, None);
                has(self, c)
            }
            ListMode::None => {
                let c = elem(self, None);
                format!("NOT {}", has(self, c))
            }
            ListMode::All => {
                let parts: Vec<String> = (0..items.len())
                    .map(|i| {
                        let c = elem(self, Some(i));
                        has(self, c)
                    })
                    .collect();
                format!("({})", parts.join(" AND "))
            }
        }
    }

    fn nonempty(&mut self, arr: Json<'_>) -> String {
        let is_array = self.json_is(arr, "array");
        let v = self.json(arr);
        match self.d {
            Dialect::Sqlite => format!("({is_array} AND json_array_length({v}) > 0)"),
            Dialect::Postgres => format!("({is_array} AND jsonb_array_length({v}) > 0)"),
        }
    }

    /// A test on a JSON value whose type the test implies (profile fields, properties).
    fn json_value(&mut self, j: Json<'_>, ty: FieldType, t: &Test) -> String {
        match t {
            Test::Exists(w) => {
                let p = match ty {
                    FieldType::String | FieldType::Date => self.json_is(j, "string"),
                    FieldType::Number => self.json_is(j, "number"),
                    FieldType::Datetime => self.json_is(j, "integer"),
                    FieldType::Boolean => {
                        let a = self.json_is(j, "true");
                        let b = self.json_is(j, "false");
                        format!("({a} OR {b})")
                    }
                    FieldType::List | FieldType::ListOfNumber => self.nonempty(j),
                };
                if *w { p } else { format!("NOT {p}") }
            }
            Test::Str(s) => {
                let v = self.json_text(j);
                self.str_test(&v, s)
            }
            Test::Num(n) => {
                let v = self.json_num(j);
                self.num_test(&v, n)
            }
            Test::Bool(b) => self.json_is(j, if *b { "true" } else { "false" }),
            Test::Time { from, to } => {
                let v = self.json_int(j);
                self.time_test(&v, *from, *to)
            }
            Test::Day { from, to } => {
                let v = self.json_text(j);
                let mut parts = vec![format!("{v} IS NOT NULL")];
                if let Some(f) = from {
                    let a = self.text(&f.to_string());
                    parts.push(format!("{v} >= {a}"));
                }
                if let Some(e) = to {
                    let a = self.text(&e.to_string());
                    parts.push(format!("{v} <= {a}"));
                }
                self.pos(&parts.join(" AND "))
            }
            Test::List(mode, items) => self.list(j, false, *mode, ListItems::Text(items)),
            Test::NumList(mode, items) => self.list(j, true, *mode, ListItems::Num(items)),
        }
    }

    fn field(&mut self, field: &Field, t: &Test) -> String {
        let b = match field {
            Field::Profile { key, ty } => {
                return self.json_value(
                    Json::Key {
                        doc: "u.profile",
                        key,
                    },
                    *ty,
                    t,
                );
            }
            Field::Builtin(b) => *b,
        };
        let ty = b.ty();
        let always = b.always_present();
        match b {
            Builtin::Id => self.column("u.id", ty, always, t),
            Builtin::MemberId => self.column("u.member_id", ty, always, t),
            Builtin::City => self.column("u.city", ty, always, t),
            Builtin::Country => self.column("u.country", ty, always, t),
            Builtin::Language => self.column("u.language", ty, always, t),
            Builtin::LastSeenAt => self.column("u.last_seen_at", ty, always, t),
            Builtin::CreatedAt => self.column("u.created_at", ty, always, t),
            Builtin::UpdatedAt => self.column("u.updated_at", ty, always, t),
            Builtin::SessionsCount => self.column("u.sessions_count", ty, always, t),
            Builtin::HasChat => self.column("u.has_chat", ty, always, t),
            Builtin::HasPushToken => self.column("u.has_push_token", ty, always, t),
            Builtin::UnsubscribeEmail => self.column("u.unsubscribe_email", ty, always, t),
            Builtin::UnsubscribeTexting => self.column("u.unsubscribe_texting", ty, always, t),
            Builtin::Member => match t {
                Test::Bool(true) => "u.member_id IS NOT NULL".to_owned(),
                Test::Bool(false) => "u.member_id IS NULL".to_owned(),
                Test::Exists(w) => bool_sql(*w).to_owned(),
                _ => "FALSE".to_owned(),
            },
            Builtin::Tags => match t {
                Test::Exists(w) => {
                    let p = self.tags_nonempty();
                    if *w { p } else { format!("NOT {p}") }
                }
                Test::List(mode, items) => self.tags(*mode, items),
                _ => "FALSE".to_owned(),
            },
            Builtin::Web(d) | Builtin::Mobile(d) => {
                let doc = if matches!(b, Builtin::Web(_)) {
                    "u.web"
                } else {
                    "u.mobile"
                };
                let key = device_key(d);
                let j = Json::Key { doc, key };
                match (d, t) {
                    // Always serialized, so always present.
                    (Device::SessionsCount, Test::Exists(w)) => bool_sql(*w).to_owned(),
                    _ => self.json_value(j, ty, t),
                }
            }
        }
    }

    fn tags_nonempty(&mut self) -> String {
        match self.d {
            Dialect::Sqlite => "json_array_length(u.tags) > 0".to_owned(),
            Dialect::Postgres => "jsonb_array_length(u.tags) > 0".to_owned(),
        }
    }

    /// Tags are a JSON array of strings in both schemas; PostgreSQL answers with its
    /// `?|` / `?&` operators (GIN-indexable).
    fn tags(&mut self, mode: ListMode, items: &[String]) -> String {
        match self.d {
            Dialect::Postgres => {
                let a = self.arg(Arg::TextArray(items.to_vec()));
                match mode {
                    ListMode::Any => format!("u.tags ?| {a}::text[]"),
                    ListMode::All => format!("u.tags ?& {a}::text[]"),
                    ListMode::None => format!("NOT (u.tags ?| {a}::text[])"),
                }
            }
            Dialect::Sqlite => {
                let any = |b: &mut Self, xs: &[String]| {
                    let a = b.texts(xs);
                    format!("EXISTS (SELECT 1 FROM json_each(u.tags) WHERE value IN ({a}))")
                };
                match mode {
                    ListMode::Any => any(self, items),
                    ListMode::None => format!("NOT {}", any(self, items)),
                    ListMode::All => {
                        let parts: Vec<String> = items
                            .iter()
                            .map(|x| any(self, std::slice::from_ref(x)))
                            .collect();
                        format!("({})", parts.join(" AND "))
                    }
                }
            }
        }
    }

    fn prop(&mut self, p: &sori_domain::filter::PropTest) -> String {
        let ty_of = |t: &Test| match t {
            Test::Num(_) => FieldType::Number,
            Test::Bool(_) => FieldType::Boolean,
            _ => FieldType::String,
        };
        match &p.target {
            PropTarget::Page => match &p.test {
                Test::Exists(w) => {
                    if *w {
                        "e.page IS NOT NULL".to_owned()
                    } else {
                        "e.page IS NULL".to_owned()
                    }
                }
                Test::Str(s) => self.str_test("e.page", s),
                // A page is text: number and boolean tests never hold for it; negative ones
                // do.
                Test::Num(NumTest::Ne(_) | NumTest::Nin(_)) => "TRUE".to_owned(),
                _ => "FALSE".to_owned(),
            },
            PropTarget::Property(key) => {
                let doc = match self.d {
                    Dialect::Sqlite => "e.property",
                    Dialect::Postgres => "e.property::jsonb",
                };
                let j = Json::Key { doc, key };
                match &p.test {
                    // Any non-null JSON value (objects and arrays too) is present.
                    Test::Exists(w) => {
                        let is = self.json_is(j, "present");
                        if *w { is } else { format!("NOT {is}") }
                    }
                    t => self.json_value(j, ty_of(t), t),
                }
            }
        }
    }

    fn event_where(&mut self, e: &EventTest) -> Vec<String> {
        // Bound, not correlated: the subquery runs once, not once per user.
        let ch = self.arg(Arg::Int(self.channel_id));
        let name = self.text(&e.name);
        let mut wh = vec![format!("e.channel_id = {ch}"), format!("e.name = {name}")];
        if let Some(since) = e.since {
            let a = self.arg(Arg::Int(since));
            wh.push(format!("e.created_at >= {a}"));
        }
        for p in &e.props {
            let c = self.prop(p);
            wh.push(c);
        }
        wh
    }

    /// `u.id` is (or, for tests that zero events pass, is not) among the users whose count
    /// of matching events passes.
    fn event(&mut self, e: &EventTest) -> String {
        let wh = self.event_where(e);
        let mut counted = format!(
            "SELECT e.user_id AS user_id, count(*) AS n FROM events e WHERE {} GROUP BY e.user_id",
            wh.join(" AND ")
        );
        if e.since.is_none() && e.props.is_empty() {
            // Events retention removed still count towards all-history totals.
            let ch2 = self.arg(Arg::Int(self.channel_id));
            let n2 = self.text(&e.name);
            counted = format!(
                "{counted} UNION ALL SELECT s.user_id, s.count FROM user_event_stats s \
                 WHERE s.channel_id = {ch2} AND s.name = {n2}"
            );
        }
        let having = |b: &mut Self, t: CountTest| {
            let (op, n) = match t {
                CountTest::Gte(n) => (">=", n),
                CountTest::Lte(n) => ("<=", n),
                CountTest::Eq(n) => ("=", n),
            };
            let a = b.arg(Arg::Int(n));
            format!("sum(c.n) {op} {a}")
        };
        let h = having(self, e.count);
        if e.count.passes_zero() {
            format!(
                "u.id NOT IN (SELECT c.user_id FROM ({counted}) c GROUP BY c.user_id \
                 HAVING NOT ({h}))"
            )
        } else {
            format!("u.id IN (SELECT c.user_id FROM ({counted}) c GROUP BY c.user_id HAVING {h})")
        }
    }

    fn query(&mut self, q: &Query) -> String {
        let groups: Vec<String> = q
            .groups
            .iter()
            .map(|g| {
                let conds: Vec<String> = g
                    .iter()
                    .map(|c| match c {
                        Cond::Field { field, test } => self.field(field, test),
                        Cond::Event(e) => self.event(e),
                    })
                    .collect();
                format!("({})", conds.join(" OR "))
            })
            .collect();
        if groups.is_empty() {
            "TRUE".to_owned()
        } else {
            groups.join(" AND ")
        }
    }
}

#[derive(Clone, Copy)]
enum ListItems<'a> {
    Text(&'a [String]),
    Num(&'a [f64]),
}

impl ListItems<'_> {
    fn len(self) -> usize {
        match self {
            ListItems::Text(x) => x.len(),
            ListItems::Num(x) => x.len(),
        }
    }
    fn text(&self, i: usize) -> &str {
        match self {
            ListItems::Text(x) => &x[i],
            ListItems::Num(_) => "",
        }
    }
    fn texts(&self) -> &[String] {
        match self {
            ListItems::Text(x) => x,
            ListItems::Num(_) => &[],
        }
    }
    fn num(&self, i: usize) -> f64 {
        match self {
            ListItems::Num(x) => x[i],
            ListItems::Text(_) => 0.0,
        }
    }
    fn nums(&self) -> &[f64] {
        match self {
            ListItems::Num(x) => x,
            ListItems::Text(_) => &[],
        }
    }
}

fn bool_sql(b: bool) -> &'static str {
    if b { "TRUE" } else { "FALSE" }
}

fn device_key(d: Device) -> &'static str {
    match d {
        Device::Browser => "browser",
        Device::BrowserName => "browserName",
        Device::Os => "os",
        Device::OsName => "osName",
        Device::Device => "device",
        Device::AppName => "appName",
        Device::AppVersion => "appVersion",
        Device::LastSeenAt => "lastSeenAt",
        Device::SessionsCount => "sessionsCount",
    }
}

/// `SELECT <select> FROM users u WHERE u.channel_id = <channel> AND <filter>`; `select` is
/// `count(*)` or `u.id`, and `tail` is appended (an `ORDER BY`).
pub fn users_matching(d: Dialect, select: &str, channel_id: i64, q: &Query, tail: &str) -> Sql {
    let mut b = Builder {
        d,
        channel_id,
        args: Vec::new(),
    };
    let ch = b.arg(Arg::Int(channel_id));
    let cond = b.query(q);
    Sql {
        text: format!("SELECT {select} FROM users u WHERE u.channel_id = {ch} AND ({cond}) {tail}"),
        args: b.args,
    }
}

/// `SELECT user_id, count` of the stored events passing an event condition's window and
/// `where` clauses (for the in-memory engine, which keeps no properties).
pub fn event_counts(d: Dialect, channel_id: i64, e: &EventTest) -> Sql {
    let mut b = Builder {
        d,
        channel_id,
        args: Vec::new(),
    };
    let wh = b.event_where(e);
    Sql {
        text: format!(
            "SELECT e.user_id, count(*) FROM events e WHERE {} GROUP BY e.user_id",
            wh.join(" AND ")
        ),
        args: b.args,
    }
}
