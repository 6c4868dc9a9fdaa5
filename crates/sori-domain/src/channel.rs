//! Channel settings rules.

use jiff::tz::TimeZone;

use crate::error::Invalid;

/// Default time zone of a new channel (the product's home market).
pub const DEFAULT_TIME_ZONE: &str = "Asia/Seoul";

/// Languages the console and messenger speak.
pub const LANGUAGES: &[&str] = &["ko", "en"];

/// Resolves an IANA time zone name from the bundled database.
pub fn time_zone(field: &str, name: &str) -> Result<TimeZone, Invalid> {
    TimeZone::get(name).map_err(|_| {
        Invalid::one(
            field,
            format!("`{name}` is not an IANA time zone such as Asia/Seoul"),
        )
    })
}

/// Checks a channel's default language.
pub fn check_language(field: &str, lang: &str) -> Result<(), Invalid> {
    if LANGUAGES.contains(&lang) {
        Ok(())
    } else {
        Err(Invalid::one(
            field,
            format!("must be one of {}", LANGUAGES.join(", ")),
        ))
    }
}

/// Checks a channel name (1–100 characters; see [`crate::value::display_name`]).
pub fn check_name(field: &str, name: &str) -> Result<String, Invalid> {
    crate::value::display_name(field, name, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones() {
        assert!(time_zone("timeZone", "Asia/Seoul").is_ok());
        assert!(time_zone("timeZone", "America/New_York").is_ok());
        assert_eq!(
            time_zone("timeZone", "Mars/Base").unwrap_err().0[0].field,
            "timeZone"
        );
    }
}
