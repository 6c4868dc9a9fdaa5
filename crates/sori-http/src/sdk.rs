//! The browser SDK: the script itself (`/sdk/sori.js`) and its JSON protocol under
//! `/sdk/v1` (boot, events, user updates), open to any origin through CORS. Protocol and
//! decisions: `docs/sdk.md`.

use crate::json::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use sori_app::auth::ChannelInfo;
use sori_app::sdk::{Boot, SdkSession};
use sori_app::users::{Ingest, Source};
use sori_domain::UserUpdate;
use sori_domain::event::{EventInput, check_page, clip_page_value};
use sori_domain::update::SDK_UPDATE_FIELDS;
use sori_domain::value::{clip_text, not_an_object};
use sori_store::UserTarget;
use std::sync::Arc;
use utoipa::ToSchema;

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldErrorBody};
use crate::open::events::{EventEnvelope, EventView};
use crate::views::{UserEnvelope, UserView};

/// The SDK script, embedded in the binary.
const SORI_JS: &str = include_str!("../assets/sori.js");

/// Serves `sori.js` (cacheable for five minutes, so a new release reaches sites quickly).
pub async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        SORI_JS,
    )
        .into_response()
}

/// Answers a CORS preflight (the CORS layer adds the headers).
pub async fn preflight() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// Boot options the SDK may forward that only matter in the browser.
const CLIENT_ONLY: &[&str] = &["hidePopup", "zIndex", "trackUtmSource"];
const BOOT_FIELDS: &[&str] = &[
    "pluginKey",
    "veilId",
    "memberId",
    "memberHash",
    "profile",
    "language",
    "unsubscribeEmail",
    "unsubscribeTexting",
    "page",
    "trackDefaultEvent",
    "visit",
    "calls",
    "utm",
    "referrer",
    "partial",
];

/// The parts of a boot a `partial` boot leaves out when the server refuses them (see
/// [`boot`]): what the site or a stored id gave, not what makes the visit.
const LEAVABLE: &[&str] = &["profile", "language", "veilId"];

/// `{"user": …, "veilId": …, "session": …}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Booted {
    /// The booted user.
    pub user: UserView,
    /// Anonymous id the browser keeps.
    pub veil_id: String,
    /// Token for `x-sori-session`.
    pub session: String,
    /// For a boot that came with `calls`: one result per call, as `POST /sdk/v1/calls`
    /// answers them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub results: Option<Vec<CallResult>>,
    /// For a `partial` boot: what it left out because the server refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub refused: Option<Vec<FieldErrorBody>>,
}

fn string(o: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::field(k, "must be a string")),
    }
}

fn user_agent(h: &HeaderMap) -> Option<String> {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A boot's update: its `profile`, `language` and unsubscribe flags, but the parts left
/// out (`left_out`), and the visit's UTM parameters and referrer.
fn boot_update(
    o: &Map<String, Value>,
    left_out: &[&str],
    visit_profile: &Map<String, Value>,
) -> ApiResult<UserUpdate> {
    let mut upd = Map::new();
    for k in [
        "profile",
        "language",
        "unsubscribeEmail",
        "unsubscribeTexting",
    ] {
        if let Some(v) = o.get(k).filter(|v| !v.is_null() && !left_out.contains(&k)) {
            upd.insert(k.to_owned(), v.clone());
        }
    }
    // An empty `profile` sets nothing: a boot is not an update call that must name one.
    if matches!(upd.get("profile"), Some(Value::Object(p)) if p.is_empty()) {
        upd.remove("profile");
    }
    let mut update = UserUpdate::from_json(&Value::Object(upd), SDK_UPDATE_FIELDS)?;
    // Collected by the browser: applied where the site's own profile names no such field
    // and they fit (`UserUpdate::collected`).
    if !visit_profile.is_empty() {
        update.collected = Some(visit_profile.clone());
    }
    Ok(update)
}

/// The [`LEAVABLE`] parts of a boot that the refused `fields` belong to, when every one
/// belongs to one; none when the refusal is of anything else (the boot then fails).
fn leavable_parts(fields: &[sori_domain::error::FieldError]) -> Option<Vec<&'static str>> {
    if fields.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for f in fields {
        let part = LEAVABLE.iter().find(|p| {
            f.field
                .strip_prefix(**p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })?;
        if !parts.contains(part) {
            parts.push(*part);
        }
    }
    Some(parts)
}

/// The user as the browser may see it. A member's personal data (profile, name, tags,
/// place, browser id) is shown only when the channel requires member hashes and the
/// session proved one (`entitled`): otherwise anyone holding the public plugin key could
/// boot as a known memberId and read that customer's data.
fn browser_view(ch: &ChannelInfo, u: sori_domain::User, session: &SdkSession) -> UserView {
    let hide = u.member() && !(ch.channel.member_hash_required && session.entitled(&ch.channel));
    let mut v = UserView::of(ch.channel.id, u);
    if hide {
        // Left out rather than empty: an empty list would read as "no tags".
        v.profile = None;
        v.name = None;
        v.tags = None;
        v.city = None;
        v.country = None;
        // The browser id the member signed in from: with it, anyone could boot as the
        // anonymous user that browser uses after a logout and read what it holds.
        v.veil_id = None;
    }
    v
}

/// Boots a browser (see `docs/sdk.md`).
#[utoipa::path(post, path = "/sdk/v1/boot", tag = "sdk", request_body = Object,
    responses((status = 200, body = Booted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn boot(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::body::RawBody(bytes): crate::body::RawBody,
) -> ApiResult<Json<Booted>> {
    // A NUL character in a carried call is that call's error (as in `POST /sdk/v1/calls`):
    // refusing the whole boot would lose the visit and every other call of a page that is
    // gone. Anywhere else it refuses the boot.
    let mut body = crate::body::parse_json_with_nul(&bytes)?;
    let nul = crate::body::may_hold_nul(&bytes);
    // The calls move out of the body (a `null` stays for the checks of its keys).
    let carried = body.get_mut("calls").map(Value::take);
    if nul && let Value::Object(o) = &mut body {
        // UTM parameters come from the page's link: one holding `%00` is cleaned, not a
        // reason to switch the SDK off for whoever follows that link.
        for k in ["utm", "referrer"] {
            if let Some(v) = o.get_mut(k) {
                sori_domain::value::strip_collected_nul(v);
            }
        }
    }
    let Value::Object(o) = &body else {
        return Err(ApiError::field("body", not_an_object(&body)));
    };
    // (The calls were taken out: a NUL in one is that call's error, checked with it.)
    if nul && let Some(path) = sori_domain::value::nul_path(&body, String::new()) {
        return Err(crate::body::nul_error(path));
    }
    if let Some(k) = o
        .keys()
        .find(|k| !BOOT_FIELDS.contains(&k.as_str()) && !CLIENT_ONLY.contains(&k.as_str()))
    {
        return Err(ApiError::field(
            k,
            format!(
                "unknown boot option; expected one of {}, {}",
                BOOT_FIELDS.join(", "),
                CLIENT_ONLY.join(", ")
            ),
        ));
    }
    let plugin_key =
        string(o, "pluginKey")?.ok_or_else(|| ApiError::field("pluginKey", "is required"))?;
    let ch = state.app.channels.by_plugin_key(&plugin_key).await?;
    // UTM parameters and the referrer of the visit: initial fields are set once, `lastUtm*`
    // always (SPEC §3.2).
    let mut visit_profile = Map::new();
    match o.get("utm") {
        None | Some(Value::Null) => {}
        Some(Value::Object(utm)) => {
            for (from, to) in [
                ("source", "Source"),
                ("medium", "Medium"),
                ("campaign", "Campaign"),
                ("content", "Content"),
                ("term", "Term"),
            ] {
                match utm.get(from) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(v)) if v.is_empty() => {}
                    Some(Value::String(v)) => {
                        let v = clip_text(v);
                        visit_profile.insert(format!("utm{to}"), Value::String(v.to_owned()));
                        visit_profile.insert(format!("lastUtm{to}"), Value::String(v.to_owned()));
                    }
                    Some(_) => {
                        return Err(ApiError::field(format!("utm.{from}"), "must be a string"));
                    }
                }
            }
            if let Some(k) = utm.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "source" | "medium" | "campaign" | "content" | "term"
                )
            }) {
                return Err(ApiError::field(format!("utm.{k}"), "unknown UTM parameter"));
            }
        }
        Some(_) => return Err(ApiError::field("utm", "must be an object")),
    }
    if let Some(r) = string(o, "referrer")? {
        visit_profile.insert("referrer".into(), Value::String(clip_text(&r).to_owned()));
    }
    let page = match o.get("page") {
        Some(p) => check_page("page", &clip_page_value(p.clone()))?,
        None => None,
    };
    let flag = |k: &str, default: bool| match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::field(k, "must be a boolean")),
    };
    let track = flag("trackDefaultEvent", true)?;
    let visit = flag("visit", true)?;
    // A partial boot leaves out what the server refuses of the site's profile and language
    // and of the stored visitor id, and still counts the visit: sori.js sends its boots so,
    // as a page being left cannot send a refused boot again without the refused part.
    let partial = flag("partial", false)?;
    // Calls made while this boot's first attempt was on its way, sent by a page being
    // left (which cannot wait for a session): applied after the boot, as its session's.
    let calls = match carried {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(call_items(items)?),
        Some(_) => return Err(ApiError::field("calls", "must be a list of calls")),
    };
    let agent = user_agent(&headers);
    let member_id = string(o, "memberId")?;
    let member_hash = string(o, "memberHash")?;
    let mut left_out: Vec<&str> = Vec::new();
    let mut refused: Option<Vec<FieldErrorBody>> = None;
    let booted = loop {
        let attempt = async {
            let veil_id = match left_out.contains(&"veilId") {
                true => None,
                false => string(o, "veilId")?,
            };
            let update = boot_update(o, &left_out, &visit_profile)?;
            let boot = Boot {
                veil_id,
                member_id: member_id.clone(),
                member_hash: member_hash.clone(),
                update,
                page: page.clone(),
                track_page_view: track,
                visit,
                user_agent: agent.clone(),
            };
            Ok::<_, ApiError>(state.app.sdk_boot(&ch, boot).await?)
        }
        .await;
        // A refusal is found part by part (the stored id is checked before the profile):
        // each attempt leaves out what the last was refused for, at most once per part.
        match attempt {
            Err(e) if partial => match leavable_parts(e.invalid_fields()) {
                Some(parts) if parts.iter().all(|p| !left_out.contains(p)) => {
                    left_out.extend(parts);
                    refused
                        .get_or_insert_with(Vec::new)
                        .extend(e.status_and_body().1.errors);
                }
                _ => break Err(e),
            },
            other => break other,
        }
    }?;
    let results = match calls {
        Some(items) => {
            let session = booted.session.clone();
            Some(apply_calls(&state, &ch, &session, items, nul, agent.as_deref()).await?)
        }
        None => None,
    };
    Ok(Json(Booted {
        user: browser_view(&ch, booted.user, &booted.session),
        veil_id: booted.veil_id,
        session: format!("{}:{}", ch.channel.plugin_key, booted.token),
        results,
        refused,
    }))
}

/// A session whose user is gone (merged into a member in another tab, or deleted) answers
/// 404 of its own type, `userGone`: sori.js boots again on exactly that, and a 404 from
/// something else (a proxy, a wrong route) is not mistaken for it.
fn user_gone(e: sori_app::AppError) -> ApiError {
    match e {
        sori_app::AppError::NotFound(_) => ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "userGone",
            "the session's user no longer exists (merged into a member or deleted); boot again",
        ),
        e => e.into(),
    }
}

/// The channel (by plugin key inside the token's channel) and session of an SDK call.
async fn session(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<(Arc<ChannelInfo>, SdkSession)> {
    let token = headers
        .get("x-sori-session")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("x-sori-session is missing; boot first"))?;
    session_of(state, token).await
}

/// The channel and session a token names, once the session may act as its user (see
/// `App::sdk_check`).
async fn session_of(state: &AppState, token: &str) -> ApiResult<(Arc<ChannelInfo>, SdkSession)> {
    let invalid = || ApiError::unauthorized("x-sori-session is invalid; boot first");
    let (channel, rest) = token.split_once(':').ok_or_else(invalid)?;
    let ch = state
        .app
        .channels
        .find_plugin_key(channel)
        .await?
        .ok_or_else(invalid)?;
    let session = state.app.sdk_user(ch.channel.id, rest)?;
    state
        .app
        .sdk_check(&ch, &session)
        .await
        .map_err(user_gone)?;
    Ok((ch, session))
}

/// Records an event for the booted user.
#[utoipa::path(post, path = "/sdk/v1/events", tag = "sdk", request_body = Object,
    responses((status = 200, body = EventEnvelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "`userGone`: the session's user was deleted or merged away; boot again")))]
pub async fn track(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<EventEnvelope>> {
    let (ch, user) = session(&state, &headers).await?;
    let (ingest, mut event) = track_ingest(&user, body, user_agent(&headers).as_deref())?;
    let outcome = state
        .app
        .ingest(&ch, ingest, Source::Sdk)
        .await
        .map_err(user_gone)?;
    Ok(Json(EventEnvelope {
        event: EventView::of_new(&outcome.user_id, &mut event),
    }))
}

/// The write of `body` (`{name, property, page}`) for the session's user, and its event:
/// `POST /sdk/v1/events` and a `track` call of `POST /sdk/v1/calls`.
fn track_ingest(
    session: &SdkSession,
    body: Value,
    agent: Option<&str>,
) -> Result<(Ingest, sori_domain::event::NewEvent), sori_domain::Invalid> {
    let mut input = EventInput::from_json(body)?;
    input.page = input.page.map(clip_page_value);
    sori_app::sdk::sdk_event(&session.user_id, input, agent)
}

/// The write of `body` (a non-empty `PATCH /sdk/v1/user` body) to the session's user:
/// `PATCH /sdk/v1/user` and a `user` call of `POST /sdk/v1/calls`.
fn user_ingest(session: &SdkSession, body: &Value) -> Result<Ingest, sori_domain::Invalid> {
    let update = UserUpdate::from_json(body, SDK_UPDATE_FIELDS)?;
    Ok(Ingest::update(
        UserTarget::Id(session.user_id.clone()),
        update,
    ))
}

/// `updateUser`, `addTags`, `removeTags` for the booted user.
#[utoipa::path(patch, path = "/sdk/v1/user", tag = "sdk", request_body = Object,
    responses((status = 200, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "`userGone`: the session's user was deleted or merged away; boot again")))]
pub async fn update_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<UserEnvelope>> {
    let (ch, session) = session(&state, &headers).await?;
    crate::body::require_fields(&body)?;
    let outcome = state
        .app
        .ingest(&ch, user_ingest(&session, &body)?, Source::Sdk)
        .await
        .map_err(user_gone)?;
    let user = sori_app::users::whole(outcome)?;
    Ok(Json(UserEnvelope {
        user: browser_view(&ch, user, &session),
    }))
}

/// Most calls in one `POST /sdk/v1/calls`: more than the 64 KB a page being left may send
/// can hold, so sori.js sends what is queued for one session as one request, whose calls
/// are applied in order (separate requests sent at once could land in any order).
pub const MAX_CALLS: usize = 2000;

/// The result of one call of a `POST /sdk/v1/calls`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// The status the call would have answered with on its own route.
    pub status: u16,
    /// For a `user` call that succeeded: the user, as `PATCH /sdk/v1/user` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user: Option<UserView>,
    /// For a call that failed: the error, as its own route would have answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<crate::error::ErrorBody>,
}

/// `{"results": […]}`, one per call, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallResults {
    /// One result per call.
    pub results: Vec<CallResult>,
}

/// Several calls of the booted user in one request, applied in order, each on its own (a
/// failed call does not stop the ones after it), written together. sori.js sends what is still queued this
/// way when the page is left: one `keepalive` request keeps the calls' order, where
/// separate requests sent at once would reach the server in any order, and stays under
/// the browser's 64 KB budget for requests that outlive their page. The session may come
/// in the body (`session`) instead of `x-sori-session`, so that the request can go as a
/// CORS "simple" one (`text/plain`, no custom header): a page being left gets no answer
/// to a preflight, and browsers drop a keepalive request that needs one.
#[utoipa::path(post, path = "/sdk/v1/calls", tag = "sdk",
    request_body(content = Object, description = "`{session?, calls: [{track: {name, property, page}} | {user: {profile, profileOnce, language, unsubscribeEmail, unsubscribeTexting, addTags, removeTags}}]}`"),
    responses((status = 200, body = CallResults), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn calls(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::body::RawBody(bytes): crate::body::RawBody,
) -> ApiResult<Json<CallResults>> {
    // A NUL character is one call's error (as in a Segment batch), not the request's.
    let mut body = crate::body::parse_json_with_nul(&bytes)?;
    let nul = crate::body::may_hold_nul(&bytes);
    if nul
        && body
            .get("session")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains('\0'))
    {
        return Err(crate::body::nul_error("session".into()));
    }
    let Some(o) = body.as_object() else {
        return Err(ApiError::field("body", not_an_object(&body)));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "session" | "calls"))
    {
        return Err(ApiError::field(k, "unknown field; expected session, calls"));
    }
    let (ch, user) = match (body.get("session"), headers.contains_key("x-sori-session")) {
        (Some(_), true) => {
            return Err(ApiError::field(
                "session",
                "give the session in x-sori-session or in the body, not both",
            ));
        }
        (Some(Value::String(token)), false) => session_of(&state, token).await?,
        (Some(_), false) => return Err(ApiError::field("session", "must be a string")),
        (None, _) => session(&state, &headers).await?,
    };
    let Some(Value::Array(items)) = body.get_mut("calls").map(Value::take) else {
        return Err(ApiError::field("calls", "must be a list of calls"));
    };
    let items = call_items(items)?;
    let agent = user_agent(&headers);
    let results = apply_calls(&state, &ch, &user, items, nul, agent.as_deref()).await?;
    Ok(Json(CallResults { results }))
}

/// How many calls of one request go to the writer at once (see [`apply_calls`]): a
/// writer's queue holds 8,192 writes, so a few requests of 2,000 calls could otherwise
/// fill it and make every other write wait.
const CALLS_PER_SUBMISSION: usize = 128;

/// The calls of a `POST /sdk/v1/calls` (or of a boot sent by a page being left): a list
/// of 1 to [`MAX_CALLS`].
fn call_items(items: Vec<Value>) -> ApiResult<Vec<Value>> {
    if items.is_empty() || items.len() > MAX_CALLS {
        return Err(ApiError::field(
            "calls",
            format!("must hold 1 to {MAX_CALLS} calls"),
        ));
    }
    Ok(items)
}

/// Applies calls of `session`'s user in order, each on its own (a failed call does not
/// stop the ones after it): every call is read first, and those that read well are
/// written in order, [`CALLS_PER_SUBMISSION`] at a time, so that they share the writer's
/// commits instead of taking one each, while one request never fills the writer's queue
/// for everyone else. `nul`: the request's text held `\u0000`, so calls are searched for
/// it.
async fn apply_calls(
    state: &AppState,
    ch: &ChannelInfo,
    session: &SdkSession,
    items: Vec<Value>,
    nul: bool,
    agent: Option<&str>,
) -> ApiResult<Vec<CallResult>> {
    let mut read = Vec::with_capacity(items.len());
    let mut ingests = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("calls[{i}]");
        let call = match nul
            .then(|| sori_domain::value::nul_path(&item, at.clone()))
            .flatten()
        {
            Some(path) => Err(crate::body::nul_error(path)),
            None => read_call(session, &at, item, agent),
        };
        read.push(call.map(|(call, ingest)| {
            ingests.push(ingest);
            call
        }));
    }
    let mut written = Vec::with_capacity(ingests.len());
    let mut ingests = ingests.into_iter().peekable();
    while ingests.peek().is_some() {
        let chunk: Vec<Ingest> = ingests.by_ref().take(CALLS_PER_SUBMISSION).collect();
        written.extend(state.app.ingest_many(ch, chunk, Source::Sdk).await?);
    }
    let mut written = written.into_iter();
    Ok(read
        .into_iter()
        .map(|call| {
            let done = call.and_then(|call| {
                let outcome = written
                    .next()
                    .unwrap_or(Err(sori_app::AppError::Unavailable));
                call.answer(ch, session, outcome)
            });
            match done {
                Ok(user) => CallResult {
                    status: 200,
                    user,
                    error: None,
                },
                Err(e) => {
                    let (status, error) = e.status_and_body();
                    CallResult {
                        status: status.as_u16(),
                        user: None,
                        error: Some(error),
                    }
                }
            }
        })
        .collect())
}

/// One call of [`calls`], read: a `track`, or a `user` call (answered with the user), and
/// the key its errors are named under (`calls[2].track`).
struct Call {
    user: bool,
    key: String,
}

impl Call {
    /// The call's answer, from its write's outcome, as its own route would give it.
    fn answer(
        &self,
        ch: &ChannelInfo,
        session: &SdkSession,
        outcome: Result<sori_store::UserOpOutcome, sori_app::AppError>,
    ) -> ApiResult<Option<UserView>> {
        let named = |e| match e {
            sori_app::AppError::Invalid(i) => ApiError::from(i.under(&self.key)),
            e => user_gone(e),
        };
        let outcome = outcome.map_err(named)?;
        if !self.user {
            return Ok(None);
        }
        let user = sori_app::users::whole(outcome).map_err(named)?;
        Ok(Some(browser_view(ch, user, session)))
    }
}

/// Reads one call of [`calls`] (`at` names it in errors: `calls[2]`): `{"track": {…}}` as
/// `POST /sdk/v1/events` reads it, or `{"user": {…}}` as `PATCH /sdk/v1/user` does; and
/// the write it asks for.
fn read_call(
    session: &SdkSession,
    at: &str,
    item: Value,
    agent: Option<&str>,
) -> ApiResult<(Call, Ingest)> {
    let Value::Object(mut o) = item else {
        return Err(ApiError::field(at, not_an_object(&item)));
    };
    let kind = match (o.len(), o.keys().next().map(String::as_str)) {
        (1, Some(k @ ("track" | "user"))) => k.to_owned(),
        _ => {
            return Err(ApiError::field(
                at,
                "must be {\"track\": {…}} or {\"user\": {…}}",
            ));
        }
    };
    let body = o.remove(&kind).unwrap_or(Value::Null);
    let key = format!("{at}.{kind}");
    let named = |e: sori_domain::Invalid| ApiError::from(e.under(&key));
    let ingest = if kind == "track" {
        track_ingest(session, body, agent).map_err(named)?.0
    } else {
        crate::body::require_fields_at(&key, &body)?;
        user_ingest(session, &body).map_err(named)?
    };
    Ok((
        Call {
            user: kind == "user",
            key,
        },
        ingest,
    ))
}
