use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::field::FieldType;
use crate::limits::{
    MAX_PROFILE_KEYS, MAX_STRING_CHARS, MAX_TAGS_PER_API_CALL, MAX_TAGS_PER_SDK_CALL,
};

fn ctx() -> ApplyContext {
    ApplyContext {
        now: 2_000,
        tz: TimeZone::get("Asia/Seoul").expect("tz"),
        tag_limit_per_call: MAX_TAGS_PER_API_CALL,
        may_resubscribe: true,
        new_keys: NewKeys::Register,
        sets_language: false,
    }
}

fn registry() -> Registry {
    Registry::new(Registry::preregistered(0))
}

fn base() -> User {
    User::new("u1".into(), 1_000)
}

fn parse(v: Value) -> UserUpdate {
    UserUpdate::from_json(&v, UPDATE_FIELDS).expect("valid update")
}

fn apply(user: &User, v: Value) -> Result<Applied, Invalid> {
    apply_update(user, false, &registry(), &parse(v), &ctx())
}

#[test]
fn profile_sets_clears_and_clears_all() {
    let a = apply(&base(), json!({"profile": {"name": "Kim", "cartCount": 2}})).expect("ok");
    assert_eq!(a.user.profile["name"], json!("Kim"));
    assert_eq!(a.user.name(), Some("Kim"));
    assert_eq!(a.new_fields.len(), 1);
    assert_eq!(a.new_fields[0].field_type, FieldType::Number);
    assert!(a.changed);
    assert_eq!(a.user.updated_at, 2_000);

    let b = apply(&a.user, json!({"profile": {"cartCount": null}})).expect("ok");
    assert!(!b.user.profile.contains_key("cartCount"));
    assert_eq!(b.user.profile["name"], json!("Kim"));

    let c = apply(&b.user, json!({"profile": null})).expect("ok");
    assert!(c.user.profile.is_empty());
}

#[test]
fn empty_object_and_empty_tags_are_errors() {
    let e = apply(&base(), json!({"profile": {}})).unwrap_err();
    assert_eq!(e.0[0].field, "profile");
    let e = apply(&base(), json!({"tags": []})).unwrap_err();
    assert_eq!(e.0[0].field, "tags");
    let e = apply(&base(), json!({"profileOnce": {}})).unwrap_err();
    assert_eq!(e.0[0].field, "profileOnce");
}

#[test]
fn profile_once_sets_only_empty_keys() {
    let mut u = base();
    u.profile.insert("name".into(), json!("Kim"));
    let a = apply(
        &u,
        json!({"profileOnce": {"name": "Lee", "email": "a@b.co"}}),
    )
    .expect("ok");
    assert_eq!(a.user.profile["name"], json!("Kim"));
    assert_eq!(a.user.profile["email"], json!("a@b.co"));
}

#[test]
fn set_once_fields_keep_the_first_value_and_last_utm_overwrites() {
    let a = apply(
        &base(),
        json!({"profile": {"utmSource": "google", "lastUtmSource": "google"}}),
    )
    .expect("ok");
    let b = apply(
        &a.user,
        json!({"profile": {"utmSource": "naver", "lastUtmSource": "naver"}}),
    )
    .expect("ok");
    assert_eq!(b.user.profile["utmSource"], json!("google"));
    assert_eq!(b.user.profile["lastUtmSource"], json!("naver"));
}

#[test]
fn nothing_changed_keeps_updated_at() {
    let a = apply(&base(), json!({"profile": {"name": "Kim"}})).expect("ok");
    let mut again_ctx = ctx();
    again_ctx.now = 9_000;
    let b = apply_update(
        &a.user,
        false,
        &registry(),
        &parse(json!({"profile": {"name": "Kim"}})),
        &again_ctx,
    )
    .expect("ok");
    assert!(!b.changed);
    assert_eq!(b.user.updated_at, a.user.updated_at);
}

#[test]
fn mobile_number_rules() {
    let a = apply(
        &base(),
        json!({"profile": {"mobileNumber": "010-1234-5678"}}),
    )
    .expect("ok");
    assert_eq!(a.user.profile["mobileNumber"], json!("+821012345678"));
    let e = apply(
        &base(),
        json!({"profile": {"mobileNumber": "070-1234-5678"}}),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "profile.mobileNumber");
    assert!(e.0[0].message.contains("landlineNumber"));
}

#[test]
fn type_mismatch_names_the_field_and_changes_nothing() {
    let e = apply(&base(), json!({"profile": {"name": 5, "email": "ok@x.co"}})).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].field, "profile.name");
}

#[test]
fn tags_are_lowercased_deduplicated_and_limited() {
    let a = apply(&base(), json!({"tags": ["VIP", "vip ", "New"]})).expect("ok");
    assert_eq!(a.user.tags, vec!["vip", "new"]);
    let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    assert!(apply(&base(), json!({"tags": many})).is_err());
    let mut sdk = ctx();
    sdk.tag_limit_per_call = MAX_TAGS_PER_SDK_CALL;
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let upd = UserUpdate {
        tags: Some(TagOp::Add(eleven)),
        ..Default::default()
    };
    assert!(apply_update(&base(), false, &registry(), &upd, &sdk).is_err());
}

#[test]
fn nul_characters_are_refused_where_postgres_cannot_store_them() {
    let e = apply(&base(), json!({"tags": ["a\u{0}"]})).unwrap_err();
    assert_eq!(e.0[0].field, "tags[0]");
    assert!(apply(&base(), json!({"profile": {"name": "a\u{0}"}})).is_err());
    assert!(check_member_id("m\u{0}1").is_err());
}

#[test]
fn tags_with_control_or_only_invisible_characters_are_refused() {
    for bad in [
        "a\u{7}b",
        "vip\nnew",
        "\u{200b}",
        "\u{200b}\u{feff}",
        "a\u{85}b",
        "a\u{202e}b",
    ] {
        let e = apply(&base(), json!({"tags": ["ok", bad]})).unwrap_err();
        assert_eq!(e.0[0].field, "tags[1]", "{bad:?}");
    }
    assert!(check_member_id("m\u{2028}1").is_err());
    assert!(check_member_id("m\u{202e}1").is_err());
    // A tag stored before these rules can still be removed by name, and only a stored one.
    let mut legacy = base();
    legacy.tags = vec!["ok".into(), "vip\u{202e}new".into()];
    let upd = UserUpdate {
        tags: Some(TagOp::Remove(vec!["VIP\u{202e}new ".into()])),
        ..Default::default()
    };
    let a = apply_update(&legacy, false, &registry(), &upd, &ctx()).expect("removed");
    assert_eq!(a.user.tags, vec!["ok"]);
    let upd = UserUpdate {
        tags: Some(TagOp::Remove(vec!["a\u{202e}b".into()])),
        ..Default::default()
    };
    assert!(apply_update(&legacy, false, &registry(), &upd, &ctx()).is_err());
    // Surrounding whitespace is trimmed, and a zero-width joiner inside an emoji is kept.
    let a = apply(&base(), json!({"tags": ["\tvip\n", "👩\u{200d}💻"]})).expect("ok");
    assert_eq!(a.user.tags, vec!["vip", "👩\u{200d}💻"]);
}

#[test]
fn tags_per_user_limit_counts_after_adding() {
    let mut u = base();
    u.tags = (0..195).map(|i| format!("t{i}")).collect();
    let add: Vec<String> = (195..201).map(|i| format!("t{i}")).collect();
    let upd = UserUpdate {
        tags: Some(TagOp::Add(add)),
        ..Default::default()
    };
    let e = apply_update(&u, false, &registry(), &upd, &ctx()).unwrap_err();
    assert!(e.0[0].message.contains("at most 200"));
}

#[test]
fn boot_cannot_resubscribe() {
    let mut u = base();
    u.unsubscribe_email = true;
    let mut boot = ctx();
    boot.may_resubscribe = false;
    let upd = UserUpdate {
        unsubscribe_email: Some(false),
        ..Default::default()
    };
    let a = apply_update(&u, false, &registry(), &upd, &boot).expect("ok");
    assert!(a.user.unsubscribe_email);
    let a = apply_update(&u, false, &registry(), &upd, &ctx()).expect("ok");
    assert!(!a.user.unsubscribe_email);
}

#[test]
fn unknown_and_mistyped_top_level_fields_are_named() {
    let e = UserUpdate::from_json(&json!({"profil": {}}), UPDATE_FIELDS).unwrap_err();
    assert_eq!(e.0[0].field, "profil");
    let e = UserUpdate::from_json(&json!({"unsubscribeEmail": "yes"}), UPDATE_FIELDS).unwrap_err();
    assert_eq!(e.0[0].field, "unsubscribeEmail");
    let e = UserUpdate::from_json(&json!({"tags": ["a", 1]}), UPDATE_FIELDS).unwrap_err();
    assert_eq!(e.0[0].field, "tags[1]");
    assert!(UserUpdate::from_json(&json!([1]), UPDATE_FIELDS).is_err());
}

#[test]
fn registered_type_wins_over_inference() {
    let e = apply(
        &base(),
        json!({"profile": {"lastCheckoutCompletedAt": "soon"}}),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "profile.lastCheckoutCompletedAt");
    let a = apply(
        &base(),
        json!({"profile": {"lastCheckoutCompletedAt": 1_700_000_000_000_i64}}),
    )
    .expect("ok");
    assert!(a.new_fields.is_empty());
}

#[test]
fn unknown_keys_need_the_right_to_register() {
    let mut c = ctx();
    let upd = parse(json!({"profile": {"name": "Kim", "newKey": 1}}));
    for (refusal, says) in [
        (NewKeys::NeedsPermission, "general-settings permission"),
        (
            NewKeys::RegisteredOnly,
            "the web SDK writes registered fields only",
        ),
    ] {
        c.new_keys = refusal;
        let e = apply_update(&base(), false, &registry(), &upd, &c).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].field, "profile.newKey");
        assert!(e.0[0].message.contains(says), "{}", e.0[0].message);
    }
}

#[test]
fn invalid_keys_are_rejected() {
    let e = apply(&base(), json!({"profile": {"bad key": 1}})).unwrap_err();
    assert_eq!(e.0[0].field, "profile.bad key");
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,600}".prop_map(Value::from),
        prop::collection::vec("[a-z]{0,8}", 0..230).prop_map(|v| json!(v)),
        Just(Value::Null),
    ]
}

fn arb_profile() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z][a-zA-Z0-9]{0,5}", arb_value(), 0..300)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever comes in, an accepted update leaves a profile within every limit, and a
    /// rejected one reports at least one named problem.
    #[test]
    fn accepted_profiles_respect_every_limit(p in arb_profile(), once in arb_profile()) {
        let mut body = json!({"profile": p});
        if !once.is_empty() {
            body["profileOnce"] = json!(once);
        }
        let upd = UserUpdate::from_json(&body, UPDATE_FIELDS).expect("shape is valid");
        match apply_update(&base(), false, &registry(), &upd, &ctx()) {
            Ok(a) => {
                prop_assert!(a.user.profile.len() <= MAX_PROFILE_KEYS);
                prop_assert!(serde_json::to_vec(&a.user.profile).expect("json").len() <= MAX_PROFILE_BYTES);
                for v in a.user.profile.values() {
                    match v {
                        Value::String(s) => prop_assert!(s.chars().count() <= 512),
                        Value::Array(items) => prop_assert!(items.len() <= 200),
                        _ => {}
                    }
                }
            }
            Err(e) => prop_assert!(!e.0.is_empty() && e.0.iter().all(|f| !f.field.is_empty())),
        }
    }

    /// Setting then clearing a key with null restores the profile without that key; and
    /// applying the same update twice is the same as applying it once.
    #[test]
    fn updates_are_idempotent(p in arb_profile()) {
        let upd = UserUpdate { profile: ProfilePatch::Set(p), ..Default::default() };
        if let Ok(once) = apply_update(&base(), false, &registry(), &upd, &ctx()) {
            let mut reg = registry();
            for f in once.new_fields.clone() { reg.insert(f); }
            let twice = apply_update(&once.user, false, &reg, &upd, &ctx()).expect("second apply");
            prop_assert!(!twice.changed);
            prop_assert_eq!(twice.user, once.user);
        }
    }

    /// Tags end up lowercase, unique and within the per-user limit.
    #[test]
    fn tags_are_always_normalized(tags in prop::collection::vec("[A-Za-z ]{0,6}", 0..25)) {
        let upd = UserUpdate { tags: Some(TagOp::Set(tags)), ..Default::default() };
        if let Ok(a) = apply_update(&base(), false, &registry(), &upd, &ctx()) {
            let mut seen = std::collections::HashSet::new();
            for t in &a.user.tags {
                prop_assert_eq!(t, &t.to_lowercase());
                prop_assert!(seen.insert(t.clone()));
                prop_assert!(!t.is_empty());
            }
        }
    }
}

#[test]
fn languages_are_stored_as_their_primary_subtag() {
    for (tag, lang) in [
        ("ko", "ko"),
        ("ko-KR", "ko"),
        ("EN_us", "en"),
        ("zh-Hans-CN", "zh"),
    ] {
        assert_eq!(check_language(tag).as_deref(), Ok(lang), "{tag}");
    }
    for bad in [
        "", "k", "koreanx", "ko--KR", "ko KR", "12", "-ko", "und", "UND-KR", "zxx",
    ] {
        assert!(check_language(bad).is_err(), "{bad:?}");
    }
    let new = apply_update(
        &base(),
        true,
        &registry(),
        &UserUpdate {
            language: Some("ko-KR".into()),
            ..UserUpdate::default()
        },
        &ctx(),
    )
    .expect("ok");
    assert_eq!(new.user.language.as_deref(), Some("ko"));
}

#[test]
fn language_is_set_on_an_existing_user_only_by_the_customers_own_update() {
    let upd = UserUpdate {
        language: Some("en".into()),
        ..UserUpdate::default()
    };
    let mut u = base();
    u.language = Some("ko".into());
    let kept = apply_update(&u, false, &registry(), &upd, &ctx()).expect("ok");
    assert_eq!(
        kept.user.language.as_deref(),
        Some("ko"),
        "a boot's language"
    );
    let mut own = ctx();
    own.sets_language = true;
    let set = apply_update(&u, false, &registry(), &upd, &own).expect("ok");
    assert_eq!(
        set.user.language.as_deref(),
        Some("en"),
        "updateUser's language"
    );
}

#[test]
fn collected_values_apply_where_they_fit_and_never_fail_the_update() {
    let collected = |v: &str| {
        let mut m = Map::new();
        for k in ["utmSource", "lastUtmSource", "referrer"] {
            m.insert(k.into(), json!(v));
        }
        m
    };
    let mut upd = parse(json!({"profile": {"name": "Kim"}}));
    upd.collected = Some(collected("news"));
    let a = apply_update(&base(), false, &registry(), &upd, &ctx()).expect("ok");
    assert_eq!(a.user.profile["utmSource"], json!("news"));
    assert_eq!(a.user.profile["referrer"], json!("news"));
    // Set-once fields keep their first value; `lastUtm*` follows.
    upd.collected = Some(collected("ads"));
    let b = apply_update(&a.user, false, &registry(), &upd, &ctx()).expect("ok");
    assert_eq!(b.user.profile["utmSource"], json!("news"));
    assert_eq!(b.user.profile["lastUtmSource"], json!("ads"));
    // A profile near its limit keeps the business's own values and leaves the
    // collected ones out, all of them, instead of failing.
    let mut full = base();
    full.profile
        .insert("description".into(), json!("가".repeat(MAX_STRING_CHARS)));
    for i in 0..8 {
        full.profile
            .insert(format!("note{i}"), json!("가".repeat(MAX_STRING_CHARS)));
    }
    upd.collected = Some(collected(&"나".repeat(MAX_STRING_CHARS)));
    let c = apply_update(&full, false, &registry(), &upd, &ctx()).expect("not refused");
    assert_eq!(c.user.profile["name"], json!("Kim"));
    for k in ["utmSource", "lastUtmSource", "referrer"] {
        assert!(!c.user.profile.contains_key(k), "{k} left out");
    }
    // The key limit too, and a field a left-out value would have registered is not.
    let mut many = base();
    for i in 0..MAX_PROFILE_KEYS - 1 {
        many.profile.insert(format!("k{i}"), json!(1));
    }
    let mut m = collected("news");
    m.insert("collectedNew".into(), json!("x"));
    upd.collected = Some(m);
    let d = apply_update(&many, false, &registry(), &upd, &ctx()).expect("not refused");
    assert_eq!(d.user.profile.len(), MAX_PROFILE_KEYS, "with `name` only");
    assert!(
        d.new_fields
            .iter()
            .all(|f| f.key.as_str() != "collectedNew")
    );
}
