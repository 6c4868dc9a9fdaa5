//! Desk API scenarios: sessions and CSRF, roles and permissions, masking, audited reveals,
//! export. Each runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, segment, spawn_app};
use reqwest::Method;
use serde_json::json;

async fn login_session_and_csrf(b: Backend) {
    let app = spawn_app(b).await;
    let owner = app.creds.owner.clone();
    let r = app
        .raw(
            Method::POST,
            "/desk/v1/login",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json!({"email": owner.email, "password": "wrong-password"}))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = app.raw(Method::GET, "/desk/v1/me", &[], vec![]).await;
    assert_eq!(r.status, 401);

    let s = app
        .login(&owner.email.to_uppercase(), &owner.password)
        .await;
    let me = app.desk(&s, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["role"]["id"], "owner");
    assert_eq!(me.body["csrfToken"], json!(s.1));

    // A state-changing call without the CSRF token is refused and changes nothing.
    let no_csrf = (s.0.clone(), "forged".to_owned());
    let r = app
        .desk(
            &no_csrf,
            Method::PATCH,
            "/desk/v1/channel",
            Some(json!({"name": "Hacked"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app.desk(&s, Method::GET, "/desk/v1/channel", None).await;
    assert_eq!(r.body["channel"]["name"], "Default");
    let r = app
        .desk(
            &s,
            Method::PATCH,
            "/desk/v1/channel",
            Some(json!({"name": "Shop"})),
        )
        .await;
    assert_eq!(r.body["channel"]["name"], "Shop");

    let r = app.desk(&s, Method::POST, "/desk/v1/logout", None).await;
    assert_eq!(r.status, 204);
    let r = app.desk(&s, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(r.status, 401);
    app.stop().await;
}

async fn masking_reveal_and_audit(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .upsert("m-1", json!({"profile": {"name": "Kim", "email": "aaabb@example.com", "mobileNumber": "01012340000", "secretNote": "x", "createdAt": 5}}))
        .await;
    let id = r.body["user"]["id"].as_str().unwrap().to_owned();
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;

    // Nothing is sensitive yet.
    let u = app
        .desk(&owner, Method::GET, &format!("/desk/v1/users/{id}"), None)
        .await;
    assert_eq!(u.body["user"]["profile"]["email"], "aaabb@example.com");

    for key in [
        "profile.email",
        "profile.mobileNumber",
        "profile.secretNote",
        "memberId",
    ] {
        let r = app
            .desk(
                &owner,
                Method::PATCH,
                &format!("/desk/v1/fields/{key}"),
                Some(json!({"sensitive": true})),
            )
            .await;
        assert_eq!(r.status, 204, "{key}: {:?}", r.body);
    }
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            "/desk/v1/fields/nope",
            Some(json!({"sensitive": true})),
        )
        .await;
    assert_eq!(r.status, 404);
    // `id` is how a user is opened: masked, the list would offer nothing to open.
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            "/desk/v1/fields/id",
            Some(json!({"sensitive": true})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["errors"][0]["field"].clone()),
        (400, json!("key"))
    );
    // Clearing it is a no-op, and allowed.
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            "/desk/v1/fields/id",
            Some(json!({"sensitive": false})),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let u = app
        .desk(&owner, Method::GET, &format!("/desk/v1/users/{id}"), None)
        .await;
    let p = &u.body["user"]["profile"];
    assert_eq!(p["email"], "aaa**@example.com");
    assert_eq!(p["mobileNumber"], "010-****-0000");
    assert_eq!(p["secretNote"], "••••••");
    assert_eq!(u.body["user"]["memberId"], "••••••");
    assert_eq!(p["name"], "Kim");
    // An edit form that sends the masks it showed back is refused, naming the field, and
    // stores nothing over the real values.
    for (key, shown) in [
        ("email", "aaa**@example.com"),
        ("mobileNumber", "010-****-0000"),
        ("secretNote", "••••••"),
    ] {
        let r = app
            .desk(
                &owner,
                Method::PATCH,
                &format!("/desk/v1/users/{id}"),
                Some(json!({"profile": {"name": "Lee", key: shown}})),
            )
            .await;
        assert_eq!(
            (r.status, r.error_field()),
            (400, format!("profile.{key}").as_str()),
            "{:?}",
            r.body
        );
    }
    let stored = app.member("m-1").await;
    assert_eq!(stored["profile"]["email"], "aaabb@example.com");
    assert_eq!(stored["profile"]["name"], "Kim");
    let list = app.desk(&owner, Method::GET, "/desk/v1/users", None).await;
    assert_eq!(
        list.body["users"][0]["profile"]["email"],
        "aaa**@example.com"
    );
    // The Open API sees full data.
    assert_eq!(
        app.member("m-1").await["profile"]["email"],
        "aaabb@example.com"
    );

    // Reveal is explicit and audited.
    let r = app
        .desk(
            &owner,
            Method::POST,
            &format!("/desk/v1/users/{id}/reveal"),
            Some(json!({"fields": ["profile.email", "memberId"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["values"]["profile.email"], "aaabb@example.com");
    assert_eq!(r.body["values"]["memberId"], "m-1");
    let r = app
        .desk(
            &owner,
            Method::POST,
            &format!("/desk/v1/users/{id}/reveal"),
            Some(json!({"fields": ["profile.name"]})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "fields[0]"));
    let audit = app
        .desk(&owner, Method::GET, "/desk/v1/audit/reveals", None)
        .await;
    let rows = audit.body["reveals"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["userId"] == json!(id)
        && r["managerId"].is_string()
        && r["createdAt"].is_i64()));

    // A basic manager sees masks, cannot reveal, export, or change settings.
    let r = app
        .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "agent@example.com", "name": "Agent", "password": "agent-pass-1", "roleId": "basic"})))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let agent = app.login("agent@example.com", "agent-pass-1").await;
    let u = app
        .desk(&agent, Method::GET, &format!("/desk/v1/users/{id}"), None)
        .await;
    assert_eq!(u.body["user"]["profile"]["email"], "aaa**@example.com");
    let r = app
        .desk(
            &agent,
            Method::POST,
            &format!("/desk/v1/users/{id}/reveal"),
            Some(json!({"fields": ["profile.email"]})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        app.desk(&agent, Method::GET, "/desk/v1/exports/users.csv", None)
            .await
            .status,
        403
    );
    assert_eq!(
        app.desk(
            &agent,
            Method::PATCH,
            "/desk/v1/fields/profile.email",
            Some(json!({"sensitive": false}))
        )
        .await
        .status,
        403
    );
    assert_eq!(
        app.desk(&owner, Method::GET, "/desk/v1/audit/reveals", None)
            .await
            .body["reveals"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A basic manager may edit tags and profile values, not system fields.
    let r = app
        .desk(
            &agent,
            Method::PATCH,
            &format!("/desk/v1/users/{id}"),
            Some(json!({"tags": ["VIP"], "profile": {"description": "call back"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["tags"], json!(["vip"]));
    let r = app
        .desk(
            &agent,
            Method::PATCH,
            &format!("/desk/v1/users/{id}"),
            Some(json!({"profileOnce": {"x": 1}})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "profileOnce"));

    // Export is masked like the console, and a value a spreadsheet would run is not.
    app.upsert("sheet", json!({"profile": {"name": "=1+2"}}))
        .await;
    let r = app
        .desk(&owner, Method::GET, "/desk/v1/exports/users.csv", None)
        .await;
    assert_eq!(r.status, 200);
    let csv = r.body.as_str().unwrap();
    assert!(csv.starts_with("id,memberId,name,tags"));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(!header.contains(&"profile.name"), "name once: {header:?}");
    assert!(header.contains(&"profile.createdAt"), "{header:?}");
    assert!(header.contains(&"profile.email"), "{header:?}");
    assert!(
        csv.contains("aaa**@example.com") && !csv.contains("aaabb@example.com"),
        "{csv}"
    );
    assert!(csv.contains(",'=1+2,"), "{csv}");
    app.stop().await;
}

async fn roles_and_managers(b: Backend) {
    let app = spawn_app(b).await;
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    let roles = app.desk(&owner, Method::GET, "/desk/v1/roles", None).await;
    let ids: Vec<_> = roles.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["owner", "basic"]);

    let body = json!({"name": "Marketer", "permissions": ["contacts.read", "contacts.reveal", "marketing"], "inboxScope": "assigned"});
    let r = app
        .desk(&owner, Method::POST, "/desk/v1/roles", Some(body.clone()))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let role_id = r.body["id"].as_str().unwrap().to_owned();
    // A role is picked by its name: two alike (in any case, built-in ones included) are
    // refused.
    for taken in ["marketer", "OWNER"] {
        let mut same = body.clone();
        same["name"] = json!(taken);
        let r = app
            .desk(&owner, Method::POST, "/desk/v1/roles", Some(same))
            .await;
        assert_eq!(r.status, 409, "{taken}: {:?}", r.body);
    }
    // Requests at once are checked one after the other: one role of a name.
    let twin = || {
        app.desk(
            &owner,
            Method::POST,
            "/desk/v1/roles",
            Some(json!({"name": "Twin", "permissions": [], "inboxScope": "all"})),
        )
    };
    let (a, b, c, d) = tokio::join!(twin(), twin(), twin(), twin());
    let made: Vec<_> = [a, b, c, d]
        .into_iter()
        .filter(|r| r.status == 201)
        .collect();
    assert_eq!(made.len(), 1, "one Twin");
    let twin_id = made[0].body["id"].as_str().unwrap().to_owned();
    let r = app
        .desk(
            &owner,
            Method::DELETE,
            &format!("/desk/v1/roles/{twin_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = app
        .desk(
            &owner,
            Method::POST,
            "/desk/v1/roles",
            Some(json!({"name": "X", "permissions": ["fly"], "inboxScope": "all"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error_field().starts_with("permissions"), "{:?}", r.body);
    for i in 1..20 {
        let r = app
            .desk(
                &owner,
                Method::POST,
                "/desk/v1/roles",
                Some(json!({"name": format!("R{i}"), "permissions": [], "inboxScope": "all"})),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let r = app
        .desk(
            &owner,
            Method::POST,
            "/desk/v1/roles",
            Some(json!({"name": "R21", "permissions": [], "inboxScope": "all"})),
        )
        .await;
    assert_eq!(r.status, 409, "the 21st custom role is refused");
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            "/desk/v1/roles/owner",
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].as_str().unwrap()),
        (409, "built-in roles cannot be changed or deleted"),
        "built-in roles are fixed"
    );

    let r = app
        .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "m@example.com", "name": "M", "password": "m-password", "roleId": role_id})))
        .await;
    assert_eq!(r.status, 201);
    let mid = r.body["id"].as_str().unwrap().to_owned();
    let dup = app
        .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "M@example.com", "name": "M2", "password": "m-password", "roleId": "basic"})))
        .await;
    assert_eq!(dup.status, 409);
    for (body, field) in [
        (
            json!({"email": "bad", "name": "M", "password": "m-password", "roleId": "basic"}),
            "email",
        ),
        (
            json!({"email": "n@example.com", "name": "M", "password": "short", "roleId": "basic"}),
            "password",
        ),
        (
            json!({"email": "n@example.com", "name": "M", "password": "long-enough", "roleId": "ghost"}),
            "roleId",
        ),
    ] {
        let r = app
            .desk(&owner, Method::POST, "/desk/v1/managers", Some(body))
            .await;
        assert_eq!((r.status, r.error_field()), (400, field));
    }
    let r = app
        .desk(
            &owner,
            Method::DELETE,
            &format!("/desk/v1/roles/{role_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "a held role cannot be deleted");

    let marketer = app.login("m@example.com", "m-password").await;
    let r = app
        .desk(&marketer, Method::GET, "/desk/v1/managers", None)
        .await;
    assert_eq!(r.status, 403);
    let me = app.desk(&marketer, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(me.body["role"]["inboxScope"], "assigned");

    // Nobody changes their own role; the last owner cannot be removed.
    let owner_id = app
        .desk(&owner, Method::GET, "/desk/v1/me", None)
        .await
        .body["manager"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            &format!("/desk/v1/managers/{owner_id}"),
            Some(json!({"roleId": "basic"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .desk(
            &owner,
            Method::DELETE,
            &format!("/desk/v1/managers/{owner_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    // Removing a manager ends their session.
    let r = app
        .desk(
            &owner,
            Method::DELETE,
            &format!("/desk/v1/managers/{mid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        app.desk(&marketer, Method::GET, "/desk/v1/me", None)
            .await
            .status,
        401
    );
    app.stop().await;
}

/// Team management cannot be turned into more power than the manager already holds.
async fn no_privilege_escalation(b: Backend) {
    let app = spawn_app(b).await;
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    let r = app
        .desk(&owner, Method::POST, "/desk/v1/roles", Some(json!({"name": "Lead", "permissions": ["teamManagement", "contacts.read"], "inboxScope": "all"})))
        .await;
    let lead_role = r.body["id"].as_str().unwrap().to_owned();
    let r = app
        .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "lead@example.com", "name": "Lead", "password": "lead-pass-1", "roleId": lead_role})))
        .await;
    let lead_id = r.body["id"].as_str().unwrap().to_owned();
    let lead = app.login("lead@example.com", "lead-pass-1").await;

    let r = app
        .desk(
            &lead,
            Method::PATCH,
            &format!("/desk/v1/managers/{lead_id}"),
            Some(json!({"roleId": "owner"})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = app
        .desk(&lead, Method::POST, "/desk/v1/managers", Some(json!({"email": "x@example.com", "name": "X", "password": "x-password", "roleId": "owner"})))
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .desk(
            &lead,
            Method::POST,
            "/desk/v1/roles",
            Some(json!({"name": "All", "permissions": ["contacts.reveal"], "inboxScope": "all"})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("contacts.reveal")
    );
    let r = app
        .desk(&lead, Method::PATCH, &format!("/desk/v1/roles/{lead_role}"), Some(json!({"name": "Lead", "permissions": ["teamManagement", "contacts.read", "generalSettings"], "inboxScope": "all"})))
        .await;
    assert_eq!(r.status, 403);
    let owner_id = app
        .desk(&owner, Method::GET, "/desk/v1/me", None)
        .await
        .body["manager"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .desk(
            &lead,
            Method::DELETE,
            &format!("/desk/v1/managers/{owner_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    // What the lead may do: hand out a subset of its own permissions.
    let r = app
        .desk(&lead, Method::POST, "/desk/v1/roles", Some(json!({"name": "Reader", "permissions": ["contacts.read"], "inboxScope": "assigned"})))
        .await;
    assert_eq!(r.status, 201);
    let me = app.desk(&lead, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(me.body["role"]["id"], json!(lead_role));

    // Without general settings a manager cannot add profile fields by editing a user.
    let u = app.upsert("m-1", json!({"profile": {"name": "Kim"}})).await;
    let id = u.body["user"]["id"].as_str().unwrap().to_owned();
    app.desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "agent@example.com", "name": "A", "password": "agent-pass-1", "roleId": "basic"}))).await;
    let agent = app.login("agent@example.com", "agent-pass-1").await;
    let r = app
        .desk(
            &agent,
            Method::PATCH,
            &format!("/desk/v1/users/{id}"),
            Some(json!({"profile": {"newKey": "x"}})),
        )
        .await;
    assert_eq!((r.status, r.error_field()), (400, "profile.newKey"));
    let r = app
        .desk(
            &owner,
            Method::PATCH,
            &format!("/desk/v1/users/{id}"),
            Some(json!({"profile": {"newKey": "x"}})),
        )
        .await;
    assert_eq!(r.status, 200);
    app.stop().await;
}

/// The same e-mail managing two channels logs in to the one whose password matches.
async fn login_across_channels(b: Backend) {
    let app = spawn_app(b).await;
    let other = app.second_channel().await;
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    let r = app
        .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "second@example.com", "name": "S", "password": "first-pass-1", "roleId": "basic"})))
        .await;
    assert_eq!(r.status, 201);
    let s = app.login("second@example.com", "second-pass-1").await;
    let me = app.desk(&s, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(me.body["channel"]["id"], json!(other.channel_id));
    let s = app.login("second@example.com", "first-pass-1").await;
    let me = app.desk(&s, Method::GET, "/desk/v1/me", None).await;
    assert_eq!(me.body["channel"]["id"], json!(app.creds.channel_id));
    app.stop().await;
}

/// The export streams page after page: every user appears exactly once.
async fn export_pages_through_every_user(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..64 {
                let r = app
                    .upsert(
                        &format!("e-{t}-{i}"),
                        json!({"profile": {"name": format!("N{t}{i}")}}),
                    )
                    .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    let r = app
        .desk(&owner, Method::GET, "/desk/v1/exports/users.csv", None)
        .await;
    assert_eq!(r.status, 200);
    let csv = r.body.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 512, "header plus one line per user");
    let mut ids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 512);
}

/// The console reads a user's timeline and the channel's event catalog.
async fn user_events_and_catalog(b: Backend) {
    let app = spawn_app(b).await;
    let owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    // Three days in a row, ending yesterday (inside the default 90-day retention).
    let today = jiff::Timestamp::now().as_millisecond() / 86_400_000 * 86_400_000;
    let day = |d: i64| today - (4 - d) * 86_400_000;
    let batch = ["Signup", "Purchase", "Purchase"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({"type": "track", "userId": "m-1", "event": name,
                "properties": {"revenue": 1000 * (i + 1)},
                "timestamp": jiff::Timestamp::from_millisecond(day(i as i64 + 1)).unwrap().to_string()})
        })
        .collect::<Vec<_>>();
    let r = segment(&app, "/v1/batch", json!({ "batch": batch })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = app.member("m-1").await["id"].as_str().unwrap().to_owned();
    let page = app
        .desk(
            &owner,
            Method::GET,
            &format!("/desk/v1/users/{id}/events?limit=2"),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let names: Vec<_> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["createdAt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("Purchase", day(3)), ("Purchase", day(2))]);
    let next = page.body["next"].as_str().unwrap().to_owned();
    let rest = app
        .desk(
            &owner,
            Method::GET,
            &format!("/desk/v1/users/{id}/events?limit=2&since={next}"),
            None,
        )
        .await;
    assert_eq!(rest.body["events"][0]["name"], "Signup");
    assert!(rest.body["next"].is_null(), "{:?}", rest.body);
    let bad = app
        .desk(
            &owner,
            Method::GET,
            &format!("/desk/v1/users/{id}/events?since=nope"),
            None,
        )
        .await;
    assert_eq!((bad.status, bad.error_field()), (400, "since"));
    let missing = app
        .desk(
            &owner,
            Method::GET,
            "/desk/v1/users/0123456789abcdef01234567/events",
            None,
        )
        .await;
    assert_eq!(missing.status, 404);

    let catalog = app
        .desk(&owner, Method::GET, "/desk/v1/events/catalog", None)
        .await;
    assert_eq!(catalog.status, 200);
    let purchase = catalog.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Purchase")
        .cloned()
        .unwrap();
    assert_eq!(purchase["count"], 2);
    assert_eq!(purchase["revenue"], true);
    assert_eq!(purchase["firstSeenAt"], day(2));
    let anonymous = app
        .raw(Method::GET, "/desk/v1/events/catalog", &[], vec![])
        .await;
    assert_eq!(anonymous.status, 401);
    app.stop().await;
}

/// The team rules that compare a change with the whole team (one owner at least, a role
/// name once, at most 20 custom roles, no held role deleted) hold for requests at once
/// on two nodes (PostgreSQL) or one server (SQLite): each is checked against the team
/// as the write finds it.
async fn team_rules_hold_across_nodes(b: Backend) {
    let app = std::sync::Arc::new(spawn_app(b).await);
    let other = app.other_node().await;
    let mut owner = app
        .login(&app.creds.owner.email, &app.creds.owner.password)
        .await;
    for round in 0..4 {
        // Two owners demote each other at once, each through another node: one may win.
        let email = format!("o{round}@example.com");
        let r = app
            .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": email, "name": "O", "password": "owner-pass", "roleId": "owner"})))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let new_id = r.body["id"].as_str().unwrap().to_owned();
        let new = other.login(&email, "owner-pass").await;
        let me = app.desk(&owner, Method::GET, "/desk/v1/me", None).await;
        let old_id = me.body["manager"]["id"].as_str().unwrap().to_owned();
        let demote =
            |node: &std::sync::Arc<common::TestApp>, s: &(String, String), target: &str| {
                let (node, s, path) = (
                    node.clone(),
                    s.clone(),
                    format!("/desk/v1/managers/{target}"),
                );
                async move {
                    node.desk(&s, Method::PATCH, &path, Some(json!({"roleId": "basic"})))
                        .await
                }
            };
        let (a, c) = tokio::join!(demote(&app, &owner, &new_id), demote(&other, &new, &old_id));
        let statuses = [a.status, c.status];
        assert_eq!(
            statuses.iter().filter(|s| **s == 204).count(),
            1,
            "round {round}: one demotion, the other refused: {:?} {:?}",
            a.body,
            c.body
        );
        // The demoted one leaves; the one left is the owner of the next round.
        let (kept, gone) = if a.status == 204 {
            (owner, new_id)
        } else {
            (new, old_id)
        };
        owner = kept;
        let ms = app
            .desk(&owner, Method::GET, "/desk/v1/managers", None)
            .await;
        let owners = ms.body["managers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["roleId"] == "owner")
            .count();
        assert_eq!(owners, 1, "round {round}: {:?}", ms.body);
        let r = app
            .desk(
                &owner,
                Method::DELETE,
                &format!("/desk/v1/managers/{gone}"),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    finish(app, other, owner).await;

    async fn finish(
        app: std::sync::Arc<common::TestApp>,
        other: std::sync::Arc<common::TestApp>,
        owner: (String, String),
    ) {
        // The same name on two nodes at once: one role.
        let role = |node: std::sync::Arc<common::TestApp>, name: String| {
            let owner = owner.clone();
            async move {
                node.desk(
                    &owner,
                    Method::POST,
                    "/desk/v1/roles",
                    Some(json!({"name": name, "permissions": [], "inboxScope": "all"})),
                )
                .await
            }
        };
        let (a, c) = tokio::join!(
            role(app.clone(), "Twin".into()),
            role(other.clone(), "twin".into())
        );
        let made = [&a, &c].iter().filter(|r| r.status == 201).count();
        assert_eq!(made, 1, "{:?} {:?}", a.body, c.body);
        // The 20th custom role twice at once: one of them.
        for i in 2..20 {
            let r = role(app.clone(), format!("R{i}")).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
        let (a, c) = tokio::join!(
            role(app.clone(), "Last A".into()),
            role(other.clone(), "Last B".into())
        );
        assert_eq!(
            [a.status, c.status].iter().filter(|s| **s == 201).count(),
            1,
            "{:?} {:?}",
            a.body,
            c.body
        );
        let roles = app.desk(&owner, Method::GET, "/desk/v1/roles", None).await;
        let custom: Vec<_> = roles.body["roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["builtin"] == false)
            .cloned()
            .collect();
        assert_eq!(custom.len(), 20);
        // A role deleted while a manager is given it: either the role stays held, or the
        // manager keeps the role they had; never a manager holding a deleted role.
        let doomed = custom[0]["id"].as_str().unwrap().to_owned();
        let r = app
            .desk(&owner, Method::POST, "/desk/v1/managers", Some(json!({"email": "m@example.com", "name": "M", "password": "m-password", "roleId": "basic"})))
            .await;
        let m = r.body["id"].as_str().unwrap().to_owned();
        let (give_path, delete_path) = (
            format!("/desk/v1/managers/{m}"),
            format!("/desk/v1/roles/{doomed}"),
        );
        let (give, delete) = tokio::join!(
            app.desk(
                &owner,
                Method::PATCH,
                &give_path,
                Some(json!({"roleId": doomed}))
            ),
            other.desk(&owner, Method::DELETE, &delete_path, None)
        );
        assert_ne!(
            (give.status, delete.status),
            (204, 204),
            "{:?} {:?}",
            give.body,
            delete.body
        );
        let ms = app
            .desk(&owner, Method::GET, "/desk/v1/managers", None)
            .await;
        let roles = app.desk(&owner, Method::GET, "/desk/v1/roles", None).await;
        for m in ms.body["managers"].as_array().unwrap() {
            assert!(
                roles.body["roles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["id"] == m["roleId"]),
                "{m:?} holds a role that is gone"
            );
        }
        drop(other);
        if let Ok(app) = std::sync::Arc::try_unwrap(app) {
            app.stop().await;
        }
    }
}

both!(
    user_events_and_catalog,
    export_pages_through_every_user,
    login_session_and_csrf,
    masking_reveal_and_audit,
    roles_and_managers,
    no_privilege_escalation,
    login_across_channels,
    team_rules_hold_across_nodes
);
