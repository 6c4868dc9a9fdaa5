//! Dense bit sets over user slots: every condition of a query produces one, and groups
//! combine them with word-wide AND/OR. For a million users a set is 16K words, so the set
//! algebra of a whole filter costs microseconds; the scans that fill the sets are written
//! so the compiler can vectorize them.

/// A set of slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// The empty set sized for `n` slots.
    pub fn zeros(n: u32) -> Self {
        Self {
            words: vec![0; (n as usize).div_ceil(64)],
        }
    }

    /// Slots `0..n`.
    pub fn ones(n: u32) -> Self {
        let mut b = Self {
            words: vec![u64::MAX; (n as usize).div_ceil(64)],
        };
        b.trim(n);
        b
    }

    fn trim(&mut self, n: u32) {
        let rem = n % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }

    /// Slots `i < n` where `pass(values[i])`; slots beyond `values` pass when `rest` does.
    pub fn select<T>(values: &[T], n: u32, rest: bool, pass: impl Fn(&T) -> bool) -> Self {
        let mut words = Vec::with_capacity((n as usize).div_ceil(64));
        let mut chunks = values.chunks_exact(64);
        for chunk in &mut chunks {
            let mut w = 0u64;
            for (j, v) in chunk.iter().enumerate() {
                w |= u64::from(pass(v)) << j;
            }
            words.push(w);
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut w = 0u64;
            for (j, v) in tail.iter().enumerate() {
                w |= u64::from(pass(v)) << j;
            }
            if rest {
                w |= u64::MAX << tail.len();
            }
            words.push(w);
        }
        let fill = if rest { u64::MAX } else { 0 };
        words.resize((n as usize).div_ceil(64), fill);
        let mut b = Self { words };
        b.trim(n);
        b
    }

    /// Sets or clears one slot, growing as needed.
    pub fn set(&mut self, i: u32, on: bool) {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            if !on {
                return;
            }
            self.words.resize(w + 1, 0);
        }
        let m = 1u64 << (i % 64);
        if on {
            self.words[w] |= m;
        } else {
            self.words[w] &= !m;
        }
    }

    /// Whether slot `i` is in the set.
    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Keeps the slots also in `other`.
    pub fn and(&mut self, other: &Bits) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
    }

    /// Adds the slots of `other`.
    pub fn or(&mut self, other: &Bits) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    /// Removes the slots of `other`.
    pub fn and_not(&mut self, other: &Bits) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= !o;
        }
    }

    /// Number of slots in the set.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// True when no slot is in the set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The slots, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = (i as u32) * 64;
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let t = w.trailing_zeros();
                w &= w - 1;
                Some(base + t)
            })
        })
    }

    /// Heap bytes.
    pub fn bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_fills_the_tail_and_trims() {
        let v = [1, 5, 3];
        let b = Bits::select(&v, 130, true, |x| *x > 2);
        assert_eq!(b.iter().take(3).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(b.len(), 2 + 127);
        let b = Bits::select(&v, 130, false, |x| *x > 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), [1, 2]);
        let mut o = Bits::ones(70);
        assert_eq!(o.len(), 70);
        o.and_not(&b);
        assert_eq!(o.len(), 68);
        assert!(!o.contains(1) && o.contains(0) && !o.contains(70));
    }
}
