//! Operations endpoints and cross-cutting middleware: request ids, tracing, metrics,
//! panic safety, `/healthz`, `/metrics` and `/openapi.json`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Instant;

use crate::json::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};

use crate::AppState;
use crate::error::ApiError;

/// The process-wide Prometheus recorder, installed on first use (tests start many servers
/// in one process; the recorder is global).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            handle
        })
        .clone()
}

/// `# HELP` lines for every series, and the retry counters at zero from the start: an
/// alert on a series that appears only at its first increment sees "no data" until then.
fn describe_metrics() {
    metrics::describe_counter!(
        "sori_http_requests_total",
        "HTTP requests by route template, method and status"
    );
    metrics::describe_histogram!(
        "sori_http_request_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    metrics::describe_histogram!(
        "sori_user_write_batch_seconds",
        metrics::Unit::Seconds,
        "Time to write one batch of user writes (one transaction)"
    );
    metrics::describe_histogram!(
        "sori_user_write_batch_size",
        "User writes (upserts, events, visits) per batch"
    );
    metrics::describe_counter!(
        "sori_user_write_retries_total",
        "Batches written again after a race with another node or shard, by reason"
    );
    metrics::describe_gauge!(
        "sori_audience_memory_bytes",
        metrics::Unit::Bytes,
        "Memory held by the in-memory audience projections"
    );
    for reason in sori_app::users::RETRY_REASONS {
        metrics::counter!("sori_user_write_retries_total", "reason" => reason).absolute(0);
    }
}

#[derive(Clone, Default)]
struct NextRequestId(u64);

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}-{n:x}", self.0);
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Wraps the routes in request-id, tracing, panic, body-limit, NUL and metrics layers.
///
/// The layers go on as one composite: axum wraps every route in each layer given to
/// `Router::layer` separately, and each such wrap costs a boxed clone of the service and
/// a boxed future per request (11 of them on an ingestion call; their allocations and
/// moves were a visible share of a small request's CPU).
pub fn with_middleware(routes: Router<AppState>, max_body_bytes: usize) -> Router<AppState> {
    let boot = sori_app::secrets::now_ms() as u64;
    routes.layer(
        tower::ServiceBuilder::new()
            .map_request(plain_request_id)
            .layer(SetRequestIdLayer::x_request_id(NextRequestId(boot)))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
                }),
            )
            .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
                ApiError::internal(&"handler panicked").into_response()
            }))
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .layer(from_fn(frame)),
    )
}

/// Drops a client's `x-request-id` that is not a plain token (at most 128 letters,
/// digits and `-_.:`), so the server makes its own: the id goes into every log line of
/// the request, where a line break or a quote could forge entries.
fn plain_request_id(mut req: Request) -> Request {
    let plain = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    if req.headers().get("x-request-id").is_some_and(|v| !plain(v)) {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// Counts and times every request by route and status, and refuses an encoded NUL
/// anywhere in the path or query: no store keeps it as text, and ids, keys and cursors all
/// travel there. (One middleware, not two: each costs a boxed service and future.)
async fn frame(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let uri = req.uri();
    let has_nul = |s: &str| s.contains("%00") || s.contains('\0');
    let resp = if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        crate::body::nul_error("path".into()).into_response()
    } else {
        next.run(req).await
    };
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, seconds) = route_handles(route, method_label(&method), resp.status().as_u16());
    requests.increment(1);
    seconds.record(started.elapsed().as_secs_f64());
    resp
}

/// Request metric handles by route, then (method, status). Registering through the
/// `metrics` macros builds and hashes a label set on every request, a visible share of a
/// small request's cost; routes and statuses are few, so the handles are kept.
type RouteHandles =
    HashMap<String, HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>>;

/// A request method as a metric label: the standard ones, and `other` for any other name
/// a client sends (a label per name would let anyone grow the metrics without bound).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

fn route_handles(
    route: &str,
    method: &'static str,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    static HANDLES: OnceLock<RwLock<RouteHandles>> = OnceLock::new();
    let lock = HANDLES.get_or_init(Default::default);
    if let Some(h) = lock
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(route)
        .and_then(|m| m.get(&(method, status)))
    {
        return h.clone();
    }
    let handles = (
        metrics::counter!("sori_http_requests_total", "method" => method, "route" => route.to_owned(), "status" => status.to_string()),
        metrics::histogram!("sori_http_request_seconds", "method" => method, "route" => route.to_owned()),
    );
    lock.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.to_owned())
        .or_default()
        .insert((method, status), handles.clone());
    handles
}

/// Request bodies may be gzip-compressed, as the server-side client libraries do for large
/// batches; any other `Content-Encoding` is refused with 415 instead of being read as plain
/// JSON. Every API (Segment, Open API, SDK, console) takes bodies the same way. `body_limit` applies to the decompressed body (and,
/// with some room, to the compressed one). One composite layer, as in `with_middleware`:
/// each `Router::layer` call boxes every route once more.
pub(crate) fn gzip_bodies<S: Clone + Send + Sync + 'static>(
    routes: axum::Router<S>,
    body_limit: usize,
) -> axum::Router<S> {
    routes.layer(
        tower::ServiceBuilder::new()
            .layer(axum::middleware::map_request_with_state(
                body_limit,
                decode_gzip,
            ))
            .layer(axum::extract::DefaultBodyLimit::max(body_limit)),
    )
}

/// Unwraps a gzip body as it is read. Content codings are case-insensitive and `x-gzip`
/// is `gzip` (RFC 9110 §8.4.1); `identity` changes nothing. A body of several gzip
/// members (concatenated files, as RFC 1952 allows) is read to its end, not to the end of
/// its first member; bytes after the last member are an error, not ignored.
async fn decode_gzip(
    State(body_limit): State<usize>,
    mut req: axum::extract::Request,
) -> Result<axum::extract::Request, ApiError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Every header line, each a comma-separated list (RFC 9110 §5.3).
    let mut codings = req
        .headers()
        .get_all(axum::http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
    let gzip = match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(c), None) if c.eq_ignore_ascii_case(b"gzip") || c.eq_ignore_ascii_case(b"x-gzip") => {
            true
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupportedMediaType",
                "Content-Encoding must be gzip, identity or absent",
            ));
        }
    };
    req.extensions_mut()
        .insert(crate::body::BodyLimit(body_limit));
    let headers = req.headers_mut();
    headers.remove(axum::http::header::CONTENT_ENCODING);
    if !gzip {
        return Ok(req);
    }
    headers.remove(axum::http::header::CONTENT_LENGTH);
    // Members that decompress to nothing cost the decompressed limit nothing: the
    // compressed bytes have a limit of their own, with room for data that does not shrink.
    let compressed_limit = body_limit + body_limit / 16 + 4096;
    let mut read = 0usize;
    let compressed = std::mem::take(req.body_mut())
        .into_data_stream()
        .map_err(std::io::Error::other)
        .map(move |chunk| {
            let chunk = chunk?;
            read += chunk.len();
            match read > compressed_limit {
                true => Err(std::io::Error::other(GzipTooLarge)),
                false => Ok(chunk),
            }
        });
    let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(
        tokio_util::io::StreamReader::new(compressed),
    );
    decoder.multiple_members(true);
    *req.body_mut() = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(decoder));
    Ok(req)
}

/// A gzip body's compressed bytes went past their limit (see `decode_gzip`).
#[derive(Debug, thiserror::Error)]
#[error("the compressed body is too large")]
pub(crate) struct GzipTooLarge;

/// Reads the body and answers like an ingestion call without doing anything: benchmarks
/// run the same load against it to show how close an endpoint is to the HTTP stack's limit.
pub async fn noop(crate::body::RawBody(body): crate::body::RawBody) -> Json<serde_json::Value> {
    Json(serde_json::json!({"success": true, "bytes": body.len()}))
}

/// Liveness and store reachability.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Object), (status = 503)))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    // A load balancer's probe wants an answer in time, not after a pool's timeout.
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.app.store.count_channels(),
    )
    .await;
    match probe {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ok", "store": state.app.store.backend()}))
            .into_response(),
        Ok(Err(e)) => unhealthy(&e),
        Err(_) => unhealthy(&"the store did not answer within 2 s"),
    }
}

/// The failed probe's answer; the cause goes to the log only.
fn unhealthy(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "health check failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"status": "unavailable"})),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Measured when scraped: walking the projections costs a few milliseconds per million
    // users, which would be too much on every write.
    metrics::gauge!("sori_audience_memory_bytes").set(state.app.audience.bytes() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// JSON 404 for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "notFound",
        "no such endpoint; see /openapi.json",
    )
}

/// JSON 405 for known paths with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "methodNotAllowed",
        "method not allowed on this path; see /openapi.json",
    )
}

/// The API a documented path belongs to (`open`, `desk`, `segment`, `sdk`), by its prefix;
/// none for the server's own endpoints (`/healthz`, `/metrics`, `/openapi.json`).
fn api_of(path: &str) -> Option<&'static str> {
    [
        ("open", "/open/v5/"),
        ("desk", "/desk/v1/"),
        ("segment", "/v1/"),
        ("sdk", "/sdk/v1/"),
    ]
    .into_iter()
    .find_map(|(api, prefix)| path.starts_with(prefix).then_some(api))
}

/// The operations of a path, with their methods.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (Method, &mut utoipa::openapi::path::Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::PATCH, &mut item.patch),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op.as_mut()?)))
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "accessKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-access-key"))),
        );
        c.add_security_scheme(
            "accessSecret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-access-secret"))),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("sori_session"))),
        );
        c.add_security_scheme(
            "csrfToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-csrf-token"))),
        );
        c.add_security_scheme(
            "writeKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "the channel's write key as the Basic user name (no password); \
                         a body field `writeKey` is taken instead when no Authorization \
                         header is sent",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "sdkSession",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-sori-session"))),
        );
        // One rule per API, set here rather than on each handler so none is missed: the
        // Open API needs both keys at once (one requirement naming both), the desk its
        // session cookie (and the CSRF token on writes), the Segment API the write key as
        // Basic user, SDK calls after boot the session header.
        let no_scopes = Vec::<String>::new;
        for (path, item) in &mut doc.paths.paths {
            let api = api_of(path);
            for (method, op) in operations(item) {
                let writes = method != Method::GET;
                let rule = match api {
                    Some("open") => Some(
                        SecurityRequirement::new("accessKey", no_scopes())
                            .add("accessSecret", no_scopes()),
                    ),
                    Some("desk") if path != "/desk/v1/login" => {
                        let rule = SecurityRequirement::new("session", no_scopes());
                        Some(if writes {
                            rule.add("csrfToken", no_scopes())
                        } else {
                            rule
                        })
                    }
                    Some("segment") => Some(SecurityRequirement::new("writeKey", no_scopes())),
                    Some("sdk") if path != "/sdk/v1/boot" => {
                        Some(SecurityRequirement::new("sdkSession", no_scopes()))
                    }
                    _ => None,
                };
                if let Some(rule) = rule {
                    op.security = Some(vec![rule]);
                }
            }
        }
    }
}

/// The answers every call of an API can get whatever its handler does (authentication,
/// body reading, rate limits, an unavailable store), added to each operation here rather
/// than listed by hand on each handler, so the document cannot forget one; and operation
/// ids made unique across the APIs (handlers of different APIs share names such as
/// `track` or `list`, and code generators need them unique).
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in &mut doc.paths.paths {
            let Some(api) = api_of(path) else { continue };
            for (_, op) in operations(item) {
                let has_body = op.request_body.is_some();
                if let Some(id) = op.operation_id.take() {
                    // `open_list` of the events tag → `open_events_list`.
                    let tag = op.tags.iter().flatten().next().map_or("", String::as_str);
                    let mut name = id.as_str();
                    for affix in [api, tag] {
                        name = name
                            .strip_prefix(affix)
                            .and_then(|n| n.strip_prefix('_'))
                            .or_else(|| name.strip_suffix(affix)?.strip_suffix('_'))
                            .unwrap_or(name);
                    }
                    op.operation_id = Some(match tag {
                        "" => format!("{api}_{name}"),
                        t if t == api => format!("{api}_{name}"),
                        t => format!("{api}_{}_{name}", t.replace('-', "_")),
                    });
                }
                let mut add = |status: u16, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                // Any path or query can be refused (an encoded NUL, a bad id), not only
                // a body.
                add(
                    400,
                    "a field or parameter breaks a rule (`errors` names it)",
                );
                if has_body {
                    add(408, "the body did not arrive in time");
                    add(413, "the body is too large");
                }
                // Every request's encoding is checked, with a body or without.
                add(415, "a `Content-Encoding` other than gzip or identity");
                add(401, "missing or wrong credentials");
                if api == "desk" && path != "/desk/v1/login" {
                    add(
                        403,
                        "the manager's role does not allow it, or no CSRF token",
                    );
                }
                if api == "open" {
                    add(
                        429,
                        "over the key's rate limit (`x-ratelimit-*` headers say when)",
                    );
                }
                add(
                    503,
                    "overloaded, shutting down or without its database: retry shortly",
                );
            }
        }
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sori API", description = "Open API (x-access-key / x-access-secret), desk API (session cookie + x-csrf-token). Times are epoch milliseconds."),
    paths(
        crate::open::users::upsert_member, crate::open::users::get_member, crate::open::users::get_user,
        crate::open::users::delete_member, crate::open::users::delete_user, crate::open::users::patch_user, crate::open::users::patch_member,
        crate::open::users::create_user, crate::open::users::list_users,
        crate::open::fields::open_list, crate::open::fields::open_create, crate::open::fields::open_update,
        crate::open::fields::open_delete,
        crate::open::channel::get_channel, crate::open::channel::patch_channel,
        crate::open::events::create, crate::open::events::list, crate::open::events::catalog,
        crate::open::events::merges,
        crate::open::segments::list, crate::open::segments::create, crate::open::segments::get,
        crate::open::segments::patch, crate::open::segments::delete, crate::open::segments::count,
        crate::open::segments::search, crate::open::segments::users,
        crate::open::segments::membership, crate::open::segments::export,
        crate::segment::identify, crate::segment::track, crate::segment::page, crate::segment::screen, crate::segment::batch,
        crate::sdk::boot, crate::sdk::track, crate::sdk::update_user, crate::sdk::calls,
        crate::desk::login, crate::desk::logout, crate::desk::whoami,
        crate::desk::settings::get_channel, crate::desk::settings::patch_channel,
        crate::desk::users::list, crate::desk::users::get, crate::desk::users::patch, crate::desk::users::reveal,
        crate::desk::users::reveals, crate::desk::users::export,
        crate::desk::users::events, crate::desk::users::catalog,
        crate::desk::settings::all_fields, crate::desk::settings::set_sensitive,
        crate::desk::settings::list_fields, crate::desk::settings::create_field, crate::desk::settings::update_field,
        crate::desk::settings::delete_field,
        crate::desk::settings::list_roles, crate::desk::settings::create_role, crate::desk::settings::update_role,
        crate::desk::settings::delete_role,
        crate::desk::settings::list_managers, crate::desk::settings::create_manager,
        crate::desk::settings::update_manager, crate::desk::settings::delete_manager,
        healthz, metrics, openapi,
    ),
    modifiers(&Security, &CommonAnswers)
)]
pub struct ApiDoc;
