//! Deterministic random contacts, events and filters for differential tests: small value
//! domains so that random filters hit and miss often, and every field type and operator
//! appears. (The realistic benchmark data lives in the bench generator.)

use jiff::civil::Date;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sori_domain::event::{Event, EventSource};
use sori_domain::{FieldType, User};

/// A day in ms.
pub const DAY: i64 = 86_400_000;

/// Custom profile fields the generated users carry (besides pre-registered `email`, `name`).
pub const FIELDS: &[(&str, FieldType)] = &[
    ("cartCount", FieldType::Number),
    ("vip", FieldType::Boolean),
    ("birthday", FieldType::Date),
    ("paidAt", FieldType::Datetime),
    ("interests", FieldType::List),
    ("scores", FieldType::ListOfNumber),
    ("plan", FieldType::String),
];

const TAGS: &[&str] = &["vip", "new", "sale", "kr", "us"];
const CITIES: &[&str] = &["Seoul", "Busan", "Incheon"];
const INTERESTS: &[&str] = &["golf", "ski", "wine", "tea"];
const PLANS: &[&str] = &["free", "pro", "team", ""];
const EVENTS: &[&str] = &["PageView", "Purchase", "AddToCart"];
const PAGES: &[&str] = &[
    "https://shop.example/",
    "https://shop.example/cart",
    "https://shop.example/cart/2",
    "https://shop.example/items/9",
];

/// A seeded generator.
pub struct Gen {
    rng: StdRng,
    now: i64,
}

fn date_str(now: i64, days_back: i64) -> String {
    let d = jiff::Timestamp::from_millisecond(now - days_back * DAY)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
        .unwrap_or(Date::constant(2024, 1, 1));
    d.to_string()
}

impl Gen {
    /// A generator for data around `now` (ms).
    pub fn new(seed: u64, now: i64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            now,
        }
    }

    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs.choose(&mut self.rng).copied().unwrap_or("")
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A time within `days` days around now, on a coarse grid so ties and day edges occur.
    fn time(&mut self, days: i64) -> i64 {
        let hours = self.rng.random_range(-24 * 2..=24 * days);
        self.now - hours * 3_600_000 + self.rng.random_range(0..3) * 60_000
    }

    /// One user with id `id`.
    pub fn user(&mut self, id: String) -> User {
        let mut u = User::new(id, self.time(120));
        if self.chance(0.5) {
            u.member_id = Some(format!("m{}", self.rng.random_range(0..1_000_000)));
        }
        let ntags = self.rng.random_range(0..3);
        for _ in 0..ntags {
            let t = self.pick(TAGS).to_owned();
            if !u.tags.contains(&t) {
                u.tags.push(t);
            }
        }
        if self.chance(0.7) {
            u.city = Some(self.pick(CITIES).to_owned());
        }
        if self.chance(0.8) {
            u.last_seen_at = Some(self.time(90));
        }
        u.sessions_count = self.rng.random_range(0..5);
        u.has_chat = self.chance(0.3);
        u.unsubscribe_email = self.chance(0.2);
        u.web.browser_name = self.chance(0.6).then(|| "Chrome".to_owned());
        u.web.sessions_count = self.rng.random_range(0..3);
        let p = &mut u.profile;
        let chance = |rng: &mut StdRng, x| rng.random_bool(x);
        if chance(&mut self.rng, 0.5) {
            let v = format!("user{}@example.com", self.rng.random_range(0..50));
            p.insert("email".into(), json!(v));
        }
        if chance(&mut self.rng, 0.6) {
            p.insert("cartCount".into(), json!(self.rng.random_range(0..4)));
        }
        if chance(&mut self.rng, 0.5) {
            p.insert("vip".into(), json!(self.rng.random_bool(0.5)));
        }
        if chance(&mut self.rng, 0.5) {
            let back = self.rng.random_range(-3..40);
            p.insert("birthday".into(), json!(date_str(self.now, back)));
        }
        if chance(&mut self.rng, 0.5) {
            let t = self.time(40);
            p.insert("paidAt".into(), json!(t));
        }
        if chance(&mut self.rng, 0.5) {
            let n = self.rng.random_range(0..3);
            let items: Vec<&str> = (0..n).map(|_| self.pick(INTERESTS)).collect();
            let mut dedup: Vec<&str> = Vec::new();
            for i in items {
                if !dedup.contains(&i) {
                    dedup.push(i);
                }
            }
            p.insert("interests".into(), json!(dedup));
        }
        if chance(&mut self.rng, 0.4) {
            let n = self.rng.random_range(1..3);
            let v: Vec<i64> = (0..n).map(|_| self.rng.random_range(0..4)).collect();
            p.insert("scores".into(), json!(v));
        }
        if chance(&mut self.rng, 0.6) {
            let v = self.pick(PLANS);
            p.insert("plan".into(), json!(v));
        }
        if chance(&mut self.rng, 0.3) {
            p.insert(
                "name".into(),
                json!(format!("Kim {}", self.rng.random_range(0..9))),
            );
        }
        u
    }

    /// Up to `max` events for a user.
    pub fn events(&mut self, user_id: &str, max: usize) -> Vec<Event> {
        let n = self.rng.random_range(0..=max);
        (0..n)
            .map(|i| {
                let name = self.pick(EVENTS).to_owned();
                let mut property = serde_json::Map::new();
                if name == "Purchase" {
                    property.insert("revenue".into(), json!(self.rng.random_range(1..5) * 1000));
                    property.insert("plan".into(), json!(self.pick(PLANS)));
                }
                if name == "AddToCart" && self.chance(0.5) {
                    property.insert("coupon".into(), json!(self.chance(0.5)));
                }
                Event {
                    id: format!("{user_id}-e{i}"),
                    user_id: user_id.to_owned(),
                    name,
                    property,
                    page: self.chance(0.8).then(|| self.pick(PAGES).to_owned()),
                    created_at: self.time(30).min(self.now),
                    source: EventSource::OpenApi,
                }
            })
            .collect()
    }

    fn value_for(&mut self, key: &str, ty: FieldType) -> Value {
        match (key, ty) {
            ("tags", _) => json!(self.pick(TAGS)),
            ("city", _) => json!(self.pick(CITIES)),
            ("profile.email", _) => {
                json!(format!("user{}@example.com", self.rng.random_range(0..50)))
            }
            ("profile.plan", _) => json!(self.pick(PLANS)),
            ("profile.interests", _) => json!(self.pick(INTERESTS)),
            ("web.browserName", _) => json!("Chrome"),
            ("profile.name", _) | ("name", _) => {
                json!(format!("Kim {}", self.rng.random_range(0..9)))
            }
            (_, FieldType::Number | FieldType::ListOfNumber) => json!(self.rng.random_range(0..4)),
            _ => json!("x"),
        }
    }

    fn field_condition(&mut self) -> Value {
        const KEYS: &[(&str, FieldType)] = &[
            ("member", FieldType::Boolean),
            ("tags", FieldType::List),
            ("city", FieldType::String),
            ("lastSeenAt", FieldType::Datetime),
            ("createdAt", FieldType::Datetime),
            ("sessionsCount", FieldType::Number),
            ("hasChat", FieldType::Boolean),
            ("unsubscribeEmail", FieldType::Boolean),
            ("web.browserName", FieldType::String),
            ("web.sessionsCount", FieldType::Number),
            ("name", FieldType::String),
            ("profile.email", FieldType::String),
            ("profile.cartCount", FieldType::Number),
            ("profile.vip", FieldType::Boolean),
            ("profile.birthday", FieldType::Date),
            ("profile.paidAt", FieldType::Datetime),
            ("profile.interests", FieldType::List),
            ("profile.scores", FieldType::ListOfNumber),
            ("profile.plan", FieldType::String),
        ];
        let (key, ty) = *KEYS.choose(&mut self.rng).unwrap_or(&KEYS[0]);
        if self.chance(0.15) {
            let op = if self.chance(0.5) {
                "$exists"
            } else {
                "$notExists"
            };
            return json!({"key": key, "operator": op});
        }
        let (op, values) = match ty {
            FieldType::Boolean => ("$eq", json!([self.chance(0.5)])),
            FieldType::String => {
                let op = *[
                    "$eq",
                    "$ne",
                    "$in",
                    "$nin",
                    "$contains",
                    "$notContains",
                    "$startsWith",
                ]
                .choose(&mut self.rng)
                .unwrap_or(&"$eq");
                let v = self.value_for(key, ty);
                match op {
                    "$in" | "$nin" => (op, json!([v, self.value_for(key, ty)])),
                    "$contains" | "$notContains" | "$startsWith" => {
                        let s = v.as_str().unwrap_or("");
                        let cut = self.rng.random_range(0..=s.len().min(6));
                        let part = if op == "$startsWith" {
                            &s[..cut]
                        } else {
                            &s[s.len() - cut..]
                        };
                        (op, json!([part]))
                    }
                    _ => (op, json!([v])),
                }
            }
            FieldType::Number => {
                let op = *["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$between"]
                    .choose(&mut self.rng)
                    .unwrap_or(&"$eq");
                let a = self.rng.random_range(0..4);
                if op == "$between" {
                    (op, json!([a, a + self.rng.random_range(0..3)]))
                } else {
                    (op, json!([a]))
                }
            }
            FieldType::Date | FieldType::Datetime => {
                let op = *["$before", "$after", "$on", "$daysAgoGte", "$daysAgoLte"]
                    .choose(&mut self.rng)
                    .unwrap_or(&"$on");
                let back = self.rng.random_range(0..45);
                match op {
                    "$daysAgoGte" | "$daysAgoLte" => (op, json!([back])),
                    "$before" | "$after" if ty == FieldType::Datetime && self.chance(0.5) => {
                        (op, json!([self.time(45)]))
                    }
                    _ => (op, json!([date_str(self.now, back)])),
                }
            }
            FieldType::List | FieldType::ListOfNumber => {
                let op = *["$in", "$all", "$nin"]
                    .choose(&mut self.rng)
                    .unwrap_or(&"$in");
                let n = self.rng.random_range(1..3);
                let vs: Vec<Value> = (0..n).map(|_| self.value_for(key, ty)).collect();
                (op, Value::Array(vs))
            }
        };
        json!({"key": key, "operator": op, "values": values})
    }

    fn event_condition(&mut self) -> Value {
        let name = self.pick(EVENTS);
        let mut c = serde_json::Map::new();
        c.insert("event".into(), json!(name));
        match self.rng.random_range(0..4) {
            0 => {
                c.insert("operator".into(), json!("$notPerformed"));
            }
            k => {
                let op = ["$countGte", "$countLte", "$countEq"][k - 1];
                c.insert("operator".into(), json!(op));
                c.insert("values".into(), json!([self.rng.random_range(0..4)]));
            }
        }
        if self.chance(0.5) {
            c.insert("withinDays".into(), json!(self.rng.random_range(1..40)));
        }
        if self.chance(0.4) {
            let w = match self.rng.random_range(0..4) {
                0 => {
                    json!({"key": "url", "operator": "$startsWith", "values": ["https://shop.example/cart"]})
                }
                1 => {
                    json!({"key": "revenue", "operator": "$gte", "values": [self.rng.random_range(1..5) * 1000]})
                }
                2 => json!({"key": "plan", "operator": "$ne", "values": [self.pick(PLANS)]}),
                _ => json!({"key": "coupon", "operator": "$eq", "values": [self.chance(0.5)]}),
            };
            c.insert("where".into(), json!([w]));
        }
        Value::Object(c)
    }

    /// A random filter of 0–3 groups of 1–3 conditions.
    pub fn filter(&mut self) -> Value {
        let groups: Vec<Value> = (0..self.rng.random_range(0..4))
            .map(|_| {
                let conds: Vec<Value> = (0..self.rng.random_range(1..4))
                    .map(|_| {
                        if self.chance(0.25) {
                            self.event_condition()
                        } else {
                            self.field_condition()
                        }
                    })
                    .collect();
                json!({"or": conds})
            })
            .collect();
        json!({"and": groups})
    }
}
