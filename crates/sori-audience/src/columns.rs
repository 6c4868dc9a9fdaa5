//! Typed columns indexed by user slot. Each answers a value test with a bitmap of slots;
//! the value semantics come from `sori_domain::filter::eval`, so the projection and the
//! reference evaluator cannot drift apart.

use rustc_hash::FxHashMap as HashMap;
use std::mem::size_of;

use jiff::civil::Date;
use roaring::RoaringBitmap;
use sori_domain::filter::eval::{in_range, test_num, test_str};
use sori_domain::filter::{ListMode, NumTest, StrTest};

use crate::bits::Bits;

/// Code of "no value" in a string column.
const NONE: u32 = u32::MAX;

/// Dictionary-encoded strings: low-cardinality fields (country, browser) cost four bytes
/// a user, and a test runs once per distinct value, then once over the codes.
#[derive(Debug, Default)]
pub struct StrCol {
    dict: Vec<Box<str>>,
    lookup: HashMap<Box<str>, u32>,
    codes: Vec<u32>,
}

impl StrCol {
    /// Sets (or clears) a slot's value.
    pub fn set(&mut self, slot: u32, v: Option<&str>) {
        let code = match v {
            None => NONE,
            Some(s) => match self.lookup.get(s) {
                Some(c) => *c,
                None => {
                    let c = self.dict.len() as u32;
                    self.dict.push(s.into());
                    self.lookup.insert(s.into(), c);
                    c
                }
            },
        };
        let i = slot as usize;
        if self.codes.len() <= i {
            if code == NONE {
                return;
            }
            self.codes.resize(i + 1, NONE);
        }
        self.codes[i] = code;
    }

    /// A slot's value.
    pub fn get(&self, slot: u32) -> Option<&str> {
        match self.codes.get(slot as usize) {
            Some(&c) if c != NONE => Some(&self.dict[c as usize]),
            _ => None,
        }
    }

    /// Slots whose value passes `pass` (called once per distinct value, `None` for absent),
    /// among the first `n` slots.
    pub fn select(&self, n: u32, pass: impl Fn(Option<&str>) -> bool) -> Bits {
        // One answer per code, absent last: the scan is then a table lookup per slot.
        let mut ok: Vec<bool> = self.dict.iter().map(|s| pass(Some(s))).collect();
        let missing = pass(None);
        ok.push(missing);
        let last = self.dict.len();
        Bits::select(&self.codes, n, missing, |&c| {
            ok[if c == NONE { last } else { c as usize }]
        })
    }

    /// A string test.
    pub fn test(&self, n: u32, t: &StrTest) -> Bits {
        self.select(n, |v| test_str(t, v))
    }

    /// Slots whose value is a calendar day within `[from, to]`.
    pub fn days(&self, n: u32, from: Option<Date>, to: Option<Date>) -> Bits {
        self.select(n, |v| {
            v.and_then(|s| s.parse::<Date>().ok())
                .is_some_and(|d| from.is_none_or(|f| d >= f) && to.is_none_or(|e| d <= e))
        })
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.codes.capacity() * 4
            + self.dict.iter().map(|s| s.len() + 16).sum::<usize>() * 2
            + self.lookup.capacity() * (size_of::<Box<str>>() + 8)
    }
}

/// Numbers; NaN marks "no value".
#[derive(Debug, Default)]
pub struct NumCol {
    values: Vec<f64>,
}

impl NumCol {
    /// Sets (or clears) a slot's value.
    pub fn set(&mut self, slot: u32, v: Option<f64>) {
        let i = slot as usize;
        if self.values.len() <= i {
            if v.is_none() {
                return;
            }
            self.values.resize(i + 1, f64::NAN);
        }
        self.values[i] = v.unwrap_or(f64::NAN);
    }

    /// A slot's value.
    pub fn get(&self, slot: u32) -> Option<f64> {
        self.values
            .get(slot as usize)
            .copied()
            .filter(|x| !x.is_nan())
    }

    /// A number test among the first `n` slots.
    pub fn test(&self, n: u32, t: &NumTest) -> Bits {
        let opt = |x: f64| if x.is_nan() { None } else { Some(x) };
        let rest = test_num(t, None);
        match t {
            // The common range case avoids the generic match per element (NaN fails it).
            NumTest::Range { lo, hi } => {
                Bits::select(&self.values, n, rest, |&x| in_range(x, *lo, *hi))
            }
            _ => Bits::select(&self.values, n, rest, |&x| test_num(t, opt(x))),
        }
    }

    /// Slots holding a whole number in `[from, to)` (instants in ms).
    pub fn times(&self, n: u32, from: Option<i64>, to: Option<i64>) -> Bits {
        Bits::select(&self.values, n, false, |&x| {
            x.fract() == 0.0
                && (x as i64) as f64 == x
                && from.is_none_or(|f| x as i64 >= f)
                && to.is_none_or(|e| (x as i64) < e)
        })
    }

    /// Slots with a value.
    pub fn present(&self, n: u32) -> Bits {
        Bits::select(&self.values, n, false, |x| !x.is_nan())
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.values.capacity() * 8
    }
}

/// Instants (ms); `i64::MIN` marks "no value".
#[derive(Debug, Default)]
pub struct TimeCol {
    values: Vec<i64>,
}

impl TimeCol {
    /// Sets (or clears) a slot's value.
    pub fn set(&mut self, slot: u32, v: Option<i64>) {
        let i = slot as usize;
        if self.values.len() <= i {
            if v.is_none() {
                return;
            }
            self.values.resize(i + 1, i64::MIN);
        }
        self.values[i] = v.unwrap_or(i64::MIN);
    }

    /// A slot's value.
    pub fn get(&self, slot: u32) -> Option<i64> {
        self.values
            .get(slot as usize)
            .copied()
            .filter(|&t| t != i64::MIN)
    }

    /// Slots in `[from, to)`.
    pub fn range(&self, n: u32, from: Option<i64>, to: Option<i64>) -> Bits {
        let lo = from.unwrap_or(i64::MIN + 1).max(i64::MIN + 1);
        let hi = to.unwrap_or(i64::MAX);
        Bits::select(&self.values, n, false, |&t| t >= lo && t < hi)
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.values.capacity() * 8
    }
}

/// Booleans as two bit sets, so `$eq` is a copy, not a scan.
#[derive(Debug, Default)]
pub struct BoolCol {
    /// Slots holding true.
    pub yes: Bits,
    /// Slots holding false.
    pub no: Bits,
}

impl BoolCol {
    /// Sets (or clears) a slot's value.
    pub fn set(&mut self, slot: u32, v: Option<bool>) {
        self.yes.set(slot, v == Some(true));
        self.no.set(slot, v == Some(false));
    }

    /// Slots with a value.
    pub fn present(&self) -> Bits {
        let mut p = self.yes.clone();
        p.or(&self.no);
        p
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.yes.bytes() + self.no.bytes()
    }
}

/// Lists (tags, list fields): an inverted index from item to slots (compressed, as most
/// items are rare), plus each slot's items so an update can take the old ones out.
#[derive(Debug, Default)]
pub struct ListCol<K> {
    codes: HashMap<K, u32>,
    postings: Vec<RoaringBitmap>,
    items: Vec<Vec<u32>>,
    nonempty: Bits,
}

impl<K: std::hash::Hash + Eq + Clone> ListCol<K> {
    /// Replaces a slot's items; `own` makes a stored key from a borrowed one.
    pub fn set<'a, Q: std::hash::Hash + Eq + ?Sized + 'a>(
        &mut self,
        slot: u32,
        items: impl IntoIterator<Item = &'a Q>,
        own: impl Fn(&Q) -> K,
    ) where
        K: std::borrow::Borrow<Q>,
    {
        let i = slot as usize;
        if let Some(old) = self.items.get_mut(i) {
            for c in old.drain(..) {
                self.postings[c as usize].remove(slot);
            }
        }
        let mut new = Vec::new();
        for k in items {
            // Looked up by reference: a key is only allocated the first time it is seen.
            let c = match self.codes.get(k) {
                Some(c) => *c,
                None => {
                    let c = self.postings.len() as u32;
                    self.codes.insert(own(k), c);
                    self.postings.push(RoaringBitmap::new());
                    c
                }
            };
            if self.postings[c as usize].insert(slot) {
                new.push(c);
            }
        }
        if new.is_empty() {
            self.nonempty.set(slot, false);
            if let Some(old) = self.items.get_mut(i) {
                *old = Vec::new();
            }
            return;
        }
        self.nonempty.set(slot, true);
        if self.items.len() <= i {
            self.items.resize_with(i + 1, Vec::new);
        }
        self.items[i] = new;
    }

    /// Slots with at least one item.
    pub fn present(&self) -> &Bits {
        &self.nonempty
    }

    /// A list test among `universe` (`n` slots).
    pub fn test(&self, mode: ListMode, keys: &[K], n: u32, universe: &Bits) -> Bits {
        let post = |k: &K| self.codes.get(k).map(|c| &self.postings[*c as usize]);
        let any = || {
            let mut any = RoaringBitmap::new();
            for p in keys.iter().filter_map(post) {
                any |= p;
            }
            any
        };
        let dense = |r: &RoaringBitmap| {
            let mut b = Bits::zeros(n);
            for s in r {
                b.set(s, true);
            }
            b
        };
        match mode {
            ListMode::Any => dense(&any()),
            ListMode::None => {
                let mut b = universe.clone();
                b.and_not(&dense(&any()));
                b
            }
            ListMode::All => {
                let mut all: Option<RoaringBitmap> = None;
                for k in keys {
                    let Some(p) = post(k) else {
                        return Bits::zeros(n);
                    };
                    all = Some(match all {
                        None => p.clone(),
                        Some(a) => a & p,
                    });
                }
                dense(&all.unwrap_or_default())
            }
        }
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.postings
            .iter()
            .map(|p| p.serialized_size())
            .sum::<usize>()
            + self
                .items
                .iter()
                .map(|v| v.capacity() * 4 + 24)
                .sum::<usize>()
            + self.codes.capacity() * (size_of::<K>() + 8)
            + self.nonempty.bytes()
    }
}

/// A number as a list key: equal numbers give equal keys (`-0.0` is `0.0`).
pub fn num_key(x: f64) -> u64 {
    if x == 0.0 { 0 } else { x.to_bits() }
}
