//! `/open/v5/channel`: the calling channel's settings.

use crate::json::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sori_store::{Channel, ChannelSettingsPatch};
use utoipa::ToSchema;

use super::OpenChannel;
use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult, ErrorBody};

/// A channel's public settings (no secrets).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    /// Id.
    pub id: String,
    /// Business name.
    pub name: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Default language.
    pub default_language: String,
    /// Public SDK key.
    pub plugin_key: String,
    /// Boots with a memberId must carry a valid memberHash.
    pub member_hash_required: bool,
    /// Days events are kept before the retention job deletes them.
    pub event_retention_days: i64,
    /// Creation time.
    pub created_at: i64,
}

impl From<&Channel> for ChannelView {
    fn from(c: &Channel) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.clone(),
            time_zone: c.time_zone.clone(),
            default_language: c.default_language.clone(),
            plugin_key: c.plugin_key.clone(),
            member_hash_required: c.member_hash_required,
            event_retention_days: c.event_retention_days,
            created_at: c.created_at,
        }
    }
}

/// `{"channel": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelEnvelope {
    /// The channel.
    pub channel: ChannelView,
}

/// Settings that may change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelPatch {
    /// Business name.
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// IANA time zone.
    #[schema(nullable = false)]
    pub time_zone: Option<String>,
    /// `ko` or `en`.
    #[schema(nullable = false)]
    pub default_language: Option<String>,
    /// Member-hash checking.
    #[schema(nullable = false)]
    pub member_hash_required: Option<bool>,
    /// Event retention in days (1–3650).
    #[schema(nullable = false)]
    pub event_retention_days: Option<i64>,
}

/// Validates a patch and applies it.
pub async fn apply(state: &AppState, channel: &Channel, body: JsonBody) -> ApiResult<ChannelView> {
    let p: ChannelPatch = body.parse_patch()?;
    let patch = ChannelSettingsPatch {
        event_retention_days: p.event_retention_days,
        name: p.name,
        time_zone: p.time_zone,
        default_language: p.default_language,
        member_hash_required: p.member_hash_required,
    };
    let updated = state
        .app
        .update_channel(channel.id, patch)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))?;
    Ok(ChannelView::from(&updated))
}

/// The calling channel.
#[utoipa::path(get, path = "/open/v5/channel", tag = "channel",
    responses((status = 200, body = ChannelEnvelope), (status = 401, body = ErrorBody)))]
pub async fn get_channel(OpenChannel(ch): OpenChannel) -> Json<ChannelEnvelope> {
    Json(ChannelEnvelope {
        channel: ChannelView::from(&ch.channel),
    })
}

/// Changes the calling channel's settings (name, time zone, language, member-hash
/// checking, event retention). A field left out is kept; none can be cleared with `null`.
#[utoipa::path(patch, path = "/open/v5/channel", tag = "channel", request_body = ChannelPatch,
    responses((status = 200, body = ChannelEnvelope), (status = 400, body = ErrorBody)))]
pub async fn patch_channel(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    body: JsonBody,
) -> ApiResult<Json<ChannelEnvelope>> {
    Ok(Json(ChannelEnvelope {
        channel: apply(&state, &ch.channel, body).await?,
    }))
}
