//! The member hash (SPEC §6): proof from the business's server that a boot's `memberId` is
//! genuine. `hex(HMAC-SHA256(key = hex-decode(memberHashSecret), message = memberId))`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Computes the hash a business's server would send for `member_id`.
pub fn compute(secret_hex: &str, member_id: &str) -> Option<String> {
    let key = hex::decode(secret_hex).ok()?;
    let mut mac = HmacSha256::new_from_slice(&key).ok()?;
    mac.update(member_id.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// Checks a presented hash in constant time.
pub fn verify(secret_hex: &str, member_id: &str, presented_hex: &str) -> bool {
    let (Ok(key), Ok(presented)) = (hex::decode(secret_hex), hex::decode(presented_hex)) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(&key) else {
        return false;
    };
    mac.update(member_id.as_bytes());
    mac.verify_slice(&presented).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let h = compute(&hex::encode("Jefe"), "what do ya want for nothing?").expect("hash");
        assert_eq!(
            h,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(
            &hex::encode("Jefe"),
            "what do ya want for nothing?",
            &h
        ));
        assert!(!verify(&hex::encode("Jefe"), "someone else", &h));
        assert!(!verify(&hex::encode("Jefe"), "x", "zz"));
    }
}
