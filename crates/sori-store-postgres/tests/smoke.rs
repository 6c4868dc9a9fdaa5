//! Smoke test against a real PostgreSQL; runs only when `SORI_TEST_PG_URL` is set, e.g.
//! `SORI_TEST_PG_URL=postgres://postgres@127.0.0.1:55432/postgres cargo test -p sori-store-postgres`.
//! Each run uses fresh keys, so it can be repeated on the same database.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use sori_domain::update::UPDATE_FIELDS;
use sori_domain::{ApplyContext, UserUpdate};
use sori_store::{
    Channel, Manager, NewChannel, Store, StoreError, UserOp, UserOpError, UserTarget,
};
use sori_store_postgres::PostgresStore;

#[tokio::test]
async fn store_round_trip() {
    let Ok(url) = std::env::var("SORI_TEST_PG_URL") else {
        eprintln!("SORI_TEST_PG_URL unset; skipping");
        return;
    };
    let store = PostgresStore::connect(&url, 4).await.expect("connect");
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    a.expect("migrate");
    b.expect("concurrent migrate");
    store.migrate().await.expect("migrate again");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let run = format!("{now:024x}");
    let ms = i64::try_from(now / 1_000_000).expect("ms");
    let (channel, owner) = store
        .create_channel(NewChannel {
            channel: Channel {
                id: 0,
                name: "Smoke".into(),
                time_zone: "Asia/Seoul".into(),
                default_language: "ko".into(),
                plugin_key: format!("pk{run}"),
                access_key: format!("ak{run}"),
                access_secret_hash: "h1".into(),
                write_key_hash: format!("wk{run}"),
                member_hash_secret: "00".into(),
                member_hash_required: false,
                member_hash_epoch: 0,
                event_retention_days: 90,
                created_at: ms,
            },
            owner: Manager {
                channel_id: 0,
                id: run.clone(),
                email: format!("{run}@example.com"),
                name: "Owner".into(),
                role_id: "owner".into(),
                password_hash: "$argon2id$dummy".into(),
                created_at: ms,
            },
        })
        .await
        .expect("create channel");
    assert_eq!(owner.channel_id, channel.id);
    assert_eq!(store.roles(channel.id).await.expect("roles")[0].id, "owner");

    let ch = channel.id;
    let op = |target: UserTarget, body: serde_json::Value| UserOp {
        channel_id: ch,
        target,
        update: UserUpdate::from_json(&body, UPDATE_FIELDS).expect("valid body"),
        ctx: ApplyContext {
            now: ms,
            tz: jiff::tz::TimeZone::UTC,
            tag_limit_per_call: 20,
            may_resubscribe: true,
            new_keys: sori_domain::update::NewKeys::Register,
            sets_language: false,
        },
        activity: Default::default(),
        events: Vec::new(),
        message_id: None,
    };
    let upsert = |new_id: &str, body| {
        op(
            UserTarget::MemberId {
                member_id: "m1".into(),
                new_id: new_id.into(),
            },
            body,
        )
    };
    let results = store
        .write_users(&[
            upsert(
                "u1",
                json!({"profile": {"name": "Kim", "age": 3}, "tags": ["VIP"]}),
            ),
            upsert("u2", json!({"profile": {"name": 1}})),
            upsert("u3", json!({"unsubscribeEmail": true})),
        ])
        .await
        .expect("write users");
    let first = results[0].as_ref().expect("first upsert");
    assert!(first.created && first.changed);
    assert!(matches!(results[1], Err(UserOpError::Invalid(_))));
    let third = results[2].as_ref().expect("second upsert");
    assert!(!third.created && third.changed);
    assert_eq!(third.user_id, "u1");

    let u = store
        .user_by_member_id(ch, "m1")
        .await
        .expect("read")
        .expect("member exists");
    assert_eq!(Some(&u), third.user.as_ref());
    assert_eq!(u.profile["age"], json!(3));
    assert_eq!(u.tags, ["vip"]);
    assert!(u.unsubscribe_email);
    let page = store.users_page(ch, None, 10, false).await.expect("page");
    assert_eq!(page, [u]);
    assert!(
        store
            .users_page(ch, Some("u1"), 10, false)
            .await
            .expect("page 2")
            .is_empty()
    );
    assert_eq!(
        store
            .users_page(ch, Some("v"), 10, true)
            .await
            .expect("desc")
            .len(),
        1
    );

    // Same member again in a later batch: found, not re-created; a missing id is NotFound.
    let again = store
        .write_users(&[
            upsert("u4", json!({"profile": {"age": 4}})),
            op(UserTarget::Id("nope".into()), json!({"blocked": true})),
        ])
        .await
        .expect("second batch");
    assert_eq!(again[0].as_ref().expect("upsert").user_id, "u1");
    assert_eq!(again[1].as_ref().err(), Some(&UserOpError::NotFound));

    // Deleting a custom field strips it from every profile.
    assert!(
        store
            .profile_fields(ch)
            .await
            .expect("fields")
            .iter()
            .any(|f| f.key.as_str() == "age")
    );
    assert!(
        store
            .delete_profile_field(ch, "age")
            .await
            .expect("delete field")
    );
    assert!(
        !store
            .delete_profile_field(ch, "name")
            .await
            .expect("builtin stays")
    );
    let u = store.user(ch, "u1").await.expect("read").expect("exists");
    assert!(!u.profile.contains_key("age"));
    assert_eq!(u.profile["name"], json!("Kim"));

    // Batches travel as SQL literals (one round trip for several statements): text that
    // looks like quoting, array syntax or a dollar-quote tag must come back unchanged.
    let nasty = [
        "it's",
        "a\"b",
        "back\\slash",
        "{x,y}",
        "NULL",
        "$q$",
        "$q0$ and $q$",
        "end$",
        "",
        "한국어 😀",
        "comma, space",
    ];
    for (i, s) in nasty.iter().enumerate() {
        let member = format!("nasty{i}{s}");
        let r = store
            .write_users(&[op(
                UserTarget::MemberId {
                    member_id: member.clone(),
                    new_id: format!("n{i}"),
                },
                json!({"profile": {"name": s, "city": s}, "tags": [format!("t{s}")]}),
            )])
            .await
            .expect("write nasty");
        assert!(r[0].is_ok(), "{s:?}: {:?}", r[0]);
        let u = store
            .user_by_member_id(ch, &member)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{s:?} written"));
        assert_eq!(u.member_id.as_deref(), Some(member.as_str()));
        assert_eq!(u.profile["name"], json!(s), "{s:?}");
        assert_eq!(u.profile.get("city"), Some(&json!(s)), "{s:?}");
    }

    // Two writers creating the same anonymous user at once (two shards or nodes): the
    // unique index lets only one in; the other batch fails with a conflict, which the
    // writer retries, and never leaves a second anonymous user with the same veil id.
    for round in 0..5 {
        let veil = format!("race-veil-{round}");
        let anon = |new_id: String| {
            op(
                UserTarget::Identify {
                    member_id: None,
                    veil_id: Some(veil.clone()),
                    new_id,
                },
                json!({}),
            )
        };
        let (first, second) = ([anon(format!("ra{round}"))], [anon(format!("rb{round}"))]);
        let (a, b) = tokio::join!(store.write_users(&first), store.write_users(&second));
        assert!(
            matches!(
                (&a, &b),
                (Ok(_), Ok(_))
                    | (Ok(_), Err(StoreError::Conflict(_)))
                    | (Err(StoreError::Conflict(_)), Ok(_))
            ),
            "{a:?} {b:?}"
        );
        let ra = store.user(ch, &format!("ra{round}")).await.expect("read");
        let rb = store.user(ch, &format!("rb{round}")).await.expect("read");
        assert_eq!(
            usize::from(ra.is_some()) + usize::from(rb.is_some()),
            1,
            "one anonymous user for {veil}"
        );
    }
}
