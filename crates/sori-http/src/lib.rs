//! The thin HTTP layer: axum routers that turn requests into service calls and errors into
//! JSON responses. Routes: the Open API (`/open/v5`), the desk API (`/desk/v1`),
//! `/healthz`, `/metrics` and `/openapi.json`. No business rule lives here.

pub mod body;
pub mod desk;
pub mod error;
pub mod json;
mod listen;
pub mod open;
mod ops;
pub mod ratelimit;
pub mod schema;
pub mod sdk;
pub mod segment;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, patch, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sori_app::App;

pub use listen::serve;
pub use ops::{ApiDoc, metrics_handle};
use ratelimit::RateLimiter;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted body on the Segment-compatible ingestion paths (decompressed).
    pub max_ingest_body_bytes: usize,
    /// Open API requests per second per access key (0 turns limiting off).
    pub rate_limit_per_second: u32,
    /// Open API burst per access key.
    pub rate_limit_burst: u32,
    /// Mark the session cookie `Secure` (serve behind HTTPS).
    pub cookie_secure: bool,
    /// Serve `POST /_noop` (benchmarks only).
    pub noop_endpoint: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_ingest_body_bytes: 1024 * 1024,
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            cookie_secure: false,
            noop_endpoint: false,
        }
    }
}

/// Shared state of every handler: one `Arc`, so the per-request clone axum makes is a
/// single reference-count bump instead of one per service (measured: a few percent of
/// CPU at tens of thousands of requests a second).
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

impl std::ops::Deref for AppState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct StateInner {
    /// Services.
    pub app: App,
    /// Open API rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// See [`HttpConfig::cookie_secure`].
    pub cookie_secure: bool,
}

/// Builds the whole HTTP surface.
pub fn router(app: App, cfg: &HttpConfig) -> Router {
    let state = AppState(Arc::new(StateInner {
        app,
        limiter: Arc::new(RateLimiter::new(
            cfg.rate_limit_per_second,
            cfg.rate_limit_burst,
        )),
        metrics: metrics_handle(),
        cookie_secure: cfg.cookie_secure,
    }));
    use open::{channel as och, events as oe, fields as of, segments as osg, users as ou};
    let open = Router::new()
        .route("/open/v5/users", get(ou::list_users).post(ou::create_user))
        .route(
            "/open/v5/users/{key}",
            get(ou::get_route)
                .put(ou::put_route)
                .patch(ou::patch_route)
                .delete(ou::delete_route),
        )
        .route(
            "/open/v5/profile-fields",
            get(of::open_list).post(of::open_create),
        )
        .route(
            "/open/v5/profile-fields/{key}",
            patch(of::open_update).delete(of::open_delete),
        )
        .route(
            "/open/v5/channel",
            get(och::get_channel).patch(och::patch_channel),
        )
        .route(
            "/open/v5/users/{key}/events",
            get(oe::list).post(oe::create),
        )
        .route("/open/v5/users/{key}/merges", get(oe::merges))
        .route("/open/v5/events/catalog", get(oe::catalog))
        .route("/open/v5/users/count", post(osg::count))
        .route("/open/v5/users/search", post(osg::search))
        .route("/open/v5/segments", get(osg::list).post(osg::create))
        .route(
            "/open/v5/segments/{id}",
            get(osg::get).patch(osg::patch).delete(osg::delete),
        )
        .route("/open/v5/segments/{id}/users", get(osg::users))
        .route("/open/v5/segments/{id}/users.csv", get(osg::export))
        .route("/open/v5/segments/{id}/users/{user}", get(osg::membership))
        .layer(from_fn_with_state(state.clone(), ratelimit::limit));
    let open = ops::gzip_bodies(open, cfg.max_body_bytes);
    use desk::{settings as ds, users as du};
    let desk = Router::new()
        .route("/desk/v1/login", post(desk::login))
        .route("/desk/v1/logout", post(desk::logout))
        .route("/desk/v1/me", get(desk::whoami))
        .route(
            "/desk/v1/channel",
            get(ds::get_channel).patch(ds::patch_channel),
        )
        .route("/desk/v1/users", get(du::list))
        .route("/desk/v1/users/{id}", get(du::get).patch(du::patch))
        .route("/desk/v1/users/{id}/reveal", post(du::reveal))
        .route("/desk/v1/users/{id}/events", get(du::events))
        .route("/desk/v1/events/catalog", get(du::catalog))
        .route("/desk/v1/audit/reveals", get(du::reveals))
        .route("/desk/v1/exports/users.csv", get(du::export))
        .route("/desk/v1/fields", get(ds::all_fields))
        .route("/desk/v1/fields/{key}", patch(ds::set_sensitive))
        .route(
            "/desk/v1/profile-fields",
            get(ds::list_fields).post(ds::create_field),
        )
        .route(
            "/desk/v1/profile-fields/{key}",
            patch(ds::update_field).delete(ds::delete_field),
        )
        .route("/desk/v1/roles", get(ds::list_roles).post(ds::create_role))
        .route(
            "/desk/v1/roles/{id}",
            patch(ds::update_role).delete(ds::delete_role),
        )
        .route(
            "/desk/v1/managers",
            get(ds::list_managers).post(ds::create_manager),
        )
        .route(
            "/desk/v1/managers/{id}",
            patch(ds::update_manager).delete(ds::delete_manager),
        );
    let desk = ops::gzip_bodies(desk, cfg.max_body_bytes);
    // Ingestion paths are not rate limited per key: they are built for bulk, and the
    // writer queue pushes back (503) when the store cannot keep up.
    let segment = Router::new()
        .route("/v1/identify", post(segment::identify))
        .route("/v1/track", post(segment::track))
        .route("/v1/page", post(segment::page))
        .route("/v1/screen", post(segment::screen))
        .route("/v1/batch", post(segment::batch));
    let segment = ops::gzip_bodies(segment, cfg.max_ingest_body_bytes);
    let sdk = Router::new()
        // The OPTIONS routes let the CORS layer answer preflights (without them the
        // router's 405 fallback would).
        .route("/sdk/v1/boot", post(sdk::boot).options(sdk::preflight))
        .route("/sdk/v1/events", post(sdk::track).options(sdk::preflight))
        .route("/sdk/v1/calls", post(sdk::calls).options(sdk::preflight))
        .route(
            "/sdk/v1/user",
            patch(sdk::update_user).options(sdk::preflight),
        );
    // Inside the CORS layer, so that a refused encoding's 415 reaches the page's script.
    let sdk = ops::gzip_bodies(sdk, cfg.max_body_bytes)
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([
                    axum::http::Method::GET,
                    axum::http::Method::POST,
                    axum::http::Method::PATCH,
                ])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::CONTENT_ENCODING,
                    axum::http::HeaderName::from_static("x-sori-session"),
                ])
                .max_age(std::time::Duration::from_secs(3600)),
        )
        .route("/sdk/sori.js", get(sdk::script));
    let mut routes = Router::new()
        .merge(open)
        .merge(desk)
        .merge(segment)
        .merge(sdk)
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    if cfg.noop_endpoint {
        routes = routes.route("/_noop", post(ops::noop));
    }
    let routes = routes
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed);
    ops::with_middleware(routes, cfg.max_body_bytes).with_state(state)
}
