use std::collections::{BTreeMap, HashMap};

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

/// A projection's events in a comparable form: each bucket's slots sorted (their order in
/// a bucket carries no meaning), totals without trailing zeros.
type EventsView<'a> = BTreeMap<&'a str, (Vec<(i64, Vec<u32>)>, Vec<u32>)>;

fn events_view(p: &Projection) -> EventsView<'_> {
    p.events
        .iter()
        .map(|(name, col)| {
            let buckets = col
                .buckets
                .iter()
                .map(|(b, slots)| {
                    let mut slots = slots.clone();
                    slots.sort_unstable();
                    (*b, slots)
                })
                .collect();
            let mut totals = col.totals.clone();
            while totals.last() == Some(&0) {
                totals.pop();
            }
            (name.as_str(), (buckets, totals))
        })
        .collect()
}

#[test]
fn a_parallel_build_equals_one_made_by_changes() {
    let mut g = Gen::new(9, NOW);
    let users: Vec<User> = (0..200).map(|i| g.user(format!("u{i:04}"))).collect();
    let mut events: Vec<Event> = users.iter().flat_map(|u| g.events(&u.id, 6)).collect();
    // Events from before 1970 do not fit the packed (bucket, slot) pairs of a part.
    events[0].created_at = -5 * BUCKET_MS;
    events[1].created_at = -1;

    let mut by_changes = Projection::new();
    for u in &users {
        by_changes.apply(1, &Change::User(Box::new(u.clone())));
    }
    for e in &events {
        by_changes.add_event(&e.user_id, &e.name, e.created_at);
    }

    let mut built = Projection::with_ids(users.iter().map(|u| u.id.as_str()));
    for (i, u) in users.iter().enumerate() {
        built.load_user(i as u32, 1, u);
    }
    let mut parts: Vec<EventPart> = (0..3).map(|_| EventPart::default()).collect();
    for (i, e) in events.iter().enumerate() {
        let slot = built.slot_of(&e.user_id).expect("slot");
        parts[i % 3].add(slot, &e.name, e.created_at);
    }
    built.absorb(parts);

    let counted: u32 = events_view(&built).values().flat_map(|(_, t)| t).sum();
    assert_eq!(counted as usize, events.len());
    assert_eq!(events_view(&built), events_view(&by_changes));
    assert_eq!(built.len(), by_changes.len());
    for u in &users {
        let (a, b) = (built.slot_of(&u.id), by_changes.slot_of(&u.id));
        assert_eq!(a, b);
        let by = SortBy::LastSeenAt;
        assert_eq!(
            built.sort_key(&by, a.expect("slot")),
            by_changes.sort_key(&by, b.expect("slot"))
        );
    }
}
