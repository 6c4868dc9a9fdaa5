//! Typed columns indexed by user slot. Each answers a value test with a bitmap of slots;
//! the value semantics come from `sori_domain::filter::eval`, so the projection and the
//! reference evaluator cannot drift apart.

use std::collections::HashMap;
use std::mem::size_of;

use jiff::civil::Date;
use roaring::RoaringBitmap;
use sori_domain::filter::eval::{in_range, test_num, test_str};
use sori_domain::filter::{ListMode, NumTest, StrTest};

/// Code of "no value" in a string column.
const NONE: u32 = u32::MAX;

/// Slots whose element passes, as a bitmap (slots are in order, so this is a sorted fill).
fn select<T>(values: &[T], pass: impl Fn(&T) -> bool) -> RoaringBitmap {
    let mut out = RoaringBitmap::new();
    let mut run: Option<(u32, u32)> = None;
    for (i, v) in values.iter().enumerate() {
        let i = i as u32;
        if pass(v) {
            run = match run {
                Some((s, e)) if e == i => Some((s, i + 1)),
                Some((s, e)) => {
                    out.insert_range(s..e);
                    Some((i, i + 1))
                }
                None => Some((i, i + 1)),
            };
        }
    }
    if let Some((s, e)) = run {
        out.insert_range(s..e);
    }
    out
}

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
    pub fn select(&self, n: u32, pass: impl Fn(Option<&str>) -> bool) -> RoaringBitmap {
        let ok: Vec<bool> = self.dict.iter().map(|s| pass(Some(s))).collect();
        let missing = pass(None);
        let mut out = select(&self.codes, |&c| {
            if c == NONE { missing } else { ok[c as usize] }
        });
        if missing && (self.codes.len() as u32) < n {
            out.insert_range(self.codes.len() as u32..n);
        }
        out
    }

    /// A string test.
    pub fn test(&self, n: u32, t: &StrTest) -> RoaringBitmap {
        self.select(n, |v| test_str(t, v))
    }

    /// Slots whose value is a calendar day within `[from, to]`.
    pub fn days(&self, n: u32, from: Option<Date>, to: Option<Date>) -> RoaringBitmap {
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
    pub fn test(&self, n: u32, t: &NumTest) -> RoaringBitmap {
        let opt = |x: f64| if x.is_nan() { None } else { Some(x) };
        let mut out = match t {
            // The common range case avoids the generic match per element.
            NumTest::Range { lo, hi } => select(&self.values, |&x| in_range(x, *lo, *hi)),
            _ => select(&self.values, |&x| test_num(t, opt(x))),
        };
        if test_num(t, None) && (self.values.len() as u32) < n {
            out.insert_range(self.values.len() as u32..n);
        }
        out
    }

    /// Slots holding a whole number in `[from, to)` (instants in ms).
    pub fn times(&self, from: Option<i64>, to: Option<i64>) -> RoaringBitmap {
        select(&self.values, |&x| {
            x.fract() == 0.0
                && (x as i64) as f64 == x
                && from.is_none_or(|f| x as i64 >= f)
                && to.is_none_or(|e| (x as i64) < e)
        })
    }

    /// Slots with a value.
    pub fn present(&self) -> RoaringBitmap {
        select(&self.values, |x| !x.is_nan())
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
    pub fn range(&self, from: Option<i64>, to: Option<i64>) -> RoaringBitmap {
        let lo = from.unwrap_or(i64::MIN + 1).max(i64::MIN + 1);
        let hi = to.unwrap_or(i64::MAX);
        select(&self.values, |&t| t >= lo && t < hi)
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.values.capacity() * 8
    }
}

/// Booleans as two bitmaps, so `$eq` is a lookup, not a scan.
#[derive(Debug, Default)]
pub struct BoolCol {
    /// Slots holding true.
    pub yes: RoaringBitmap,
    /// Slots holding false.
    pub no: RoaringBitmap,
}

impl BoolCol {
    /// Sets (or clears) a slot's value.
    pub fn set(&mut self, slot: u32, v: Option<bool>) {
        self.yes.remove(slot);
        self.no.remove(slot);
        match v {
            Some(true) => {
                self.yes.insert(slot);
            }
            Some(false) => {
                self.no.insert(slot);
            }
            None => {}
        }
    }

    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.yes.serialized_size() + self.no.serialized_size()
    }
}

/// Lists (tags, list fields): an inverted index from item to slots, plus each slot's
/// items so an update can take the old ones out.
#[derive(Debug, Default)]
pub struct ListCol<K> {
    codes: HashMap<K, u32>,
    postings: Vec<RoaringBitmap>,
    items: Vec<Vec<u32>>,
    nonempty: RoaringBitmap,
}

impl<K: std::hash::Hash + Eq + Clone> ListCol<K> {
    /// Replaces a slot's items.
    pub fn set(&mut self, slot: u32, items: impl IntoIterator<Item = K>) {
        let i = slot as usize;
        if let Some(old) = self.items.get_mut(i) {
            for c in old.drain(..) {
                self.postings[c as usize].remove(slot);
            }
        }
        let mut new = Vec::new();
        for k in items {
            let c = match self.codes.get(&k) {
                Some(c) => *c,
                None => {
                    let c = self.postings.len() as u32;
                    self.codes.insert(k, c);
                    self.postings.push(RoaringBitmap::new());
                    c
                }
            };
            if self.postings[c as usize].insert(slot) {
                new.push(c);
            }
        }
        if new.is_empty() {
            self.nonempty.remove(slot);
            if let Some(old) = self.items.get_mut(i) {
                *old = Vec::new();
            }
            return;
        }
        self.nonempty.insert(slot);
        if self.items.len() <= i {
            self.items.resize_with(i + 1, Vec::new);
        }
        self.items[i] = new;
    }

    /// Slots with at least one item.
    pub fn present(&self) -> &RoaringBitmap {
        &self.nonempty
    }

    /// A list test among `universe`.
    pub fn test(&self, mode: ListMode, keys: &[K], universe: &RoaringBitmap) -> RoaringBitmap {
        let post = |k: &K| self.codes.get(k).map(|c| &self.postings[*c as usize]);
        match mode {
            ListMode::Any | ListMode::None => {
                let mut any = RoaringBitmap::new();
                for k in keys {
                    if let Some(p) = post(k) {
                        any |= p;
                    }
                }
                if mode == ListMode::Any {
                    any
                } else {
                    universe - any
                }
            }
            ListMode::All => {
                let mut all: Option<RoaringBitmap> = None;
                for k in keys {
                    let Some(p) = post(k) else {
                        return RoaringBitmap::new();
                    };
                    all = Some(match all {
                        None => p.clone(),
                        Some(a) => a & p,
                    });
                }
                all.unwrap_or_default()
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
            + self.nonempty.serialized_size()
    }
}

/// A number as a list key: equal numbers give equal keys (`-0.0` is `0.0`).
pub fn num_key(x: f64) -> u64 {
    if x == 0.0 { 0 } else { x.to_bits() }
}
