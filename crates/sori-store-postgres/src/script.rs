//! Several statements sent as one simple-protocol query (`BEGIN; …; …`), so a batch write
//! costs two round trips instead of one per statement: on two shared cores every round
//! trip is a pair of context switches and a wait for a core.
//!
//! The simple protocol has no parameters, so values travel as literals: numbers in decimal,
//! text dollar-quoted with a tag the text does not contain, arrays as array literals inside
//! such a quote. No value is ever spliced in unquoted. The same argument lists also bind to
//! prepared statements where a statement runs alone (bulk loads), so each statement's SQL
//! and arguments have one source.

use std::fmt::Write as _;

use futures_util::TryStreamExt;
use sori_store::StoreError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, Either, PgConnection, Postgres};

type Result<T> = std::result::Result<T, StoreError>;

/// One statement argument, written as `$n` in the statement's SQL.
pub(crate) enum Lit<'a> {
    /// A `bigint`.
    Int(i64),
    /// A text value.
    Text(&'a str),
    /// A `bigint[]`.
    Ints(Vec<Option<i64>>),
    /// A `text[]`.
    Texts(Vec<Option<&'a str>>),
    /// A `bool[]`.
    Bools(Vec<Option<bool>>),
}

/// Binds `args` in order to a prepared statement.
pub(crate) fn bind<'q>(
    mut q: sqlx::query::Query<'q, Postgres, PgArguments>,
    args: Vec<Lit<'_>>,
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    for a in args {
        q = match a {
            Lit::Int(i) => q.bind(i),
            Lit::Text(t) => q.bind(t),
            Lit::Ints(v) => q.bind(v),
            Lit::Texts(v) => q.bind(v),
            Lit::Bools(v) => q.bind(v),
        };
    }
    q
}

/// What one statement of a script returned.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Its rows.
    pub rows: Vec<PgRow>,
    /// Rows it inserted, updated or deleted.
    pub affected: u64,
}

/// Statements to send in one query.
#[derive(Default)]
pub(crate) struct Script {
    sql: String,
    statements: usize,
}

impl Script {
    /// Appends a statement with no arguments (`BEGIN`, `COMMIT`); returns its index.
    pub fn raw(&mut self, sql: &'static str) -> usize {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.statements += 1;
        self.statements - 1
    }

    /// Appends `template` with each `$n` replaced by the literal of `args[n - 1]`; returns
    /// the statement's index. Templates are this crate's constants: `$` appears in them only
    /// as a placeholder.
    pub fn push(&mut self, template: &'static str, args: &[Lit<'_>]) -> Result<usize> {
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            self.sql.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("bad placeholder in {template}")))?;
            let arg = args
                .get(n.wrapping_sub(1))
                .ok_or_else(|| StoreError::Corrupt(format!("no argument ${n} for {template}")))?;
            write_lit(&mut self.sql, arg)?;
            rest = &rest[at + 1 + digits..];
        }
        self.sql.push_str(rest);
        self.sql.push_str(";\n");
        self.statements += 1;
        Ok(self.statements - 1)
    }

    /// Appends `EXECUTE name(…)` of a statement prepared on the connection, with `args` as
    /// literals; returns the statement's index.
    pub fn exec(&mut self, name: &'static str, args: &[Lit<'_>]) -> Result<usize> {
        self.sql.push_str("EXECUTE ");
        self.sql.push_str(name);
        self.sql.push('(');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            write_lit(&mut self.sql, a)?;
        }
        self.sql.push_str(");\n");
        self.statements += 1;
        Ok(self.statements - 1)
    }

    /// Runs every statement in one round trip; the outcome of statement `i` is at `i`.
    /// The first failing statement ends the script (PostgreSQL skips the rest).
    pub async fn run(&self, conn: &mut PgConnection) -> sqlx::Result<Vec<Outcome>> {
        let expected = self.statements;
        let mut out = Vec::with_capacity(expected + 1);
        out.push(Outcome::default());
        let mut stream = sqlx::raw_sql(AssertSqlSafe(self.sql.clone())).fetch_many(conn);
        while let Some(item) = stream.try_next().await? {
            let current = out.last_mut().expect("never empty");
            match item {
                Either::Right(row) => current.rows.push(row),
                Either::Left(done) => {
                    current.affected = done.rows_affected();
                    out.push(Outcome::default());
                }
            }
        }
        out.pop();
        if out.len() != expected {
            return Err(sqlx::Error::Protocol(format!(
                "a script of {expected} statements returned {} results",
                out.len()
            )));
        }
        Ok(out)
    }
}

fn write_lit(out: &mut String, lit: &Lit<'_>) -> Result<()> {
    match lit {
        Lit::Int(i) => {
            let _ = write!(out, "({i})");
        }
        Lit::Text(t) => quote(out, t)?,
        Lit::Ints(v) => {
            let mut a = String::with_capacity(v.len() * 12 + 2);
            array(&mut a, v, |a, i| {
                let _ = write!(a, "{i}");
            });
            quote(out, &a)?;
        }
        Lit::Bools(v) => {
            let mut a = String::with_capacity(v.len() * 2 + 2);
            array(&mut a, v, |a, b| a.push(if *b { 't' } else { 'f' }));
            quote(out, &a)?;
        }
        Lit::Texts(v) => {
            let mut a = String::with_capacity(v.iter().flatten().map(|s| s.len() + 3).sum());
            array(&mut a, v, |a, s| {
                a.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        a.push('\\');
                    }
                    a.push(c);
                }
                a.push('"');
            });
            quote(out, &a)?;
        }
    }
    Ok(())
}

/// An array literal body: `{a,NULL,b}`.
fn array<T>(a: &mut String, v: &[Option<T>], mut item: impl FnMut(&mut String, &T)) {
    a.push('{');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            a.push(',');
        }
        match x {
            Some(x) => item(a, x),
            None => a.push_str("NULL"),
        }
    }
    a.push('}');
}

/// Dollar-quotes `text`. The tag is `$q$` when the text holds no `$q` at all, else `$q1$`,
/// `$q10$`, `$q100$`… with more digits than any digit run after a `$q` in the text, so the
/// text can neither contain the tag nor end with a prefix of it; found in one pass (a
/// search per candidate tag would let a value full of `$q0$`, `$q1$`… cost quadratic time).
fn quote(out: &mut String, text: &str) -> Result<()> {
    if text.contains('\0') {
        // The query is one C string; PostgreSQL text cannot hold NUL either.
        return Err(StoreError::Corrupt("a value holds a NUL character".into()));
    }
    let mut longest = None;
    for (at, _) in text.match_indices("$q") {
        let run = text[at + 2..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        longest = Some(longest.unwrap_or(0).max(run));
    }
    let tag = match longest {
        None => "$q$".to_owned(),
        Some(run) => format!("$q1{}$", "0".repeat(run)),
    };
    out.push_str(&tag);
    out.push_str(text);
    out.push_str(&tag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(template: &'static str, args: &[Lit<'_>]) -> String {
        let mut s = Script::default();
        s.push(template, args).unwrap();
        s.sql
    }

    #[test]
    fn placeholders_become_quoted_literals() {
        assert_eq!(
            one(
                "SELECT $1::bigint, $2, $3::text[], $10",
                &[
                    Lit::Int(-5),
                    Lit::Text("it's $q$ here"),
                    Lit::Texts(vec![Some("a\"b\\c"), None, Some("")]),
                    Lit::Int(0),
                    Lit::Int(0),
                    Lit::Int(0),
                    Lit::Int(0),
                    Lit::Int(0),
                    Lit::Int(0),
                    Lit::Ints(vec![Some(1), None]),
                ]
            ),
            "SELECT (-5)::bigint, $q1$it's $q$ here$q1$, $q${\"a\\\"b\\\\c\",NULL,\"\"}$q$::text[], $q${1,NULL}$q$;\n"
        );
    }

    /// The closing tag is found exactly where the text ends, whatever the text holds.
    fn closes_at_the_end(text: &str) {
        let mut out = String::new();
        quote(&mut out, text).unwrap();
        let tag_len = out[1..].find('$').expect("a tag") + 2;
        let tag = &out[..tag_len];
        assert_eq!(&out[tag_len..tag_len + text.len()], text);
        assert_eq!(
            out[tag_len..].find(tag),
            Some(text.len()),
            "{text:?} -> {out}"
        );
    }

    #[test]
    fn dollar_quote_tags_never_occur_in_the_text() {
        for text in [
            "",
            "plain",
            "$",
            "$q",
            "abc$q",
            "$q$",
            "a$q0",
            "$q0$ $q1$",
            "$q9$q10",
            "x$q1",
            "$q10",
            "$$q$$",
            "$q99999999999999999999999$",
        ] {
            closes_at_the_end(text);
        }
        // Many candidate tags in one value: one pass, whatever their number.
        let crowded: String = (0..20_000).map(|i| format!("$q{i}$")).collect();
        closes_at_the_end(&crowded);
    }

    proptest::proptest! {
        #[test]
        fn any_text_closes_at_its_end(text in "[$q0-9a ]{0,40}") {
            closes_at_the_end(&text);
        }
    }

    #[test]
    fn nul_and_missing_arguments_are_errors() {
        let mut s = Script::default();
        assert!(s.push("SELECT $1", &[Lit::Text("a\0b")]).is_err());
        assert!(s.push("SELECT $2", &[Lit::Int(1)]).is_err());
        assert!(s.push("SELECT $0", &[Lit::Int(1)]).is_err());
    }
}
