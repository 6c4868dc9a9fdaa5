//! Realistic, deterministic contacts and events for benchmarks: members and anonymous
//! visitors, skewed tag popularity, last visits spread over a year (most of them recent),
//! profile fields of every type (cart counts, e-mail presence, plans, dates, lists) and
//! about 20 events per user with properties. The same seed gives the same data.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sori_domain::event::{EventSource, NewEvent};
use sori_domain::{FieldType, User};

/// A day in ms.
pub const DAY: i64 = 86_400_000;

/// Custom profile fields the generator fills (pre-registered ones come on top).
pub const FIELDS: &[(&str, FieldType)] = &[
    ("cartCount", FieldType::Number),
    ("plan", FieldType::String),
    ("vip", FieldType::Boolean),
    ("birthday", FieldType::Date),
    ("lastOrderAt", FieldType::Datetime),
    ("interests", FieldType::List),
    ("couponValues", FieldType::ListOfNumber),
];

const TAGS: &[&str] = &[
    "vip",
    "new",
    "sale",
    "newsletter",
    "app",
    "returning",
    "kr",
    "jp",
    "us",
    "coupon",
    "wishlist",
    "beta",
    "b2b",
    "student",
    "family",
    "gift",
    "premium",
    "trial",
    "churned",
    "loyal",
];
const CITIES: &[&str] = &[
    "Seoul", "Busan", "Incheon", "Daegu", "Daejeon", "Gwangju", "Suwon",
];
const PLANS: &[&str] = &["free", "basic", "pro", "team"];
const INTERESTS: &[&str] = &[
    "fashion", "beauty", "food", "travel", "tech", "sports", "books",
];
const BROWSERS: &[&str] = &["Chrome", "Safari", "Samsung Internet", "Firefox", "Edge"];
const EVENTS: &[(&str, u32)] = &[
    ("PageView", 60),
    ("AddToCart", 14),
    ("Search", 12),
    ("Purchase", 5),
    ("SignUp", 2),
    ("CouponUsed", 7),
];

/// One generated user with its events.
pub struct Generated {
    /// The user.
    pub user: User,
    /// Its events, each with the owner's id.
    pub events: Vec<(String, NewEvent)>,
}

/// Index into `xs` with a skew towards the front (popular first).
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    let x: f64 = rng.random::<f64>();
    ((x * x * x) * n as f64) as usize % n
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn hex_id(prefix: u64, n: u64) -> String {
    format!("{prefix:08x}{n:016x}")
}

/// Generates user `n` (0-based) of a data set, deterministically from `seed`, around
/// `now` (ms). Events fall within the last `event_days` days.
pub fn user(seed: u64, n: u64, now: i64, event_days: i64) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
    let id = hex_id(0x5001, n);
    // Last visit: three quarters within a month, the rest spread over the year.
    let seen_days = if rng.random_bool(0.75) {
        rng.random_range(0.0..30.0)
    } else {
        rng.random_range(30.0..365.0)
    };
    let last_seen = now - (seen_days * DAY as f64) as i64;
    let created = last_seen - rng.random_range(0..400) * DAY - rng.random_range(0..DAY);
    let mut u = User::new(id.clone(), created);
    u.updated_at = last_seen;
    u.last_seen_at = Some(last_seen);
    let member = rng.random_bool(0.55);
    if member {
        u.member_id = Some(format!("m{n}"));
    } else {
        u.veil_id = Some(format!("v{n}"));
    }
    let ntags = [0, 0, 1, 1, 1, 2, 2, 3, 4][rng.random_range(0..9)];
    for _ in 0..ntags {
        let t = TAGS[skewed(&mut rng, TAGS.len())].to_owned();
        if !u.tags.contains(&t) {
            u.tags.push(t);
        }
    }
    if rng.random_bool(0.7) {
        u.city = Some(CITIES[skewed(&mut rng, CITIES.len())].to_owned());
        u.country = Some("KR".into());
    }
    u.language = Some(if rng.random_bool(0.9) { "ko" } else { "en" }.to_owned());
    u.sessions_count = 1 + (rng.random::<f64>().powi(3) * 60.0) as i64;
    u.has_chat = rng.random_bool(0.2);
    u.unsubscribe_email = rng.random_bool(0.1);
    u.unsubscribe_texting = rng.random_bool(0.08);
    u.web.browser_name = Some(BROWSERS[skewed(&mut rng, BROWSERS.len())].to_owned());
    u.web.sessions_count = u.sessions_count;
    u.web.last_seen_at = u.last_seen_at;
    let p: &mut Map<String, Value> = &mut u.profile;
    if member && rng.random_bool(0.8) {
        p.insert("name".into(), json!(format!("Customer {n}")));
    }
    if rng.random_bool(if member { 0.7 } else { 0.15 }) {
        p.insert("email".into(), json!(format!("user{n}@example.com")));
    }
    if member && rng.random_bool(0.5) {
        p.insert(
            "mobileNumber".into(),
            json!(format!("+8210{:08}", n % 100_000_000)),
        );
    }
    if rng.random_bool(0.4) {
        let c = (rng.random::<f64>().powi(2) * 8.0) as i64;
        p.insert("cartCount".into(), json!(c));
    }
    if member {
        p.insert("plan".into(), json!(PLANS[skewed(&mut rng, PLANS.len())]));
        p.insert("vip".into(), json!(rng.random_bool(0.1)));
        if rng.random_bool(0.5) {
            let y = rng.random_range(1960..2008);
            let m = rng.random_range(1..=12);
            let d = rng.random_range(1..=28);
            p.insert("birthday".into(), json!(format!("{y}-{m:02}-{d:02}")));
        }
        if rng.random_bool(0.4) {
            p.insert(
                "lastOrderAt".into(),
                json!(now - rng.random_range(0..200) * DAY),
            );
        }
        if rng.random_bool(0.3) {
            p.insert(
                "couponValues".into(),
                json!([1000, 3000, 5000][..rng.random_range(1..=3)]),
            );
        }
    }
    if rng.random_bool(0.35) {
        let k = rng.random_range(1..=3);
        let mut v: Vec<&str> = Vec::new();
        for _ in 0..k {
            let i = pick(&mut rng, INTERESTS);
            if !v.contains(&i) {
                v.push(i);
            }
        }
        p.insert("interests".into(), json!(v));
    }
    // About 20 events: between 0 and 40, within the retention window and not after the
    // last visit.
    let n_events = rng.random_range(0..=40);
    let total: u32 = EVENTS.iter().map(|(_, w)| w).sum();
    let mut events = Vec::with_capacity(n_events);
    for i in 0..n_events {
        let mut r = rng.random_range(0..total);
        let name = EVENTS
            .iter()
            .find(|(_, w)| {
                if r < *w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .map_or("PageView", |(n, _)| n);
        let at = (last_seen - rng.random_range(0..event_days * DAY)).max(now - event_days * DAY);
        let mut property = Map::new();
        let page = match name {
            "PageView" => Some(format!(
                "https://shop.example/{}",
                ["", "cart", "items/1", "items/2", "event"][skewed(&mut rng, 5)]
            )),
            "AddToCart" => {
                property.insert("itemId".into(), json!(rng.random_range(1..500)));
                property.insert("price".into(), json!(rng.random_range(1..100) * 1000));
                Some("https://shop.example/cart".to_owned())
            }
            "Purchase" => {
                property.insert("revenue".into(), json!(rng.random_range(1..300) * 1000));
                property.insert("plan".into(), json!(pick(&mut rng, PLANS)));
                Some("https://shop.example/checkout".to_owned())
            }
            "Search" => {
                property.insert("query".into(), json!(pick(&mut rng, INTERESTS)));
                None
            }
            _ => None,
        };
        events.push((
            id.clone(),
            NewEvent::new(
                hex_id(0xe000_0000 | (i as u64), n),
                name.to_owned(),
                property,
                page,
                at,
                EventSource::Import,
            ),
        ));
    }
    Generated { user: u, events }
}
