//! Events, identity and ingestion scenarios, each on SQLite and on PostgreSQL: the Open API
//! event endpoints, the Segment-compatible API at the HTTP level, SDK boots, retention, and
//! the real JavaScript clients (headless Chromium with `sori.js`, the published Segment and
//! RudderStack Node libraries) driven against the server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Backend, TestApp, basic, segment, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

/// Sets the channel's event retention; history older than the default 90 days needs a
/// longer one to be stored at all.
async fn keep_events_for(app: &TestApp, days: i64) {
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"eventRetentionDays": days})),
        )
        .await;
    assert_eq!(
        r.body["channel"]["eventRetentionDays"], days,
        "{:?}",
        r.body
    );
}

/// The fields a partial boot's answer says it left out.
fn refused(r: &common::Reply) -> Vec<&str> {
    let list = r.body["refused"].as_array().expect("refused");
    list.iter().map(|f| f["field"].as_str().unwrap()).collect()
}

/// The channel's users without a member id (the first 500).
async fn anonymous_users(app: &TestApp) -> Vec<Value> {
    let r = app
        .open(Method::GET, "/open/v5/users?limit=500", None)
        .await;
    let users = r.body["users"].as_array().unwrap();
    users
        .iter()
        .filter(|u| u["memberId"].is_null())
        .cloned()
        .collect()
}

async fn events_of(app: &TestApp, key: &str) -> Vec<Value> {
    let r = app
        .open(
            Method::GET,
            &format!("/open/v5/users/{key}/events?limit=500"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["events"].as_array().unwrap().clone()
}

async fn open_api_events(b: Backend) {
    let app = spawn_app(b).await;
    let id = app
        .upsert("m1", json!({"profile": {"name": "Kim"}}))
        .await
        .body["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Server-side clients may gzip their bodies; another encoding is refused (415), not
    // read as plain JSON.
    let creds = &app.creds;
    let plain = json!({"name": "Zipped"}).to_string().into_bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    for (encoding, body, status) in [("gzip", gz.finish().unwrap(), 200), ("br", plain, 415)] {
        let headers = [
            ("x-access-key", creds.access_key.as_str()),
            ("x-access-secret", creds.access_secret.as_str()),
            ("content-type", "application/json"),
            ("content-encoding", encoding),
        ];
        let r = app
            .raw(Method::POST, "/open/v5/users/@zip/events", &headers, body)
            .await;
        assert_eq!(r.status, status, "{encoding}: {:?}", r.body);
    }
    let zip = app.member("zip").await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        events_of(&app, &zip).await.len(),
        1,
        "the gzip call's event only"
    );

    let r = app
        .open(
            Method::POST,
            &format!("/open/v5/users/{id}/events"),
            Some(json!({"name": "Order", "property": {"revenue": 12000, "items": ["a", "b"], "gift": false},
                        "page": "https://shop.example/checkout"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["event"]["name"], "Order");
    assert_eq!(r.body["event"]["source"], "openApi");
    assert_eq!(r.body["event"]["userId"], id.as_str());
    assert_eq!(r.body["event"]["property"]["items"], json!(["a", "b"]));
    assert_eq!(r.body["event"]["page"], "https://shop.example/checkout");
    assert_eq!(
        events_of(&app, &id).await[0]["page"],
        "https://shop.example/checkout"
    );
    // An explicit page over the limit is the caller's to fix: refused, naming it.
    let r = app
        .open(
            Method::POST,
            &format!("/open/v5/users/{id}/events"),
            Some(json!({"name": "Order", "page": "x".repeat(2049)})),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "page");

    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"name": "View", "property": {"n": i}}))
        .collect();
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/@m1/events",
            Some(json!({"events": batch})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["events"].as_array().unwrap().len(), 5);
    // The answer shows each event as stored: its owner and its properties.
    for (i, e) in r.body["events"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["userId"], id.as_str(), "{e}");
        assert_eq!(e["property"], json!({"n": i}), "{e}");
        assert_eq!(e["source"], "openApi", "{e}");
    }

    // Newest first (or oldest first), paged with an opaque cursor, nothing lost or repeated.
    let list = |order: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut seen = Vec::new();
            let mut since: Option<String> = None;
            loop {
                let q = since
                    .as_ref()
                    .map_or(String::new(), |s| format!("&since={s}"));
                let r = app
                    .open(
                        Method::GET,
                        &format!("/open/v5/users/{id}/events?limit=2&sortOrder={order}{q}"),
                        None,
                    )
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                let page = r.body["events"].as_array().unwrap();
                // 6 events, 2 a page: the third page is the last and says so.
                assert!(!page.is_empty(), "a `next` led to an empty page");
                seen.extend(page.iter().cloned());
                match r.body["next"].as_str() {
                    Some(n) => since = Some(n.to_owned()),
                    None => break,
                }
            }
            seen
        }
    };
    let seen = list("desc").await;
    let mut oldest_first = list("asc").await;
    oldest_first.reverse();
    assert_eq!(oldest_first, seen, "asc is desc reversed");
    assert_eq!(seen.len(), 6);
    let times: Vec<i64> = seen
        .iter()
        .map(|e| e["createdAt"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert_eq!(seen[5]["name"], "Order");
    assert_eq!(
        seen[5]["property"],
        json!({"revenue": 12000, "items": ["a", "b"], "gift": false})
    );

    let cat = app.open(Method::GET, "/open/v5/events/catalog", None).await;
    let entries = cat.body["events"].as_array().unwrap();
    let order = entries.iter().find(|e| e["name"] == "Order").unwrap();
    assert_eq!(order["count"], 1);
    assert_eq!(order["revenue"], true);
    let view = entries.iter().find(|e| e["name"] == "View").unwrap();
    assert_eq!(view["count"], 5);
    assert_eq!(view["revenue"], false);

    // Bad events are refused with the field named, and nothing of the call is stored.
    for (body, field) in [
        (json!({"name": "x".repeat(31)}), "name"),
        (json!({"name": "MarketingClick"}), "name"),
        (
            json!({"name": "A", "property": {"s": "a".repeat(513)}}),
            "property.s",
        ),
        (
            json!({"name": "A", "property": {"l": vec!["y".repeat(300); 14]}}),
            "property.l",
        ),
        (json!({"name": "A", "property": [1]}), "property"),
        (json!({"name": "A", "color": 1}), "color"),
        (
            json!({"events": [{"name": "ok"}, {"name": ""}]}),
            "events[1].name",
        ),
        (json!({"events": [{"name": "ok"}, 7]}), "events[1]"),
    ] {
        let r = app
            .open(
                Method::POST,
                &format!("/open/v5/users/{id}/events"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 400, "{body} → {:?}", r.body);
        assert_eq!(r.error_field(), field, "{body} → {:?}", r.body);
    }
    assert_eq!(events_of(&app, &id).await.len(), 6);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/0123456789abcdef01234567/events",
            Some(json!({"name": "A"})),
        )
        .await;
    assert_eq!(r.status, 404);

    // lastSeenAt follows events.
    let u = app.member("m1").await;
    assert!(u["lastSeenAt"].as_i64().unwrap() >= times[0]);

    // Deleting a user deletes their events.
    let doomed = app
        .upsert("gone", json!({"profile": {"name": "X"}}))
        .await
        .body["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.open(
        Method::POST,
        "/open/v5/users/@gone/events",
        Some(json!({"name": "Bye"})),
    )
    .await;
    let r = app
        .open(Method::DELETE, &format!("/open/v5/users/{doomed}"), None)
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    let left = app.app().store.events_page(ch, None, 500).await.unwrap();
    assert!(
        left.iter().all(|e| e.user_id != doomed),
        "events of a deleted user remain"
    );
    assert_eq!(left.len(), 7, "m1's six and the gzip call's");

    // Another channel's keys see nothing of this user.
    let other = app.second_channel().await;
    let r = app
        .open_as(
            &other,
            Method::GET,
            &format!("/open/v5/users/{id}/events"),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    app.stop().await;
}

async fn segment_api(b: Backend) {
    let app = spawn_app(b).await;

    // A retried batch (a proxy lost the first answer) changes nothing: an anonymous visit,
    // then the identify that signs that visitor in. Replayed by messageId, the visit would
    // otherwise find its anonymous user merged away, create another with a session, and
    // the identify would merge that one too.
    let minute_ago = sori_app::secrets::now_ms() - 60_000;
    let at = |s: i64| json!(minute_ago + s * 1000);
    let retried = json!({"batch": [
        {"type": "page", "anonymousId": "rv-anon", "messageId": "rv-1",
         "timestamp": at(0), "properties": {"url": "https://shop.example/"}},
        {"type": "identify", "userId": "rv-member", "anonymousId": "rv-anon",
         "messageId": "rv-2", "timestamp": at(1), "traits": {"plan": "pro"}},
        {"type": "track", "userId": "rv-member", "anonymousId": "rv-anon", "event": "Bought",
         "messageId": "rv-3", "timestamp": at(2)},
    ]});
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = segment(&app, "/v1/batch", retried.clone()).await;
        assert_eq!(r.body, json!({"success": true}), "no item refused");
        let m = app.member("rv-member").await;
        let id = m["id"].as_str().unwrap().to_owned();
        let merges = app
            .open(Method::GET, &format!("/open/v5/users/{id}/merges"), None)
            .await;
        seen.push((
            m["sessionsCount"].clone(),
            m["web"]["sessionsCount"].clone(),
            merges.body["merges"].as_array().unwrap().len(),
            events_of(&app, &id).await.len(),
        ));
    }
    assert_eq!(seen[0], seen[1], "the retry changed the member");
    assert_eq!(
        seen[0],
        (json!(1), json!(1), 0, 2),
        "one session, no merge, two events"
    );

    // Authentication: missing or wrong write key is 401 and stores nothing.
    let r = app
        .raw(
            Method::POST,
            "/v1/track",
            &[],
            json!({"userId": "s1", "event": "E"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    let bad = basic("nope");
    let r = app
        .raw(
            Method::POST,
            "/v1/track",
            &[("authorization", bad.as_str())],
            json!({"userId": "s1", "event": "E"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        app.open(Method::GET, "/open/v5/users/@s1", None)
            .await
            .status,
        404
    );

    // A batch: valid items land, invalid ones are reported by index.
    let r = segment(
        &app,
        "/v1/batch",
        json!({"batch": [
            {"type": "identify", "userId": "s1", "traits": {"name": "Lee", "plan": "pro"}},
            {"type": "track", "userId": "s1", "event": "x".repeat(31)},
            {"type": "track", "userId": "s1", "event": "Signed Up", "messageId": "msg-1",
             "properties": {"revenue": 5}},
            {"type": "alias", "userId": "s1", "previousId": "a"},
            {"type": "page", "userId": "s1", "properties": {"url": "https://shop.example/a"}},
            {"type": "track", "userId": "s1", "event": "Nul", "properties": {"k": "a\u{0}b"}},
            "not a call",
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let errs = r.body["errors"].as_array().unwrap();
    let indexes: Vec<i64> = errs.iter().map(|e| e["index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, vec![1, 3, 5, 6], "{errs:?}");
    assert_eq!(
        errs[3]["field"], "batch[6]",
        "an item that is not an object"
    );
    assert_eq!(errs[0]["field"], "batch[1].event");
    assert_eq!(
        errs[2]["field"], "batch[5].properties.k",
        "a NUL fails only its item"
    );
    assert_eq!(
        errs[2]["message"],
        "must not contain the NUL character (U+0000)"
    );
    // Outside the items, a NUL fails the whole batch (it is in what every item inherits).
    let r = segment(
        &app,
        "/v1/batch",
        json!({"context": {"traits": {"k": "ko\u{0}"}}, "batch": [{"type": "track", "userId": "s1", "event": "e"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "context.traits.k");
    // But for `traits`, what the library collected in `context` (a campaign from a link
    // whose utm_source is %00) loses its NULs instead of failing the call.
    for (path, body) in [
        (
            "/v1/batch",
            json!({"context": {"locale": "ko\u{0}"}, "batch": [
                {"type": "track", "userId": "nul-ctx", "event": "Collected",
                 "context": {"campaign": {"source": "\u{0}evil"}, "location": {"city": "Se\u{0}oul"}}}
            ]}),
        ),
        (
            "/v1/track",
            json!({"userId": "nul-ctx", "event": "Collected",
                   "context": {"campaign": {"term": "t\u{0}", "utm_\u{0}x": "y"}, "page": {"url": "https://s.example/\u{0}"}}}),
        ),
    ] {
        let r = segment(&app, path, body).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(
            r.body["errors"].as_array().is_none_or(Vec::is_empty),
            "{path}: {:?}",
            r.body
        );
    }
    let u = app.member("nul-ctx").await;
    let pages: Vec<Value> = events_of(&app, u["id"].as_str().unwrap())
        .await
        .iter()
        .map(|e| e["page"].clone())
        .collect();
    assert!(pages.contains(&json!("https://s.example/")), "{pages:?}");
    let p = &u["profile"];
    assert_eq!(
        (
            &p["utmSource"],
            &u["language"],
            &p["lastUtmTerm"],
            &u["city"]
        ),
        (&json!("evil"), &json!("ko"), &json!("t"), &json!("Seoul"))
    );
    // So does one in a write key sent in the body: bad input, not a wrong key.
    for path in ["/v1/batch", "/v1/track"] {
        let body = json!({"writeKey": "k\u{0}", "userId": "s1", "event": "e",
            "batch": [{"type": "track", "userId": "s1", "event": "e"}]});
        let r = app
            .raw(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert_eq!(r.error_field(), "writeKey", "{path}");
    }
    let u = app.member("s1").await;
    assert_eq!(u["profile"]["plan"], "pro");
    let id = u["id"].as_str().unwrap().to_owned();
    let evs = events_of(&app, &id).await;
    assert_eq!(evs.len(), 2);
    assert_eq!(evs.iter().filter(|e| e["name"] == "PageView").count(), 1);

    // Errors found while applying a call name the fields the call sent.
    let r = segment(&app, "/v1/identify", json!({"userId": " s9 "})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "userId");
    // As sent: `long_bio` is stored as `longBio`, `company.legal_name` as
    // `companyLegalName`.
    let long = json!({"type": "identify", "userId": "s9", "traits": {"long_bio": "x".repeat(600)}});
    let r = segment(&app, "/v1/identify", long.clone()).await;
    assert_eq!(r.error_field(), "traits.long_bio", "{:?}", r.body);
    let r = segment(&app, "/v1/batch", json!({"batch": [long]})).await;
    assert_eq!(
        r.body["errors"][0]["field"], "batch[0].traits.long_bio",
        "{:?}",
        r.body
    );
    let nested = json!({"userId": "s9", "traits": {"company": {"legal_name": "y".repeat(600)}}});
    let r = segment(&app, "/v1/identify", nested).await;
    assert_eq!(r.error_field(), "traits.company.legal_name", "{:?}", r.body);

    // Batch-level context applies to every item (the item's own keys win).
    let r = segment(
        &app,
        "/v1/batch",
        json!({"context": {"campaign": {"source": "batchwide"}},
               "batch": [{"type": "identify", "userId": "s2", "traits": {"company": {"name": "Acme"}}}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let s2 = app.member("s2").await;
    assert_eq!(s2["profile"]["utmSource"], "batchwide");
    assert_eq!(s2["profile"]["companyName"], "Acme");

    // Direct identify and page calls: city and country from the address, browser facts
    // from the user agent.
    let r = segment(
        &app,
        "/v1/identify",
        json!({"userId": "s3", "traits": {"address": {"city": "Busan", "country": "KR"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                  (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let r = segment(
        &app,
        "/v1/page",
        json!({"userId": "s3", "context": {"page": {"url": "https://shop.example/w"}, "userAgent": chrome}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let s3 = app.member("s3").await;
    assert_eq!(s3["city"], "Busan");
    assert_eq!(s3["country"], "KR");
    assert_eq!(s3["web"]["browserName"], "Chrome");
    assert_eq!(s3["web"]["sessionsCount"], 1);
    // What analytics.js collects from the browser is cut to the limits, not refused: a
    // long referrer or URL would otherwise lose the page view.
    let long_url = format!("https://shop.example/p?q={}", "x".repeat(3000));
    let r = segment(
        &app,
        "/v1/page",
        json!({"userId": "s4", "properties": {"url": long_url, "referrer": long_url},
               "context": {"page": {"referrer": long_url},
                           "campaign": {"source": "y".repeat(600)}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let s4 = app.member("s4").await;
    assert_eq!(s4["profile"]["referrer"].as_str().unwrap().len(), 512);
    assert_eq!(s4["profile"]["utmSource"], "y".repeat(512));
    let evs = events_of(&app, s4["id"].as_str().unwrap()).await;
    assert_eq!(evs[0]["page"], long_url[..2048]);
    assert_eq!(evs[0]["property"]["url"], long_url[..512]);

    // Visits more than 30 minutes apart are two sessions; the locale gives a new user
    // their language.
    let hour = 3600 * 1000;
    let now = sori_app::secrets::now_ms();
    for at in [now - 2 * hour, now - 2 * hour + 10 * 60 * 1000, now - hour] {
        let r = segment(
            &app,
            "/v1/page",
            json!({"userId": "s5", "timestamp": at, "context": {"locale": "ko-KR"}}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let s5 = app.member("s5").await;
    assert_eq!(s5["sessionsCount"], 2);
    assert_eq!(s5["web"]["sessionsCount"], 2);
    assert_eq!(s5["lastSeenAt"], now - hour);
    assert_eq!(s5["language"], "ko");

    // A backend event between two visits neither starts nor prolongs a session, so the
    // total never falls behind the web's (it counts web plus app sessions).
    for (at, body) in [
        (now - 2 * hour, json!({"type": "page"})),
        (
            now - 2 * hour + 25 * 60 * 1000,
            json!({"type": "track", "event": "OrderShipped"}),
        ),
        (now - 2 * hour + 50 * 60 * 1000, json!({"type": "page"})),
    ] {
        let mut body = body;
        body["userId"] = json!("s6");
        body["timestamp"] = json!(at);
        let r = segment(&app, "/v1/batch", json!({"batch": [body]})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let s6 = app.member("s6").await;
    assert_eq!(
        (&s6["sessionsCount"], &s6["web"]["sessionsCount"]),
        (&json!(2), &json!(2))
    );

    // An old event that moves `createdAt` back moves `updatedAt`, on the events-only path
    // (a member id alone) as on the full one (an anonymous id beside it).
    for (user, extra) in [
        ("lp1", json!({})),
        ("fp1", json!({"anonymousId": "fp1-anon"})),
    ] {
        let track = |at: i64| {
            let mut b = json!({"userId": user, "event": "Seen", "timestamp": at});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            b
        };
        assert_eq!(
            segment(&app, "/v1/track", track(now - hour)).await.status,
            200
        );
        let before = app.member(user).await;
        // Lets the clock pass a millisecond, so a moved `updatedAt` shows.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(
            segment(&app, "/v1/track", track(now - 2 * hour))
                .await
                .status,
            200
        );
        let after = app.member(user).await;
        assert_eq!(after["createdAt"], now - 2 * hour, "{user}");
        assert_eq!(after["lastSeenAt"], before["lastSeenAt"], "{user}");
        assert!(
            after["updatedAt"].as_i64() > before["updatedAt"].as_i64(),
            "{user}: {before} {after}"
        );
    }

    // A mobile app's screen calls (alone and in a batch) are its page views and feed
    // `mobile.*` from the app's context, leaving `web.*` alone.
    let phone = json!({"app": {"name": "Shop", "version": "2.3.1"},
                       "os": {"name": "iOS", "version": "17.2"},
                       "device": {"model": "iPhone15,2", "type": "ios", "manufacturer": "Apple"}});
    let r = segment(
        &app,
        "/v1/screen",
        json!({"userId": "s3", "name": "Home", "context": phone}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = segment(
        &app,
        "/v1/batch",
        json!({"batch": [{"type": "screen", "userId": "s3", "name": "Cart", "context": phone,
                          "properties": {"items": 2}}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["errors"].as_array().map_or(0, Vec::len),
        0,
        "{:?}",
        r.body
    );
    let s3 = app.member("s3").await;
    let m = &s3["mobile"];
    assert_eq!(m["appName"], "Shop", "{s3}");
    assert_eq!(m["appVersion"], "2.3.1");
    assert_eq!(m["os"], "iOS 17.2");
    assert_eq!(m["osName"], "iOS");
    assert_eq!(m["device"], "iPhone15,2");
    assert_eq!(m["sessionsCount"], 1);
    assert!(m["lastSeenAt"].as_i64().is_some());
    assert_eq!(s3["web"]["sessionsCount"], 1);
    assert_eq!(s3["web"]["browserName"], "Chrome");
    assert_eq!(
        s3["sessionsCount"], 2,
        "the total is the web and the app session"
    );
    let pages: Vec<_> = events_of(&app, s3["id"].as_str().unwrap())
        .await
        .iter()
        .map(|e| (e["name"].clone(), e["page"].clone()))
        .collect();
    assert_eq!(
        pages,
        vec![
            (json!("PageView"), json!("Cart")),
            (json!("PageView"), json!("Home")),
            (json!("PageView"), json!("https://shop.example/w")),
        ]
    );

    // A retry with the same messageId stores nothing new.
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "s1", "event": "Signed Up", "messageId": "msg-1", "properties": {"revenue": 5}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, &id).await.len(), 2);
    // Nor does a retry that carries another time (a client that re-stamps): the stored
    // event decides, so the user's createdAt does not move back.
    let created = app.member("s1").await["createdAt"].as_i64().unwrap();
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "s1", "event": "Signed Up", "messageId": "msg-1",
               "timestamp": sori_app::secrets::now_ms() - 10 * 24 * 3600 * 1000,
               "properties": {"revenue": 5}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, &id).await.len(), 2);
    assert_eq!(
        app.member("s1").await["createdAt"].as_i64().unwrap(),
        created
    );
    let cat = app.open(Method::GET, "/open/v5/events/catalog", None).await;
    let signed = cat.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Signed Up")
        .unwrap()
        .clone();
    assert_eq!(signed["count"], 1);
    assert_eq!(signed["revenue"], true);

    // History older than the channel keeps events is refused: the next retention pass
    // would delete it (and the messageId that keeps a re-run from storing it twice).
    let old = json!({"userId": "s1", "event": "Old", "timestamp": "2024-01-02T03:04:05Z"});
    let r = segment(&app, "/v1/track", old.clone()).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "timestamp");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("raise eventRetentionDays"),
        "{:?}",
        r.body
    );
    // RudderStack sends originalTimestamp (and sentAt, here a queue held since 2024): the
    // error names what was sent.
    let rudder = json!({"userId": "s1", "event": "Old", "originalTimestamp": "2024-01-02T03:04:05Z",
                        "sentAt": jiff::Timestamp::now().to_string()});
    let r = segment(&app, "/v1/track", rudder).await;
    assert_eq!(r.error_field(), "originalTimestamp", "{:?}", r.body);
    let mut item = old.clone();
    item["type"] = json!("track");
    let r = segment(&app, "/v1/batch", json!({"batch": [item]})).await;
    assert_eq!(r.error_field(), "batch[0].timestamp", "{:?}", r.body);
    // The batch's own sentAt is the request's: a bad one refuses the batch, named as sent.
    let before = events_of(&app, &id).await.len();
    let r = segment(
        &app,
        "/v1/batch",
        json!({"sentAt": "yesterday", "batch": [{"type": "track", "userId": "s1", "event": "A"}]}),
    )
    .await;
    assert_eq!((r.status, r.error_field()), (400, "sentAt"), "{:?}", r.body);
    assert_eq!(events_of(&app, &id).await.len(), before);
    // With a longer retention it keeps its time; createdAt moves back, lastSeenAt does not.
    keep_events_for(&app, 3650).await;
    let seen_before = app.member("s1").await["lastSeenAt"].as_i64().unwrap();
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "s1", "event": "Old", "timestamp": "2024-01-02T03:04:05Z"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let u = app.member("s1").await;
    assert_eq!(u["createdAt"], 1_704_164_645_000_i64);
    assert_eq!(u["lastSeenAt"].as_i64().unwrap(), seen_before);
    let old = events_of(&app, &id).await;
    assert_eq!(old.last().unwrap()["createdAt"], 1_704_164_645_000_i64);

    // Whole-call errors name the field; a batch with no valid item is 400.
    let r = segment(&app, "/v1/track", json!({"event": "E"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "userId");
    // Marketing events are the system's own: a client cannot send one.
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "s1", "event": "MarketingClick"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "event");
    let r = segment(
        &app,
        "/v1/batch",
        json!({"batch": [{"type": "track", "userId": "s1"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "batch[0].event");
    let r = app
        .raw(
            Method::POST,
            "/v1/batch",
            &[("authorization", basic(&app.creds.write_key).as_str())],
            b"{oops".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "s1", "event": "E", "anonymousId": "a\u{0}b"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "anonymousId");
    app.stop().await;
}

async fn boot(app: &TestApp, body: Value) -> common::Reply {
    app.raw(
        Method::POST,
        "/sdk/v1/boot",
        &[("content-type", "application/json"), ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")],
        body.to_string().into_bytes(),
    )
    .await
}

async fn sdk_rules(b: Backend) {
    let app = spawn_app(b).await;
    let pk = app.creds.plugin_key.clone();

    let r = boot(&app, json!({"pluginKey": "nope"})).await;
    assert_eq!(r.status, 401);
    let r = boot(&app, json!({"pluginKey": pk, "zoom": 1})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "zoom");
    let r = boot(&app, json!({"pluginKey": pk, "veilId": "bad id!"})).await;
    assert_eq!(r.error_field(), "veilId");

    // The SDK writes registered profile fields only (its plugin key is public, so any
    // visitor could otherwise add fields and fix their types): an unknown key is refused,
    // naming it, and nothing is written, not even the field.
    let fields = app.open(Method::GET, "/open/v5/profile-fields", None).await;
    let r = boot(&app, json!({"pluginKey": pk, "profile": {"plan": "free"}})).await;
    assert_eq!(
        (r.status, r.error_field()),
        (400, "profile.plan"),
        "{:?}",
        r.body
    );
    let after = app.open(Method::GET, "/open/v5/profile-fields", None).await;
    assert_eq!(fields.body, after.body);
    app.register_field("plan", "string").await;

    // A first boot creates an anonymous user with a session, device and PageView.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "page": "https://shop.example/", "language": "en",
        "unsubscribeEmail": true, "unsubscribeTexting": true, "profile": {"plan": "free"},
        "utm": {"source": "news"}, "referrer": "https://search.example/"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let u = r.body["user"].clone();
    let veil = r.body["veilId"].as_str().unwrap().to_owned();
    let session = r.body["session"].as_str().unwrap().to_owned();
    assert_eq!(u["sessionsCount"], 1);
    assert_eq!(u["language"], "en");
    assert_eq!(u["unsubscribeEmail"], true);
    assert_eq!(u["unsubscribeTexting"], true);
    assert_eq!(u["profile"]["plan"], "free");
    assert_eq!(u["web"]["browserName"], "Chrome");
    assert_eq!(u["web"]["osName"], "Windows");
    assert_eq!(u["web"]["os"], "Windows 10");
    assert_eq!(u["web"]["browser"], "Chrome 120.0.0.0");
    assert_eq!(u["web"]["device"], "Desktop");
    assert_eq!(u["profile"]["utmSource"], "news");
    assert_eq!(u["profile"]["referrer"], "https://search.example/");
    let id = u["id"].as_str().unwrap().to_owned();
    let evs = events_of(&app, &id).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["name"], "PageView");
    assert_eq!(evs[0]["page"], "https://shop.example/");
    assert_eq!(evs[0]["source"], "sdk");
    // Values the SDK collects from the browser are cut to the limits rather than failing
    // the boot (which would switch the SDK off for the page).
    let long_url = format!("https://shop.example/?fbclid={}", "가".repeat(1200));
    let r = boot(
        &app,
        json!({"pluginKey": pk, "page": long_url, "referrer": long_url,
        "utm": {"campaign": long_url}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let p = &r.body["user"]["profile"];
    assert_eq!(p["referrer"].as_str().unwrap().chars().count(), 512);
    assert_eq!(p["utmCampaign"], p["referrer"]);
    let evs = events_of(&app, r.body["user"]["id"].as_str().unwrap()).await;
    let page = evs[0]["page"].as_str().unwrap();
    assert!(page.len() <= 2048 && page.len() > 2045 && long_url.starts_with(page));

    // A boot never resubscribes, and language applies only to a new user.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": veil, "unsubscribeEmail": false,
        "language": "ko", "trackDefaultEvent": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["id"], id.as_str());
    assert_eq!(r.body["user"]["unsubscribeEmail"], true);
    assert_eq!(r.body["user"]["language"], "en");
    assert_eq!(
        r.body["user"]["sessionsCount"], 1,
        "same session within 30 minutes"
    );
    assert_eq!(events_of(&app, &id).await.len(), 1);
    // Ignored for an existing user, but still checked: a bad tag is a 400 that writes nothing.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": veil, "language": "not a language!",
        "trackDefaultEvent": false}),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_field(), "language");

    // SDK calls need a genuine session token.
    let send = |token: String, path: &'static str, method: Method, body: Value| {
        let app = &app;
        async move {
            app.raw(
                method,
                path,
                &[
                    ("content-type", "application/json"),
                    ("x-sori-session", token.as_str()),
                ],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let r = send(
        session.clone(),
        "/sdk/v1/events",
        Method::POST,
        json!({"name": "Click", "property": {"k": 1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let forged = session.replacen(&id, "0123456789abcdef01234567", 1);
    let r = send(
        forged,
        "/sdk/v1/events",
        Method::POST,
        json!({"name": "Click"}),
    )
    .await;
    assert_eq!(r.status, 401);
    // A token naming no channel is an invalid session, not a plugin-key problem.
    let reversed: String = session.chars().rev().collect();
    let r = send(
        reversed,
        "/sdk/v1/events",
        Method::POST,
        json!({"name": "Click"}),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body["message"], "x-sori-session is invalid; boot first",
        "{:?}",
        r.body
    );
    let r = send(
        session.clone(),
        "/sdk/v1/events",
        Method::POST,
        json!({"name": "MarketingGoal"}),
    )
    .await;
    assert_eq!(r.status, 400);
    let tags: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let r = send(
        session.clone(),
        "/sdk/v1/user",
        Method::PATCH,
        json!({"addTags": tags}),
    )
    .await;
    assert_eq!(r.status, 400, "more than 10 tags per SDK call");
    let r = send(
        session.clone(),
        "/sdk/v1/user",
        Method::PATCH,
        json!({"addTags": ["A"], "unsubscribeEmail": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["tags"], json!(["a"]));
    assert_eq!(
        r.body["user"]["unsubscribeEmail"], false,
        "the customer's own action may resubscribe"
    );
    // updateUser's language is the customer's choice: it applies to an existing user
    // (a boot's applies only to a new one, above).
    let r = send(
        session.clone(),
        "/sdk/v1/user",
        Method::PATCH,
        json!({"language": "ko-KR"}),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["user"]["language"]),
        (200, &json!("ko")),
        "{:?}",
        r.body
    );
    // An update naming nothing to change is an error (SPEC §3.2), here and on the Open API.
    let r = send(session.clone(), "/sdk/v1/user", Method::PATCH, json!({})).await;
    assert_eq!((r.status, r.error_field()), (400, "body"), "{:?}", r.body);
    let r = app
        .open(
            Method::PATCH,
            &format!("/open/v5/users/{id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "body"), "{:?}", r.body);

    // An empty `profile` in a boot sets nothing; the visit's UTM still applies.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "profile": {}, "utm": {"source": "empty-profile"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["profile"]["utmSource"], "empty-profile");

    // Without member-hash checking a member boot works, but the browser is not shown the
    // member's profile (anyone with the public plugin key could claim a memberId).
    app.upsert(
        "known",
        json!({"profile": {"name": "Secret Kim", "email": "kim@example.com"}, "tags": ["debt"]}),
    )
    .await;
    let r = boot(&app, json!({"pluginKey": pk, "memberId": "known"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let unproven = r.body["session"].as_str().unwrap().to_owned();
    let anonymous = boot(&app, json!({"pluginKey": pk})).await.body["session"]
        .as_str()
        .unwrap()
        .to_owned();
    // A visitor's anonymous session, whose visitor then claims a member id by id alone.
    let squatter = boot(&app, json!({"pluginKey": pk, "veilId": "squat"}))
        .await
        .body["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "squat", "memberId": "squatted"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Left out, not empty (an empty list would read as "no tags").
    for hidden in ["profile", "name", "tags"] {
        assert!(
            r.body["user"].get(hidden).is_none(),
            "{hidden}: {:?}",
            r.body
        );
    }
    // Nor the browser id a member signed in from: with it, anyone could boot as the
    // anonymous user that browser uses after a logout and read what it holds.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "victim-veil", "memberId": "signed"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = boot(&app, json!({"pluginKey": pk, "memberId": "signed"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["user"].get("veilId").is_none(), "{:?}", r.body);
    assert_ne!(r.body["veilId"], "victim-veil", "{:?}", r.body);

    // Member hashes, once required, are checked and a failure writes nothing.
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"memberHashRequired": true})),
        )
        .await;
    assert_eq!(r.body["channel"]["memberHashRequired"], true);
    let secret = app.creds.member_hash_secret.clone();
    let good = sori_domain::member_hash::compute(&secret, "mem-1").unwrap();
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": veil, "memberId": "mem-1"}),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": veil, "memberId": "mem-1", "memberHash": "00"}),
    )
    .await;
    assert_eq!(r.status, 401);
    // A wrong hash is a 401 whatever else is wrong with the boot (a bad stored id).
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "bad id", "memberId": "mem-1", "memberHash": "00"}),
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        app.open(Method::GET, "/open/v5/users/@mem-1", None)
            .await
            .status,
        404
    );
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": veil, "memberId": "mem-1", "memberHash": good}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // No member existed, so the anonymous user itself becomes the member.
    assert_eq!(r.body["user"]["id"], id.as_str());
    assert_eq!(r.body["user"]["memberId"], "mem-1");
    let known = sori_domain::member_hash::compute(&secret, "known").unwrap();
    let r = boot(
        &app,
        json!({"pluginKey": pk, "memberId": "known", "memberHash": known}),
    )
    .await;
    assert_eq!(
        r.body["user"]["profile"]["name"], "Secret Kim",
        "a verified member sees their profile"
    );
    let proven = r.body["session"].as_str().unwrap().to_owned();

    // A member session opened by id alone, before hashes were required, may no longer act
    // as the member (nor read them); an anonymous session and a proven one still may.
    let sdk = |method: Method, path: &'static str, session: String, body: Value| {
        let app = &app;
        async move {
            app.raw(
                method,
                path,
                &[
                    ("x-sori-session", session.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    // Adds one tag as `session`'s user.
    let tag_as = |session: String, tag: &'static str| {
        sdk(
            Method::PATCH,
            "/sdk/v1/user",
            session,
            json!({"addTags": [tag]}),
        )
    };
    let tag = json!({"addTags": ["stolen"]});
    for r in [
        sdk(Method::PATCH, "/sdk/v1/user", unproven.clone(), tag.clone()).await,
        sdk(Method::PATCH, "/sdk/v1/user", squatter, tag.clone()).await,
        sdk(
            Method::POST,
            "/sdk/v1/events",
            unproven.clone(),
            json!({"name": "Stolen"}),
        )
        .await,
        app.raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("content-type", "text/plain")],
            json!({"session": unproven, "calls": [{"user": tag}]})
                .to_string()
                .into_bytes(),
        )
        .await,
    ] {
        assert_eq!(
            (r.status, r.body["type"].as_str()),
            (401, Some("memberHashRequired")),
            "{:?}",
            r.body
        );
    }
    let known_user = app.member("known").await;
    assert_eq!(known_user["tags"], json!(["debt"]), "{known_user}");
    assert_eq!(app.member("squatted").await["tags"], json!([]));
    assert!(
        events_of(&app, "@known")
            .await
            .iter()
            .all(|e| e["name"] != "Stolen")
    );
    let r = tag_as(anonymous, "a").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = tag_as(proven, "ok").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["user"]["tags"],
        json!(["debt", "ok"]),
        "{:?}",
        r.body
    );
    // A visitor's anonymous session opened while hashes are required goes on once the
    // visitor signs in with a valid hash and becomes that member (a request still on its
    // way at sign-in, another tab).
    let visitor = boot(&app, json!({"pluginKey": pk, "veilId": "legit-v"}))
        .await
        .body["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = sori_domain::member_hash::compute(&secret, "legit-m").unwrap();
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "legit-v", "memberId": "legit-m", "memberHash": hash}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = tag_as(visitor, "mine").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["memberId"], "legit-m");
    assert_eq!(r.body["user"]["tags"], json!(["mine"]), "{:?}", r.body);
    // Tokens from before sessions recorded an epoch read as not entitled.
    let user_id = r.body["user"]["id"].as_str().unwrap().to_owned();
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    let mac = sori_app::secrets::keyed_hash(&app.app().pepper, &format!("sdk:{ch}:{user_id}"));
    let legacy = format!("{pk}:{user_id}.{}", &mac[..32]);
    let r = tag_as(legacy, "old").await;
    assert_eq!(
        (r.status, r.body["type"].as_str()),
        (401, Some("memberHashRequired")),
        "{:?}",
        r.body
    );
    app.stop().await;
}

async fn retention(b: Backend) {
    let app = spawn_app(b).await;
    let r = app.open(Method::GET, "/open/v5/channel", None).await;
    assert_eq!(
        r.body["channel"]["eventRetentionDays"], 90,
        "default retention"
    );
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"eventRetentionDays": 0})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_field(), "eventRetentionDays");
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"eventRetentionDays": 7})),
        )
        .await;
    assert_eq!(r.body["channel"]["eventRetentionDays"], 7);
    let day = 24 * 3600 * 1000_i64;
    let now = sori_app::secrets::now_ms();
    let batch: Vec<Value> = [30, 8, 6, 0]
        .iter()
        .map(|d| {
            json!({"type": "track", "userId": "r1", "event": "Visit", "timestamp": now - d * day,
                        "messageId": format!("visit-{d}")})
        })
        .collect();
    // Stored while the channel keeps 40 days.
    keep_events_for(&app, 40).await;
    let r = segment(&app, "/v1/batch", json!({"batch": batch.clone()})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, "@r1").await.len(), 4);
    // Kept for 7 days, the channel refuses the two older events (a retry of the others
    // stores nothing twice).
    keep_events_for(&app, 7).await;
    let r = segment(&app, "/v1/batch", json!({"batch": batch})).await;
    let refused: Vec<&Value> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["field"])
        .collect();
    assert_eq!(
        refused,
        [&json!("batch[0].timestamp"), &json!("batch[1].timestamp")]
    );
    assert_eq!(events_of(&app, "@r1").await.len(), 4);
    // Nothing past the given position goes (retention passes what the node followed).
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    let store = &app.app().store;
    assert_eq!(
        store.delete_events_before(ch, now, 0, 100).await.unwrap(),
        0
    );
    let deleted = app.app().enforce_retention().await.unwrap();
    assert_eq!(deleted, 2);
    // A stored identify's messageId is kept as long as events are, and goes with them.
    let r = segment(
        &app,
        "/v1/identify",
        json!({"userId": "r9", "traits": {"plan": "a"}, "messageId": "retained-call-1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        store
            .delete_call_keys_before(ch, now - 1, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_call_keys_before(ch, i64::MAX, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .delete_call_keys_before(ch, i64::MAX, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(events_of(&app, "@r1").await.len(), 2);
    // Per-user counts still include what retention removed (rolled up before deletion).
    let id = app.member("r1").await["id"].as_str().unwrap().to_owned();
    let counts = app.app().store.event_counts(ch, &id).await.unwrap();
    assert_eq!(counts, vec![("Visit".to_owned(), 4)]);
    // A second pass finds nothing more and counts nothing twice.
    assert_eq!(app.app().enforce_retention().await.unwrap(), 0);
    assert_eq!(app.app().store.event_counts(ch, &id).await.unwrap()[0].1, 4);
    // The catalog keeps counting what retention removed.
    let cat = app.open(Method::GET, "/open/v5/events/catalog", None).await;
    assert_eq!(cat.body["events"][0]["count"], 4);
    assert_eq!(cat.body["events"][0]["firstSeenAt"], now - 30 * day);
    assert_eq!(cat.body["events"][0]["lastSeenAt"], now);
    // The background job does the same on its own schedule. (A fresh event goes after the
    // old one: SQLite never deletes the newest row, so its row ids are never reused.)
    let batch = json!({"batch": [
        {"type": "track", "userId": "r1", "event": "Visit", "timestamp": now - 9 * day},
        {"type": "track", "userId": "r1", "event": "Visit"},
    ]});
    keep_events_for(&app, 40).await;
    let r = segment(&app, "/v1/batch", batch).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, "@r1").await.len(), 4);
    keep_events_for(&app, 7).await;
    let job = tokio::spawn(
        app.app()
            .clone()
            .retention_loop(Duration::ZERO, Duration::from_secs(3600)),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while events_of(&app, "@r1").await.len() != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention job did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    job.abort();
    app.stop().await;
}

/// Runs a script of `tests/js` with node against the server; fails with its output.
fn node(app: &TestApp, script: &str, envs: &[(&str, String)]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/js/node_modules is missing: run the suite with ./scripts/test.sh (it runs npm ci)"
    );
    let out = std::process::Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("SORI_URL", &app.base)
        .env("SORI_ACCESS_KEY", &app.creds.access_key)
        .env("SORI_ACCESS_SECRET", &app.creds.access_secret)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs (install Node.js)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    println!("{text}");
}

async fn web_sdk_in_chromium(b: Backend) {
    let app = spawn_app(b).await;
    // The page's updateUser writes `nickname`: the SDK writes registered fields only.
    app.register_field("nickname", "string").await;
    let envs = [
        ("SORI_PLUGIN_KEY", app.creds.plugin_key.clone()),
        (
            "SORI_MEMBER_HASH_SECRET",
            app.creds.member_hash_secret.clone(),
        ),
        (
            "CHROMIUM",
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        ),
    ];
    let a = &app;
    tokio::task::block_in_place(|| node(a, "browser.mjs", &envs));
    // The browser's member ended up with the merged history, as stored.
    let member = app.member("member-42").await;
    let evs = events_of(&app, member["id"].as_str().unwrap()).await;
    assert!(
        evs.iter()
            .any(|e| e["name"] == "AddToCart" && e["page"] == "/custom/page")
    );
    app.stop().await;
}

async fn segment_and_rudder_node_clients(b: Backend) {
    let app = spawn_app(b).await;
    // The clients' runs include an order from 2024.
    keep_events_for(&app, 3650).await;
    for client in ["segment", "rudder"] {
        let envs = [
            ("CLIENT", client.to_owned()),
            ("SORI_WRITE_KEY", app.creds.write_key.clone()),
        ];
        let a = &app;
        tokio::task::block_in_place(|| node(a, "segment.mjs", &envs));
        let u = app.member(&format!("{client}-m1")).await;
        assert_eq!(u["profile"]["mobileNumber"], "+821012345678");
    }
    app.stop().await;
}

/// Writes to one user keep their order when a request's ops span several store batches
/// (PostgreSQL may run two large batches at once; the rule that keeps batches sharing a
/// user apart is unit-tested in sori-app).
async fn batch_order(b: Backend) {
    let app = spawn_app(b).await;
    let mut calls = Vec::new();
    for i in 0..1500 {
        calls.push(json!({"type": "identify", "userId": "ord", "traits": {"step": i}}));
        calls.push(json!({"type": "track", "userId": format!("other{}", i % 300), "event": "E"}));
    }
    for chunk in calls.chunks(1000) {
        let r = segment(&app, "/v1/batch", json!({"batch": chunk})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let u = app.member("ord").await;
    assert_eq!(u["profile"]["step"], 1499, "{u}");
    app.stop().await;
}

/// Pages through events that share one time (a history imported with one instant): a
/// channel's pages (export) and a user's, both directions, each event once and in order.
async fn pages_through_ties(b: Backend) {
    let app = spawn_app(b).await;
    keep_events_for(&app, 3650).await;
    let at = 1_700_000_000_000_i64;
    let batch: Vec<Value> = (0..250)
        .map(|i| {
            json!({"type": "track", "userId": format!("t{}", i % 2), "event": "Old",
                   "timestamp": at, "properties": {"n": i}})
        })
        .collect();
    let r = segment(&app, "/v1/batch", json!({"batch": batch})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    let store = &app.app().store;
    let mut seen: Vec<(i64, String)> = Vec::new();
    loop {
        let after = seen.last().map(|(t, id)| (*t, id.as_str()));
        let page = store.events_page(ch, after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.into_iter().map(|e| (e.created_at, e.id)));
    }
    assert_eq!(seen.len(), 250, "every event once");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in (createdAt, id) order"
    );
    let user = app.member("t1").await["id"].as_str().unwrap().to_owned();
    for oldest_first in [true, false] {
        let mut ids: Vec<String> = Vec::new();
        let mut cursor: Option<(i64, String)> = None;
        loop {
            let page = store
                .user_events(
                    ch,
                    &user,
                    cursor.as_ref().map(|(t, id)| (*t, id.as_str())),
                    9,
                    oldest_first,
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            cursor = Some((last.created_at, last.id.clone()));
            ids.extend(page.into_iter().map(|e| e.id));
        }
        assert_eq!(ids.len(), 125, "t1's events once ({oldest_first})");
        let mut sorted = ids.clone();
        sorted.sort();
        if !oldest_first {
            sorted.reverse();
        }
        assert_eq!(ids, sorted, "ties in id order ({oldest_first})");
    }
    app.stop().await;
}

/// Many requests create the same new anonymous user at once, from different writer shards
/// (each request's first item is another member, and shards follow the first item): one
/// user per veilId results, holding every event.
async fn one_anonymous_user_per_veil(b: Backend) {
    let app = std::sync::Arc::new(common::spawn_with(b, |c| c.writer_shards = Some(4)).await);
    for round in 0..4 {
        let veil = format!("shared-veil-{round}");
        let mut tasks = Vec::new();
        for t in 0..12 {
            let (app, veil) = (app.clone(), veil.clone());
            tasks.push(tokio::spawn(async move {
                let r = segment(
                    &app,
                    "/v1/batch",
                    json!({"batch": [
                        {"type": "track", "userId": format!("racer-{round}-{t}"), "event": "Go"},
                        {"type": "track", "anonymousId": veil, "event": "Seen"},
                    ]}),
                )
                .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                assert!(r.body.get("errors").is_none(), "{:?}", r.body);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let list = app
            .open(Method::GET, "/open/v5/users?limit=500", None)
            .await;
        assert_eq!(list.status, 200, "{:?}", list.body);
        let users: Vec<&Value> = list.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["veilId"] == veil.as_str() && u["memberId"].is_null())
            .collect();
        assert_eq!(users.len(), 1, "round {round}: {users:?}");
        let id = users[0]["id"].as_str().unwrap();
        assert_eq!(events_of(&app, id).await.len(), 12, "round {round}");
    }
}

/// Merges and events racing on a few members from many clients and four writer shards:
/// anonymous browsers boot as members while Segment batches write to the same members
/// from other shards. Every request succeeds (races are retried, never surfaced), and
/// every member ends with every event sent to it or merged into it.
async fn merges_race_events(b: Backend) {
    let app = std::sync::Arc::new(common::spawn_with(b, |c| c.writer_shards = Some(4)).await);
    let pk = app.creds.plugin_key.clone();
    let mut tasks = Vec::new();
    for t in 0..12 {
        let (app, pk) = (app.clone(), pk.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            for round in 0..6 {
                let member = format!("racer-{}", (t + round) % 3);
                // An anonymous visit with an event, then a sign-in that merges it.
                let veil = format!("veil-{t}-{round}");
                let r = boot(&app, json!({"pluginKey": pk, "veilId": veil})).await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                let r = boot(
                    &app,
                    json!({"pluginKey": pk, "veilId": veil, "memberId": member,
                        "trackDefaultEvent": false}),
                )
                .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                // Server-side events for the three members, first item varying the shard.
                let r = segment(
                    &app,
                    "/v1/batch",
                    json!({"batch": [
                        {"type": "track", "userId": format!("racer-{}", (t + round + 1) % 3), "event": "Race"},
                        {"type": "track", "userId": format!("racer-{}", (t + round + 2) % 3), "event": "Race"},
                        {"type": "track", "userId": member, "event": "Race"},
                    ]}),
                )
                .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                assert!(r.body.get("errors").is_none(), "{:?}", r.body);
                sent += 3;
            }
            sent
        }));
    }
    let mut races = 0;
    for t in tasks {
        races += t.await.unwrap();
    }
    let mut total_races = 0;
    let mut total_views = 0;
    for m in 0..3 {
        let evs = events_of(&app, &format!("@racer-{m}")).await;
        total_races += evs.iter().filter(|e| e["name"] == "Race").count();
        total_views += evs.iter().filter(|e| e["name"] == "PageView").count();
    }
    assert_eq!(total_races, races, "every Race event on its member");
    assert_eq!(
        total_views,
        12 * 6,
        "every anonymous PageView merged into a member"
    );
    // No anonymous user is left behind: each was merged.
    let anonymous = anonymous_users(&app).await;
    assert!(anonymous.is_empty(), "{anonymous:?}");
}

/// A client's retry can overlap the request it retries, on another writer shard or node:
/// the same `messageId`s sent by eight concurrent requests (each starting with a
/// different item, so they spread over the shards) are stored once each.
async fn concurrent_retries_store_once(b: Backend) {
    let app = std::sync::Arc::new(common::spawn_with(b, |c| c.writer_shards = Some(4)).await);
    for round in 0..3 {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let mut batch = vec![json!({"type": "identify", "userId": format!("lead-{t}")})];
                for i in 0..10 {
                    batch.push(
                        json!({"type": "track", "userId": format!("retrier-{}", i % 3),
                        "event": "Paid", "messageId": format!("pay-{round}-{i}")}),
                    );
                }
                let r = segment(&app, "/v1/batch", json!({ "batch": batch })).await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                assert!(r.body.get("errors").is_none(), "{:?}", r.body);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let mut paid = 0;
    for u in 0..3 {
        paid += events_of(&app, &format!("@retrier-{u}"))
            .await
            .iter()
            .filter(|e| e["name"] == "Paid")
            .count();
    }
    assert_eq!(paid, 30, "each of the 30 message ids once");
    let catalog = app.open(Method::GET, "/open/v5/events/catalog", None).await;
    let count = catalog.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Paid")
        .map(|e| e["count"].clone());
    assert_eq!(count, Some(json!(30)), "the catalog counts them once too");

    // Copies of an identify with a `messageId` (a call without events) to a known member:
    // whichever copy commits first stores the id; one that raced it is written again and
    // answered as the retry it is, never a 5xx.
    // Copies of a sign-in batch (a visit, then the identify naming a known member) that
    // arrive at once: one visit, one merge, however they meet (one write batch, or two
    // shards racing).
    for round in 0..4 {
        let member = format!("racer-{round}");
        app.upsert(&member, json!({"profile": {"name": "R"}})).await;
        let anon = format!("anon-race-{round}");
        let batch = json!({"batch": [
            {"type": "page", "anonymousId": anon, "messageId": format!("race-page-{round}"),
             "properties": {"url": "https://shop.example/"}},
            {"type": "track", "anonymousId": anon, "event": "Looked",
             "messageId": format!("race-track-{round}")},
            {"type": "identify", "anonymousId": anon, "userId": member},
            {"type": "track", "userId": member, "event": "Bought",
             "messageId": format!("race-buy-{round}")}
        ]});
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (app, batch) = (app.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                segment(&app, "/v1/batch", batch).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        let user = app.member(&member).await;
        assert_eq!(user["sessionsCount"], 1, "round {round}: {user:?}");
        let merges = app
            .open(
                Method::GET,
                &format!("/open/v5/users/@{member}/merges"),
                None,
            )
            .await;
        assert_eq!(
            merges.body["merges"].as_array().map(Vec::len),
            Some(1),
            "round {round}: {:?}",
            merges.body
        );
        assert_eq!(events_of(&app, &format!("@{member}")).await.len(), 3);
    }
}

/// `POST /sdk/v1/calls`, what sori.js sends as a page is left: calls applied in order,
/// each on its own, with the session in the body of a `text/plain` request.
async fn sdk_calls(b: Backend) {
    let app = spawn_app(b).await;
    app.register_field("nickname", "string").await;
    let pk = app.creds.plugin_key.clone();
    let r = boot(&app, json!({"pluginKey": pk, "trackDefaultEvent": false})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let session = r.body["session"].as_str().unwrap().to_owned();
    let id = r.body["user"]["id"].as_str().unwrap().to_owned();
    let calls = json!({"session": session, "calls": [
        {"track": {"name": "One"}},
        {"user": {"addTags": ["a"]}},
        {"user": {"removeTags": ["a"]}},
        {"track": {"name": ""}},
        {"user": {"addTags": ["b"], "profile": {"nickname": "N"}}},
        {"nope": {}},
        {"track": {"name": "Two", "property": {"k": 1}}}
    ]});
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("content-type", "text/plain;charset=UTF-8")],
            calls.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let statuses: Vec<_> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 400, 200, 400, 200]);
    assert_eq!(
        r.body["results"][3]["error"]["errors"][0]["field"],
        "calls[3].track.name"
    );
    assert_eq!(
        r.body["results"][5]["error"]["errors"][0]["field"],
        "calls[5]"
    );
    assert_eq!(r.body["results"][4]["user"]["tags"], json!(["b"]));
    let user = app
        .open(Method::GET, &format!("/open/v5/users/{id}"), None)
        .await
        .body["user"]
        .clone();
    assert_eq!(user["tags"], json!(["b"]));
    assert_eq!(user["profile"]["nickname"], "N");
    let names: Vec<_> = events_of(&app, &id)
        .await
        .iter()
        .rev()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["One", "Two"]);

    // The whole request is refused for a bad session or shape, and writes nothing.
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("content-type", "text/plain")],
            json!({"session": "forged", "calls": [{"track": {"name": "X"}}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    // A boot may carry calls (a page left before its first boot answered): applied after
    // the boot as its session's, answered one by one; malformed ones refuse the boot
    // before anything is written.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "with-calls", "visit": false,
               "trackDefaultEvent": false, "calls": [
            {"track": {"name": "WithBoot"}},
            {"user": {"addTags": ["carried"]}},
            {"track": {"name": ""}},
            {"track": {"name": "Nul", "property": {"k": "a\u{0}b"}}},
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|x| x["status"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [200, 200, 400, 400]
    );
    assert_eq!(results[1]["user"]["tags"], json!(["carried"]));
    assert_eq!(
        results[2]["error"]["errors"][0]["field"],
        "calls[2].track.name"
    );
    // A NUL character is its call's error, as in `/sdk/v1/calls`, not the boot's.
    assert_eq!(
        results[3]["error"]["errors"][0]["field"],
        "calls[3].track.property.k"
    );
    let carried = r.body["user"]["id"].as_str().unwrap().to_owned();
    let names: Vec<_> = events_of(&app, &carried)
        .await
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, [json!("WithBoot")]);
    // Anywhere else in the boot, it refuses the boot.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "refused-calls", "profile": {"k": "a\u{0}b"},
               "calls": [{"track": {"name": "X"}}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.error_field()),
        (400, "profile.k"),
        "{:?}",
        r.body
    );
    let many = Value::Array(vec![json!({"nope": {}}); 2001]);
    for bad in [json!("x"), json!([]), many] {
        let r = boot(
            &app,
            json!({"pluginKey": pk, "veilId": "refused-calls", "calls": bad}),
        )
        .await;
        assert_eq!((r.status, r.error_field()), (400, "calls"), "{:?}", r.body);
    }
    let r = app
        .open(Method::GET, "/open/v5/users?limit=500", None)
        .await;
    assert!(
        !r.body.to_string().contains("refused-calls"),
        "a refused boot created its visitor"
    );
    let too_many: Vec<_> = (0..2001).map(|_| json!({"track": {"name": "X"}})).collect();
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("x-sori-session", session.as_str())],
            json!({ "calls": too_many }).to_string().into_bytes(),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "calls"));
    // Shape: unknown fields, a session both ways, a session that is not text.
    for (body, field) in [
        (
            json!({"session": session, "calls": [], "extra": 1}),
            "extra",
        ),
        (
            json!({"session": 5, "calls": [{"track": {"name": "X"}}]}),
            "session",
        ),
    ] {
        let r = app
            .raw(
                Method::POST,
                "/sdk/v1/calls",
                &[("content-type", "text/plain")],
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!((r.status, r.error_field()), (400, field), "{:?}", r.body);
    }
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("x-sori-session", session.as_str())],
            json!({"session": session, "calls": [{"track": {"name": "X"}}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "session"));
    assert_eq!(events_of(&app, &id).await.len(), 2);
    // A NUL character is that call's error; the others are applied.
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("content-type", "text/plain")],
            json!({"session": session, "calls": [
                {"track": {"name": "a\u{0}b"}}, {"track": {"name": "Three"}}
            ]})
            .to_string()
            .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["status"], 400);
    assert_eq!(
        r.body["results"][0]["error"]["errors"][0]["field"],
        "calls[0].track.name"
    );
    assert_eq!(r.body["results"][1]["status"], 200);
    assert_eq!(events_of(&app, &id).await.len(), 3);
    // A lone surrogate escape (JavaScript's JSON for a string cut inside an emoji) reads
    // as U+FFFD instead of making the whole request malformed JSON.
    let text = format!(
        r#"{{"session": "{session}", "calls": [{{"track": {{"name": "Cut", "property": {{"s": "\ud83d"}}}}}}, {{"track": {{"name": "Four"}}}}]}}"#
    );
    let r = app
        .raw(
            Method::POST,
            "/sdk/v1/calls",
            &[("content-type", "text/plain")],
            text.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let evs = events_of(&app, &id).await;
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[1]["property"]["s"], "\u{fffd}");
    // UTM parameters from a link whose value holds `%00` lose the NUL instead of failing
    // the boot (which would switch the SDK off for everyone following that link).
    let r = boot(
        &app,
        json!({"pluginKey": pk, "utm": {"source": "\u{0}evil", "medium": "a\u{0}d"},
               "referrer": "https://r.example/\u{0}"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let u = r.body["user"]["profile"].clone();
    assert_eq!(
        (&u["utmSource"], &u["lastUtmMedium"], &u["referrer"]),
        (&json!("evil"), &json!("ad"), &json!("https://r.example/"))
    );

    // A partial boot (what sori.js sends) leaves out the parts the server refuses of the
    // site's profile and language and of the stored visitor id, says so, and still counts
    // the visit: a page being left could not send the boot again without them.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "partial-1", "partial": true,
               "profile": {"notRegistered": 1}, "language": "und", "page": "https://s.example/p"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        refused(&r),
        ["profile.notRegistered", "language"],
        "{:?}",
        r.body
    );
    assert_eq!(r.body["user"]["sessionsCount"], 1);
    assert_eq!(r.body["veilId"], "partial-1");
    let partial = r.body["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        events_of(&app, &partial).await[0]["page"],
        "https://s.example/p"
    );
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "not a valid id!", "partial": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["refused"][0]["field"], "veilId");
    assert_ne!(r.body["veilId"], "not a valid id!");
    // Refusals found one after another (the stored id is checked before the profile) are
    // all left out.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "not a valid id!", "partial": true,
               "profile": {"notRegistered": 1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        refused(&r),
        ["veilId", "profile.notRegistered"],
        "{:?}",
        r.body
    );
    // Not partial, or refused for anything else, the boot fails and writes nothing.
    for body in [
        json!({"pluginKey": pk, "veilId": "partial-2", "profile": {"notRegistered": 1}}),
        json!({"pluginKey": pk, "veilId": "partial-2", "partial": true, "page": "a\nb"}),
        json!({"pluginKey": pk, "veilId": "partial-2", "partial": "yes"}),
    ] {
        let r = boot(&app, body).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
    }
    assert!(
        !anonymous_users(&app)
            .await
            .iter()
            .any(|u| u["veilId"] == "partial-2")
    );

    // sori.js's quiet re-boot of a lost session is not a second visit.
    let r = boot(
        &app,
        json!({"pluginKey": pk, "trackDefaultEvent": false, "visit": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["sessionsCount"], 0);
    // Nor does it record a PageView, even when asked: a PageView is a visit.
    let r = boot(&app, json!({"pluginKey": pk, "visit": false})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let quiet = r.body["user"]["id"].as_str().unwrap().to_owned();
    assert!(events_of(&app, &quiet).await.is_empty());
    let r = boot(&app, json!({"pluginKey": pk, "visit": "no"})).await;
    assert_eq!((r.status, r.error_field()), (400, "visit"));
    app.stop().await;
}

/// Identity and input edges of the Segment API found by black-box testing.
async fn segment_edges(b: Backend) {
    let app = spawn_app(b).await;
    let users_with_veil = |veil: &'static str| {
        let app = &app;
        async move {
            let r = app
                .open(Method::GET, "/open/v5/users?limit=500", None)
                .await;
            r.body["users"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|u| u["veilId"] == veil)
                .cloned()
                .collect::<Vec<_>>()
        }
    };

    // Sign-in: an identify with both ids and nothing else makes the visitor the member.
    let r = segment(
        &app,
        "/v1/page",
        json!({"anonymousId": "visitor-77", "properties": {"url": "https://shop.example/"},
               "messageId": "p-77"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let visitor = users_with_veil("visitor-77").await[0]["id"].clone();
    let r = segment(
        &app,
        "/v1/identify",
        json!({"anonymousId": "visitor-77", "userId": "cust-77", "messageId": "i-77"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let member = app.member("cust-77").await;
    assert_eq!(member["id"], visitor, "the visitor became the member");
    assert_eq!(events_of(&app, "@cust-77").await.len(), 1);

    // A retried anonymous track whose user was merged away since creates no user.
    segment(
        &app,
        "/v1/identify",
        json!({"userId": "mem-h", "traits": {"name": "H"}}),
    )
    .await;
    let track = json!({"anonymousId": "anon-h", "event": "Clicked", "messageId": "h-track-1"});
    assert_eq!(segment(&app, "/v1/track", track.clone()).await.status, 200);
    let r = segment(
        &app,
        "/v1/identify",
        json!({"anonymousId": "anon-h", "userId": "mem-h", "traits": {"x": 1}}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        users_with_veil("anon-h")
            .await
            .iter()
            .all(|u| u["member"] == true)
    );
    assert_eq!(segment(&app, "/v1/track", track.clone()).await.status, 200);
    let batch = json!({"batch": [{"type": "track", "anonymousId": "anon-h", "event": "Clicked",
                                  "messageId": "h-track-1"}]});
    assert_eq!(segment(&app, "/v1/batch", batch).await.status, 200);
    let after = users_with_veil("anon-h").await;
    assert!(
        after.iter().all(|u| u["member"] == true),
        "no new anonymous user: {after:?}"
    );
    assert_eq!(events_of(&app, "@mem-h").await.len(), 1);

    // Numbers as ids: an integer is its digits; a number that lost digits is refused.
    let r = segment(&app, "/v1/track", json!({"userId": 1000, "event": "N"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.member("1000").await;
    for lossy in [
        json!(1e3),
        json!(12.5),
        json!(123_456_789_012_345_678_901_231_f64),
    ] {
        let r = segment(&app, "/v1/track", json!({"userId": lossy, "event": "N"})).await;
        assert_eq!((r.status, r.error_field()), (400, "userId"), "{lossy}");
    }

    // Offsets stop at ±23:59; whole milliseconds written as floats are times.
    for bad in ["2026-11-01T00:00:00+24:00", "2026-11-01T00:00:00-25:00"] {
        let r = segment(
            &app,
            "/v1/track",
            json!({"userId": "t", "event": "E", "timestamp": bad}),
        )
        .await;
        assert_eq!((r.status, r.error_field()), (400, "timestamp"), "{bad}");
    }
    let ms = jiff::Timestamp::now().as_millisecond() - 86_400_000;
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "t", "event": "Float", "timestamp": ms as f64}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, "@t").await[0]["createdAt"], ms);

    // Errors name the field the call sent; a batch item's `type` must be text.
    let r = segment(
        &app,
        "/v1/screen",
        json!({"userId": "p", "name": "Home\tScreen"}),
    )
    .await;
    assert_eq!((r.status, r.error_field()), (400, "name"), "{:?}", r.body);
    // A page call's URL is the library's, like the context's: one with a control
    // character is no page, and the call is kept.
    let r = segment(
        &app,
        "/v1/page",
        json!({"userId": "p", "properties": {"url": "https://x/\ty"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(events_of(&app, "@p").await[0]["page"], Value::Null);
    let r = segment(
        &app,
        "/v1/batch",
        json!({"batch": [{"type": 5, "userId": "p"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("must be a string"),
        "{:?}",
        r.body
    );
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "c\u{7}d", "event": "E"}),
    )
    .await;
    assert_eq!((r.status, r.error_field()), (400, "userId"));
    for anon in ["ctl\u{1}anon", " pad "] {
        let r = segment(
            &app,
            "/v1/track",
            json!({"anonymousId": anon, "event": "E"}),
        )
        .await;
        assert_eq!(
            (r.status, r.error_field()),
            (400, "anonymousId"),
            "{anon:?}"
        );
    }

    // What the library collected (campaign, referrer) is left out when it would take the
    // profile past 15 KB, instead of failing the call: the event is stored.
    let long = "가".repeat(600);
    let r = segment(
        &app,
        "/v1/page",
        json!({"userId": "long-utm", "name": "x",
               "context": {"campaign": {"source": long, "medium": long, "name": long,
                                        "content": long, "term": long},
                           "page": {"referrer": format!("https://a/{long}")}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let u = app.member("long-utm").await;
    assert!(u["profile"].get("utmSource").is_none(), "{u}");
    let id = u["id"].as_str().unwrap().to_owned();
    assert_eq!(
        events_of(&app, &id).await.len(),
        1,
        "the PageView is stored"
    );
    // Short ones are applied, and traits win over them.
    let r = segment(
        &app,
        "/v1/identify",
        json!({"userId": "long-utm", "traits": {"utmMedium": "mail"},
               "context": {"campaign": {"source": "news", "medium": "cpc"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let p = app.member("long-utm").await["profile"].clone();
    assert_eq!(
        (&p["utmSource"], &p["utmMedium"], &p["lastUtmMedium"]),
        (&json!("news"), &json!("mail"), &json!("cpc"))
    );

    // A `messageId` reused for a member not known yet stores nothing and creates no
    // member, alone or in a batch; a new `messageId` for that member in the same batch
    // still creates it; two calls of one batch sharing a new `messageId` create only the
    // first one's member.
    for (path, body) in [
        (
            "/v1/track",
            json!({"userId": "dup-a", "event": "DupX", "messageId": "DUPX"}),
        ),
        (
            "/v1/track",
            json!({"userId": "dup-new", "event": "DupX", "messageId": "DUPX"}),
        ),
        (
            "/v1/batch",
            json!({"batch": [
                {"type": "track", "userId": "dup-new2", "event": "DupX", "messageId": "DUPX"},
                {"type": "track", "userId": "dup-new3", "event": "DupX", "messageId": "DUPX"},
                {"type": "track", "userId": "dup-new3", "event": "DupY", "messageId": "DUPY"},
            ]}),
        ),
        (
            "/v1/batch",
            json!({"batch": [
                {"type": "track", "userId": "twin-1", "event": "Twin", "messageId": "TWIN"},
                {"type": "track", "userId": "twin-2", "event": "Twin", "messageId": "TWIN"},
            ]}),
        ),
    ] {
        let r = segment(&app, path, body).await;
        assert_eq!(
            (r.status, &r.body["errors"]),
            (200, &Value::Null),
            "{:?}",
            r.body
        );
    }
    for (member, status) in [
        ("dup-a", 200),
        ("dup-new", 404),
        ("dup-new2", 404),
        ("dup-new3", 200),
        ("twin-1", 200),
        ("twin-2", 404),
    ] {
        let r = app
            .open(Method::GET, &format!("/open/v5/users/@{member}"), None)
            .await;
        assert_eq!(r.status, status, "{member}: {:?}", r.body);
    }
    let new3 = app.member("dup-new3").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let names: Vec<_> = events_of(&app, &new3)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["DupY"]);

    // Content codings are case-insensitive, and a body of several gzip members (files
    // concatenated, as RFC 1952 allows) is read to its end.
    let gzip = |part: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, part).unwrap();
        gz.finish().unwrap()
    };
    let auth = basic(&app.creds.write_key);
    for (path, body) in [
        ("/v1/track", gzip(br#"{"userId": "gz", "event": "G"}"#)),
        (
            "/v1/batch",
            [
                gzip(br#"{"batch": [{"type": "track", "userId": "gz", "event": "G1"},"#),
                gzip(br#"{"type": "track", "userId": "gz", "event": "G2"}]}"#),
            ]
            .concat(),
        ),
    ] {
        let r = app
            .raw(
                Method::POST,
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("content-encoding", "GZIP"),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
    let gz = app.member("gz").await["id"].as_str().unwrap().to_owned();
    let mut names: Vec<_> = events_of(&app, &gz)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["G", "G1", "G2"],
        "both members of the batch were read"
    );
    // Bytes after the last member are an error; a list of codings (one header line or
    // several) other than gzip alone is refused; members that decompress to nothing
    // still count against the limit by their compressed size.
    let event = br#"{"userId": "gz", "event": "G3"}"#;
    let empty_members: Vec<u8> = std::iter::repeat_n(gzip(b""), 60_000)
        .flatten()
        .chain(gzip(event))
        .collect();
    for (codings, body, status) in [
        (&["gzip"][..], [gzip(event), b"tail".to_vec()].concat(), 400),
        (&["gzip", "br"][..], gzip(event), 415),
        (&["gzip, br"][..], gzip(event), 415),
        (&["identity", "gzip"][..], gzip(event), 200),
        (&["gzip"][..], empty_members, 413),
    ] {
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend(codings.iter().map(|c| ("content-encoding", *c)));
        let r = app.raw(Method::POST, "/v1/track", &headers, body).await;
        assert_eq!(r.status, status, "{codings:?}: {:?}", r.body);
    }

    // A gzip body that is not gzip, and a path that is not UTF-8, are named in Sori's
    // words.
    let r = app
        .raw(
            Method::POST,
            "/v1/track",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            event.to_vec(),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "body"), "{:?}", r.body);
    assert!(
        r.body
            .to_string()
            .contains("could not be read: Invalid gzip header"),
        "{:?}",
        r.body
    );
    let r = app.open(Method::GET, "/open/v5/users/%FF", None).await;
    assert_eq!((r.status, r.error_field()), (400, "path"), "{:?}", r.body);
    assert!(r.body.to_string().contains("not UTF-8"), "{:?}", r.body);

    // A PATCH cannot clear a setting with null.
    let r = app
        .open(
            Method::PATCH,
            "/open/v5/channel",
            Some(json!({"eventRetentionDays": null})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "eventRetentionDays"));

    // An anonymousId-only call right after the identify that signs its visitor in lands
    // as it would in a later request: the anonymousId names no anonymous user any more,
    // so a new one is made, in a batch as alone, whether the identify made the known
    // visitor a member or merged it into one (QA: it landed on the member, or not).
    app.upsert("after-existing", json!({})).await;
    for (member, anon, name) in [
        ("after-new", "anon-after-1", "AnonAfter1"),
        ("after-existing", "anon-after-2", "AnonAfter2"),
    ] {
        let r = segment(
            &app,
            "/v1/page",
            json!({"anonymousId": anon, "name": "Home"}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = segment(
            &app,
            "/v1/batch",
            json!({"batch": [
                {"type": "identify", "userId": member, "anonymousId": anon},
                {"type": "track", "anonymousId": anon, "event": name},
            ]}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let m = app.member(member).await;
        let names: Vec<Value> = events_of(&app, m["id"].as_str().unwrap())
            .await
            .iter()
            .map(|e| e["name"].clone())
            .collect();
        assert_eq!(names, [json!("PageView")], "{member}");
        let mut owners = Vec::new();
        for u in anonymous_users(&app).await {
            let id = u["id"].as_str().unwrap();
            if events_of(&app, id).await.iter().any(|e| e["name"] == name) {
                owners.push(id.to_owned());
            }
        }
        assert_eq!(
            owners.len(),
            1,
            "{member}: one new anonymous user holds {name}"
        );
    }

    // A retried identify is answered, not applied again (QA): applied again, it merged the
    // anonymous user made since into the member, and it set traits back to what a later
    // identify had replaced. Two copies in one batch apply once too.
    let batch = json!({"batch": [
        {"type": "identify", "userId": "retry-u", "anonymousId": "retry-a",
         "traits": {"name": "First"}, "messageId": "retry-1"},
        {"type": "track", "anonymousId": "retry-a", "event": "AfterSignIn", "messageId": "retry-2"},
    ]});
    for _ in 0..2 {
        let r = segment(&app, "/v1/batch", batch.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let m = app.member("retry-u").await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert!(events_of(&app, &id).await.is_empty(), "the retry merged");
    let merges = app
        .open(Method::GET, &format!("/open/v5/users/{id}/merges"), None)
        .await;
    assert_eq!(merges.status, 200, "{:?}", merges.body);
    assert_eq!(merges.body["merges"], json!([]));
    let later = json!({"userId": "retry-u", "traits": {"name": "Second"}, "messageId": "retry-3"});
    assert_eq!(segment(&app, "/v1/identify", later).await.status, 200);
    let first = json!({"userId": "retry-u", "traits": {"name": "First"}, "messageId": "retry-1"});
    assert_eq!(segment(&app, "/v1/identify", first).await.status, 200);
    assert_eq!(app.member("retry-u").await["name"], "Second");
    let twice = json!({"batch": [
        {"type": "identify", "userId": "retry-u", "traits": {"name": "Third"}, "messageId": "retry-4"},
        {"type": "identify", "userId": "retry-u", "traits": {"name": "Second"}, "messageId": "retry-3"},
        {"type": "identify", "userId": "retry-u", "traits": {"name": "Fourth"}, "messageId": "retry-4"},
    ]});
    assert_eq!(segment(&app, "/v1/batch", twice).await.status, 200);
    assert_eq!(app.member("retry-u").await["name"], "Third");
    // An identify that reuses a track's messageId repeats nothing, in one batch as in
    // two: the two kinds of id are kept apart.
    let shared = json!({"batch": [
        {"type": "track", "userId": "retry-u", "event": "Shared", "messageId": "retry-5"},
        {"type": "identify", "userId": "retry-u", "traits": {"name": "Fifth"}, "messageId": "retry-5"},
    ]});
    assert_eq!(segment(&app, "/v1/batch", shared).await.status, 200);
    assert_eq!(app.member("retry-u").await["name"], "Fifth");
    // Once its user is deleted, a retried identify applies again, as a retried track's
    // event (gone with the user) is stored again.
    let r = app
        .open(Method::DELETE, "/open/v5/users/@retry-u", None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let again = json!({"userId": "retry-u", "traits": {"name": "Again"}, "messageId": "retry-4"});
    assert_eq!(segment(&app, "/v1/identify", again).await.status, 200);
    assert_eq!(app.member("retry-u").await["name"], "Again");
    // An identify whose anonymous user a later identify of the batch merges into a member
    // stores its id as the member's: deleting the member removes it, on both backends.
    let merged = json!({"batch": [
        {"type": "identify", "anonymousId": "retry-v", "traits": {"name": "Anon"}, "messageId": "retry-6"},
        {"type": "identify", "userId": "retry-u", "anonymousId": "retry-v", "messageId": "retry-7"},
    ]});
    assert_eq!(segment(&app, "/v1/batch", merged.clone()).await.status, 200);
    let r = app
        .open(Method::DELETE, "/open/v5/users/@retry-u", None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let anon =
        json!({"anonymousId": "retry-v", "traits": {"name": "Anon"}, "messageId": "retry-6"});
    assert_eq!(segment(&app, "/v1/identify", anon).await.status, 200);
    assert!(
        anonymous_users(&app)
            .await
            .iter()
            .any(|u| u["veilId"] == "retry-v" && u["name"] == "Anon"),
        "the retry after the deletion applied again"
    );
    app.stop().await;
}

/// Late, retried and merged calls keep the activity they describe: a member signing in a
/// minute after browsing anonymously continues that session; a retried batch holding an
/// `identify` and a `track` moves no `lastSeenAt`; an `identify` sent late with an older
/// `timestamp` does not move the place back; `traits.created_at` is the user's
/// `createdAt` like `traits.createdAt`.
async fn late_retried_and_merged_calls(b: Backend) {
    let app = spawn_app(b).await;
    let now = sori_app::secrets::now_ms();
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                  (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let ok = |r: common::Reply| {
        assert_eq!(
            (r.status, &r.body["errors"]),
            (200, &Value::Null),
            "{:?}",
            r.body
        )
    };

    // A member's visit two hours ago, then an anonymous boot and the sign-in boot now.
    ok(segment(
        &app,
        "/v1/page",
        json!({"userId": "sm1", "timestamp": now - 7_200_000,
               "properties": {"url": "https://s/m"}, "context": {"userAgent": chrome}}),
    )
    .await);
    let pk = app.creds.plugin_key.clone();
    let r = boot(&app, json!({"pluginKey": pk, "veilId": "smv1"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = boot(
        &app,
        json!({"pluginKey": pk, "veilId": "smv1", "memberId": "sm1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = app.member("sm1").await;
    assert_eq!(
        (&m["sessionsCount"], &m["web"]["sessionsCount"]),
        (&json!(2), &json!(2)),
        "the member's session and the anonymous one it continues: {m}"
    );
    assert!(m["web"]["lastSeenAt"].as_i64().unwrap() >= now, "{m}");

    // A retried batch of an identify and a track for one user.
    let batch = json!({"batch": [
        {"type": "identify", "userId": "rep1", "traits": {"plan": "gold"}},
        {"type": "track", "userId": "rep1", "event": "Order", "messageId": "rep1-1"},
    ]});
    ok(segment(&app, "/v1/batch", batch.clone()).await);
    let first = app.member("rep1").await;
    // Long enough for the retry's receive time to differ.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    ok(segment(&app, "/v1/batch", batch).await);
    let again = app.member("rep1").await;
    assert_eq!(
        (&again["lastSeenAt"], &again["updatedAt"]),
        (&first["lastSeenAt"], &first["updatedAt"]),
        "a retry moved the user's times"
    );
    assert_eq!(events_of(&app, "@rep1").await.len(), 1);

    // A late identify with an older timestamp leaves the newer place.
    ok(segment(
        &app,
        "/v1/track",
        json!({"userId": "cp1", "event": "E", "context": {"location": {"city": "Seoul"}}}),
    )
    .await);
    ok(segment(
        &app,
        "/v1/identify",
        json!({"userId": "cp1", "timestamp": now - 3_000_000,
               "context": {"location": {"city": "Ulsan"}}}),
    )
    .await);
    assert_eq!(app.member("cp1").await["city"], "Seoul");
    // Sent now, it is the place now.
    ok(segment(
        &app,
        "/v1/identify",
        json!({"userId": "cp1", "traits": {"address": {"city": "Busan"}}}),
    )
    .await);
    assert_eq!(app.member("cp1").await["city"], "Busan");

    // `created_at` is `createdAt`, not a profile field.
    ok(segment(
        &app,
        "/v1/identify",
        json!({"userId": "tc1", "traits": {"created_at": "2020-01-01T00:00:00Z"}}),
    )
    .await);
    let u = app.member("tc1").await;
    assert_eq!(u["createdAt"], 1_577_836_800_000_i64, "{u}");
    assert_eq!(u["profile"].get("createdAt"), None, "{u}");
    app.stop().await;
}

/// Deleting a user while other requests write to it (events by member id and by id, a
/// Segment page, an identify merging an anonymous user into it): after the 204, no stored
/// event names the deleted user. PostgreSQL deleted the events before the user's row,
/// and a batch that added events in between left them to nobody (on PostgreSQL the writes
/// also go through a second node).
async fn deletes_race_writes(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let other = app.other_node().await;
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    for round in 0..12 {
        let member = format!("doomed-{round}");
        let r = app.upsert(&member, json!({"profile": {"name": "D"}})).await;
        let id = r.body["user"]["id"].as_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for t in 0..6 {
            let node = if t % 2 == 0 { &app } else { &other }.clone();
            let (member, id) = (member.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let path = match t % 3 {
                    0 => format!("/open/v5/users/@{member}/events"),
                    _ => format!("/open/v5/users/{id}/events"),
                };
                let r = node
                    .open(Method::POST, &path, Some(json!({"name": "Racing"})))
                    .await;
                assert!([200, 404].contains(&r.status), "{:?}", r.body);
                let anon = format!("anon-{round}-{t}");
                let r = segment(
                    &node,
                    "/v1/batch",
                    json!({"batch": [
                        {"type": "page", "anonymousId": anon, "properties": {"url": "https://x.example/"}},
                        {"type": "identify", "anonymousId": anon, "userId": member}
                    ]}),
                )
                .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }));
        }
        let r = app
            .open(Method::DELETE, &format!("/open/v5/users/{id}"), None)
            .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Every stored event belongs to a user that exists.
    let store = &app.app().store;
    let mut after = None;
    let mut owners = std::collections::BTreeSet::new();
    loop {
        let page = store
            .events_page(
                ch,
                after
                    .as_ref()
                    .map(|(t, id): &(i64, String)| (*t, id.as_str())),
                500,
            )
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        owners.extend(page.into_iter().map(|e| e.user_id));
    }
    for owner in owners {
        let r = app
            .open(Method::GET, &format!("/open/v5/users/{owner}"), None)
            .await;
        assert_eq!(r.status, 200, "events left to deleted user {owner}");
    }
}

/// Two retention passes at once (two nodes started together run their hourly passes
/// together) delete every expired event between them, each once, and the per-user count
/// stays whole (nothing rolled up twice). Each pass goes on until a chunk finds nothing:
/// it stopped at a chunk smaller than its size, which a pass whose chunk the other had
/// partly taken mistook for the end (QA saw 20,801 of 31,000 expired events stay; the
/// overlap depends on timing and this test does not always produce it).
async fn retention_passes_side_by_side(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let other = app.other_node().await;
    let set_days = |days: i64| {
        let app = app.clone();
        async move {
            let r = app
                .open(
                    Method::PATCH,
                    "/open/v5/channel",
                    Some(json!({"eventRetentionDays": days})),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    set_days(30).await;
    let now = sori_app::secrets::now_ms();
    let old = now - 10 * 24 * 3_600_000;
    let total = 12_000;
    for chunk in 0..total / 500 {
        let batch: Vec<Value> = (0..500)
            .map(|i| {
                json!({"type": "track", "userId": "aged", "event": "Old",
                       "timestamp": old + chunk * 500 + i})
            })
            .collect();
        let r = segment(&app, "/v1/batch", json!({ "batch": batch })).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // A fresh event last, so that SQLite's keeping of the newest event does not apply.
    let r = segment(
        &app,
        "/v1/track",
        json!({"userId": "aged", "event": "Fresh"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    set_days(1).await;
    let (a, o) = (app.clone(), other.clone());
    let (x, y) = tokio::join!(
        async move { a.app().enforce_retention().await.unwrap() },
        async move { o.app().enforce_retention().await.unwrap() }
    );
    assert_eq!(x + y, total as u64, "every expired event, once ({x} + {y})");
    let r = app
        .open(Method::GET, "/open/v5/users/@aged/events?limit=500", None)
        .await;
    let names: Vec<&str> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Fresh"]);
    let r = app
        .open(
            Method::POST,
            "/open/v5/users/count",
            Some(
                json!({"filter": {"and": [{"or": [{"event": "Old", "operator": "$countGte",
                "values": [total]}]}]}}),
            ),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["count"]),
        (200, &json!(1)),
        "{:?}",
        r.body
    );
}

both!(
    retention_passes_side_by_side,
    deletes_race_writes,
    sdk_calls,
    late_retried_and_merged_calls,
    segment_edges,
    concurrent_retries_store_once,
    merges_race_events,
    one_anonymous_user_per_veil,
    pages_through_ties,
    open_api_events,
    segment_api,
    batch_order,
    sdk_rules,
    retention,
    web_sdk_in_chromium,
    segment_and_rudder_node_clients
);

/// Two nodes on one PostgreSQL database receive copies of one `identify` with a
/// `messageId` (a client's retry that overlaps its first attempt, sent to another node).
/// Nothing serializes the nodes' batches as one node's shards are: both read the id as
/// new, and the one that commits second fails on the stored id, is written again and is
/// answered as the retry it is. Every copy gets a 200, and a late retry of an earlier
/// round does not undo a later one. (Several nodes share PostgreSQL only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_race_one_identify() {
    let app = std::sync::Arc::new(spawn_app(Backend::Postgres).await);
    let other = std::sync::Arc::new(app.second_node().await);
    app.upsert("ident-race", json!({"profile": {"name": "Before"}}))
        .await;
    let call = |round: usize| {
        json!({"batch": [
            {"type": "identify", "userId": "ident-race", "messageId": format!("ident-{round}"),
             "traits": {"name": format!("Name {round}")}}
        ]})
    };
    for round in 0..6 {
        let mut tasks = Vec::new();
        for copy in 0..6 {
            let node = if copy % 2 == 0 { &app } else { &other }.clone();
            let body = call(round);
            tasks.push(tokio::spawn(async move {
                segment(&node, "/v1/batch", body).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
            assert!(r.body.get("errors").is_none(), "{:?}", r.body);
        }
        if round > 0 {
            let r = segment(&other, "/v1/batch", call(round - 1)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        let user = app.member("ident-race").await;
        assert_eq!(user["profile"]["name"], format!("Name {round}"), "{user:?}");
    }
}

/// The transient-race retries counted so far (deadlocks PostgreSQL broke, among others).
async fn transient_retries(app: &TestApp) -> f64 {
    let r = app.raw(Method::GET, "/metrics", &[], vec![]).await;
    r.body
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("sori_user_write_retries_total{reason=\"transient\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Two nodes receive batches that write the same two users in opposite roles: one
/// identifies member X (a whole write) and tracks for visitor V (events only), the other
/// visits as V (whole) and tracks for X (events only). Each batch locks both users in one
/// id order, so they never deadlock (they did: PostgreSQL broke each deadlock after a
/// second and one batch was written again). (Several nodes share PostgreSQL only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lock_users_in_one_order() {
    let app = std::sync::Arc::new(spawn_app(Backend::Postgres).await);
    let other = app.other_node().await;
    let before = transient_retries(&app).await;
    for round in 0..200 {
        let (x, v) = (format!("lock-x-{round}"), format!("lock-v-{round}"));
        app.upsert(&x, json!({"profile": {"name": "X"}})).await;
        let r = segment(
            &app,
            "/v1/track",
            json!({"anonymousId": v, "event": "Seen"}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let one = json!({"batch": [
            {"type": "identify", "userId": x, "traits": {"name": "X2"},
             "messageId": format!("lock-i-{round}")},
            {"type": "track", "anonymousId": v, "event": "One",
             "messageId": format!("lock-a-{round}")}
        ]});
        let two = json!({"batch": [
            {"type": "page", "anonymousId": v, "properties": {"url": "https://x.example/"},
             "messageId": format!("lock-p-{round}")},
            {"type": "track", "userId": x, "event": "Two", "messageId": format!("lock-m-{round}")}
        ]});
        let (a, b) = (app.clone(), other.clone());
        let (r1, r2) = tokio::join!(
            async move { segment(&a, "/v1/batch", one).await },
            async move { segment(&b, "/v1/batch", two).await }
        );
        assert_eq!(
            (r1.status, r2.status),
            (200, 200),
            "{:?} {:?}",
            r1.body,
            r2.body
        );
    }
    // The counter is process-wide, and other tests of this binary race writes on purpose
    // at the same time: a stray retry of theirs may land here. Without the one lock order
    // this load had 31 deadlock retries in 200 rounds.
    let retried = transient_retries(&app).await - before;
    assert!(
        retried < 5.0,
        "{retried} batches were written again after a deadlock"
    );
}
