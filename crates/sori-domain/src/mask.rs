//! Sensitive-data masking (seed 002, "민감정보 마스킹"): phone numbers and e-mail addresses
//! are partly hidden (`010-****-0000`, `aaa**@example.com`), everything else fully.

use serde_json::Value;

use crate::phone;

/// What a fully masked value looks like.
pub const FULL_MASK: &str = "••••••";

/// How a field is masked, decided by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Hide the middle group of a phone number.
    Phone,
    /// Keep the first three characters of the local part.
    Email,
    /// Hide everything.
    Full,
}

impl MaskKind {
    /// The kind for a field key (`profile.` prefix already removed for profile fields).
    pub fn for_key(key: &str) -> Self {
        match key {
            "mobileNumber" | "landlineNumber" => MaskKind::Phone,
            "email" => MaskKind::Email,
            _ => MaskKind::Full,
        }
    }
}

/// Masks one value; `null` stays `null` so a manager still sees that nothing is there.
pub fn mask(key: &str, v: &Value) -> Value {
    match (MaskKind::for_key(key), v) {
        (_, Value::Null) => Value::Null,
        (MaskKind::Phone, Value::String(s)) => Value::String(mask_phone(s)),
        (MaskKind::Email, Value::String(s)) => Value::String(mask_email(s)),
        _ => Value::String(FULL_MASK.to_owned()),
    }
}

/// `+821012345678` → `010-****-5678`: the middle group of the national form is hidden.
pub fn mask_phone(stored: &str) -> String {
    let shown = phone::display(stored);
    let groups: Vec<&str> = shown.split(['-', ' ']).collect();
    if groups.len() >= 3 {
        let mut out: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let mid = out.len() - 2;
        out[mid] = "*".repeat(groups[mid].chars().count());
        return out.join("-");
    }
    let chars: Vec<char> = shown.chars().collect();
    let keep = chars.len().min(4);
    format!(
        "{}{}",
        "*".repeat(chars.len() - keep),
        chars[chars.len() - keep..].iter().collect::<String>()
    )
}

/// `aaabbb@example.com` → `aaa***@example.com`; at least two characters are always hidden.
pub fn mask_email(s: &str) -> String {
    let Some((local, domain)) = s.split_once('@') else {
        return FULL_MASK.to_owned();
    };
    let n = local.chars().count();
    let keep = n.saturating_sub(2).min(3);
    let shown: String = local.chars().take(keep).collect();
    format!("{shown}{}@{domain}", "*".repeat((n - keep).max(2)))
}

/// Whether `v` has the shape of a masked value of `key` as [`mask`] writes it: the
/// console shows masks in place of sensitive values, and an edit form that sends them back
/// would otherwise store the mask over the real value. A real e-mail address has no `**`
/// in its local part and a phone number no `*` in practice; the full mask is never data.
pub fn looks_masked(key: &str, v: &Value) -> bool {
    let Value::String(s) = v else {
        return false;
    };
    s == FULL_MASK
        || match MaskKind::for_key(key) {
            MaskKind::Phone => s.contains('*'),
            MaskKind::Email => s.split_once('@').is_some_and(|(l, _)| l.contains("**")),
            MaskKind::Full => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_are_recognized() {
        for (key, real) in [
            ("email", json!("abcdefgh@x.io")),
            ("email", json!("ab@x.io")),
            ("mobileNumber", json!("+821012340000")),
            ("landlineNumber", json!("02-123-4567")),
            ("secret", json!("top")),
            ("cart", json!([1, 2])),
        ] {
            assert!(!looks_masked(key, &real), "{key} {real}");
            assert!(looks_masked(key, &mask(key, &real)), "{key} {real}");
        }
        assert!(!looks_masked("note", &json!("a**b")));
        assert!(!looks_masked("email", &Value::Null));
    }

    #[test]
    fn phone_masking() {
        assert_eq!(mask_phone("+821012340000"), "010-****-0000");
        assert_eq!(mask_phone("02-123-4567"), "02-***-4567");
        assert_eq!(
            mask("mobileNumber", &json!("+821012340000")),
            json!("010-****-0000")
        );
    }

    #[test]
    fn email_masking() {
        assert_eq!(mask_email("aaabb@channel.io"), "aaa**@channel.io");
        assert_eq!(mask_email("ab@x.io"), "**@x.io");
        assert_eq!(mask_email("abcdefgh@x.io"), "abc*****@x.io");
    }

    #[test]
    fn everything_else_is_fully_masked() {
        assert_eq!(mask("memberId", &json!("m-1")), json!(FULL_MASK));
        assert_eq!(mask("cart", &json!([1, 2])), json!(FULL_MASK));
        assert_eq!(mask("cart", &Value::Null), Value::Null);
    }
}
