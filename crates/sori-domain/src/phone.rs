//! Phone numbers: `mobileNumber` takes only mobile numbers and stores them as E.164;
//! landlines, 070 internet phones and 1588/1644-style company numbers belong in
//! `landlineNumber` (seed 002: since 2023-05-12 only 010 numbers are mobile numbers).

use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, Type, country};

/// Normalizes a mobile number to E.164, reading numbers without a country code as Korean.
pub fn normalize_mobile(raw: &str) -> Result<String, String> {
    if let Some(e164) = korean_mobile_fast(raw.trim()) {
        return Ok(e164);
    }
    let number = parse(raw)?;
    let korean = number.country().id() == Some(country::Id::KR);
    // Since 2023-05-12 only 010 numbers count as Korean mobile numbers (seed 002); the
    // library still types the retired 011/016–019 ranges as mobile.
    let retired = korean && !number.national().to_string().starts_with("10");
    match number.number_type(&DATABASE) {
        Type::Mobile | Type::FixedLineOrMobile if !retired => {
            Ok(number.format().mode(Mode::E164).to_string())
        }
        _ => Err(format!(
            "`{raw}` is not a mobile number; store landline, 02, 070 and 1588/1644 numbers in \
             profile.landlineNumber"
        )),
    }
}

/// The shapes nearly every Korean mobile number arrives in (`010-1234-5678`, `01012345678`,
/// `+82 10 1234 5678`, `+821012345678`), normalized without the full parser: that one costs
/// tens of microseconds and runs inside the writer's batch. Anything else returns `None`
/// and takes the full path; a property test holds the two to the same answers.
fn korean_mobile_fast(s: &str) -> Option<String> {
    // `+821012345678`, `+82 10 1234 5678` (one separator throughout), or `010-1234-5678`
    // with one separator or none.
    let (seps, rest): (&[u8], &str) = match s.strip_prefix("+82") {
        Some(r) => match r.as_bytes().first() {
            Some(&c @ (b' ' | b'-')) => (
                if c == b' ' { b" " } else { b"-" },
                r[1..].strip_prefix("10")?,
            ),
            _ => (b"", r.strip_prefix("10")?),
        },
        None => (b"- ", s.strip_prefix("010")?),
    };
    let b = rest.as_bytes();
    let digits = match b.len() {
        8 if !s.starts_with("+82 ") && !s.starts_with("+82-") => [&b[..4], &b[4..]],
        10 if b[0] == b[5] && seps.contains(&b[0]) => [&b[1..5], &b[6..]],
        _ => return None,
    };
    // The parser's metadata leaves gaps in 010-5xxx; those take the full path.
    if digits[0][0] == b'5' || !digits.iter().all(|d| d.iter().all(u8::is_ascii_digit)) {
        return None;
    }
    let mut out = String::with_capacity(13);
    out.push_str("+8210");
    for d in digits {
        out.push_str(std::str::from_utf8(d).ok()?);
    }
    Some(out)
}

/// Normalizes a landline or company number: any valid number, kept in national notation
/// for Korean numbers (1644-xxxx has no international form) and E.164 otherwise.
pub fn normalize_landline(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if let Some(rep) = korean_representative(trimmed) {
        return Ok(rep);
    }
    let number = parse(trimmed)?;
    if number.country().id() == Some(country::Id::KR) {
        Ok(number.format().mode(Mode::National).to_string())
    } else {
        Ok(number.format().mode(Mode::E164).to_string())
    }
}

/// Korean representative numbers (15xx/16xx/18xx-xxxx) are eight digits without area code.
fn korean_representative(s: &str) -> Option<String> {
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    let only_digits_and_dashes = s
        .chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == ' ');
    (only_digits_and_dashes && digits.len() == 8 && matches!(&digits[..2], "15" | "16" | "18"))
        .then(|| format!("{}-{}", &digits[..4], &digits[4..]))
}

fn parse(raw: &str) -> Result<phonenumber::PhoneNumber, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().any(|c| c.is_alphabetic()) {
        return Err(format!("`{raw}` is not a phone number"));
    }
    let number = phonenumber::parse(Some(country::Id::KR), trimmed)
        .map_err(|_| format!("`{raw}` is not a phone number"))?;
    if !number.is_valid() {
        return Err(format!("`{raw}` is not a valid phone number"));
    }
    Ok(number)
}

/// Formats a stored number for people: Korean numbers in national notation
/// (`010-1234-5678`), others in international notation.
pub fn display(stored: &str) -> String {
    match phonenumber::parse(Some(country::Id::KR), stored) {
        Ok(n) if n.country().id() == Some(country::Id::KR) => {
            n.format().mode(Mode::National).to_string()
        }
        Ok(n) => n.format().mode(Mode::International).to_string(),
        Err(_) => stored.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_mobile_numbers_become_e164() {
        for raw in [
            "010-1234-5678",
            "01012345678",
            "+82 10 1234 5678",
            "+821012345678",
        ] {
            assert_eq!(
                normalize_mobile(raw).as_deref(),
                Ok("+821012345678"),
                "{raw}"
            );
        }
    }

    #[test]
    fn landlines_are_refused_with_a_pointer() {
        for raw in [
            "02-123-4567",
            "070-1234-5678",
            "1644-1234",
            "031-123-4567",
            "011-234-5678",
        ] {
            let err = normalize_mobile(raw).unwrap_err();
            assert!(err.contains("landlineNumber"), "{raw}: {err}");
        }
    }

    #[test]
    fn foreign_mobiles_are_kept_in_e164() {
        assert_eq!(
            normalize_mobile("+44 7400 123456").as_deref(),
            Ok("+447400123456")
        );
    }

    #[test]
    fn garbage_is_not_a_number() {
        assert!(normalize_mobile("hello").is_err());
        assert!(normalize_mobile("").is_err());
        assert!(normalize_mobile("123").is_err());
    }

    #[test]
    fn landline_normalization() {
        assert_eq!(normalize_landline("1644-1234").as_deref(), Ok("1644-1234"));
        assert_eq!(normalize_landline("16441234").as_deref(), Ok("1644-1234"));
        assert_eq!(
            normalize_landline("0212345678").as_deref(),
            Ok("02-1234-5678")
        );
        assert_eq!(
            normalize_landline("07012345678").as_deref(),
            Ok("070-1234-5678")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// The fast path answers exactly like the full parser wherever it answers at all.
        #[test]
        fn fast_mobile_path_agrees_with_the_parser(
            prefix in proptest::sample::select(vec!["010", "+82 10", "+8210", "+82-10", "+82 010", "10", "011", "+82 11", " 010"]),
            sep1 in proptest::sample::select(vec!["", "-", " ", ".", "--"]),
            sep2 in proptest::sample::select(vec!["", "-", " ", "."]),
            a in "[0-9]{4}|5[0-9]{3}|[0-9]{3}|[0-9]{5}",
            b in "[0-9]{4}|[0-9]{3}",
        ) {
            let raw = format!("{prefix}{sep1}{a}{sep2}{b}");
            if let Some(fast) = korean_mobile_fast(raw.trim()) {
                let full = parse(&raw).map(|n| n.format().mode(Mode::E164).to_string());
                proptest::prop_assert_eq!(Ok(fast), full, "{}", raw);
            }
        }
    }

    #[test]
    fn fast_path_takes_the_common_shapes() {
        for raw in [
            "010-1234-5678",
            "01012345678",
            "010 1234 5678",
            "+82 10 1234 5678",
            "+821012345678",
            "+82-10-1234-5678",
        ] {
            assert_eq!(
                korean_mobile_fast(raw).as_deref(),
                Some("+821012345678"),
                "{raw}"
            );
        }
        for raw in [
            "010-1234 5678",
            "010-123-5678",
            "011-1234-5678",
            "+82 010 1234 5678",
            "010-1234-567a",
        ] {
            assert_eq!(korean_mobile_fast(raw), None, "{raw}");
        }
    }

    #[test]
    fn display_is_national_for_korea() {
        assert_eq!(display("+821012345678"), "010-1234-5678");
    }
}
