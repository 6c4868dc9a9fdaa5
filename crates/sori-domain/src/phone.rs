//! Phone numbers: `mobileNumber` takes only mobile numbers and stores them as E.164;
//! landlines, 070 internet phones and 1588/1644-style company numbers belong in
//! `landlineNumber` (seed 002: since 2023-05-12 only 010 numbers are mobile numbers).

use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, Type, country};

/// Normalizes a mobile number to E.164, reading numbers without a country code as Korean.
pub fn normalize_mobile(raw: &str) -> Result<String, String> {
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

    #[test]
    fn display_is_national_for_korea() {
        assert_eq!(display("+821012345678"), "010-1234-5678");
    }
}
