//! `/open/v5/segments` and the audience queries: `POST /open/v5/users/count` and
//! `POST /open/v5/users/search` take `{filter}` or `{segmentId}` (SPEC §5, §14).

use std::collections::HashMap;

use crate::body::Path;
use crate::json::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sori_app::Engine;
use sori_app::audience::SortBy;
use sori_app::auth::ChannelInfo;
use sori_store::Segment;
use utoipa::ToSchema;

use super::OpenChannel;
use crate::AppState;
use crate::body::{DEFAULT_LIMIT, JsonBody, MAX_LIMIT};
use crate::desk::users::{push_csv_row, user_columns};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::open::users::find_by_key;
use crate::views::UserView;

/// A saved segment as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentView {
    /// Id.
    pub id: String,
    /// Name, unique in the channel.
    pub name: String,
    /// The filter (SPEC §5).
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

impl From<Segment> for SegmentView {
    fn from(s: Segment) -> Self {
        Self {
            id: s.id,
            name: s.name,
            filter: s.filter,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// `{"segment": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentEnvelope {
    /// The segment.
    pub segment: SegmentView,
}

/// `{"segments": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentsEnvelope {
    /// Every segment, by name.
    pub segments: Vec<SegmentView>,
}

/// Body of a new segment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSegment {
    /// 1–100 characters, unique in the channel.
    pub name: String,
    /// The filter.
    #[schema(value_type = Object)]
    pub filter: Value,
}

/// Body of a segment change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentPatch {
    /// New name.
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// New filter.
    #[schema(value_type = Object, nullable = false, required = false)]
    pub filter: Option<Value>,
}

/// Body of a count: a filter or a segment id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// An ad-hoc filter.
    #[schema(value_type = Object, required = false)]
    pub filter: Option<Value>,
    /// A saved segment.
    pub segment_id: Option<String>,
}

/// Body of a search: a target plus paging and order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Search {
    /// An ad-hoc filter.
    #[schema(value_type = Object, required = false)]
    pub filter: Option<Value>,
    /// A saved segment.
    pub segment_id: Option<String>,
    /// `lastSeenAt` (default), `createdAt`, `name` or `profile.<key>`.
    pub sort_field: Option<String>,
    /// `desc` (default) or `asc`; users without the value come last either way.
    #[schema(schema_with = crate::schema::sort_order)]
    pub sort_order: Option<String>,
    /// Cursor from the previous page's `next`.
    pub since: Option<String>,
    /// Page size, 1–500 (default 25).
    #[schema(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// `{"count": n}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountEnvelope {
    /// Matching users.
    pub count: u64,
}

/// A page of matching users.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// This page, in the requested order.
    pub users: Vec<UserView>,
    /// Cursor for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
    /// All matching users.
    pub total: u64,
}

/// Whether a user is in a segment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    /// The user.
    pub user_id: String,
    /// True when the user matches the segment's filter now.
    pub in_segment: bool,
}

fn engine(q: &HashMap<String, String>) -> ApiResult<Engine> {
    match q.get("engine").map(String::as_str) {
        None | Some("memory") => Ok(Engine::Memory),
        Some("sql") => Ok(Engine::Sql),
        Some(_) => Err(ApiError::field("engine", "must be `memory` or `sql`")),
    }
}

/// Lists the channel's segments.
#[utoipa::path(get, path = "/open/v5/segments", tag = "segments",
    responses((status = 200, body = SegmentsEnvelope), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
) -> ApiResult<Json<SegmentsEnvelope>> {
    let all = state.app.store.segments(ch.channel.id).await?;
    Ok(Json(SegmentsEnvelope {
        segments: all.into_iter().map(SegmentView::from).collect(),
    }))
}

/// Saves a segment; its filter is checked against the registry first.
#[utoipa::path(post, path = "/open/v5/segments", tag = "segments", request_body = NewSegment,
    responses((status = 201, body = SegmentEnvelope), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<SegmentEnvelope>)> {
    let req: NewSegment = body.parse()?;
    let sg = state
        .app
        .create_segment(&ch, &req.name, &req.filter)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SegmentEnvelope { segment: sg.into() }),
    ))
}

/// One segment.
#[utoipa::path(get, path = "/open/v5/segments/{id}", tag = "segments",
    params(("id" = String, Path)),
    responses((status = 200, body = SegmentEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
) -> ApiResult<Json<SegmentEnvelope>> {
    let sg = state.app.segment(&ch, &id).await?;
    Ok(Json(SegmentEnvelope { segment: sg.into() }))
}

/// Renames a segment or replaces its filter.
#[utoipa::path(patch, path = "/open/v5/segments/{id}", tag = "segments",
    params(("id" = String, Path)), request_body = SegmentPatch,
    responses((status = 200, body = SegmentEnvelope), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "another segment has the name")))]
pub async fn patch(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<SegmentEnvelope>> {
    let req: SegmentPatch = body.parse_patch()?;
    let sg = state
        .app
        .update_segment(&ch, &id, req.name.as_deref(), req.filter.as_ref())
        .await?;
    Ok(Json(SegmentEnvelope { segment: sg.into() }))
}

/// Deletes a segment.
#[utoipa::path(delete, path = "/open/v5/segments/{id}", tag = "segments",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sg = state.app.segment(&ch, &id).await?;
    if state
        .app
        .store
        .delete_segment(ch.channel.id, &sg.id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("segment"))
    }
}

/// Counts the users a filter or segment matches, exactly and as of now. `?engine=sql`
/// answers from the database instead of the in-memory projection (for comparison).
#[utoipa::path(post, path = "/open/v5/users/count", tag = "segments", request_body = Target,
    params(("engine" = Option<String>, Query, description = "`memory` (default) or `sql`")),
    responses((status = 200, body = CountEnvelope), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no segment has the `segmentId`")))]
pub async fn count(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Query(q): Query<HashMap<String, String>>,
    body: JsonBody,
) -> ApiResult<Json<CountEnvelope>> {
    let engine = engine(&q)?;
    let req: Target = body.parse()?;
    let query = state
        .app
        .target(&ch, req.filter.as_ref(), req.segment_id.as_deref())
        .await?;
    let count = state.app.count_users(&ch, &query, engine).await?;
    Ok(Json(CountEnvelope { count }))
}

struct PageSpec {
    by: SortBy,
    descending: bool,
    offset: usize,
    limit: usize,
}

async fn page_spec(
    state: &AppState,
    ch: &ChannelInfo,
    sort_field: Option<&str>,
    sort_order: Option<&str>,
    since: Option<&str>,
    limit: Option<u32>,
) -> ApiResult<PageSpec> {
    let by = match sort_field {
        None | Some("lastSeenAt") => SortBy::LastSeenAt,
        Some("createdAt") => SortBy::CreatedAt,
        Some("name") => SortBy::Name,
        Some(f) => match f.strip_prefix("profile.") {
            Some(k) => {
                let fields = state.app.store.profile_fields(ch.channel.id).await?;
                let Some(field) = fields.iter().find(|x| x.key.as_str() == k) else {
                    return Err(ApiError::field(
                        "sortField",
                        format!("`{f}` is not a registered profile field"),
                    ));
                };
                // Users are ordered by one value each: a list has several, and true and
                // false are not an order a list of users is read in.
                use sori_domain::FieldType as T;
                if matches!(field.field_type, T::Boolean | T::List | T::ListOfNumber) {
                    return Err(ApiError::field(
                        "sortField",
                        format!(
                            "`{f}` is a {} field; sort by a string, number, date or datetime \
                             field",
                            field.field_type.as_str()
                        ),
                    ));
                }
                SortBy::Profile(k.to_owned())
            }
            None => {
                return Err(ApiError::field(
                    "sortField",
                    "must be lastSeenAt, createdAt, name or profile.<key>",
                ));
            }
        },
    };
    let descending = match sort_order {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::field("sortOrder", "must be `asc` or `desc`")),
    };
    let offset = match since {
        None => 0,
        Some(s) => s
            .strip_prefix("o")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::field("since", "is not a cursor returned by this API"))?,
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::field(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            ));
        }
    };
    Ok(PageSpec {
        by,
        descending,
        offset,
        limit: limit as usize,
    })
}

async fn search_page(
    state: &AppState,
    ch: &ChannelInfo,
    query: &sori_domain::filter::Query,
    spec: PageSpec,
) -> ApiResult<SearchPage> {
    let (users, total) = state
        .app
        .search_users(
            ch,
            query,
            &spec.by,
            spec.descending,
            spec.offset,
            spec.limit,
        )
        .await?;
    let end = spec.offset + users.len();
    let next = (users.len() == spec.limit && (end as u64) < total).then(|| format!("o{end}"));
    Ok(SearchPage {
        users: users
            .into_iter()
            .map(|u| UserView::of(ch.channel.id, u))
            .collect(),
        next,
        total,
    })
}

/// Lists the users a filter or segment matches, sorted and paged.
#[utoipa::path(post, path = "/open/v5/users/search", tag = "segments", request_body = Search,
    responses((status = 200, body = SearchPage), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no segment has the `segmentId`")))]
pub async fn search(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    body: JsonBody,
) -> ApiResult<Json<SearchPage>> {
    let req: Search = body.parse()?;
    let spec = page_spec(
        &state,
        &ch,
        req.sort_field.as_deref(),
        req.sort_order.as_deref(),
        req.since.as_deref(),
        req.limit,
    )
    .await?;
    let query = state
        .app
        .target(&ch, req.filter.as_ref(), req.segment_id.as_deref())
        .await?;
    Ok(Json(search_page(&state, &ch, &query, spec).await?))
}

/// Lists a segment's users (`sortField`, `sortOrder`, `since`, `limit` as query parameters).
#[utoipa::path(get, path = "/open/v5/segments/{id}/users", tag = "segments",
    params(("id" = String, Path),
        ("since" = Option<String>, Query, description = "the previous page's `next`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25"),
        ("sortField" = Option<String>, Query, description = "`lastSeenAt` (default), `createdAt`, `name` or `profile.<key>`"),
        ("sortOrder" = Option<String>, Query, description = "desc (default) or asc")),
    responses((status = 200, body = SearchPage), (status = 404, body = ErrorBody)))]
pub async fn users(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<SearchPage>> {
    let limit = match q.get("limit") {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            ApiError::field("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
        })?),
    };
    let spec = page_spec(
        &state,
        &ch,
        q.get("sortField").map(String::as_str),
        q.get("sortOrder").map(String::as_str),
        q.get("since").map(String::as_str),
        limit,
    )
    .await?;
    let query = state.app.target(&ch, None, Some(&id)).await?;
    Ok(Json(search_page(&state, &ch, &query, spec).await?))
}

/// Whether a user (`{userId}` or `@{memberId}`) is in a segment now.
#[utoipa::path(get, path = "/open/v5/segments/{id}/users/{userId}", tag = "segments",
    params(("id" = String, Path), ("userId" = String, Path)),
    responses((status = 200, body = Membership), (status = 404, body = ErrorBody)))]
pub async fn membership(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<Membership>> {
    let query = state.app.target(&ch, None, Some(&id)).await?;
    let u = find_by_key(&state, &ch, &user).await?;
    let in_segment = state.app.user_matches(&ch, &query, &u.id).await?;
    Ok(Json(Membership {
        user_id: u.id,
        in_segment,
    }))
}

/// A segment's users as CSV (full data: the Open API is the business's own access).
#[utoipa::path(get, path = "/open/v5/segments/{id}/users.csv", tag = "segments",
    params(("id" = String, Path)),
    responses((status = 200, content_type = "text/csv"), (status = 404, body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let query = state.app.target(&ch, None, Some(&id)).await?;
    let ids = state.app.matching_ids(&ch, &query, Engine::Memory).await?;
    let fields = state.app.store.profile_fields(ch.channel.id).await?;
    let columns = user_columns(&fields);
    let mut out = format!("{}\n", columns.join(","));
    for chunk in ids.chunks(500) {
        let mut users = state.app.store.users_by_ids(ch.channel.id, chunk).await?;
        users.sort_by(|a, b| a.id.cmp(&b.id));
        for u in users {
            let v = serde_json::to_value(UserView::of(ch.channel.id, u))
                .map_err(|e| ApiError::internal(&e))?;
            push_csv_row(&mut out, &v, &columns);
        }
    }
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"segment-{}.csv\"", id),
            ),
        ],
        out,
    )
        .into_response())
}
