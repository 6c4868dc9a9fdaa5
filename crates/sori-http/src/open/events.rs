//! `/open/v5/users/{userId}/events` and `/open/v5/events/catalog`: server-side event
//! ingestion (one or a batch), the per-user timeline and the channel's event catalog.

use std::collections::HashMap;

use crate::body::Path;
use crate::json::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use serde_json::Value;
use sori_app::secrets::{is_id, new_id, now_ms};
use sori_app::users::{Ingest, Source};
use sori_domain::activity::Activity;
use sori_domain::event::{Event, EventInput, EventSource, NewEvent};
use sori_domain::{FieldError, Invalid, UserUpdate};
use sori_store::{CatalogEntry, Merge, UserTarget};
use utoipa::ToSchema;

use super::OpenChannel;
use crate::AppState;
use crate::body::{JsonBody, Paging};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Most events one batch call may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// An event as the API shows it. Times are epoch milliseconds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Event id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Event name.
    pub name: String,
    /// Properties.
    #[schema(value_type = Object)]
    pub property: serde_json::Map<String, Value>,
    /// Page it happened on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub page: Option<String>,
    /// Time.
    pub created_at: i64,
    /// `sdk`, `openApi`, `segment`, `import` or `system`.
    pub source: &'static str,
}

impl EventView {
    /// The view of a stored event.
    pub fn of(e: Event) -> Self {
        Self {
            id: e.id,
            user_id: e.user_id,
            name: e.name,
            property: e.property,
            page: e.page,
            created_at: e.created_at,
            source: e.source.as_str(),
        }
    }

    /// The view of an event recorded for `user_id`. It takes the event's properties: the
    /// writer binds only what [`NewEvent`] computed from them, so the view can be made
    /// while the event is still being stored.
    pub fn of_new(user_id: &str, e: &mut NewEvent) -> Self {
        Self {
            id: e.id.clone(),
            user_id: user_id.to_owned(),
            name: e.name.clone(),
            property: std::mem::take(&mut e.property),
            page: e.page.clone(),
            created_at: e.created_at,
            source: e.source.as_str(),
        }
    }
}

/// `{"event": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventEnvelope {
    /// The event.
    pub event: EventView,
}

/// What a POST of events answers: `{"event": …}` for one, `{"events": […]}` for a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Recorded {
    /// One event was sent.
    One(EventEnvelope),
    /// A batch was sent (`next` is always absent).
    Batch(EventsPage),
}

/// `{"events": […], "next": "…"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Events.
    pub events: Vec<EventView>,
    /// Cursor of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

/// The target of `/users/{key}/events`: a user id, or `@memberId` (created when absent, so
/// a business can send events for a customer it has not upserted yet).
fn target(key: &str) -> ApiResult<UserTarget> {
    match key.strip_prefix('@') {
        Some(m) => Ok(UserTarget::MemberId {
            member_id: m.to_owned(),
            new_id: new_id(),
        }),
        None if is_id(key) => Ok(UserTarget::Id(key.to_owned())),
        None => Err(ApiError::not_found("user")),
    }
}

/// Records one event (`{name, property}`) or a batch (`{events: [{name, property}, …]}`)
/// for one user, atomically.
#[utoipa::path(post, path = "/open/v5/users/{userId}/events", tag = "events",
    params(("userId" = String, Path, description = "user id, or `@memberId`")),
    request_body(content = crate::schema::EventsBodySchema, description = "`{name, property}` or `{events: [...]}`"),
    responses((status = 200, body = Recorded), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(key): Path<String>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Json<Recorded>> {
    let now = now_ms();
    let batch = match body.get("events") {
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
                return Err(ApiError::field(
                    "events",
                    format!("must hold 1 to {MAX_BATCH_EVENTS} events"),
                ));
            }
            if let Some(extra) = body
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "events"))
            {
                return Err(ApiError::field(extra, "is not a known field (events)"));
            }
            true
        }
        Some(_) => return Err(ApiError::field("events", "must be a list of events")),
        None => false,
    };
    // The items are taken out of the body, not copied.
    let inputs = match body.as_object_mut().and_then(|o| o.remove("events")) {
        Some(Value::Array(items)) if batch => items,
        _ => vec![body],
    };
    let mut events = Vec::with_capacity(inputs.len());
    let mut problems = Vec::new();
    for (i, item) in inputs.into_iter().enumerate() {
        // A batch item that is not an object is the item's own error (`events[1]`).
        if batch && !item.is_object() {
            problems.push(FieldError::new(
                format!("events[{i}]"),
                sori_domain::value::not_an_object(&item),
            ));
            continue;
        }
        let checked = EventInput::from_json(item)
            .and_then(|input| input.check("", new_id(), now, EventSource::OpenApi, None));
        match checked {
            Ok(e) => events.push(e),
            // A batch item's fields are named under it, spelled out only for an error.
            Err(e) if batch => problems.extend(e.under(&format!("events[{i}]")).0),
            Err(e) => problems.extend(e.0),
        }
    }
    if !problems.is_empty() {
        return Err(Invalid(problems).into());
    }
    // The answer shows the events as stored; the owner is filled in once known.
    let mut views: Vec<EventView> = events
        .iter_mut()
        .map(|e| EventView::of_new("", e))
        .collect();
    let ingest = Ingest {
        target: target(&key)?,
        update: UserUpdate::default(),
        activity: Activity::seen(now),
        events,
        message_id: None,
    };
    let outcome = state.app.ingest(&ch, ingest, Source::OpenApi).await?;
    for v in &mut views {
        v.user_id.clone_from(&outcome.user_id);
    }
    if batch {
        return Ok(Json(Recorded::Batch(EventsPage {
            events: views,
            next: None,
        })));
    }
    match views.pop() {
        Some(event) => Ok(Json(Recorded::One(EventEnvelope { event }))),
        None => Err(ApiError::field("body", "no event")),
    }
}

/// A user's events, newest first (`sortOrder=asc`: oldest first); `since` is the previous
/// page's `next`.
#[utoipa::path(get, path = "/open/v5/users/{userId}/events", tag = "events",
    params(("userId" = String, Path, description = "user id, or `@memberId`"),
        ("since" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 25"),
        ("sortOrder" = Option<String>, Query, description = "desc (default) or asc")),
    responses((status = 200, body = EventsPage), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<EventsPage>> {
    let user = super::users::find_by_key(&state, &ch, &key).await?;
    timeline(&state, ch.channel.id, &user.id, q).await.map(Json)
}

/// A page of one user's events for a query of `since`, `limit` and `sortOrder` (the Open
/// API's and the console's timelines).
pub(crate) async fn timeline(
    state: &AppState,
    channel_id: i64,
    user_id: &str,
    mut q: HashMap<String, String>,
) -> ApiResult<EventsPage> {
    let since = q.remove("since");
    let page = Paging::from_query(&Query(q))?;
    let cursor = since.as_deref().map(parse_cursor).transpose()?;
    let events = state
        .app
        .store
        .user_events(
            channel_id,
            user_id,
            cursor.as_ref().map(|(t, id)| (*t, id.as_str())),
            page.fetch(),
            page.order == crate::body::SortOrder::Asc,
        )
        .await?;
    let (events, next) = page.split(events, |e| format!("{}-{}", e.created_at, e.id));
    Ok(EventsPage {
        events: events.into_iter().map(EventView::of).collect(),
        next,
    })
}

/// Parses a `{createdAt}-{id}` cursor.
pub fn parse_cursor(s: &str) -> ApiResult<(i64, String)> {
    s.split_once('-')
        .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id)))
        .filter(|(_, id)| is_id(id))
        .map(|(t, id)| (t, id.to_owned()))
        .ok_or_else(|| ApiError::field("since", "is not a cursor returned by this API"))
}

/// One catalog entry as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogView {
    /// Event name.
    pub name: String,
    /// Events recorded under this name (retention does not reduce it).
    pub count: i64,
    /// Earliest event.
    pub first_seen_at: i64,
    /// Latest event.
    pub last_seen_at: i64,
    /// Events of this name carried a numeric `revenue`.
    pub revenue: bool,
}

/// `{"events": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalog {
    /// One entry per event name.
    pub events: Vec<CatalogView>,
}

/// The channel's event catalog: every name seen, with counts and first/last times.
#[utoipa::path(get, path = "/open/v5/events/catalog", tag = "events",
    responses((status = 200, body = Catalog)))]
pub async fn catalog(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
) -> ApiResult<Json<Catalog>> {
    catalog_of(&state, ch.channel.id).await.map(Json)
}

/// A channel's catalog (the Open API's, and the console's for its filter builder).
pub(crate) async fn catalog_of(state: &AppState, channel_id: i64) -> ApiResult<Catalog> {
    let entries = state.app.store.event_catalog(channel_id).await?;
    Ok(Catalog {
        events: entries
            .into_iter()
            .map(|e: CatalogEntry| CatalogView {
                name: e.name,
                count: e.count,
                first_seen_at: e.first_seen_at,
                last_seen_at: e.last_seen_at,
                revenue: e.revenue,
            })
            .collect(),
    })
}

/// One recorded merge.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MergeView {
    /// Merge id.
    pub id: String,
    /// The anonymous user that was folded in (no longer exists).
    pub from_user_id: String,
    /// The member it was folded into.
    pub into_user_id: String,
    /// When.
    pub merged_at: i64,
}

/// `{"merges": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Merges {
    /// Newest first.
    pub merges: Vec<MergeView>,
}

/// Anonymous users merged into this user, newest first.
#[utoipa::path(get, path = "/open/v5/users/{userId}/merges", tag = "events",
    params(("userId" = String, Path, description = "user id, or `@memberId`")),
    responses((status = 200, body = Merges), (status = 404, body = ErrorBody)))]
pub async fn merges(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(key): Path<String>,
) -> ApiResult<Json<Merges>> {
    let user = super::users::find_by_key(&state, &ch, &key).await?;
    let merges = state.app.store.merges_into(ch.channel.id, &user.id).await?;
    Ok(Json(Merges {
        merges: merges
            .into_iter()
            .map(|m: Merge| MergeView {
                id: m.id,
                from_user_id: m.from,
                into_user_id: m.into,
                merged_at: m.at,
            })
            .collect(),
    }))
}
