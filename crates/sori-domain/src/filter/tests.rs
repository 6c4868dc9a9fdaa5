use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::eval::{Facts, matches};
use super::*;
use crate::event::{Event, EventSource};
use crate::field::{ProfileField, ProfileKey};
use crate::user::User;

fn registry() -> Registry {
    let mut fields = Registry::preregistered(0);
    for (k, t) in [
        ("cartCount", FieldType::Number),
        ("vip", FieldType::Boolean),
        ("birthday", FieldType::Date),
        ("paidAt", FieldType::Datetime),
        ("interests", FieldType::List),
        ("scores", FieldType::ListOfNumber),
    ] {
        fields.push(ProfileField {
            key: ProfileKey::parse(k).expect("key"),
            name: k.into(),
            field_type: t,
            sensitive: false,
            builtin: false,
            created_at: 0,
        });
    }
    Registry::new(fields)
}

fn parse(v: Value) -> Result<Filter, Invalid> {
    let r = registry();
    Filter::parse(
        "filter",
        &v,
        &Schema {
            registry: &r,
            retention_days: 90,
        },
    )
}

fn seoul() -> TimeZone {
    TimeZone::get("Asia/Seoul").expect("tz")
}

/// 2024-06-15 12:00 in Seoul.
const NOW: i64 = 1_718_420_400_000;
const DAY: i64 = 86_400_000;

fn query(v: Value) -> Query {
    parse(v).expect("valid filter").resolve(&seoul(), NOW, 90)
}

fn user(f: impl FnOnce(&mut User)) -> User {
    let mut u = User::new("u1".into(), NOW - 400 * DAY);
    f(&mut u);
    u
}

fn event(name: &str, at: i64, page: Option<&str>, property: Value) -> Event {
    Event {
        id: format!("e{at}"),
        user_id: "u1".into(),
        name: name.into(),
        property: property.as_object().cloned().unwrap_or_default(),
        page: page.map(Into::into),
        created_at: at,
        source: EventSource::OpenApi,
    }
}

fn check(q: &Query, u: &User, events: &[Event]) -> bool {
    matches(
        q,
        &Facts {
            user: u,
            events,
            rolled: &HashMap::new(),
        },
    )
}

fn first_error(v: Value) -> (String, String) {
    let e = parse(v).expect_err("must be rejected");
    (e.0[0].field.clone(), e.0[0].message.clone())
}

#[test]
fn seed_audiences() {
    // Example 1: not seen for 30 days and a member.
    let q = query(json!({"and": [
        {"or": [{"key": "lastSeenAt", "operator": "$daysAgoGte", "values": [30]}]},
        {"or": [{"key": "member", "operator": "$eq", "values": [true]}]}
    ]}));
    let stale_member = user(|u| {
        u.member_id = Some("m".into());
        u.last_seen_at = Some(NOW - 31 * DAY);
    });
    assert!(check(&q, &stale_member, &[]));
    let recent = user(|u| {
        u.member_id = Some("m".into());
        u.last_seen_at = Some(NOW - 29 * DAY);
    });
    assert!(!check(&q, &recent, &[]));
    let never_seen = user(|u| u.member_id = Some("m".into()));
    assert!(
        !check(&q, &never_seen, &[]),
        "no lastSeenAt is not 30 days ago"
    );

    // Example 2: at least one item in the cart.
    let q = query(
        json!({"and": [{"or": [{"key": "profile.cartCount", "operator": "$gte", "values": [1]}]}]}),
    );
    assert!(check(
        &q,
        &user(|u| {
            u.profile.insert("cartCount".into(), json!(2));
        }),
        &[]
    ));
    assert!(!check(
        &q,
        &user(|u| {
            u.profile.insert("cartCount".into(), json!(0));
        }),
        &[]
    ));
    assert!(!check(&q, &user(|_| {}), &[]));

    // Example 3: e-mail present, not a member.
    let q = query(json!({"and": [
        {"or": [{"key": "member", "operator": "$eq", "values": [false]}]},
        {"or": [{"key": "profile.email", "operator": "$exists"}]}
    ]}));
    assert!(check(
        &q,
        &user(|u| {
            u.profile.insert("email".into(), json!("a@b.co"));
        }),
        &[]
    ));
    assert!(!check(
        &q,
        &user(|u| {
            u.profile.insert("email".into(), json!("a@b.co"));
            u.member_id = Some("m".into());
        }),
        &[]
    ));
}

#[test]
fn calendar_days_follow_the_channel_zone() {
    // 2024-06-15 00:30 Seoul is 2024-06-14 15:30 UTC: still "today" in Seoul.
    let just_after_midnight = 1_718_379_000_000;
    let q = query(
        json!({"and": [{"or": [{"key": "lastSeenAt", "operator": "$daysAgoLte", "values": [0]}]}]}),
    );
    assert!(check(
        &q,
        &user(|u| u.last_seen_at = Some(just_after_midnight)),
        &[]
    ));
    assert!(!check(
        &q,
        &user(|u| u.last_seen_at = Some(just_after_midnight - DAY)),
        &[]
    ));
    let q = query(
        json!({"and": [{"or": [{"key": "lastSeenAt", "operator": "$on", "values": ["2024-06-14"]}]}]}),
    );
    assert!(check(
        &q,
        &user(|u| u.last_seen_at = Some(just_after_midnight - DAY)),
        &[]
    ));
    let q = query(
        json!({"and": [{"or": [{"key": "profile.birthday", "operator": "$daysAgoGte", "values": [1]}]}]}),
    );
    assert!(check(
        &q,
        &user(|u| {
            u.profile.insert("birthday".into(), json!("2024-06-14"));
        }),
        &[]
    ));
    assert!(!check(
        &q,
        &user(|u| {
            u.profile.insert("birthday".into(), json!("2024-06-15"));
        }),
        &[]
    ));
}

#[test]
fn negative_operators_match_missing_values() {
    for (key, op, val) in [
        ("profile.email", "$ne", json!("x")),
        ("profile.email", "$notContains", json!("x")),
        ("profile.email", "$nin", json!("x")),
        ("profile.cartCount", "$ne", json!(1)),
        ("tags", "$nin", json!("vip")),
        ("profile.interests", "$nin", json!("golf")),
    ] {
        let q = query(json!({"and": [{"or": [{"key": key, "operator": op, "values": [val]}]}]}));
        assert!(check(&q, &user(|_| {}), &[]), "{key} {op}");
    }
}

#[test]
fn tags_compare_lowercase_and_empty_string_is_a_value() {
    let q = query(
        json!({"and": [{"or": [{"key": "tags", "operator": "$all", "values": ["VIP", "new"]}]}]}),
    );
    assert!(check(
        &q,
        &user(|u| u.tags = vec!["vip".into(), "new".into(), "x".into()]),
        &[]
    ));
    assert!(!check(&q, &user(|u| u.tags = vec!["vip".into()]), &[]));
    let q = query(json!({"and": [{"or": [{"key": "profile.email", "operator": "$exists"}]}]}));
    assert!(check(
        &q,
        &user(|u| {
            u.profile.insert("email".into(), json!(""));
        }),
        &[]
    ));
    let q = query(json!({"and": [{"or": [{"key": "tags", "operator": "$notExists"}]}]}));
    assert!(check(&q, &user(|_| {}), &[]));
}

#[test]
fn event_counts_windows_and_properties() {
    let q = query(
        json!({"and": [{"or": [{"event": "PageView", "operator": "$countGte", "values": [2], "withinDays": 7,
        "where": [{"key": "url", "operator": "$startsWith", "values": ["https://shop.example/cart"]}]}]}]}),
    );
    let u = user(|_| {});
    let cart = Some("https://shop.example/cart/1");
    let evs = [
        event("PageView", NOW - DAY, cart, json!({})),
        event("PageView", NOW - 2 * DAY, cart, json!({})),
        event(
            "PageView",
            NOW - 3 * DAY,
            Some("https://shop.example/"),
            json!({}),
        ),
    ];
    assert!(check(&q, &u, &evs));
    assert!(!check(&q, &u, &evs[1..]));
    // Seven calendar days: today and the six before it.
    let old = [
        event("PageView", NOW - DAY, cart, json!({})),
        event("PageView", NOW - 7 * DAY, cart, json!({})),
    ];
    assert!(!check(&q, &u, &old));
    let q = query(json!({"and": [{"or": [{"event": "Purchase", "operator": "$notPerformed"}]}]}));
    assert!(check(&q, &u, &evs));
    assert!(!check(
        &q,
        &u,
        &[event("Purchase", NOW, None, json!({"revenue": 3}))]
    ));
    let q = query(
        json!({"and": [{"or": [{"event": "Purchase", "operator": "$countEq", "values": [1],
        "where": [{"key": "revenue", "operator": "$gt", "values": [2]}]}]}]}),
    );
    assert!(check(
        &q,
        &u,
        &[event("Purchase", NOW, None, json!({"revenue": 3}))]
    ));
    assert!(!check(
        &q,
        &u,
        &[event("Purchase", NOW, None, json!({"revenue": "3"}))]
    ));
}

#[test]
fn errors_name_group_condition_and_rule() {
    let cases = [
        (json!([]), "filter", "must be an object"),
        (
            json!({"and": [{"or": []}]}),
            "filter.and[0].or",
            "must not be empty",
        ),
        (
            json!({"and": [{"or": [{"key": "profile.nope", "operator": "$exists"}]}]}),
            "filter.and[0].or[0].key",
            "not a registered profile field",
        ),
        (
            json!({"and": [{"or": [{"key": "wat", "operator": "$exists"}]}]}),
            "filter.and[0].or[0].key",
            "not a built-in field",
        ),
        (
            json!({"and": [{"or": [{"key": "member", "operator": "$gt", "values": [1]}]}]}),
            "filter.and[0].or[0].operator",
            "does not apply to a boolean field",
        ),
        (
            json!({"and": [{"or": [{"key": "profile.cartCount", "operator": "$gt", "values": ["1"]}]}]}),
            "filter.and[0].or[0].values[0]",
            "must be a number",
        ),
        (
            json!({"and": [{"or": [{"key": "profile.cartCount", "operator": "$between", "values": [3, 1]}]}]}),
            "filter.and[0].or[0].values",
            "low ≤ high",
        ),
        (
            json!({"and": [{"or": [{"key": "lastSeenAt", "operator": "$daysAgoGte", "values": [-1]}]}]}),
            "filter.and[0].or[0].values[0]",
            "whole number of days",
        ),
        (
            json!({"and": [{"or": [{"key": "lastSeenAt", "operator": "$on", "values": ["2024-02-30"]}]}]}),
            "filter.and[0].or[0].values[0]",
            "YYYY-MM-DD",
        ),
        (
            json!({"and": [{"or": [{"event": "PageView", "operator": "$countGte", "values": [1], "withinDays": 100000}]}]}),
            "filter.and[0].or[0].withinDays",
            "from 1 to 90",
        ),
        (
            json!({"and": [{"or": [{"event": "PageView", "operator": "$eq", "values": [1]}]}]}),
            "filter.and[0].or[0].operator",
            "does not apply to an event",
        ),
        (
            json!({"and": [{"or": [{"key": "tags", "operator": "$in", "values": []}]}]}),
            "filter.and[0].or[0].values",
            "at least one value",
        ),
        (
            json!({"and": [{"or": [{"key": "tags", "operator": "$in", "values": ["a"], "x": 1}]}]}),
            "filter.and[0].or[0].x",
            "unknown key",
        ),
    ];
    for (v, field, msg) in cases {
        let (f, m) = first_error(v.clone());
        assert_eq!(f, field, "{v}");
        assert!(m.contains(msg), "{v}: {m}");
    }
    let many: Vec<Value> = (0..21)
        .map(|_| json!({"or": [{"key": "member", "operator": "$exists"}]}))
        .collect();
    assert!(
        first_error(json!({"and": many}))
            .1
            .contains("at most 20 groups")
    );
}

#[test]
fn empty_filter_matches_everyone() {
    assert!(check(&query(json!({"and": []})), &user(|_| {}), &[]));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("$eq"),
            Just("$in"),
            Just("$exists"),
            Just("$countGte"),
            Just("$between"),
            Just("$daysAgoLte"),
            Just("tags"),
            Just("profile.cartCount"),
            Just("lastSeenAt"),
            Just("PageView"),
            Just("2024-01-01"),
            Just("and"),
            Just("or"),
            Just("key"),
            Just("operator"),
            Just("values"),
            Just("event"),
            Just("where"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("and"),
                        Just("or"),
                        Just("key"),
                        Just("operator"),
                        Just("values"),
                        Just("event"),
                        Just("withinDays"),
                        Just("where")
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

proptest! {
    /// Any JSON is either a valid filter or a rejection naming a path under `filter`;
    /// parsing and resolving never panic.
    #[test]
    fn any_json_parses_or_is_rejected(v in arb_json()) {
        match parse(v) {
            Ok(f) => { let _ = f.resolve(&seoul(), NOW, 90); }
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                prop_assert!(e.0.iter().all(|fe| fe.field.starts_with("filter")));
            }
        }
    }
}
