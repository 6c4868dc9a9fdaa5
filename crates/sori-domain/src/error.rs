//! Validation errors that name the offending field and the rule it broke.

use std::borrow::Cow;

use serde::Serialize;

/// One problem with one field; `field` is a JSON path such as `profile.email` or `tags[3]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the offending input, as the client sent it.
    pub field: String,
    /// Human-readable rule that was broken.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`; a shorthand used throughout validation.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A rejected input: every problem found, so a client can fix them all in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct Invalid(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    match errors {
        [] => "invalid input".to_owned(),
        [one] => format!("{}: {}", one.field, one.message),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more)",
            first.field,
            first.message,
            rest.len()
        ),
    }
}

impl Invalid {
    /// A rejection with a single problem.
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError::new(field, message)])
    }

    /// `value` unless either check failed, then every problem of both: two checks made
    /// apart still answer all at once.
    pub fn both<T>(check: Result<(), Invalid>, value: Result<T, Invalid>) -> Result<T, Invalid> {
        match (check, value) {
            (Ok(()), v) => v,
            (Err(Invalid(mut all)), Err(Invalid(more))) => {
                all.extend(more);
                Err(Invalid(all))
            }
            (Err(e), Ok(_)) => Err(e),
        }
    }

    /// The same problems with their fields under `prefix` (`events[2]`, `calls[0].track`),
    /// for a part of a request checked on its own; a problem of the part as a whole (no
    /// field) is named by the prefix itself.
    pub fn under(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        Self(
            self.0
                .into_iter()
                .map(|mut f| {
                    f.field = match f.field.is_empty() {
                        true => prefix.to_owned(),
                        false => field_path(prefix, &f.field).into_owned(),
                    };
                    f
                })
                .collect(),
        )
    }
}

/// `field` under `prefix` (`batch[3].event`), or `field` itself at the top level, where it
/// is borrowed: checks of single calls build no paths unless they fail.
pub fn field_path<'a>(prefix: &str, field: &'a str) -> Cow<'a, str> {
    if prefix.is_empty() {
        Cow::Borrowed(field)
    } else {
        Cow::Owned(format!("{prefix}.{field}"))
    }
}

/// Collects errors while validating and turns them into a result at the end.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    /// Records a problem.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// True while nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else every recorded problem.
    pub fn check(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_go_under_a_prefix() {
        let e = Invalid(vec![
            FieldError::new("name", "too long"),
            FieldError::new("", "bad"),
        ]);
        let fields: Vec<String> = e
            .clone()
            .under("calls[2].track")
            .0
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["calls[2].track.name", "calls[2].track"]);
        assert_eq!(e.clone().under("").0, e.0);
    }
}
