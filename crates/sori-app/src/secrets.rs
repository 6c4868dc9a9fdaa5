//! Random credentials, their hashes and time-ordered ids.
//!
//! API secrets are 256-bit random values, so a fast keyed hash (HMAC-SHA256 with an
//! install-wide key) is enough to make a stolen database useless; only passwords, which
//! people choose, need Argon2's deliberate slowness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Keyed hash of a random secret, as hex.
pub fn keyed_hash(pepper: &[u8], secret: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("hmac takes any key");
    mac.update(secret.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of `secret` against the leading bytes of its keyed hash, given as
/// hex (tokens carry a truncated MAC to stay short).
pub fn keyed_hash_prefix_matches(pepper: &[u8], secret: &str, prefix_hex: &str) -> bool {
    let Ok(prefix) = hex::decode(prefix_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("hmac takes any key");
    mac.update(secret.as_bytes());
    !prefix.is_empty() && mac.verify_truncated_left(&prefix).is_ok()
}

/// Constant-time check of a secret against its keyed hash.
pub fn keyed_hash_matches(pepper: &[u8], secret: &str, stored_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("hmac takes any key");
    mac.update(secret.as_bytes());
    mac.verify_slice(&stored).is_ok()
}

/// Argon2id PHC string of a password.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks a password against a PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

static LAST: AtomicU64 = AtomicU64::new(0);

/// A 24-hex-character id: 48 bits of milliseconds and a 16-bit counter (monotonic within
/// this process, so ids sort by creation), then 32 random bits against clashes between
/// nodes.
pub fn new_id() -> String {
    let candidate = (now_ms() as u64) << 16;
    let mut prev = LAST.load(Ordering::Relaxed);
    let stamp = loop {
        let next = candidate.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(p) => prev = p,
        }
    };
    id_of(stamp, rand::rng().next_u32())
}

/// The id's text: the stamp and a random tail in fixed-width lowercase hex, by table
/// rather than `format!` (ids are made twice per ingested event).
fn id_of(stamp: u64, tail: u32) -> String {
    let mut raw = [0u8; 12];
    raw[..8].copy_from_slice(&stamp.to_be_bytes());
    raw[8..].copy_from_slice(&tail.to_be_bytes());
    let mut hex = [0u8; 24];
    hex::encode_to_slice(raw, &mut hex).expect("24 hex digits for 12 bytes");
    hex.iter().map(|&b| char::from(b)).collect()
}

/// True when `s` looks like an id made by [`new_id`]; lets handlers answer 404 early.
pub fn is_id(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sorted_and_unique() {
        assert_eq!(
            id_of(0x0123_4567_89ab_cdef, 0xdead_beef),
            "0123456789abcdefdeadbeef"
        );
        assert_eq!(id_of(1 << 16, 7), "000000000001000000000007");
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| is_id(i)));
    }

    #[test]
    fn keyed_hashes_verify() {
        let h = keyed_hash(b"k", "secret");
        assert!(keyed_hash_matches(b"k", "secret", &h));
        assert!(!keyed_hash_matches(b"k", "secreT", &h));
        assert!(!keyed_hash_matches(b"other", "secret", &h));
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("pw-1");
        assert!(verify_password("pw-1", &h));
        assert!(!verify_password("pw-2", &h));
        assert!(!verify_password("pw-1", "garbage"));
    }
}
