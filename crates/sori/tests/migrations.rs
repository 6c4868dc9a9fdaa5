//! Migrations that rewrite stored rows, on SQLite and on PostgreSQL with the same test:
//! a store is made by the current build, rows are set back to what an older build wrote,
//! the migration is marked as not applied, and opening the store again applies it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, spawn_app};
use serde_json::json;
use sqlx::Connection;

/// Runs `statements` on the store of `cfg` with a plain connection.
async fn raw(cfg: &sori::Config, b: Backend, statements: &str) {
    let url = cfg.database_url();
    match b {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    }
}

/// `sessionsCount` becomes web plus app sessions, and languages their primary subtag
/// (docs/events.md, 2026-11-30).
async fn sessions_and_languages(b: Backend) {
    let app = spawn_app(b).await;
    for m in ["old-ko", "old-bad", "old-app"] {
        assert_eq!(app.upsert(m, json!({"tags": ["x"]})).await.status, 200);
    }
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    // The server keeps running (its data directory lives as long as it does); the rows
    // are set back beside it, and a second opening of the store migrates them.
    let cfg = app.config.clone();
    let (version, json) = match b {
        Backend::Sqlite => (11, ""),
        Backend::Postgres => (12, "::jsonb"),
    };
    raw(
        &cfg,
        b,
        &format!(
            "UPDATE users SET sessions_count = 1, web = '{{\"sessionsCount\": 2}}'{json}, \
             language = 'ko-KR' WHERE member_id = 'old-ko'; \
             UPDATE users SET language = 'not a tag!' WHERE member_id = 'old-bad'; \
             UPDATE users SET sessions_count = 1, web = '{{\"sessionsCount\": 1}}'{json}, \
             mobile = '{{\"sessionsCount\": 3}}'{json}, language = 'EN_us' \
             WHERE member_id = 'old-app'; \
             DELETE FROM sori_migrations WHERE version = {version};"
        ),
    )
    .await;
    let store = sori::open_store(&cfg).await.unwrap();
    let user = |m: &'static str| {
        let store = store.clone();
        async move { store.user_by_member_id(ch, m).await.unwrap().unwrap() }
    };
    let ko = user("old-ko").await;
    assert_eq!((ko.sessions_count, ko.language.as_deref()), (2, Some("ko")));
    assert_eq!(user("old-bad").await.language, None, "not a language tag");
    let app_user = user("old-app").await;
    assert_eq!(app_user.sessions_count, 4, "web 1 + app 3");
    assert_eq!(app_user.language.as_deref(), Some("en"));
    app.stop().await;
}

/// An `id` flagged sensitive by an earlier version (which allowed it) is cleared: masked,
/// the console's list offered nothing to open, and the API no longer takes the flag.
async fn id_is_never_sensitive(b: Backend) {
    let app = spawn_app(b).await;
    let ch: i64 = app.creds.channel_id.parse().unwrap();
    let cfg = app.config.clone();
    let (version, flag) = match b {
        Backend::Sqlite => (14, "1"),
        Backend::Postgres => (15, "true"),
    };
    raw(
        &cfg,
        b,
        &format!(
            "INSERT INTO builtin_field_settings (channel_id, key, sensitive)              VALUES ({ch}, 'id', {flag}), ({ch}, 'memberId', {flag});              DELETE FROM sori_migrations WHERE version = {version};"
        ),
    )
    .await;
    let store = sori::open_store(&cfg).await.unwrap();
    assert_eq!(store.sensitive_builtins(ch).await.unwrap(), ["memberId"]);
    app.stop().await;
}

/// A store a newer Sori migrated is refused rather than run on (a rollback without the
/// matching backup).
async fn newer_schema_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let cfg = app.config.clone();
    raw(
        &cfg,
        b,
        "INSERT INTO sori_migrations (version, description, applied_at) VALUES (999, 'future', 0)",
    )
    .await;
    let err = sori::open_store(&cfg).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("migrated by a newer Sori (migration 999"),
        "{err:#}"
    );
    app.stop().await;
}

both!(
    sessions_and_languages,
    id_is_never_sensitive,
    newer_schema_is_refused
);
