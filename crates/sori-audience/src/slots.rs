//! User id → slot. Ids are 24 lowercase hex digits (time-ordered), so they are kept as
//! 96-bit integers inline in the table: a lookup hashes a number and touches one bucket,
//! instead of chasing a pointer to a string (which dominated building from tens of
//! millions of events). Any other id shape still works, through a second table.

use rustc_hash::FxHashMap;

/// The id index of a projection.
#[derive(Debug, Default)]
pub struct Slots {
    hex: FxHashMap<u128, u32>,
    other: FxHashMap<Box<str>, u32>,
}

fn key(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() != 24 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

impl Slots {
    /// The slot of an id.
    pub fn get(&self, id: &str) -> Option<u32> {
        match key(id) {
            Some(k) => self.hex.get(&k).copied(),
            None => self.other.get(id).copied(),
        }
    }

    /// Records an id's slot.
    pub fn insert(&mut self, id: &str, slot: u32) {
        match key(id) {
            Some(k) => {
                self.hex.insert(k, slot);
            }
            None => {
                self.other.insert(id.into(), slot);
            }
        }
    }

    /// Makes room for `n` more ids (a build knows how many are coming).
    pub fn reserve(&mut self, n: usize) {
        self.hex.reserve(n);
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.hex.capacity() * (16 + 4 + 8) + self.other.capacity() * (16 + 4 + 8 + 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_other_ids() {
        let mut s = Slots::default();
        s.insert("0123456789abcdef01234567", 1);
        s.insert("0123456789ABCDEF01234567", 2);
        s.insert("x", 3);
        assert_eq!(s.get("0123456789abcdef01234567"), Some(1));
        assert_eq!(s.get("0123456789ABCDEF01234567"), Some(2));
        assert_eq!(s.get("x"), Some(3));
        assert_eq!(s.get("y"), None);
    }
}
