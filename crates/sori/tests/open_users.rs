//! Open API user scenarios, each run on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, spawn_app, spawn_with};
use reqwest::Method;
use serde_json::{Value, json};

async fn upsert_semantics(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .upsert(
            "m-1",
            json!({"profile": {"name": "Kim", "mobileNumber": "010-1234-5678", "cartCount": 3,
            "referrer": "https://a.example", "utmSource": "google", "lastUtmSource": "google"},
            "tags": ["VIP", "vip ", "New"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let u = &r.body["user"];
    assert_eq!(u["memberId"], "m-1");
    assert_eq!(u["member"], true);
    assert_eq!(u["name"], "Kim");
    assert_eq!(u["profile"]["mobileNumber"], "+821012345678");
    assert_eq!(u["tags"], json!(["vip", "new"]));
    let id = u["id"].as_str().unwrap().to_owned();
    let created = u["updatedAt"].clone();

    // The same values again change nothing, so updatedAt stays.
    let r = app.upsert("m-1", json!({"profile": {"name": "Kim"}})).await;
    assert_eq!(r.body["user"]["updatedAt"], created);

    // Set-once fields keep their first value; lastUtm* follows the latest visit.
    let r = app
        .upsert("m-1", json!({"profile": {"referrer": "https://b.example", "utmSource": "naver", "lastUtmSource": "naver"}}))
        .await;
    let p = &r.body["user"]["profile"];
    assert_eq!(p["referrer"], "https://a.example");
    assert_eq!(p["utmSource"], "google");
    assert_eq!(p["lastUtmSource"], "naver");

    // profileOnce fills only empty keys; null clears a key.
    let r = app.upsert("m-1", json!({"profileOnce": {"name": "Lee", "email": "kim@example.com"}, "profile": {"cartCount": null}})).await;
    let p = &r.body["user"]["profile"];
    assert_eq!(p["name"], "Kim");
    assert_eq!(p["email"], "kim@example.com");
    assert!(p.get("cartCount").is_none());

    // By id and by member id are the same user.
    let by_id = app
        .open(Method::GET, &format!("/open/v5/users/{id}"), None)
        .await;
    assert_eq!(by_id.body["user"], app.member("m-1").await);

    // profile: null clears everything.
    let r = app.upsert("m-1", json!({"profile": null})).await;
    assert_eq!(r.body["user"]["profile"], json!({}));
    assert!(r.body["user"].get("name").is_none());

    // Consent flags and block.
    let r = app
        .upsert(
            "m-1",
            json!({"unsubscribeEmail": true, "unsubscribeTexting": true, "blocked": true}),
        )
        .await;
    assert_eq!(r.body["user"]["unsubscribeEmail"], true);
    assert_eq!(r.body["user"]["blocked"], true);
    let r = app.upsert("m-1", json!({"unsubscribeEmail": false})).await;
    assert_eq!(
        r.body["user"]["unsubscribeEmail"], false,
        "server-side calls may resubscribe"
    );

    // A new key registers its inferred type.
    app.upsert(
        "m-2",
        json!({"profile": {"vipLevel": 2, "interests": ["a", "b"], "optIn": true}}),
    )
    .await;
    let fields = app.open(Method::GET, "/open/v5/profile-fields", None).await;
    let ty = |k: &str| {
        fields.body["profileFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == k)
            .unwrap()["type"]
            .clone()
    };
    assert_eq!(ty("vipLevel"), "number");
    assert_eq!(ty("interests"), "list");
    assert_eq!(ty("optIn"), "boolean");
    assert_eq!(ty("lastCheckoutCompletedAt"), "datetime");
    app.stop().await;
}

/// Every rejected update names its field and leaves the user exactly as it was.
async fn bad_input_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    app.upsert(
        "m-1",
        json!({"profile": {"name": "Kim", "cartCount": 1}, "tags": ["a"]}),
    )
    .await;
    let before = app.member("m-1").await;
    let too_many_keys: serde_json::Map<String, Value> =
        (0..257).map(|i| (format!("k{i}"), json!(i))).collect();
    let big: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("big{i}"), json!("x".repeat(500))))
        .collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"profile": {"name": 5, "email": "ok@example.com"}}),
            "profile.name",
        ),
        (
            json!({"profile": {"cartCount": "three"}}),
            "profile.cartCount",
        ),
        (json!({"profile": {"bio": "가".repeat(513)}}), "profile.bio"),
        (json!({"profile": {"list": vec!["a"; 201]}}), "profile.list"),
        (json!({"profile": too_many_keys}), "profile"),
        (json!({"profile": big}), "profile"),
        (json!({"profile": {}}), "profile"),
        (json!({"tags": []}), "tags"),
        (
            json!({"tags": (0..21).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"tags": ["ok", 3]}), "tags[1]"),
        (
            json!({"profile": {"mobileNumber": "02-123-4567"}}),
            "profile.mobileNumber",
        ),
        (
            json!({"profile": {"mobileNumber": "1644-1234"}}),
            "profile.mobileNumber",
        ),
        (
            json!({"profile": {"mobileNumber": "011-234-5678"}}),
            "profile.mobileNumber",
        ),
        (json!({"profile": {"bad_key": 1}}), "profile.bad_key"),
        (json!({"profile": {"obj": {"a": 1}}}), "profile.obj"),
        (
            json!({"profile": {"lastCheckoutCompletedAt": "tomorrow"}}),
            "profile.lastCheckoutCompletedAt",
        ),
        (
            json!({"profile": {"email": "not-an-email"}}),
            "profile.email",
        ),
        (json!({"unsubscribeEmail": "yes"}), "unsubscribeEmail"),
        (json!({"nickname": "x"}), "nickname"),
        (json!([1, 2]), "body"),
        (json!("text"), "body"),
        (json!({"profile": {"name": "a\u{0}b"}}), "profile.name"),
        (json!({"tags": ["ok", "b\u{0}"]}), "tags[1]"),
    ];
    for (body, field) in cases {
        let r = app.upsert("m-1", body.clone()).await;
        assert_eq!(r.status, 400, "{body} -> {:?}", r.body);
        assert_eq!(r.error_field(), field, "{body} -> {:?}", r.body);
        assert_eq!(r.body["type"], "invalidInput");
        assert!(!r.body["message"].as_str().unwrap().is_empty());
    }
    // Broken JSON and an empty body.
    let h = [
        ("x-access-key", app.creds.access_key.as_str()),
        ("x-access-secret", app.creds.access_secret.as_str()),
    ];
    let r = app
        .raw(
            Method::PUT,
            "/open/v5/users/@m-1",
            &h,
            b"{\"profile\": {".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "body"));
    let r = app
        .raw(Method::PUT, "/open/v5/users/@m-1", &h, Vec::new())
        .await;
    assert_eq!((r.status, r.error_field()), (400, "body"));
    // An oversized body is refused before parsing.
    let huge = format!("{{\"profile\": {{\"a\": \"{}\"}}}}", "x".repeat(400_000));
    let r = app
        .raw(Method::PUT, "/open/v5/users/@m-1", &h, huge.into_bytes())
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["type"], "payloadTooLarge");
    // NUL in a path or cursor is refused before any lookup.
    let r = app.open(Method::GET, "/open/v5/users/@m%00", None).await;
    assert_eq!((r.status, r.error_field()), (400, "path"));
    let r = app
        .open(Method::GET, "/open/v5/users?since=%00", None)
        .await;
    assert_eq!(r.status, 400);
    // A member id that is too long.
    let r = app.upsert(&"m".repeat(257), json!({})).await;
    assert_eq!((r.status, r.error_field()), (400, "memberId"));

    assert_eq!(
        app.member("m-1").await,
        before,
        "a rejected update must change nothing"
    );
    // No stray field was registered by the rejected writes.
    let fields = app.open(Method::GET, "/open/v5/profile-fields", None).await;
    let keys: Vec<&str> = fields.body["profileFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert!(
        !keys.contains(&"bio") && !keys.contains(&"k0") && !keys.contains(&"big0"),
        "{keys:?}"
    );
    app.stop().await;
}

/// Keys of one channel never reach another channel's users, and ids are not probeable.
async fn tenants_are_isolated(b: Backend) {
    let app = spawn_app(b).await;
    let other = app.second_channel().await;
    let r = app.upsert("m-1", json!({"profile": {"name": "Kim"}})).await;
    let id = r.body["user"]["id"].as_str().unwrap().to_owned();
    let before = app.member("m-1").await;

    for (method, path, body) in [
        (Method::GET, format!("/open/v5/users/{id}"), None),
        (
            Method::PATCH,
            format!("/open/v5/users/{id}"),
            Some(json!({"profile": {"name": "Evil"}})),
        ),
        (Method::DELETE, format!("/open/v5/users/{id}"), None),
        (Method::GET, "/open/v5/users/@m-1".to_owned(), None),
        (Method::DELETE, "/open/v5/users/@m-1".to_owned(), None),
        (
            Method::PATCH,
            "/open/v5/users/@m-1".to_owned(),
            Some(json!({"profile": {"name": "Evil"}})),
        ),
    ] {
        let r = app.open_as(&other, method.clone(), &path, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
    }
    // In its own channel a member is changed by member id; PATCH never creates one.
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/users/@m-2",
            Some(json!({"tags": ["x"]})),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    // Same member id in the other channel is a different user.
    let r = app
        .open_as(
            &other,
            Method::PUT,
            "/open/v5/users/@m-1",
            Some(json!({"profile": {"name": "Other"}})),
        )
        .await;
    assert_ne!(r.body["user"]["id"], json!(id));
    let list = app
        .open_as(&other, Method::GET, "/open/v5/users", None)
        .await;
    assert_eq!(list.body["users"].as_array().unwrap().len(), 1);
    assert_eq!(app.member("m-1").await, before);
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/users/@m-1",
            Some(json!({"tags": ["vip"]})),
        )
        .await;
    assert_eq!((r.status, &r.body["user"]["tags"]), (200, &json!(["vip"])));

    // Missing or wrong credentials.
    let r = app.raw(Method::GET, "/open/v5/users", &[], vec![]).await;
    assert_eq!(r.status, 401);
    let r = app
        .raw(
            Method::GET,
            "/open/v5/users",
            &[
                ("x-access-key", &app.creds.access_key),
                ("x-access-secret", &other.access_secret),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["type"], "unauthorized");
    app.stop().await;
}

async fn create_patch_delete_and_list(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .open(
            Method::POST,
            "/open/v5/users",
            Some(json!({"profile": {"email": "lead@example.com"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["user"]["member"], false);
    let lead = r.body["user"]["id"].as_str().unwrap().to_owned();
    let r = app
        .open(
            Method::POST,
            "/open/v5/users",
            Some(json!({"memberId": "m-9"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users",
            Some(json!({"memberId": "m-9"})),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = app
        .open(Method::POST, "/open/v5/users", Some(json!({"memberId": 9})))
        .await;
    assert_eq!((r.status, r.error_field()), (400, "memberId"));

    let r = app
        .open(
            Method::PATCH,
            &format!("/open/v5/users/{lead}"),
            Some(json!({"tags": ["Lead"]})),
        )
        .await;
    assert_eq!(r.body["user"]["tags"], json!(["lead"]));
    // `tags: null` removes every tag (an empty list is refused as a likely mistake).
    let r = app
        .open(
            Method::PATCH,
            &format!("/open/v5/users/{lead}"),
            Some(json!({"tags": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["tags"], json!([]));
    let r = app
        .open(Method::GET, &format!("/open/v5/users/{lead}"), None)
        .await;
    assert_eq!(r.body["user"]["tags"], json!([]));
    let r = app
        .open(
            Method::PATCH,
            &format!("/open/v5/users/{lead}"),
            Some(json!({"tags": "lead"})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "tags"));
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("null to remove every tag"),
        "{:?}",
        r.body
    );
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/users/0123456789abcdef01234567",
            Some(json!({"tags": ["x"]})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .open(
            Method::PUT,
            &format!("/open/v5/users/{lead}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET,HEAD,PATCH,DELETE");

    for i in 0..7 {
        app.upsert(&format!("p-{i}"), json!({"profile": {"rank": i}}))
            .await;
    }
    // 9 users: page through ascending, 3 at a time; the third page is the last and has
    // no `next` (none leads to an empty page).
    let mut seen = Vec::new();
    let mut path = "/open/v5/users?limit=3&sortOrder=asc".to_owned();
    loop {
        let r = app.open(Method::GET, &path, None).await;
        assert_eq!(r.status, 200);
        let users = r.body["users"].as_array().unwrap();
        assert!(!users.is_empty(), "a `next` led to an empty page");
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match r.body["next"].as_str() {
            Some(n) => path = format!("/open/v5/users?limit=3&sortOrder=asc&since={n}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let desc = app
        .open(Method::GET, "/open/v5/users?limit=500", None)
        .await;
    let ids: Vec<String> = desc.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, seen.iter().rev().cloned().collect::<Vec<_>>());
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("sortOrder=up", "sortOrder"),
        ("since=zz", "since"),
    ] {
        let r = app
            .open(Method::GET, &format!("/open/v5/users?{q}"), None)
            .await;
        assert_eq!((r.status, r.error_field()), (400, field), "{q}");
    }

    let r = app.open(Method::DELETE, "/open/v5/users/@m-9", None).await;
    assert_eq!(r.status, 204);
    let r = app.open(Method::GET, "/open/v5/users/@m-9", None).await;
    assert_eq!(r.status, 404);
    let r = app
        .open(Method::DELETE, &format!("/open/v5/users/{lead}"), None)
        .await;
    assert_eq!(r.status, 204);
    app.stop().await;
}

async fn profile_field_registry(b: Backend) {
    let app = spawn_app(b).await;
    let post = |body: Value| app.open(Method::POST, "/open/v5/profile-fields", Some(body));
    // A write first, so any registry the server caches is loaded before the schema changes.
    assert_eq!(
        app.upsert("m-0", json!({"profile": {"name": "Kim"}}))
            .await
            .status,
        200
    );
    let r = post(json!({"key": "birthday", "name": "생일", "type": "date"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["profileField"]["type"], "date");
    assert_eq!(
        post(json!({"key": "birthday", "type": "date"}))
            .await
            .status,
        409
    );
    for (body, field) in [
        (json!({"key": "1abc", "type": "string"}), "key"),
        (json!({"key": "has_space", "type": "string"}), "key"),
        (json!({"key": "ok", "type": "object"}), "type"),
        (json!({"key": "ok"}), "type"),
        (json!({"key": "ok", "type": "string", "extra": 1}), "extra"),
        (json!({"key": 5, "type": "string"}), "key"),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.error_field(), field, "{body}: {:?}", r.body);
    }
    // A registered date accepts YYYY-MM-DD and rejects other shapes.
    assert_eq!(
        app.upsert("m-1", json!({"profile": {"birthday": "1990-03-01"}}))
            .await
            .status,
        200
    );
    let r = app
        .upsert("m-1", json!({"profile": {"birthday": "March"}}))
        .await;
    assert_eq!((r.status, r.error_field()), (400, "profile.birthday"));

    let r = app
        .open(
            Method::PATCH,
            "/open/v5/profile-fields/birthday",
            Some(json!({"name": "Birthday", "sensitive": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["profileField"]["sensitive"], true);
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/profile-fields/birthday",
            Some(json!({"type": "string"})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "type"));
    let r = app
        .open(Method::DELETE, "/open/v5/profile-fields/email", None)
        .await;
    assert_eq!(r.status, 409);
    let r = app
        .open(Method::DELETE, "/open/v5/profile-fields/nope", None)
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .open(Method::DELETE, "/open/v5/profile-fields/birthday", None)
        .await;
    assert_eq!(r.status, 204);
    assert!(
        app.member("m-1").await["profile"].get("birthday").is_none(),
        "values go with the field"
    );
    app.stop().await;
}

async fn channel_settings(b: Backend) {
    let app = spawn_app(b).await;
    let r = app.open(Method::GET, "/open/v5/channel", None).await;
    assert_eq!(r.body["channel"]["timeZone"], "Asia/Seoul");
    assert_eq!(r.body["channel"]["memberHashRequired"], false);
    // A PATCH naming nothing to change is refused, here and on a profile field.
    for path in ["/open/v5/channel", "/open/v5/profile-fields/name"] {
        let r = app.open(Method::PATCH, path, Some(json!({}))).await;
        assert_eq!(
            (r.status, r.error_field()),
            (400, "body"),
            "{path}: {:?}",
            r.body
        );
    }
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"memberHashRequired": true, "timeZone": "Europe/Berlin"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["channel"]["memberHashRequired"], true);
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"timeZone": "Mars/Base"})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "timeZone"));
    let r = app.open(Method::GET, "/open/v5/channel", None).await;
    assert_eq!(r.body["channel"]["timeZone"], "Europe/Berlin");
    app.stop().await;
}

/// Many concurrent upserts on few members: no lost update, no "database is locked".
async fn concurrent_upserts(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let member = format!("c-{}", i % 5);
                let r = app
                    .upsert(
                        &member,
                        json!({"profile": {format!("k{t}"): i}, "tags": [format!("t{t}")]}),
                    )
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let list = app
        .open(Method::GET, "/open/v5/users?limit=100", None)
        .await;
    assert_eq!(list.body["users"].as_array().unwrap().len(), 5);
    // Every writer's key landed on every member it touched: nothing was lost.
    for i in 0..5 {
        let u = app.member(&format!("c-{i}")).await;
        for t in 0..16 {
            assert!(
                u["profile"].get(format!("k{t}")).is_some(),
                "c-{i} lacks k{t}"
            );
        }
    }
}

async fn rate_limit(b: Backend) {
    let app = spawn_with(b, |c| {
        c.rate_limit = 1;
        c.rate_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = app.open(Method::GET, "/open/v5/users", None).await;
        assert!(r.headers.contains_key("x-ratelimit-limit"));
        assert!(r.headers.contains_key("x-ratelimit-reset"));
        statuses.push((
            r.status,
            r.headers["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        ));
    }
    assert_eq!(statuses[0], (200, "2".to_owned()));
    assert_eq!(statuses[3].0, 429);
    let r = app.open(Method::GET, "/open/v5/users", None).await;
    assert_eq!(r.body["type"], "tooManyRequests");
    // Someone with this channel's public key but not its secret spends no budget of ours.
    let other = app.second_channel().await;
    let forged = sori_app::ChannelCredentials {
        access_secret: "0".repeat(64),
        ..other.clone()
    };
    for _ in 0..5 {
        app.open_as(&forged, Method::GET, "/open/v5/users", None)
            .await;
    }
    let r = app
        .open_as(&other, Method::GET, "/open/v5/users", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await;
}

/// Numbers at the edges of a double (the largest, the smallest, long fractions) and whole
/// numbers past 64 bits come back exactly, as profile values and event properties, and
/// the audience still answers: on PostgreSQL a `jsonb` number is read back as a long
/// decimal, and a parser that is not exact turned the largest double into "out of range"
/// (every read of that user, and every count, failed).
async fn extreme_numbers_round_trip(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .open(
            Method::POST,
            "/open/v5/profile-fields",
            Some(json!({"key": "num", "type": "number"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let numbers = [
        json!(f64::MAX),
        json!(f64::MIN),
        json!(1.7e308),
        json!(1.79e308),
        json!(1.5e-300),
        json!(5e-324),
        json!(0.1),
        json!(12_345_678_901_234_567_890_u64),
        json!(i64::MIN),
    ];
    for (i, n) in numbers.iter().enumerate() {
        let member = format!("n{i}");
        let r = app.upsert(&member, json!({"profile": {"num": n}})).await;
        assert_eq!(r.status, 200, "{n}: {:?}", r.body);
        let r = app
            .open(
                Method::POST,
                &format!("/open/v5/users/@{member}/events"),
                Some(json!({"name": "Measured", "property": {"value": n}})),
            )
            .await;
        assert_eq!(r.status, 200, "{n}: {:?}", r.body);
    }
    for (i, n) in numbers.iter().enumerate() {
        let member = format!("n{i}");
        let user = app.member(&member).await;
        assert_eq!(&user["profile"]["num"], n, "{user}");
        let r = app
            .open(
                Method::GET,
                &format!("/open/v5/users/@{member}/events"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(&r.body["events"][0]["property"]["value"], n, "{:?}", r.body);
    }
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(json!({"filter": {"and": [{"or": [
                {"key": "profile.num", "operator": "$gt", "values": [0]}
            ]}]}})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["count"]),
        (200, &json!(7)),
        "{:?}",
        r.body
    );
    app.stop().await;
}

/// A whole float from 10^16 up comes back from PostgreSQL's `jsonb` as an integer, longer
/// than `1e16`: it is stored as that integer on both backends, so the profile's size is
/// checked as stored (a profile near the limit could be written, then no longer changed
/// on PostgreSQL), and sending it again changes nothing.
async fn large_whole_floats_are_stored_as_read_back(b: Backend) {
    let app = spawn_app(b).await;
    let near_limit = |last: usize| {
        let mut p = serde_json::Map::new();
        for i in 0..30 {
            p.insert(format!("z{i}"), json!("x".repeat(500)));
        }
        p.insert("zlast".into(), json!("y".repeat(last)));
        p.insert("zn".into(), serde_json::from_str::<Value>("1e16").unwrap());
        json!({ "profile": p })
    };
    // As `1e16` this profile would fit; as stored (`10000000000000000`) it does not.
    let r = app.upsert("big", near_limit(73)).await;
    assert_eq!(
        (r.status, r.error_field()),
        (400, "profile"),
        "{:?}",
        r.body
    );
    let r = app.upsert("big", near_limit(60)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .open(
            Method::PATCH,
            &format!("/open/v5/users/{}", r.body["user"]["id"].as_str().unwrap()),
            Some(json!({"unsubscribeEmail": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let user = app.member("big").await;
    assert_eq!(user["profile"]["zn"].to_string(), "10000000000000000");
    let r = app.upsert("big", near_limit(60)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["user"]["updatedAt"], user["updatedAt"],
        "nothing changed"
    );
    app.stop().await;
}

/// Deleting a profile field while writes of its key are in flight: afterwards either the
/// key is registered again (a write after the deletion registers it, as any new key) or
/// no profile holds it. On PostgreSQL a batch that read the registry before the deletion
/// wrote the key back after its values were removed (the writes also go through a second
/// node there).
async fn field_deletion_races_writes(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let other = app.other_node().await;
    for round in 0..10 {
        let key = format!("racy{round}");
        app.register_field(&key, "number").await;
        let mut tasks = Vec::new();
        for t in 0..6 {
            let node = if t % 2 == 0 { &app } else { &other }.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let r = node
                    .upsert(&format!("fd-{t}"), json!({"profile": {key: 101}}))
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }));
        }
        let r = other
            .open(
                Method::DELETE,
                &format!("/open/v5/profile-fields/{key}"),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
        for t in tasks {
            t.await.unwrap();
        }
        let fields = app.open(Method::GET, "/open/v5/profile-fields", None).await;
        let registered = fields.body["profileFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == key.as_str());
        if !registered {
            for t in 0..6 {
                let user = app.member(&format!("fd-{t}")).await;
                assert!(
                    user["profile"].get(&key).is_none(),
                    "round {round}: `{key}` is not registered but {user}"
                );
            }
        }
    }
}

both!(
    field_deletion_races_writes,
    large_whole_floats_are_stored_as_read_back,
    extreme_numbers_round_trip,
    upsert_semantics,
    bad_input_changes_nothing,
    tenants_are_isolated,
    create_patch_delete_and_list,
    profile_field_registry,
    channel_settings,
    concurrent_upserts,
    rate_limit,
);
