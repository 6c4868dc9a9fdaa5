//! Test harness: a real `sori` server on a free port with a fresh SQLite file or a fresh
//! PostgreSQL database, and typed helpers for the calls scenarios make.

#![allow(dead_code, clippy::unwrap_used)]

use reqwest::{Client, Method, Response};
use serde_json::{Value, json};
use sori::{Config, Running};
use sori_app::ChannelCredentials;
use sqlx::Connection;

/// Which store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per backend: `both!(name);` makes `name::sqlite` and
/// `name::postgres` tests calling `name(Backend)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name($crate::common::Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name($crate::common::Backend::Postgres).await }
        }
    )*};
}

/// A running server plus the default channel's credentials.
pub struct TestApp {
    pub base: String,
    pub http: Client,
    pub creds: ChannelCredentials,
    pub backend: Backend,
    pub config: Config,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

/// A fresh PostgreSQL database on the throwaway cluster that `scripts/test.sh` starts.
pub async fn fresh_pg_database() -> String {
    let admin = std::env::var("SORI_TEST_PG_URL").expect(
        "SORI_TEST_PG_URL is not set: run the suite with ./scripts/test.sh, which starts PostgreSQL",
    );
    let name = format!("sori_test_{}", sori_app::secrets::random_hex(6));
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to admin database");
    // With ICU's en-US collation, as production clusters sort text, not the test
    // cluster's C: an order that depends on the database's collation shows up as a
    // difference between the backends.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
         LOCALE 'C.UTF-8'"
    )))
    .execute(&mut conn)
    .await
    .expect("create test database");
    // Set to `repeatable read`, as some installations are: the store pins `read committed`
    // on its connections, and its locks only order writes if it does (a team write read
    // behind its lock left a channel without an owner).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"
    )))
    .execute(&mut conn)
    .await
    .expect("set the test database's isolation");
    let (base, _) = admin.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

/// Starts a server on `backend` with `tweak` applied to the configuration.
pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".into(),
        rate_limit: 0,
        ..Config::default()
    };
    if backend == Backend::Postgres {
        config.database_url = Some(fresh_pg_database().await);
        config.pg_max_connections = 8;
    }
    tweak(&mut config);
    let running = sori::start(&config).await.expect("server starts");
    let creds = running
        .first_channel
        .clone()
        .expect("fresh store creates the default channel");
    TestApp {
        base: format!("http://{}", running.addr),
        http: Client::new(),
        creds,
        backend,
        config,
        running: Some(running),
        _dir: dir,
    }
}

/// Starts a server with defaults (rate limiting off).
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(backend, |_| {}).await
}

/// A status and parsed JSON body (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    async fn from(r: Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Self {
            status,
            body,
            headers,
        }
    }

    /// The `field` of the first error, for asserting which input was blamed.
    pub fn error_field(&self) -> &str {
        self.body["errors"][0]["field"].as_str().unwrap_or("")
    }
}

impl TestApp {
    /// An Open API call with this app's default channel keys.
    pub async fn open(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.open_as(&self.creds, method, path, body).await
    }

    /// An Open API call with another channel's keys.
    pub async fn open_as(
        &self,
        c: &ChannelCredentials,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-access-key", &c.access_key)
            .header("x-access-secret", &c.access_secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// Raw request with arbitrary headers and body bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// The services of the running server.
    pub fn app(&self) -> &sori_app::App {
        &self.running.as_ref().expect("server is running").app
    }

    /// Registers a profile field over the Open API; it must be created.
    pub async fn register_field(&self, key: &str, ty: &str) {
        let r = self
            .open(
                Method::POST,
                "/open/v5/profile-fields",
                Some(json!({"key": key, "type": ty})),
            )
            .await;
        assert_eq!(r.status, 201, "{key}: {:?}", r.body);
    }

    /// `PUT /open/v5/users/@{memberId}`.
    pub async fn upsert(&self, member_id: &str, body: Value) -> Reply {
        self.open(
            Method::PUT,
            &format!("/open/v5/users/@{member_id}"),
            Some(body),
        )
        .await
    }

    /// `GET /open/v5/users/@{memberId}`, asserting it exists.
    pub async fn member(&self, member_id: &str) -> Value {
        let r = self
            .open(Method::GET, &format!("/open/v5/users/@{member_id}"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["user"].clone()
    }

    /// Creates another channel through the service layer.
    pub async fn second_channel(&self) -> ChannelCredentials {
        let app = &self.running.as_ref().unwrap().app;
        sori::create_channel(
            app,
            sori_app::ChannelSpec {
                name: "Second".into(),
                owner_email: "second@example.com".into(),
                owner_password: Some("second-pass-1".into()),
                time_zone: None,
            },
        )
        .await
        .unwrap()
    }

    /// Logs in to the desk; returns (cookie header value, csrf token).
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/desk/v1/login", self.base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let body: Value = r.json().await.unwrap();
        (cookie, body["csrfToken"].as_str().unwrap().to_owned())
    }

    /// A desk call with a session cookie and optional CSRF token.
    pub async fn desk(
        &self,
        session: &(String, String),
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &session.0)
            .header("x-csrf-token", &session.1);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// Stops the server gracefully.
    /// Where a scenario sends part of its writes: another node on PostgreSQL (several
    /// share one database), the same server on SQLite (one server per store).
    pub async fn other_node(self: &std::sync::Arc<Self>) -> std::sync::Arc<TestApp> {
        match self.backend {
            Backend::Postgres => std::sync::Arc::new(self.second_node().await),
            Backend::Sqlite => self.clone(),
        }
    }

    /// Another node on this app's PostgreSQL database (several nodes share one; a second
    /// server on a SQLite store is refused), with the same credentials.
    pub async fn second_node(&self) -> TestApp {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "nodes share PostgreSQL only"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = self.config.clone();
        config.data_dir = dir.path().join("data");
        config.listen = "127.0.0.1:0".into();
        let running = sori::start(&config).await.expect("second node starts");
        TestApp {
            base: format!("http://{}", running.addr),
            http: Client::new(),
            creds: self.creds.clone(),
            backend: self.backend,
            config,
            running: Some(running),
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

/// The Segment API's Basic authorization for a write key.
pub fn basic(write_key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"))
    )
}

/// `POST` of a JSON body to a Segment path (`/v1/batch`, …) with the channel's write key.
pub async fn segment(app: &TestApp, path: &str, body: Value) -> Reply {
    let auth = basic(&app.creds.write_key);
    app.raw(
        Method::POST,
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body.to_string().into_bytes(),
    )
    .await
}
