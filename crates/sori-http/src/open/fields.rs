//! `/open/v5/profile-fields`: the channel's profile-field registry. Shared with the desk
//! API, which adds the general-settings permission check.

use crate::body::Path;
use crate::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sori_app::secrets::now_ms;
use sori_domain::{FieldType, ProfileField, ProfileKey};
use utoipa::ToSchema;

use super::OpenChannel;
use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::views::FieldView;

/// `{"profileFields": […]}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldsEnvelope {
    /// Every registered field, by key.
    pub profile_fields: Vec<FieldView>,
}

/// `{"profileField": …}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldEnvelope {
    /// The field.
    pub profile_field: FieldView,
}

/// Body of a registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewField {
    /// English letters and digits, starting with a letter (camelCase).
    pub key: String,
    /// Display name; the key when absent.
    pub name: Option<String>,
    /// boolean, string, number, date, datetime, list or listOfNumber.
    #[serde(rename = "type")]
    #[schema(schema_with = crate::schema::field_type)]
    pub field_type: String,
    /// Mask the value in the console for every manager, owners included (revealing it is
    /// an explicit, audited act).
    #[serde(default)]
    pub sensitive: bool,
}

/// Body of a change. The type cannot change once values exist in that type.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldPatch {
    /// New display name.
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// New sensitive flag.
    #[schema(nullable = false)]
    pub sensitive: Option<bool>,
}

/// Lists registered fields.
pub async fn list(state: &AppState, channel_id: i64) -> ApiResult<FieldsEnvelope> {
    let fields = state.app.store.profile_fields(channel_id).await?;
    Ok(FieldsEnvelope {
        profile_fields: fields.into_iter().map(FieldView::from).collect(),
    })
}

/// Registers a field.
pub async fn create(state: &AppState, channel_id: i64, body: JsonBody) -> ApiResult<FieldEnvelope> {
    let req: NewField = body.parse()?;
    let key = ProfileKey::parse(&req.key).map_err(|e| ApiError::field("key", e))?;
    let field_type = FieldType::parse(&req.field_type).map_err(|e| ApiError::field("type", e))?;
    let name = ProfileField::check_name(req.name.as_deref().unwrap_or(key.as_str()))?;
    let field = ProfileField {
        key,
        name,
        field_type,
        sensitive: req.sensitive,
        builtin: false,
        created_at: now_ms(),
    };
    state
        .app
        .store
        .insert_profile_field(channel_id, &field)
        .await
        .map_err(|e| match e {
            sori_store::StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("profile field `{}` already exists", field.key.as_str()),
            ),
            other => other.into(),
        })?;
    Ok(FieldEnvelope {
        profile_field: field.into(),
    })
}

/// Renames a field or flips its sensitive flag.
pub async fn update(
    state: &AppState,
    channel_id: i64,
    key: &str,
    body: JsonBody,
) -> ApiResult<FieldEnvelope> {
    if body.0.get("type").is_some() {
        return Err(ApiError::field(
            "type",
            "cannot change; delete the field and register it again",
        ));
    }
    let req: FieldPatch = body.parse_patch()?;
    let name = req
        .name
        .as_deref()
        .map(ProfileField::check_name)
        .transpose()?;
    let f = state
        .app
        .store
        .update_profile_field(channel_id, key, name.as_deref(), req.sensitive)
        .await?
        .ok_or_else(|| ApiError::not_found("profile field"))?;
    Ok(FieldEnvelope {
        profile_field: f.into(),
    })
}

/// Deletes a custom field and its values.
pub async fn delete(state: &AppState, channel_id: i64, key: &str) -> ApiResult<StatusCode> {
    let fields = state.app.store.profile_fields(channel_id).await?;
    match fields.iter().find(|f| f.key.as_str() == key) {
        None => Err(ApiError::not_found("profile field")),
        Some(f) if f.builtin => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{key}` is pre-registered and cannot be deleted"),
        )),
        Some(_) => {
            state
                .app
                .store
                .delete_profile_field(channel_id, key)
                .await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// Lists the channel's profile fields.
#[utoipa::path(get, path = "/open/v5/profile-fields", tag = "profile-fields",
    responses((status = 200, body = FieldsEnvelope), (status = 401, body = ErrorBody)))]
pub async fn open_list(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
) -> ApiResult<Json<FieldsEnvelope>> {
    Ok(Json(list(&state, ch.channel.id).await?))
}

/// Registers a profile field.
#[utoipa::path(post, path = "/open/v5/profile-fields", tag = "profile-fields",
    request_body = NewField,
    responses((status = 201, body = FieldEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn open_create(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<FieldEnvelope>)> {
    Ok((
        StatusCode::CREATED,
        Json(create(&state, ch.channel.id, body).await?),
    ))
}

/// Renames a profile field or changes its sensitive flag.
#[utoipa::path(patch, path = "/open/v5/profile-fields/{key}", tag = "profile-fields",
    params(("key" = String, Path)), request_body = FieldPatch,
    responses((status = 200, body = FieldEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn open_update(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(key): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<FieldEnvelope>> {
    Ok(Json(update(&state, ch.channel.id, &key, body).await?))
}

/// Deletes a custom profile field and its values from every user.
#[utoipa::path(delete, path = "/open/v5/profile-fields/{key}", tag = "profile-fields",
    params(("key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn open_delete(
    State(state): State<AppState>,
    OpenChannel(ch): OpenChannel,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, ch.channel.id, &key).await
}
