//! `/open/v5/users`: upsert by member id, create, read, patch, delete and list users.

use std::collections::HashMap;

use crate::body::Path;
use crate::json::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sori_app::auth::ChannelInfo;
use sori_app::secrets::{is_id, new_id};
use sori_app::users::Source;
use sori_domain::update::UPDATE_FIELDS;
use sori_domain::{User, UserUpdate};
use sori_store::UserTarget;

use super::OpenChannel;
use crate::AppState;
use crate::body::{JsonBody, Paging, SortOrder};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::views::{UserEnvelope, UserView, UsersPage};

/// A user path segment: `@{memberId}` or `{userId}`.
enum UserKey {
    Member(String),
    Id(String),
}

fn user_key(raw: String) -> UserKey {
    match raw.strip_prefix('@') {
        Some(m) => UserKey::Member(m.to_owned()),
        None => UserKey::Id(raw),
    }
}

fn envelope(ch: &ChannelInfo, u: User) -> Json<UserEnvelope> {
    Json(UserEnvelope {
        user: UserView::of(ch.channel.id, u),
    })
}

/// The user a path segment (`{userId}` or `@{memberId}`) names.
pub async fn find_by_key(state: &AppState, ch: &ChannelInfo, raw: &str) -> ApiResult<User> {
    find(state, ch, &user_key(raw.to_owned())).await
}

async fn find(state: &AppState, ch: &ChannelInfo, key: &UserKey) -> ApiResult<User> {
    let found = match key {
        UserKey::Member(m) => state.app.store.user_by_member_id(ch.channel.id, m).await?,
        UserKey::Id(id) if is_id(id) => state.app.store.user(ch.channel.id, id).await?,
        UserKey::Id(_) => None,
    };
    found.ok_or_else(|| ApiError::not_found("user"))
}

/// Routes `PUT /open/v5/users/{key}` (only `@{memberId}` keys accept PUT).
pub async fn put_route(
    state: State<AppState>,
    ch: OpenChannel,
    Path(key): Path<String>,
    body: JsonBody,
) -> Result<Json<UserEnvelope>, Response> {
    match user_key(key) {
        UserKey::Member(m) => upsert_member(state, ch, Path(m), body)
            .await
            .map_err(IntoResponse::into_response),
        UserKey::Id(_) => {
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "methodNotAllowed",
                "PUT takes a member id: /open/v5/users/@{memberId}; use PATCH for a user id",
            )
            .into_response();
            // What a user id takes (RFC 9110 §15.5.6: a 405 lists them).
            r.headers_mut().insert(
                axum::http::header::ALLOW,
                axum::http::HeaderValue::from_static("GET,HEAD,PATCH,DELETE"),
            );
            Err(r)
        }
    }
}

/// Creates the member or updates it: `profile`, `profileOnce`, `tags`, `unsubscribeEmail`,
/// `unsubscribeTexting`, `blocked`.
#[utoipa::path(put, path = "/open/v5/users/@{memberId}", tag = "users",
    params(("memberId" = String, Path, description = "The business's customer id")),
    request_body(content = crate::schema::UserUpdateSchema, description = "Update: profile (null clears it), profileOnce, tags (replaces the list; null removes every tag), unsubscribeEmail, unsubscribeTexting, blocked"),
    responses((status = 200, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn upsert_member(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(member_id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<UserEnvelope>> {
    let update = UserUpdate::from_json(&body, UPDATE_FIELDS)?;
    let target = UserTarget::MemberId {
        member_id,
        new_id: new_id(),
    };
    let out = state
        .app
        .write_user(&ch, target, update, Source::OpenApi)
        .await?;
    Ok(envelope(&ch, out))
}

/// Routes `GET /open/v5/users/{key}`.
pub async fn get_route(
    state: State<AppState>,
    ch: OpenChannel,
    Path(key): Path<String>,
) -> ApiResult<Json<UserEnvelope>> {
    match user_key(key) {
        UserKey::Member(m) => get_member(state, ch, Path(m)).await,
        UserKey::Id(id) => get_user(state, ch, Path(id)).await,
    }
}

/// A member by member id.
#[utoipa::path(get, path = "/open/v5/users/@{memberId}", tag = "users",
    params(("memberId" = String, Path)),
    responses((status = 200, body = UserEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_member(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(member_id): Path<String>,
) -> ApiResult<Json<UserEnvelope>> {
    let u = find(&state, &ch, &UserKey::Member(member_id)).await?;
    Ok(envelope(&ch, u))
}

/// A user by id.
#[utoipa::path(get, path = "/open/v5/users/{userId}", tag = "users",
    params(("userId" = String, Path, description = "A user id, or `@` and a member id (`@m-1`)")),
    responses((status = 200, body = UserEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
) -> ApiResult<Json<UserEnvelope>> {
    let u = find(&state, &ch, &UserKey::Id(id)).await?;
    Ok(envelope(&ch, u))
}

/// Routes `DELETE /open/v5/users/{key}`.
pub async fn delete_route(
    state: State<AppState>,
    ch: OpenChannel,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    match user_key(key) {
        UserKey::Member(m) => delete_member(state, ch, Path(m)).await,
        UserKey::Id(id) => delete_user(state, ch, Path(id)).await,
    }
}

/// Deletes a member by member id.
#[utoipa::path(delete, path = "/open/v5/users/@{memberId}", tag = "users",
    params(("memberId" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_member(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(member_id): Path<String>,
) -> ApiResult<StatusCode> {
    let u = find(&state, &ch, &UserKey::Member(member_id)).await?;
    remove(&state, &ch, &u.id).await
}

/// Deletes a user by id.
#[utoipa::path(delete, path = "/open/v5/users/{userId}", tag = "users",
    params(("userId" = String, Path, description = "A user id, or `@` and a member id (`@m-1`)")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let u = find(&state, &ch, &UserKey::Id(id)).await?;
    remove(&state, &ch, &u.id).await
}

async fn remove(state: &AppState, ch: &ChannelInfo, id: &str) -> ApiResult<StatusCode> {
    if state.app.store.delete_user(ch.channel.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("user"))
    }
}

/// Routes `PATCH /open/v5/users/{key}`.
pub async fn patch_route(
    state: State<AppState>,
    ch: OpenChannel,
    Path(key): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<UserEnvelope>> {
    match user_key(key) {
        UserKey::Member(m) => patch_member(state, ch, Path(m), body).await,
        UserKey::Id(id) => patch_user(state, ch, Path(id), body).await,
    }
}

/// Changes a member by member id (same body as the upsert; unlike `PUT`, never creates).
#[utoipa::path(patch, path = "/open/v5/users/@{memberId}", tag = "users",
    params(("memberId" = String, Path)),
    request_body(content = crate::schema::UserUpdateSchema, description = "Update: profile (null clears it), profileOnce, tags (replaces the list; null removes every tag), unsubscribeEmail, unsubscribeTexting, blocked"),
    responses((status = 200, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_member(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(member_id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<UserEnvelope>> {
    let update = patch_update(&body)?;
    let id = find(&state, &ch, &UserKey::Member(member_id)).await?.id;
    patch(&state, &ch, id, update).await
}

/// Changes a user by id (same body as the upsert).
#[utoipa::path(patch, path = "/open/v5/users/{userId}", tag = "users",
    params(("userId" = String, Path, description = "A user id, or `@` and a member id (`@m-1`)")),
    request_body(content = crate::schema::UserUpdateSchema, description = "Update: profile (null clears it), profileOnce, tags (replaces the list; null removes every tag), unsubscribeEmail, unsubscribeTexting, blocked"),
    responses((status = 200, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_user(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<UserEnvelope>> {
    let update = patch_update(&body)?;
    if !is_id(&id) {
        return Err(ApiError::not_found("user"));
    }
    patch(&state, &ch, id, update).await
}

/// A `PATCH` body as an update: it must name something to change.
fn patch_update(body: &Value) -> ApiResult<UserUpdate> {
    crate::body::require_fields(body)?;
    Ok(UserUpdate::from_json(body, UPDATE_FIELDS)?)
}

async fn patch(
    state: &AppState,
    ch: &ChannelInfo,
    id: String,
    update: UserUpdate,
) -> ApiResult<Json<UserEnvelope>> {
    let out = state
        .app
        .write_user(ch, UserTarget::Id(id), update, Source::OpenApi)
        .await?;
    Ok(envelope(ch, out))
}

/// Creates a user (a lead, or a member when `memberId` is given; 409 if it is taken).
#[utoipa::path(post, path = "/open/v5/users", tag = "users",
    request_body(content = crate::schema::NewUserSchema, description = "memberId plus the update fields"),
    responses((status = 201, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Response> {
    let member_id = match body.as_object_mut().and_then(|o| o.remove("memberId")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::field("memberId", "must be a string")),
    };
    let update = UserUpdate::from_json(&body, UPDATE_FIELDS)?;
    let target = UserTarget::New {
        id: new_id(),
        member_id,
    };
    let out = state
        .app
        .write_user(&ch, target, update, Source::OpenApi)
        .await?;
    Ok((StatusCode::CREATED, envelope(&ch, out)).into_response())
}

/// Lists users by creation, newest first unless `sortOrder=asc`.
#[utoipa::path(get, path = "/open/v5/users", tag = "users",
    params(("since" = Option<String>, Query, description = "Cursor from `next`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25"),
        ("sortOrder" = Option<String>, Query, description = "asc or desc (default)")),
    responses((status = 200, body = UsersPage), (status = 400, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    q: Query<HashMap<String, String>>,
) -> ApiResult<Json<UsersPage>> {
    let page = Paging::from_query(&q)?;
    Ok(Json(users_page(&state, ch.channel.id, &page, |v| v).await?))
}

/// One page of users, each serialized then passed through `shape` (masking on the desk).
pub async fn users_page(
    state: &AppState,
    channel_id: i64,
    page: &Paging,
    shape: impl Fn(Value) -> Value,
) -> ApiResult<UsersPage> {
    let users = state
        .app
        .store
        .users_page(
            channel_id,
            page.since.as_deref(),
            page.fetch(),
            page.order == SortOrder::Desc,
        )
        .await?;
    let (users, next) = page.split(users, |u| u.id.clone());
    let users = users
        .into_iter()
        .map(|u| shape(serde_json::to_value(UserView::of(channel_id, u)).unwrap_or(Value::Null)))
        .collect();
    Ok(UsersPage { users, next })
}
