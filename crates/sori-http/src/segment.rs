//! The Segment-compatible tracking API (`/v1/identify`, `/v1/track`, `/v1/page`, `/v1/screen`,
//! `/v1/batch`), so existing Segment and RudderStack libraries send to Sori unchanged.
//! Auth is HTTP Basic with the channel's write key as user name (or `writeKey` in the
//! body). Bodies are read whatever their content type (RudderStack's Node client says
//! `x-www-form-urlencoded` and gzips), and a batch's invalid items are reported without
//! dropping the valid ones.

use crate::json::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use sori_app::auth::ChannelInfo;
use sori_app::secrets::now_ms;
use sori_app::segment::ingest_of;
use sori_app::users::{Ingest, Source};
use sori_domain::event::EventSource;
use sori_domain::segment::{self, Kind};
use sori_domain::{FieldError, Invalid};
use std::sync::Arc;
use utoipa::ToSchema;

use crate::AppState;
use crate::body::RawBody;
use crate::error::{ApiError, ApiResult, clip_field, clip_message};

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 2000;

/// One rejected item of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    /// Position in `batch`.
    pub index: usize,
    /// Offending field (`batch[3].event`).
    pub field: String,
    /// The rule it broke.
    pub message: String,
}

/// `{"success": true, "errors": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always true: every valid item was stored.
    pub success: bool,
    /// Items that were rejected (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ItemError>,
}

/// The channel whose write key is the HTTP Basic user name, resolved before the body is
/// read: a wrong key is refused at once, not after a body its sender may drip for as long
/// as the server's body deadline allows. `None` when the header names no key (it may then
/// be the body's `writeKey`).
pub struct KeyedChannel(Option<Arc<ChannelInfo>>);

impl axum::extract::FromRequestParts<AppState> for KeyedChannel {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        match header_key(&parts.headers) {
            Some(key) => Ok(Self(Some(state.app.channels.by_write_key(&key).await?))),
            None => Ok(Self(None)),
        }
    }
}

/// The Basic auth user name, when there is a non-empty one.
fn header_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|s| {
            s.split_once(':')
                .map_or(s.clone(), |(user, _)| user.to_owned())
        })
        .filter(|k| !k.is_empty())
}

/// The call's channel: the header's, or else the body's `writeKey`.
async fn channel(
    state: &AppState,
    keyed: KeyedChannel,
    body: &Value,
) -> ApiResult<Arc<ChannelInfo>> {
    if let Some(ch) = keyed.0 {
        return Ok(ch);
    }
    let key = body
        .get("writeKey")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "send the channel's write key as the HTTP Basic user name (password empty)",
            )
        })?;
    Ok(state.app.channels.by_write_key(key).await?)
}

async fn single(
    state: AppState,
    keyed: KeyedChannel,
    bytes: Bytes,
    kind: Kind,
) -> ApiResult<Json<Accepted>> {
    let mut body = crate::body::parse_json_with_nul(&bytes)?;
    if crate::body::may_hold_nul(&bytes)
        && let Some(path) = nul_in_call(&mut body, String::new())
    {
        return Err(crate::body::nul_error(path));
    }
    let ch = channel(&state, keyed, &body).await?;
    let now = now_ms();
    // In a block, so the parsed call is not kept in this future across the write (see
    // `App::ingest`).
    let (ingest, origins) = {
        let mut call = segment::parse("", body, Some(kind), now)?;
        let origins = std::mem::take(&mut call.origins);
        (
            ingest_of("", call, EventSource::Segment, ch.retention(now))?,
            origins,
        )
    };
    state
        .app
        .ingest(&ch, ingest, Source::Server)
        .await
        .map_err(|e| match e {
            sori_app::AppError::Invalid(Invalid(list)) => sori_app::AppError::Invalid(Invalid(
                list.into_iter()
                    .map(|f| segment_field(f, &origins))
                    .collect(),
            )),
            e => e,
        })?;
    Ok(Json(Accepted {
        success: true,
        errors: Vec::new(),
    }))
}

/// Segment `identify`: traits → profile.
#[utoipa::path(post, path = "/v1/identify", tag = "segment", request_body = Object,
    responses((status = 200, body = Accepted)))]
pub async fn identify(
    State(s): State<AppState>,
    h: KeyedChannel,
    RawBody(b): RawBody,
) -> ApiResult<Json<Accepted>> {
    single(s, h, b, Kind::Identify).await
}

/// Segment `track`: an event.
#[utoipa::path(post, path = "/v1/track", tag = "segment", request_body = Object,
    responses((status = 200, body = Accepted)))]
pub async fn track(
    State(s): State<AppState>,
    h: KeyedChannel,
    RawBody(b): RawBody,
) -> ApiResult<Json<Accepted>> {
    single(s, h, b, Kind::Track).await
}

/// Segment `page`: a `PageView` and a visit.
#[utoipa::path(post, path = "/v1/page", tag = "segment", request_body = Object,
    responses((status = 200, body = Accepted)))]
pub async fn page(
    State(s): State<AppState>,
    h: KeyedChannel,
    RawBody(b): RawBody,
) -> ApiResult<Json<Accepted>> {
    single(s, h, b, Kind::Page).await
}

/// Segment `screen`: a mobile app's `PageView` (the page is the screen name) and a visit.
#[utoipa::path(post, path = "/v1/screen", tag = "segment", request_body = Object,
    responses((status = 200, body = Accepted)))]
pub async fn screen(
    State(s): State<AppState>,
    h: KeyedChannel,
    RawBody(b): RawBody,
) -> ApiResult<Json<Accepted>> {
    single(s, h, b, Kind::Screen).await
}

/// Segment `batch`: items of any kind, applied in order; invalid items are listed in
/// `errors` and the valid ones stored. 400 only when no item is valid.
#[utoipa::path(post, path = "/v1/batch", tag = "segment", request_body = Object,
    responses((status = 200, body = Accepted)))]
pub async fn batch(
    State(state): State<AppState>,
    keyed: KeyedChannel,
    RawBody(bytes): RawBody,
) -> ApiResult<Json<Accepted>> {
    // A NUL is an error of the item that holds it, like any other (checked below).
    let mut body = crate::body::parse_json_with_nul(&bytes)?;
    // The items move out of the body (they are parsed by value). The rest of it (the write
    // key, the defaults the items inherit) is checked for NUL as a whole call's body is,
    // before it is used.
    let items = body.get_mut("batch").map(Value::take);
    let nul = crate::body::may_hold_nul(&bytes);
    if nul && let Some(path) = nul_in_call(&mut body, String::new()) {
        return Err(crate::body::nul_error(path));
    }
    let ch = channel(&state, keyed, &body).await?;
    if !body.is_object() {
        return Err(ApiError::field(
            "body",
            sori_domain::value::not_an_object(&body),
        ));
    }
    let Some(Value::Array(items)) = items else {
        return Err(ApiError::field("batch", "must be a list of calls"));
    };
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::field(
            "batch",
            format!("must hold 1 to {MAX_BATCH_ITEMS} calls"),
        ));
    }
    // The batch's own `sentAt` is the client library's, shared by its items: a bad one is
    // the request's error (named as sent), not an error of whichever items use it.
    if let Some(sent) = body.get("sentAt").filter(|v| !v.is_null()) {
        let mut errs = sori_domain::error::Errors::default();
        segment::time_value(sent, "sentAt", &mut errs);
        errs.check()?;
    }
    let now = now_ms();
    let retention = ch.retention(now);
    let mut errors = Vec::new();
    let mut valid: Vec<(usize, Ingest)> = Vec::with_capacity(items.len());
    let mut origins: Vec<Vec<(String, String)>> = Vec::with_capacity(items.len());
    for (i, mut item) in items.into_iter().enumerate() {
        let prefix = format!("batch[{i}]");
        if nul && let Some(path) = nul_in_call(&mut item, prefix.clone()) {
            errors.push(item_error(i, FieldError::new(path, crate::body::NUL_RULE)));
            continue;
        }
        let item = with_batch_defaults(item, &body);
        match segment::parse(&prefix, item, None, now).and_then(|mut call| {
            let sent = std::mem::take(&mut call.origins);
            ingest_of(&prefix, call, EventSource::Segment, retention).map(|ing| (ing, sent))
        }) {
            Ok((ingest, sent)) => {
                valid.push((i, ingest));
                origins.push(sent);
            }
            Err(Invalid(list)) => errors.extend(list.into_iter().map(|f| item_error(i, f))),
        }
    }
    if valid.is_empty() {
        let list = errors
            .into_iter()
            .map(|e| FieldError::new(e.field, e.message))
            .collect();
        return Err(Invalid(list).into());
    }
    let (indexes, ingests): (Vec<usize>, Vec<Ingest>) = valid.into_iter().unzip();
    let results = state.app.ingest_many(&ch, ingests, Source::Server).await?;
    for ((i, r), sent) in indexes.into_iter().zip(results).zip(&origins) {
        match r {
            Ok(_) => {}
            Err(sori_app::AppError::Invalid(Invalid(list))) => {
                errors.extend(list.into_iter().map(|f| {
                    let mut f = segment_field(f, sent);
                    f.field = format!("batch[{i}].{}", f.field);
                    item_error(i, f)
                }));
            }
            Err(e @ (sori_app::AppError::Store(_) | sori_app::AppError::Unavailable)) => {
                // The database failed: let the client retry the whole batch (messageIds
                // make the retry safe).
                return Err(e.into());
            }
            Err(e) => errors.push(ItemError {
                index: i,
                field: format!("batch[{i}]"),
                message: clip_message(e.to_string()),
            }),
        }
    }
    errors.sort_by_key(|e| e.index);
    Ok(Json(Accepted {
        success: true,
        errors,
    }))
}

/// Renames a field of Sori's user model, in an error found while applying a call, to
/// what the Segment call sent: a profile key to the path it came from (`origins`, from
/// the mapping; `traits.*` for any other), `userId`, `anonymousId`, `context.locale`.
fn segment_field(
    mut f: sori_domain::FieldError,
    origins: &[(String, String)],
) -> sori_domain::FieldError {
    if let Some(rest) = f.field.strip_prefix("profile.") {
        let key = rest.split(['.', '[']).next().unwrap_or(rest);
        if let Some((_, sent)) = origins.iter().find(|(k, _)| k == key) {
            f.field = format!("{sent}{}", &rest[key.len()..]);
            return f;
        }
    }
    for (from, to) in [
        ("profile", "traits"),
        ("memberId", "userId"),
        ("veilId", "anonymousId"),
        ("language", "context.locale"),
    ] {
        if let Some(rest) = f.field.strip_prefix(from)
            && (rest.is_empty() || rest.starts_with('.'))
        {
            f.field = format!("{to}{rest}");
            break;
        }
    }
    f
}

/// Where a call (or a batch's shared fields) holds U+0000 once [`strip_context_nul`] has
/// cleaned its `context`: the path of the first one, under `at`.
fn nul_in_call(call: &mut Value, at: String) -> Option<String> {
    strip_context_nul(call);
    sori_domain::value::nul_path(call, at)
}

/// Takes U+0000 out of a call's `context` but its `traits`: the library collected it (a
/// campaign from a link, a page's URL), and it is cut rather than failing the call
/// (`docs/segment.md`). `traits` are the business's profile values.
fn strip_context_nul(call: &mut Value) {
    if let Some(Value::Object(ctx)) = call.get_mut("context") {
        let traits = ctx.remove("traits");
        sori_domain::value::strip_collected_nul_map(ctx);
        if let Some(t) = traits {
            ctx.insert("traits".into(), t);
        }
    }
}

/// A batch item with the batch-level `context` (item keys win) and `sentAt` filled in, as
/// the Segment HTTP API defines them.
fn with_batch_defaults(mut item: Value, body: &Value) -> Value {
    if let Value::Object(m) = &mut item {
        if let Some(sent) = body.get("sentAt")
            && !m.contains_key("sentAt")
        {
            m.insert("sentAt".into(), sent.clone());
        }
        if let Some(Value::Object(shared)) = body.get("context") {
            let ctx = m
                .entry("context")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(ctx) = ctx {
                for (k, v) in shared {
                    ctx.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    item
}

fn item_error(index: usize, f: FieldError) -> ItemError {
    ItemError {
        index,
        field: clip_field(f.field),
        message: clip_message(f.message),
    }
}
