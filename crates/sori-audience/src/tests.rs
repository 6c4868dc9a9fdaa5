use std::collections::HashMap;

use sori_domain::event::Event;
use sori_domain::field::{ProfileField, ProfileKey};
use sori_domain::filter::eval::{Facts, event_counts, matches};
use sori_domain::filter::{Filter, Schema};
use sori_domain::{Registry, User};

use jiff::tz::TimeZone;

use super::*;
use crate::testgen::{FIELDS, Gen};

/// 2024-06-15 12:00 in Seoul.
const NOW: i64 = 1_718_420_400_000;

fn registry() -> Registry {
    let mut fields = Registry::preregistered(0);
    for (k, t) in FIELDS {
        fields.push(ProfileField {
            key: ProfileKey::parse(k).expect("key"),
            name: (*k).into(),
            field_type: *t,
            sensitive: false,
            builtin: false,
            created_at: 0,
        });
    }
    Registry::new(fields)
}

/// What the app does for `where` conditions: count passing stored events per user.
fn external(q: &Query, events: &[Event]) -> External {
    let mut out = External::new();
    for (gi, g) in q.groups.iter().enumerate() {
        for (ci, c) in g.iter().enumerate() {
            if let Cond::Event(e) = c {
                if e.props.is_empty() {
                    continue;
                }
                let mut m = HashMap::new();
                for ev in events {
                    if event_counts(e, &ev.name, ev.created_at, ev.page.as_deref(), &ev.property) {
                        *m.entry(ev.user_id.clone()).or_insert(0) += 1;
                    }
                }
                out.insert((gi, ci), m);
            }
        }
    }
    out
}

#[test]
fn projection_agrees_with_the_reference_evaluator() {
    let tz = TimeZone::get("Asia/Seoul").expect("tz");
    let reg = registry();
    let schema = Schema {
        registry: &reg,
        retention_days: 90,
    };
    for seed in 0..4u64 {
        let mut g = Gen::new(seed, NOW);
        let mut p = Projection::new();
        let mut users: Vec<User> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        for i in 0..300 {
            let u = g.user(format!("u{i:04}"));
            let evs = g.events(&u.id, 6);
            p.apply(1, &Change::User(Box::new(u.clone())));
            for e in &evs {
                p.add_event(&e.user_id, &e.name, e.created_at);
            }
            users.push(u);
            events.extend(evs);
        }
        // Rewrites (a later stamp wins, an older one is ignored), a merge and a delete.
        let newer = g.user("u0001".into());
        p.apply(5, &Change::User(Box::new(newer.clone())));
        p.apply(3, &Change::User(Box::new(users[1].clone())));
        users[1] = newer;
        p.apply(
            6,
            &Change::Merge {
                from: "u0002".into(),
                into: "u0003".into(),
            },
        );
        for e in events.iter_mut().filter(|e| e.user_id == "u0002") {
            e.user_id = "u0003".into();
        }
        users.remove(2);
        p.apply(7, &Change::Delete("u0004".into()));
        users.retain(|u| u.id != "u0004");
        events.retain(|e| e.user_id != "u0004");

        let rolled = HashMap::new();
        let mut partial = 0;
        for _ in 0..300 {
            let json = g.filter();
            let q = Filter::parse("filter", &json, &schema)
                .unwrap_or_else(|e| panic!("{json}: {e}"))
                .resolve(&tz, NOW, 90);
            let got: Vec<&str> = p
                .select(&q, &external(&q, &events))
                .iter()
                .map(|s| p.id(s))
                .collect();
            let want: Vec<&str> = users
                .iter()
                .filter(|u| {
                    let evs: Vec<Event> = events
                        .iter()
                        .filter(|e| e.user_id == u.id)
                        .cloned()
                        .collect();
                    matches(
                        &q,
                        &Facts {
                            user: u,
                            events: &evs,
                            rolled: &rolled,
                        },
                    )
                })
                .map(|u| u.id.as_str())
                .collect();
            assert_eq!(got, want, "seed {seed}, filter {json}");
            if !want.is_empty() && want.len() < users.len() {
                partial += 1;
            }
        }
        // The generator must make filters that split the users, or the agreement is cheap.
        assert!(
            partial > 150,
            "only {partial} of 300 filters split the users"
        );
    }
}
