//! Contacts in the console: masked lists and profiles, edits, audited reveals, CSV export.

use std::collections::HashMap;

use crate::body::Path;
use crate::json::Json;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sori_app::secrets::{is_id, new_id, now_ms};
use sori_app::users::Source;
use sori_domain::{Permission, UserUpdate};
use sori_store::{RevealRecord, UserTarget};
use utoipa::ToSchema;

use super::Desk;
use crate::AppState;
use crate::body::{JsonBody, Paging};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::open::events::{Catalog, EventsPage};
use crate::open::users::users_page;
use crate::views::{MaskSet, UserView, UsersPage, value_at};

/// Fields a manager may change on a user (built-ins other than tags and consent are the
/// system's).
const DESK_UPDATE_FIELDS: &[&str] = &[
    "profile",
    "tags",
    "unsubscribeEmail",
    "unsubscribeTexting",
    "blocked",
];

async fn mask_set(state: &AppState, channel_id: i64) -> ApiResult<MaskSet> {
    let builtins = state.app.store.sensitive_builtins(channel_id).await?;
    let fields = state.app.store.profile_fields(channel_id).await?;
    Ok(MaskSet::new(builtins, &fields))
}

fn masked(channel_id: i64, u: sori_domain::User, mask: &MaskSet) -> Value {
    let mut v = serde_json::to_value(UserView::of(channel_id, u)).unwrap_or(Value::Null);
    mask.apply(&mut v);
    v
}

/// `{"user": …}` with sensitive values masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaskedUser {
    /// The user; sensitive values replaced by masks.
    #[schema(value_type = Object)]
    pub user: Value,
}

/// Lists users with sensitive values masked.
#[utoipa::path(get, path = "/desk/v1/users", tag = "desk",
    params(("since" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25"), ("sortOrder" = Option<String>, Query)),
    responses((status = 200, body = UsersPage), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    q: Query<HashMap<String, String>>,
) -> ApiResult<Json<UsersPage>> {
    ctx.require(Permission::ContactsRead)?;
    let page = Paging::from_query(&q)?;
    let mask = mask_set(&state, ctx.channel.channel.id).await?;
    let page = users_page(&state, ctx.channel.channel.id, &page, |mut v| {
        mask.apply(&mut v);
        v
    })
    .await?;
    Ok(Json(page))
}

async fn load(state: &AppState, channel_id: i64, id: &str) -> ApiResult<sori_domain::User> {
    if !is_id(id) {
        return Err(ApiError::not_found("user"));
    }
    state
        .app
        .store
        .user(channel_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// One user with sensitive values masked.
#[utoipa::path(get, path = "/desk/v1/users/{userId}", tag = "desk", params(("userId" = String, Path)),
    responses((status = 200, body = MaskedUser), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
) -> ApiResult<Json<MaskedUser>> {
    ctx.require(Permission::ContactsRead)?;
    let ch = ctx.channel.channel.id;
    let u = load(&state, ch, &id).await?;
    Ok(Json(MaskedUser {
        user: masked(ch, u, &mask_set(&state, ch).await?),
    }))
}

/// One user's events, newest first, paged like the Open API's timeline.
#[utoipa::path(get, path = "/desk/v1/users/{userId}/events", tag = "desk",
    params(("userId" = String, Path), ("since" = Option<String>, Query),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25"),
        ("sortOrder" = Option<String>, Query, description = "desc (default) or asc")),
    responses((status = 200, body = EventsPage), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<EventsPage>> {
    ctx.require(Permission::ContactsRead)?;
    let ch = ctx.channel.channel.id;
    let u = load(&state, ch, &id).await?;
    crate::open::events::timeline(&state, ch, &u.id, q)
        .await
        .map(Json)
}

/// The channel's event names with counts and first/last times, for the filter builder.
#[utoipa::path(get, path = "/desk/v1/events/catalog", tag = "desk",
    responses((status = 200, body = Catalog), (status = 403, body = ErrorBody)))]
pub async fn catalog(State(state): State<AppState>, Desk(ctx): Desk) -> ApiResult<Json<Catalog>> {
    ctx.require(Permission::ContactsRead)?;
    crate::open::events::catalog_of(&state, ctx.channel.channel.id)
        .await
        .map(Json)
}

/// Changes profile values, tags, consent or the block flag.
#[utoipa::path(patch, path = "/desk/v1/users/{userId}", tag = "desk", params(("userId" = String, Path)),
    request_body(content = crate::schema::ConsoleUserUpdateSchema, description = "profile, tags, unsubscribeEmail, unsubscribeTexting, blocked"),
    responses((status = 200, body = MaskedUser), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<MaskedUser>> {
    ctx.require(Permission::ContactsEdit)?;
    crate::body::require_fields(&body)?;
    let update = UserUpdate::from_json(&body, DESK_UPDATE_FIELDS)?;
    if !is_id(&id) {
        return Err(ApiError::not_found("user"));
    }
    let ch = ctx.channel.channel.id;
    let masks = mask_set(&state, ch).await?;
    refuse_masks(&body, &masks)?;
    let source = Source::Desk {
        may_register: ctx.role.allows(Permission::GeneralSettings),
    };
    let out = state
        .app
        .write_user(&ctx.channel, UserTarget::Id(id), update, source)
        .await?;
    Ok(Json(MaskedUser {
        user: masked(ch, out, &masks),
    }))
}

/// Refuses a sensitive profile value sent back in its masked form (an edit form that
/// saves every value it showed): stored, the mask would replace the real value.
fn refuse_masks(body: &Value, masks: &MaskSet) -> ApiResult<()> {
    let Some(profile) = body.get("profile").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, v) in profile {
        let path = format!("profile.{key}");
        if masks.contains(&path) && sori_domain::mask::looks_masked(key, v) {
            return Err(ApiError::field(
                path,
                "is the masked form the console shows, not a value: leave the field out to \
                 keep it, or send the real value (reveal it first)",
            ));
        }
    }
    Ok(())
}

/// Which masked fields to reveal.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    /// Field paths such as `profile.email` or `memberId`.
    pub fields: Vec<String>,
}

/// Revealed values by field path.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevealResponse {
    /// Clear values.
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
}

/// Reveals masked values; each field revealed is written to the audit log.
#[utoipa::path(post, path = "/desk/v1/users/{userId}/reveal", tag = "desk", params(("userId" = String, Path)),
    request_body = RevealRequest,
    responses((status = 200, body = RevealResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn reveal(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<RevealResponse>> {
    ctx.require(Permission::ContactsReveal)?;
    let req: RevealRequest = body.parse()?;
    if req.fields.is_empty() || req.fields.len() > 50 {
        return Err(ApiError::field("fields", "must list 1 to 50 field paths"));
    }
    let ch = ctx.channel.channel.id;
    let mask = mask_set(&state, ch).await?;
    for (i, f) in req.fields.iter().enumerate() {
        if !mask.contains(f) {
            return Err(ApiError::field(
                format!("fields[{i}]"),
                format!("`{f}` is not a sensitive field"),
            ));
        }
    }
    let u = load(&state, ch, &id).await?;
    let clear = serde_json::to_value(UserView::of(ch, u)).unwrap_or(Value::Null);
    let mut values = Map::new();
    for f in req.fields {
        state
            .app
            .store
            .insert_reveal(&RevealRecord {
                channel_id: ch,
                id: new_id(),
                manager_id: ctx.manager.id.clone(),
                user_id: id.clone(),
                field: f.clone(),
                created_at: now_ms(),
            })
            .await?;
        values.insert(
            f.clone(),
            value_at(&clear, &f).cloned().unwrap_or(Value::Null),
        );
    }
    Ok(Json(RevealResponse { values }))
}

/// A page of the reveal audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevealsPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub reveals: Vec<RevealRecord>,
    /// Cursor for older records.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

/// The reveal audit log: who revealed which field of which user, when.
#[utoipa::path(get, path = "/desk/v1/audit/reveals", tag = "desk",
    params(("since" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25")),
    responses((status = 200, body = RevealsPage), (status = 403, body = ErrorBody)))]
pub async fn reveals(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    q: Query<HashMap<String, String>>,
) -> ApiResult<Json<RevealsPage>> {
    ctx.require(Permission::GeneralSettings)?;
    let page = Paging::from_query(&q)?;
    let reveals = state
        .app
        .store
        .reveals(ctx.channel.channel.id, page.since.as_deref(), page.fetch())
        .await?;
    let (reveals, next) = page.split(reveals, |r| r.id.clone());
    Ok(Json(RevealsPage { reveals, next }))
}

/// One CSV cell: lists joined by `;` as imports read them, formula characters neutralized,
/// quoted when needed.
pub(crate) fn csv_cell(v: &Value) -> String {
    let text = sori_domain::import::csv_text(v);
    let s = sori_domain::import::sheet_safe(&text);
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// Appends one user's CSV line (`v` is the user's JSON view) for `columns`.
pub(crate) fn push_csv_row(out: &mut String, v: &Value, columns: &[String]) {
    let row: Vec<String> = columns
        .iter()
        .map(|c| csv_cell(value_at(v, c).unwrap_or(&Value::Null)))
        .collect();
    out.push_str(&row.join(","));
    out.push('\n');
}

/// Columns of a user CSV export: the main built-ins, then the registered profile fields
/// (`name` is both the built-in column and the profile field, one datum, shown once; a
/// profile field keyed like another built-in, `createdAt` say, is other data and stays).
pub(crate) fn user_columns(fields: &[sori_domain::ProfileField]) -> Vec<String> {
    let base = [
        "id",
        "memberId",
        "name",
        "tags",
        "unsubscribeEmail",
        "unsubscribeTexting",
        "lastSeenAt",
        "createdAt",
        "updatedAt",
    ];
    let mut columns: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
    columns.extend(
        fields
            .iter()
            .filter(|f| f.key.as_str() != "name")
            .map(|f| format!("profile.{}", f.key.as_str())),
    );
    columns
}

/// Every user as CSV, masked like the console shows them.
#[utoipa::path(get, path = "/desk/v1/exports/users.csv", tag = "desk",
    responses((status = 200, content_type = "text/csv"), (status = 403, body = ErrorBody)))]
pub async fn export(State(state): State<AppState>, Desk(ctx): Desk) -> ApiResult<Response> {
    ctx.require(Permission::ContactsExport)?;
    let ch = ctx.channel.channel.id;
    let mask = mask_set(&state, ch).await?;
    let fields = state.app.store.profile_fields(ch).await?;
    let columns = user_columns(&fields);
    let header = format!("{}\n", columns.join(","));
    // One page of 500 users per chunk: memory stays flat however large the channel is.
    // A failure mid-stream ends the body early (the client sees a truncated download) and
    // is logged; the status line has already been sent.
    let pages = futures_util::stream::unfold(Some(None::<String>), move |cursor| {
        let (state, mask, columns) = (state.clone(), mask.clone(), columns.clone());
        async move {
            let since = cursor?;
            let users = match state
                .app
                .store
                .users_page(ch, since.as_deref(), 500, false)
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(error = %e, "user export failed");
                    return Some((Err(std::io::Error::other("export failed")), None));
                }
            };
            let mut chunk = String::new();
            for u in &users {
                let v = masked(ch, u.clone(), &mask);
                push_csv_row(&mut chunk, &v, &columns);
            }
            let next = (users.len() == 500)
                .then(|| users.last().map(|u| u.id.clone()))
                .flatten();
            if chunk.is_empty() {
                None
            } else {
                Some((Ok(chunk), next.map(Some)))
            }
        }
    });
    let body =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(header) }).chain(pages);
    let out = axum::body::Body::from_stream(body);
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (CONTENT_DISPOSITION, "attachment; filename=\"users.csv\""),
        ],
        out,
    )
        .into_response())
}
