//! Audience filters and segments, each run on SQLite and on PostgreSQL: the differential
//! test (projection vs the database's SQL vs the reference evaluator on random data and
//! random filters), the segment API, and exactness after writes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{Backend, TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use sori_app::Engine;
use sori_app::secrets::{new_id, now_ms};
use sori_audience::testgen::{FIELDS, Gen};
use sori_domain::event::{Event, NewEvent};
use sori_domain::filter::Filter;
use sori_domain::filter::eval::{Facts, matches};

async fn register_fields(app: &TestApp) {
    for (key, ty) in FIELDS {
        app.register_field(key, ty.as_str()).await;
    }
}

async fn channel(app: &TestApp) -> std::sync::Arc<sori_app::auth::ChannelInfo> {
    app.app()
        .channels
        .authenticate(&app.creds.access_key, &app.creds.access_secret)
        .await
        .unwrap()
}

/// Every stored user and event of the channel, for the reference evaluator.
async fn everything(
    app: &TestApp,
    ch: i64,
) -> (Vec<sori_domain::User>, HashMap<String, Vec<Event>>) {
    let store = &app.app().store;
    let mut users = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .users_page(ch, after.as_deref(), 500, false)
            .await
            .unwrap();
        let last = page.last().map(|u| u.id.clone());
        let n = page.len();
        users.extend(page);
        if n < 500 {
            break;
        }
        after = last;
    }
    let mut events: HashMap<String, Vec<Event>> = HashMap::new();
    let mut cursor: Option<(i64, String)> = None;
    loop {
        let page = store
            .events_page(ch, cursor.as_ref().map(|(t, id)| (*t, id.as_str())), 1000)
            .await
            .unwrap();
        cursor = page.last().map(|e| (e.created_at, e.id.clone()));
        let n = page.len();
        for e in page {
            events.entry(e.user_id.clone()).or_default().push(e);
        }
        if n < 1000 {
            break;
        }
    }
    (users, events)
}

async fn differential(b: Backend) {
    let app = spawn_app(b).await;
    register_fields(&app).await;
    let ch = channel(&app).await;
    let cid = ch.channel.id;
    let now = now_ms();
    let mut g = Gen::new(7, now);
    let mut users = Vec::new();
    let mut events = Vec::new();
    for _ in 0..400 {
        let u = g.user(new_id());
        for e in g.events(&u.id, 6) {
            events.push((
                u.id.clone(),
                NewEvent::new(new_id(), e.name, e.property, e.page, e.created_at, e.source),
            ));
        }
        users.push(u);
    }
    app.app()
        .store
        .bulk_load(cid, &users, &events)
        .await
        .unwrap();

    // Writes through the real write paths after the load must be in every answer at once:
    // an update, a new member with an event, an anonymous visitor merged into a member,
    // and a deletion.
    let first = users[0].member_id.clone().unwrap_or_else(|| "first".into());
    let r = app
        .upsert(
            &first,
            json!({"profile": {"cartCount": 3, "plan": "pro"}, "tags": ["vip"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .upsert("late", json!({"profile": {"email": "late@example.com"}}))
        .await;
    let late = r.body["user"]["id"].as_str().unwrap().to_owned();
    let r = app
        .open(
            Method::POST,
            &format!("/open/v5/users/{late}/events"),
            Some(json!({"name": "Purchase", "property": {"revenue": 4000, "plan": "team"}})),
        )
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    let seg = |kind: &str, body: Value| {
        let app = &app;
        let kind = kind.to_owned();
        async move {
            let r = app
                .raw(
                    Method::POST,
                    &format!("/v1/{kind}"),
                    &[("content-type", "application/json")],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            assert!(r.status < 300, "{:?}", r.body);
        }
    };
    let wk = app.creds.write_key.clone();
    seg(
        "track",
        json!({"writeKey": wk, "anonymousId": "anon-1", "event": "AddToCart",
        "properties": {"coupon": true}}),
    )
    .await;
    seg(
        "identify",
        json!({"writeKey": wk, "anonymousId": "anon-1", "userId": "late"}),
    )
    .await;
    let gone = users[1].id.clone();
    let r = app
        .open(Method::DELETE, &format!("/open/v5/users/{gone}"), None)
        .await;
    assert_eq!(r.status, 204);

    // Settle the projection, then events for users it already holds: their only changes
    // since are activity, which a catch-up takes without reading the whole rows. One
    // event is older than some users' first activity, so `createdAt` moves back too.
    let settle = json!({"and": [{"or": [{"key": "member", "operator": "$eq", "values": [true]}]}]});
    let settle = app
        .app()
        .resolve(
            &ch,
            &app.app()
                .check_filter(&ch, "filter", &settle)
                .await
                .unwrap(),
        )
        .unwrap();
    app.app()
        .matching_ids(&ch, &settle, Engine::Memory)
        .await
        .unwrap();
    for u in users.iter().skip(2).take(10) {
        let r = app
            .open(
                Method::POST,
                &format!("/open/v5/users/{}/events", u.id),
                Some(json!({"name": "PageView", "property": {}})),
            )
            .await;
        assert!(r.status < 300, "{:?}", r.body);
    }
    let early = jiff::Timestamp::from_millisecond(now - 80 * 86_400_000)
        .unwrap()
        .to_string();
    for m in users
        .iter()
        .skip(12)
        .filter_map(|u| u.member_id.clone())
        .take(5)
    {
        seg(
            "track",
            json!({"writeKey": wk, "userId": m, "event": "Purchase", "timestamp": early,
            "properties": {"revenue": 100}}),
        )
        .await;
    }

    let (all, by_user) = everything(&app, cid).await;
    assert!(all.len() > 390);
    // A node started now builds its projection from the store (the start-up rebuild, in
    // parallel parts); it must agree with the one kept in step.
    let store = sori::open_store(&app.config).await.unwrap();
    let rebuilt = sori::app(&app.config, store).await.unwrap();
    let registry = sori_domain::Registry::new(app.app().store.profile_fields(cid).await.unwrap());
    let tz = jiff::tz::TimeZone::get(&ch.channel.time_zone).unwrap();
    let rolled = HashMap::new();
    let none = Vec::new();
    let mut split = 0;
    for _ in 0..200 {
        let json = g.filter();
        let f = Filter::parse(
            "filter",
            &json,
            &sori_domain::filter::Schema {
                registry: &registry,
                retention_days: 90,
            },
        )
        .unwrap_or_else(|e| panic!("{json}: {e}"));
        let q = f.resolve(&tz, now, 90);
        let want: Vec<String> = {
            let mut v: Vec<String> = all
                .iter()
                .filter(|u| {
                    let evs = by_user.get(&u.id).unwrap_or(&none);
                    matches(
                        &q,
                        &Facts {
                            user: u,
                            events: evs,
                            rolled: &rolled,
                        },
                    )
                })
                .map(|u| u.id.clone())
                .collect();
            v.sort();
            v
        };
        let mem = app
            .app()
            .matching_ids(&ch, &q, Engine::Memory)
            .await
            .unwrap();
        let sql = app.app().matching_ids(&ch, &q, Engine::Sql).await.unwrap();
        let fresh = rebuilt.matching_ids(&ch, &q, Engine::Memory).await.unwrap();
        assert_eq!(fresh, mem, "the rebuilt projection disagrees on {json}");
        if mem != want || sql != want {
            // Name the first single condition the engines disagree on, with an example user.
            for g in &q.groups {
                for c in g {
                    let one = sori_domain::filter::Query {
                        groups: vec![vec![c.clone()]],
                    };
                    let w: Vec<&sori_domain::User> = all
                        .iter()
                        .filter(|u| {
                            let evs = by_user.get(&u.id).unwrap_or(&none);
                            matches(
                                &one,
                                &Facts {
                                    user: u,
                                    events: evs,
                                    rolled: &rolled,
                                },
                            )
                        })
                        .collect();
                    for engine in [Engine::Memory, Engine::Sql] {
                        let got = app.app().matching_ids(&ch, &one, engine).await.unwrap();
                        let odd = all
                            .iter()
                            .find(|u| got.contains(&u.id) != w.iter().any(|x| x.id == u.id));
                        if let Some(u) = odd {
                            panic!(
                                "{engine:?} ({b:?}) disagrees with the reference on {c:?} \
                                 (from {json}) for {u:?} with events {:?}",
                                by_user.get(&u.id)
                            );
                        }
                    }
                }
            }
            panic!("engines disagree on {json} only in combination");
        }
        let count = app.app().count_users(&ch, &q, Engine::Sql).await.unwrap();
        assert_eq!(count, want.len() as u64);
        if !want.is_empty() && want.len() < all.len() {
            split += 1;
        }
    }
    assert!(split > 100, "only {split} of 200 filters split the users");
    app.stop().await;
}

async fn count(app: &TestApp, body: Value) -> u64 {
    let r = app
        .open(Method::POST, "/open/v5/users/count", Some(body.clone()))
        .await;
    assert_eq!(r.status, 200, "{body}: {:?}", r.body);
    let sql = app
        .open(Method::POST, "/open/v5/users/count?engine=sql", Some(body))
        .await;
    assert_eq!(sql.body["count"], r.body["count"], "engines disagree");
    r.body["count"].as_u64().unwrap()
}

fn f(groups: Value) -> Value {
    json!({"filter": {"and": groups}})
}

async fn segments_api(b: Backend) {
    let app = spawn_app(b).await;
    app.register_field("cartCount", "number").await;
    let day = 86_400_000;
    let now = now_ms();
    // The seed's audiences, on data whose answers are known: three stale members (one with
    // a cart), two fresh members, two anonymous-ish leads with e-mail, one without.
    for (m, seen_days_ago, cart, email) in [
        ("s1", 40, Some(2), None),
        ("s2", 31, None, Some("s2@example.com")),
        ("s3", 90, Some(0), None),
        ("f1", 1, Some(1), None),
        ("f2", 0, None, None),
    ] {
        let mut profile = json!({});
        if let Some(c) = cart {
            profile["cartCount"] = json!(c);
        }
        if let Some(e) = email {
            profile["email"] = json!(e);
        }
        // A past Segment timestamp is the customer's last visit (historical data).
        let at = iso(now - seen_days_ago * day);
        segment_batch(
            &app,
            vec![
                json!({"type": "identify", "userId": m, "traits": profile, "timestamp": at}),
                json!({"type": "track", "userId": m, "event": "Visit", "timestamp": at}),
            ],
        )
        .await;
    }
    for (i, email) in [Some("a@example.com"), Some("b@example.com"), None]
        .iter()
        .enumerate()
    {
        let traits = email.map_or(json!({"plan": "x"}), |e| json!({"email": e}));
        segment_batch(
            &app,
            vec![json!({"type": "identify", "anonymousId": format!("anon-{i}"), "traits": traits})],
        )
        .await;
    }
    let stale_members = f(json!([
        {"or": [{"key": "lastSeenAt", "operator": "$daysAgoGte", "values": [30]}]},
        {"or": [{"key": "member", "operator": "$eq", "values": [true]}]}
    ]));
    assert_eq!(count(&app, stale_members.clone()).await, 3);
    let carts =
        f(json!([{"or": [{"key": "profile.cartCount", "operator": "$gte", "values": [1]}]}]));
    assert_eq!(count(&app, carts).await, 2);
    let newsletter = f(json!([
        {"or": [{"key": "member", "operator": "$eq", "values": [false]}]},
        {"or": [{"key": "profile.email", "operator": "$exists"}]}
    ]));
    assert_eq!(count(&app, newsletter).await, 2);
    assert_eq!(count(&app, json!({"filter": {"and": []}})).await, 8);

    // Saved segments.
    let r = app
        .open(
            Method::POST,
            "/open/v5/segments",
            Some(json!({"name": "Stale members", "filter": stale_members["filter"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sid = r.body["segment"]["id"].as_str().unwrap().to_owned();
    let dup = app
        .open(
            Method::POST,
            "/open/v5/segments",
            Some(json!({"name": "Stale members", "filter": {"and": []}})),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert_eq!(count(&app, json!({"segmentId": sid})).await, 3);
    let page = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{sid}/users?limit=2&sortOrder=asc"),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    assert_eq!(page.body["total"], 3);
    let ids: Vec<&str> = page.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["memberId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s3", "s1"], "oldest visit first");
    let next = page.body["next"].as_str().unwrap();
    let page2 = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{sid}/users?limit=2&sortOrder=asc&since={next}"),
            None,
        )
        .await;
    assert_eq!(page2.body["users"][0]["memberId"], "s2");
    assert!(page2.body.get("next").is_none());
    let search = app
        .open(
            Method::POST,
            "/open/v5/users/search",
            Some(json!({"segmentId": sid, "sortField": "profile.cartCount", "sortOrder": "desc"})),
        )
        .await;
    let order: Vec<&str> = search.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["memberId"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["s1", "s3", "s2"], "no value sorts last");
    let yes = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{sid}/users/@s1"),
            None,
        )
        .await;
    assert_eq!(yes.body["inSegment"], true, "{:?}", yes.body);
    let no = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{sid}/users/@f1"),
            None,
        )
        .await;
    assert_eq!(no.body["inSegment"], false);
    let csv = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{sid}/users.csv"),
            None,
        )
        .await;
    assert_eq!(csv.status, 200);
    let text = csv.body.as_str().unwrap();
    assert!(text.starts_with("id,memberId,"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains(",s1,") && text.contains(",s2,") && text.contains(",s3,"));
    // The same from the command line.
    let cli = sori_cli(
        &app,
        &["export", "users", "--segment", &sid, "--format", "csv"],
    )
    .await;
    let members: Vec<&str> = cli
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(sorted, ["s1", "s2", "s3"], "{cli}");

    // Exact and current: an acknowledged write is in the next answer.
    app.upsert("f2", json!({"profile": {"cartCount": 5}})).await;
    assert_eq!(count(&app, json!({"segmentId": sid})).await, 3);
    let r = app
        .open(Method::PATCH, &format!("/open/v5/segments/{sid}"),
            Some(json!({"filter": {"and": [{"or": [{"key": "profile.cartCount", "operator": "$gte", "values": [1]}]}]}})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(count(&app, json!({"segmentId": sid})).await, 3);
    let r = app.open(Method::DELETE, "/open/v5/users/@f2", None).await;
    assert_eq!(r.status, 204);
    assert_eq!(count(&app, json!({"segmentId": sid})).await, 2);

    // Bad input: precise 4xx, nothing runs.
    for (body, field) in [
        (
            json!({"filter": {"and": [{"or": [{"key": "profile.nope", "operator": "$exists"}]}]}}),
            "filter.and[0].or[0].key",
        ),
        (json!({"filter": {"and": [{"or": []}]}}), "filter.and[0].or"),
        (
            json!({"filter": {"and": [{"or": [{"key": "member", "operator": "$gt", "values": [1]}]}]}}),
            "filter.and[0].or[0].operator",
        ),
        (json!({"filter": {"and": []}, "segmentId": sid}), "filter"),
        (json!({}), "filter"),
        (
            json!({"filter": {"and": [{"or": [{"event": "PageView", "operator": "$countGte", "values": [1], "withinDays": 1000}]}]}}),
            "filter.and[0].or[0].withinDays",
        ),
    ] {
        let r = app
            .open(Method::POST, "/open/v5/users/count", Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.error_field(), field, "{body}: {:?}", r.body);
    }
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(json!({"filter": {"and": deep}})),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = app
        .open(
            Method::GET,
            "/open/v5/segments/ffffffffffffffffffffffff",
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/search",
            Some(json!({"filter": {"and": []}, "sortField": "wat"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "sortField");
    // A list or a flag holds no one value to order users by.
    for (key, ty) in [("vip", "boolean"), ("colors", "list")] {
        app.register_field(key, ty).await;
        let r = app
            .open(
                Method::POST,
                "/open/v5/users/search",
                Some(json!({"filter": {"and": []}, "sortField": format!("profile.{key}")})),
            )
            .await;
        assert_eq!((r.status, r.error_field()), (400, "sortField"), "{ty}");
    }

    // A saved event window longer than a retention lowered later is shortened to it: the
    // segment keeps working (a new filter must fit the new retention).
    let visited = |days: i64| {
        json!({"and": [{"or": [{"event": "Visit", "operator": "$countGte", "values": [1],
                                "withinDays": days}]}]})
    };
    let r = app
        .open(
            Method::POST,
            "/open/v5/segments",
            Some(json!({"name": "Visited in 45 days", "filter": visited(45)})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let window = r.body["segment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        count(&app, json!({"segmentId": window})).await,
        3,
        "s1, s2, f1"
    );
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"eventRetentionDays": 35})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        count(&app, json!({"segmentId": window})).await,
        2,
        "s2, f1 (35 days)"
    );
    let r = app
        .open(
            Method::GET,
            &format!("/open/v5/segments/{window}/users"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(json!({"filter": visited(45)})),
        )
        .await;
    assert_eq!(
        r.error_field(),
        "filter.and[0].or[0].withinDays",
        "{:?}",
        r.body
    );
    let r = app
        .open(Method::DELETE, &format!("/open/v5/segments/{window}"), None)
        .await;
    assert_eq!(r.status, 204);

    // Another channel's keys do not see the segment.
    let other = app.second_channel().await;
    let r = app
        .open_as(
            &other,
            Method::GET,
            &format!("/open/v5/segments/{sid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    // A deleted field makes a saved filter that uses it fail clearly, not silently.
    let r = app
        .open(Method::DELETE, "/open/v5/profile-fields/cartCount", None)
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(json!({"segmentId": sid})),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "segment.filter.and[0].or[0].key");
    let r = app
        .open(Method::DELETE, &format!("/open/v5/segments/{sid}"), None)
        .await;
    assert_eq!(r.status, 204);
    let r = app.open(Method::GET, "/open/v5/segments", None).await;
    assert_eq!(r.body["segments"], json!([]));
    // Listed by name in code-point order on both backends, whatever PostgreSQL's
    // collation (the test databases use ICU's en-US, which would put `_under` first).
    let names = ["apple", "Zebra", "_under", "Äpfel"];
    for name in names {
        let body = json!({"name": name, "filter": {"and": [{"or": [
            {"key": "member", "operator": "$eq", "values": [true]}]}]}});
        let r = app
            .open(Method::POST, "/open/v5/segments", Some(body))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let r = app.open(Method::GET, "/open/v5/segments", None).await;
    let listed: Vec<&str> = r.body["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["Zebra", "_under", "apple", "Äpfel"]);
    app.stop().await;
}

/// Runs the `sori` command on the same store as the running server; it must succeed.
/// Returns what it printed.
async fn sori_cli<S: AsRef<std::ffi::OsStr>>(app: &TestApp, args: &[S]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sori"));
    cmd.arg("--data-dir").arg(&app.config.data_dir);
    if let Some(u) = &app.config.database_url {
        cmd.arg("--database-url").arg(u);
    }
    let out = cmd.args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends Segment calls through `/v1/batch`.
async fn segment_batch(app: &TestApp, batch: Vec<Value>) {
    let body = json!({"writeKey": app.creds.write_key, "batch": batch});
    let r = app
        .raw(
            Method::POST,
            "/v1/batch",
            &[("content-type", "application/json")],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    assert!(
        r.body.get("errors").is_none(),
        "an item was refused: {:?}",
        r.body
    );
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// An event followed with an owner the projection does not hold yet: the anonymous user
/// who did it was merged, after the horizon was read, into a member created after it too.
/// The event must still count for the member once everything is followed.
async fn owner_created_after_the_horizon(b: Backend) {
    let app = spawn_app(b).await;
    let store = app.app().store.clone();
    segment_batch(
        &app,
        vec![json!({"type": "track", "anonymousId": "v-late", "event": "Late"})],
    )
    .await;
    let horizon = store.horizon().await.unwrap();
    segment_batch(
        &app,
        vec![
            json!({"type": "identify", "userId": "m-late", "traits": {"name": "Kim"}}),
            json!({"type": "identify", "userId": "m-late", "anonymousId": "v-late"}),
        ],
    )
    .await;
    let member = app.member("m-late").await;
    let merged = app
        .open(
            Method::GET,
            &format!("/open/v5/users/{}/merges", member["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        merged.body["merges"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        merged.body
    );
    // Follow up to the old horizon: the event now names the member, who came after it.
    app.app()
        .audience
        .catch_up_to(&store, horizon)
        .await
        .unwrap();
    let late = json!({"filter": {"and": [{"or": [
        {"event": "Late", "operator": "$countGte", "values": [1]}]}]}});
    assert_eq!(count(&app, late).await, 1);
    app.stop().await;
}

both!(differential, segments_api, owner_created_after_the_horizon);

/// Another node (a second set of services on the same database) and another process
/// (`sori import`) write; each projection follows the change sequence, so counts include
/// those writes at once.
async fn followers(b: Backend) {
    let app = spawn_app(b).await;
    let ch = channel(&app).await;
    let store = sori::open_store(&app.config).await.unwrap();
    let other = sori::app(&app.config, store).await.unwrap();
    let vip = json!({"and": [{"or": [{"key": "tags", "operator": "$in", "values": ["vip"]}]}]});
    let q = app
        .app()
        .resolve(
            &ch,
            &app.app().check_filter(&ch, "filter", &vip).await.unwrap(),
        )
        .unwrap();
    let n = |a: &sori_app::App| {
        let (a, ch, q) = (a.clone(), ch.clone(), q.clone());
        async move { a.count_users(&ch, &q, Engine::Memory).await.unwrap() }
    };
    assert_eq!(n(&other).await, 0);
    // A write through the first node is in the second node's next answer.
    app.upsert("f1", json!({"tags": ["vip"]})).await;
    assert_eq!(n(&other).await, 1);
    // And the other way round, with an event count and a deletion.
    other
        .write_user(
            &ch,
            sori_store::UserTarget::MemberId {
                member_id: "f2".into(),
                new_id: new_id(),
            },
            sori_domain::UserUpdate::from_json(&json!({"tags": ["vip"]}), &["tags"]).unwrap(),
            sori_app::users::Source::OpenApi,
        )
        .await
        .unwrap();
    assert_eq!(n(app.app()).await, 2);
    let r = app.open(Method::DELETE, "/open/v5/users/@f1", None).await;
    assert_eq!(r.status, 204);
    assert_eq!(n(&other).await, 1);
    assert_eq!(n(app.app()).await, 1);

    // A separate `sori import` process while the server runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.ndjson");
    std::fs::write(&path, "{\"memberId\": \"imp1\", \"tags\": [\"vip\"]}\n{\"memberId\": \"imp2\", \"tags\": [\"vip\"]}\n").unwrap();
    sori_cli(
        &app,
        &[
            std::ffi::OsStr::new("import"),
            "users".as_ref(),
            path.as_os_str(),
        ],
    )
    .await;
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(json!({"filter": vip})),
        )
        .await;
    assert_eq!(r.body["count"], 3, "{:?}", r.body);
    app.stop().await;
}

both!(followers);

/// Merges and removals leave the change log after a week (the retention pass prunes it);
/// a node whose projection is still behind the pruned entries rebuilds from the store
/// instead of missing them, and one that followed them goes on as before.
async fn pruned_change_log(b: Backend) {
    let app = spawn_app(b).await;
    let ch = channel(&app).await;
    let store = app.app().store.clone();
    // A second node, built now and not following (no background catch-up in tests).
    let other = sori::app(&app.config, sori::open_store(&app.config).await.unwrap())
        .await
        .unwrap();
    let bought =
        json!({"and": [{"or": [{"event": "Bought", "operator": "$countGte", "values": [1]}]}]});
    let q = app
        .app()
        .resolve(
            &ch,
            &app.app()
                .check_filter(&ch, "filter", &bought)
                .await
                .unwrap(),
        )
        .unwrap();
    let n = |a: &sori_app::App| {
        let (a, ch, q) = (a.clone(), ch.clone(), q.clone());
        async move { a.count_users(&ch, &q, Engine::Memory).await.unwrap() }
    };
    // A removal and a merge (an anonymous buyer into a member), both logged.
    segment_batch(
        &app,
        vec![
            json!({"type": "track", "userId": "gone", "event": "Bought"}),
            json!({"type": "identify", "userId": "kept", "traits": {"name": "Kim"}}),
            json!({"type": "track", "anonymousId": "v-buyer", "event": "Bought"}),
        ],
    )
    .await;
    // The second node has seen both buyers; then it stops following for a while.
    assert_eq!(n(&other).await, 2);
    let behind = other.audience.followed().await;
    let r = app.open(Method::DELETE, "/open/v5/users/@gone", None).await;
    assert_eq!(r.status, 204);
    segment_batch(
        &app,
        vec![json!({"type": "identify", "userId": "kept", "anonymousId": "v-buyer"})],
    )
    .await;
    assert_eq!(
        n(app.app()).await,
        1,
        "the member took the anonymous user's event"
    );
    let horizon = store.horizon().await.unwrap();
    assert!(!store.changes(behind, horizon).await.unwrap().pruned);

    // Nothing is a week old yet.
    let week = 7 * 24 * 3_600_000;
    let now = now_ms();
    assert_eq!(store.prune_changes(now - week).await.unwrap(), 0);
    assert!(!store.changes(behind, horizon).await.unwrap().pruned);
    // A week on, the removal and the merge go.
    assert_eq!(store.prune_changes(now + 1).await.unwrap(), 2);
    let batch = store.changes(behind, horizon).await.unwrap();
    assert!(batch.pruned && batch.log.is_empty() && batch.users.is_empty());
    // The first node had followed them: it goes on from where it was.
    let followed = app.app().audience.followed().await;
    assert!(!store.changes(followed, horizon).await.unwrap().pruned);

    // The second node rebuilds: the removed user is gone, the merged one counted once
    // (applying what is left of the log would have kept both).
    assert_eq!(n(&other).await, 1);
    assert!(other.audience.followed().await.seq >= horizon.seq);
    assert_eq!(
        other.matching_ids(&ch, &q, Engine::Memory).await.unwrap(),
        app.app()
            .matching_ids(&ch, &q, Engine::Memory)
            .await
            .unwrap()
    );
    // Both follow later writes as usual.
    segment_batch(
        &app,
        vec![json!({"type": "track", "userId": "new", "event": "Bought"})],
    )
    .await;
    assert_eq!(n(&other).await, 2);
    assert_eq!(n(app.app()).await, 2);
    app.stop().await;
}

both!(pruned_change_log);

/// Numbers in filters are doubles, on every engine and backend: an integer beyond 2^53
/// (kept exactly when stored) compares as the double nearest to it, so two such numbers
/// that share a double match alike. SQLite once compared its stored integers exactly and
/// disagreed with PostgreSQL (QA, 2026-11-30).
async fn big_integers_compare_as_doubles(b: Backend) {
    let app = spawn_app(b).await;
    app.register_field("orderNo", "number").await;
    app.register_field("nos", "listOfNumber").await;
    for (m, n) in [("big1", 12345678901234567_i64), ("big2", 12345678901234568)] {
        let r = app
            .upsert(m, json!({"profile": {"orderNo": n, "nos": [n]}}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = app
            .open(
                Method::POST,
                &format!("/open/v5/users/@{m}/events"),
                Some(json!({"name": "BigInt", "property": {"orderNo": n}})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let x = 12345678901234567_i64;
    let event = |op: &str, key: &str| {
        f(
            json!([{"or": [{"event": "BigInt", "operator": "$countGte", "values": [1],
            "where": [{"key": key, "operator": op, "values": [x]}]}]}]),
        )
    };
    for (op, want) in [("$eq", 2), ("$lt", 0), ("$gte", 2), ("$ne", 0)] {
        assert_eq!(count(&app, event(op, "orderNo")).await, want, "event {op}");
        let profile =
            f(json!([{"or": [{"key": "profile.orderNo", "operator": op, "values": [x]}]}]));
        assert_eq!(count(&app, profile).await, want, "profile {op}");
    }
    for (op, want) in [("$in", 2), ("$nin", 0)] {
        assert_eq!(count(&app, event(op, "orderNo")).await, want, "event {op}");
        let list = f(json!([{"or": [{"key": "profile.nos", "operator": op, "values": [x]}]}]));
        assert_eq!(count(&app, list).await, want, "list {op}");
    }
    app.stop().await;
}

both!(big_integers_compare_as_doubles);
