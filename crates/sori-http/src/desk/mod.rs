//! The desk API (`/desk/v1`) behind the manager console: cookie sessions with a CSRF token
//! on every state-changing call, permissions checked per role, sensitive values masked.

pub mod settings;
pub mod users;

use crate::json::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sori_app::ManagerContext;
use sori_domain::Role;
use utoipa::ToSchema;

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::open::channel::ChannelView;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "sori_session";

/// A request from a logged-in manager; state-changing methods carried the CSRF token.
pub struct Desk(pub ManagerContext);

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|line| {
            line.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == SESSION_COOKIE).then(|| v.to_owned())
            })
        })
}

impl FromRequestParts<AppState> for Desk {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let cookie = session_cookie(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("log in first: POST /desk/v1/login"))?;
        let ctx =
            state.app.session(&cookie).await?.ok_or_else(|| {
                ApiError::unauthorized("session expired or unknown; log in again")
            })?;
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if sent != Some(ctx.csrf_token.as_str()) {
                return Err(ApiError::forbidden(
                    "missing or wrong x-csrf-token header; use the csrfToken from login or /desk/v1/me",
                ));
            }
        }
        Ok(Self(ctx))
    }
}

/// Login body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// Login e-mail.
    pub email: String,
    /// Password.
    pub password: String,
    /// Needed only when the e-mail has accounts in several channels.
    pub channel_id: Option<String>,
}

/// A manager as the desk shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagerView {
    /// Id.
    pub id: String,
    /// Login e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role id.
    pub role_id: String,
    /// Creation time.
    pub created_at: i64,
}

impl From<&sori_store::Manager> for ManagerView {
    fn from(m: &sori_store::Manager) -> Self {
        Self {
            id: m.id.clone(),
            email: m.email.clone(),
            name: m.name.clone(),
            role_id: m.role_id.clone(),
            created_at: m.created_at,
        }
    }
}

/// Who is logged in, and the token to echo in `x-csrf-token`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeView {
    /// The manager.
    pub manager: ManagerView,
    /// Their role.
    #[schema(value_type = Object)]
    pub role: Role,
    /// Their channel.
    pub channel: ChannelView,
    /// CSRF token for state-changing calls.
    pub csrf_token: String,
}

fn me(ctx: &ManagerContext) -> MeView {
    MeView {
        manager: ManagerView::from(&ctx.manager),
        role: ctx.role.clone(),
        channel: ChannelView::from(&ctx.channel.channel),
        csrf_token: ctx.csrf_token.clone(),
    }
}

/// Logs a manager in and sets the session cookie (HttpOnly, SameSite=Strict).
#[utoipa::path(post, path = "/desk/v1/login", tag = "desk", request_body = LoginRequest,
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many logins are being checked at once; retry shortly")))]
pub async fn login(State(state): State<AppState>, body: JsonBody) -> ApiResult<Response> {
    let req: LoginRequest = body.parse()?;
    let channel_id = match req.channel_id.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Err(ApiError::field("channelId", "must be a channel id")),
    };
    let (cookie, ctx) = state
        .app
        .login(&req.email, &req.password, channel_id)
        .await?;
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    let set = format!(
        "{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age=604800{secure}"
    );
    let mut resp = Json(me(&ctx)).into_response();
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&set).map_err(|e| ApiError::internal(&e))?,
    );
    Ok(resp)
}

/// Ends the session.
#[utoipa::path(post, path = "/desk/v1/logout", tag = "desk", responses((status = 204)))]
pub async fn logout(
    State(state): State<AppState>,
    Desk(_): Desk,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(c) = session_cookie(&headers) {
        state.app.logout(&c).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("sori_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

/// The logged-in manager, role, channel and CSRF token.
#[utoipa::path(get, path = "/desk/v1/me", tag = "desk",
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
pub async fn whoami(Desk(ctx): Desk) -> Json<MeView> {
    Json(me(&ctx))
}
