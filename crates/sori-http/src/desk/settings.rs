//! Console settings: channel, profile fields and sensitive flags, roles, managers.

use crate::body::Path;
use crate::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sori_app::channels::{check_email, check_password};
use sori_app::secrets::{hash_password, new_id, now_ms};
use sori_domain::field::{BUILTIN_FIELDS, builtin_type};
use sori_domain::{InboxScope, Permission, Role};
use sori_store::{Manager, TeamWrite};
use utoipa::ToSchema;

use super::{Desk, ManagerView};
use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::open::channel::{self, ChannelEnvelope};
use crate::open::fields::{self, FieldEnvelope, FieldsEnvelope};

/// The channel's settings.
#[utoipa::path(get, path = "/desk/v1/channel", tag = "desk", responses((status = 200, body = ChannelEnvelope)))]
pub async fn get_channel(Desk(ctx): Desk) -> Json<ChannelEnvelope> {
    Json(ChannelEnvelope {
        channel: (&ctx.channel.channel).into(),
    })
}

/// Changes channel settings (general-settings permission).
#[utoipa::path(patch, path = "/desk/v1/channel", tag = "desk", request_body = channel::ChannelPatch,
    responses((status = 200, body = ChannelEnvelope), (status = 403, body = ErrorBody)))]
pub async fn patch_channel(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    body: JsonBody,
) -> ApiResult<Json<ChannelEnvelope>> {
    ctx.require(Permission::GeneralSettings)?;
    Ok(Json(ChannelEnvelope {
        channel: channel::apply(&state, &ctx.channel.channel, body).await?,
    }))
}

/// A built-in field and whether it is masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuiltinFieldView {
    /// Key (`memberId`, `web.os`, ...).
    pub key: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: String,
    /// Masked in the console.
    pub sensitive: bool,
}

/// Built-in and profile fields with their sensitive flags.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllFields {
    /// Built-in user fields.
    pub builtin_fields: Vec<BuiltinFieldView>,
    /// Registered profile fields.
    pub profile_fields: Vec<crate::views::FieldView>,
}

/// Every field a user has, with sensitive flags.
#[utoipa::path(get, path = "/desk/v1/fields", tag = "desk", responses((status = 200, body = AllFields)))]
pub async fn all_fields(
    State(state): State<AppState>,
    Desk(ctx): Desk,
) -> ApiResult<Json<AllFields>> {
    ctx.require(Permission::ContactsRead)?;
    let ch = ctx.channel.channel.id;
    let sensitive = state.app.store.sensitive_builtins(ch).await?;
    let builtin_fields = BUILTIN_FIELDS
        .iter()
        .map(|(k, t)| BuiltinFieldView {
            key: (*k).to_owned(),
            field_type: t.as_str().to_owned(),
            sensitive: sensitive.iter().any(|s| s == k),
        })
        .collect();
    Ok(Json(AllFields {
        builtin_fields,
        profile_fields: fields::list(&state, ch).await?.profile_fields,
    }))
}

/// Body of a sensitive-flag change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensitivePatch {
    /// Mask this field.
    pub sensitive: bool,
}

/// Marks a built-in field (`memberId`) or a profile field (`profile.email`) sensitive
/// (general-settings permission, seed 002).
#[utoipa::path(patch, path = "/desk/v1/fields/{key}", tag = "desk", params(("key" = String, Path)),
    request_body = SensitivePatch,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn set_sensitive(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(key): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    ctx.require(Permission::GeneralSettings)?;
    let req: SensitivePatch = body.parse()?;
    let ch = ctx.channel.channel.id;
    if let Some(pkey) = key.strip_prefix("profile.") {
        state
            .app
            .store
            .update_profile_field(ch, pkey, None, Some(req.sensitive))
            .await?
            .ok_or_else(|| ApiError::not_found("profile field"))?;
    } else if builtin_type(&key).is_some() {
        // Clearing is always allowed: it changes nothing for a field that cannot be set.
        if let Some(why) = sori_domain::field::builtin_unmaskable(&key).filter(|_| req.sensitive) {
            return Err(ApiError::field("key", why));
        }
        state
            .app
            .store
            .set_builtin_sensitive(ch, &key, req.sensitive)
            .await?;
    } else {
        return Err(ApiError::not_found("field"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Lists profile fields.
#[utoipa::path(get, path = "/desk/v1/profile-fields", tag = "desk", responses((status = 200, body = FieldsEnvelope)))]
pub async fn list_fields(
    State(state): State<AppState>,
    Desk(ctx): Desk,
) -> ApiResult<Json<FieldsEnvelope>> {
    ctx.require(Permission::ContactsRead)?;
    Ok(Json(fields::list(&state, ctx.channel.channel.id).await?))
}

/// Registers a profile field (general-settings permission).
#[utoipa::path(post, path = "/desk/v1/profile-fields", tag = "desk", request_body = fields::NewField,
    responses((status = 201, body = FieldEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_field(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<FieldEnvelope>)> {
    ctx.require(Permission::GeneralSettings)?;
    Ok((
        StatusCode::CREATED,
        Json(fields::create(&state, ctx.channel.channel.id, body).await?),
    ))
}

/// Renames a profile field or flips its sensitive flag (general-settings permission).
#[utoipa::path(patch, path = "/desk/v1/profile-fields/{key}", tag = "desk", params(("key" = String, Path)),
    request_body = fields::FieldPatch, responses((status = 200, body = FieldEnvelope), (status = 404, body = ErrorBody)))]
pub async fn update_field(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(key): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<FieldEnvelope>> {
    ctx.require(Permission::GeneralSettings)?;
    Ok(Json(
        fields::update(&state, ctx.channel.channel.id, &key, body).await?,
    ))
}

/// Deletes a custom profile field and its values (general-settings permission).
#[utoipa::path(delete, path = "/desk/v1/profile-fields/{key}", tag = "desk", params(("key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_field(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require(Permission::GeneralSettings)?;
    fields::delete(&state, ctx.channel.channel.id, &key).await
}

/// `{"roles": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolesEnvelope {
    /// Built-in roles first.
    #[schema(value_type = Vec<Object>)]
    pub roles: Vec<Role>,
}

/// A custom role to create or change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBody {
    /// Display name.
    pub name: String,
    /// Granted permissions.
    #[schema(schema_with = crate::schema::permissions)]
    pub permissions: Vec<Permission>,
    /// `all` or `assigned`.
    #[schema(schema_with = crate::schema::inbox_scope)]
    pub inbox_scope: InboxScope,
}

impl RoleBody {
    /// The custom role this body describes, under `id`.
    fn into_role(self, id: String) -> Result<Role, sori_domain::Invalid> {
        Ok(Role {
            id,
            name: Role::check_name(&self.name)?,
            permissions: self.permissions.into_iter().collect(),
            inbox_scope: self.inbox_scope,
            builtin: false,
        })
    }
}

/// Makes a team change as the acting manager (the store checks the team rules in the
/// write).
async fn change_team(
    state: &AppState,
    ctx: &sori_app::ManagerContext,
    write: TeamWrite,
) -> Result<(), sori_store::StoreError> {
    let ch = ctx.channel.channel.id;
    state
        .app
        .store
        .change_team(ch, &ctx.manager.id, &write)
        .await
}

/// Lists roles (team-management permission).
#[utoipa::path(get, path = "/desk/v1/roles", tag = "desk", responses((status = 200, body = RolesEnvelope)))]
pub async fn list_roles(
    State(state): State<AppState>,
    Desk(ctx): Desk,
) -> ApiResult<Json<RolesEnvelope>> {
    ctx.require(Permission::TeamManagement)?;
    Ok(Json(RolesEnvelope {
        roles: state.app.store.roles(ctx.channel.channel.id).await?,
    }))
}

/// Creates a custom role (at most 20 per channel).
#[utoipa::path(post, path = "/desk/v1/roles", tag = "desk", request_body = RoleBody,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_role(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Role>)> {
    ctx.require(Permission::TeamManagement)?;
    let req: RoleBody = body.parse()?;
    let role = req.into_role(new_id())?;
    change_team(&state, &ctx, TeamWrite::CreateRole(role.clone())).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

/// Changes a custom role; built-in roles are fixed.
#[utoipa::path(patch, path = "/desk/v1/roles/{roleId}", tag = "desk", params(("roleId" = String, Path)),
    request_body = RoleBody, responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_role(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Role>> {
    ctx.require(Permission::TeamManagement)?;
    let req: RoleBody = body.parse()?;
    let role = req.into_role(id)?;
    change_team(&state, &ctx, TeamWrite::UpdateRole(role.clone())).await?;
    Ok(Json(role))
}

/// Deletes a custom role nobody holds.
#[utoipa::path(delete, path = "/desk/v1/roles/{roleId}", tag = "desk", params(("roleId" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_role(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require(Permission::TeamManagement)?;
    change_team(&state, &ctx, TeamWrite::DeleteRole(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"managers": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ManagersEnvelope {
    /// Managers of the channel.
    pub managers: Vec<ManagerView>,
}

/// A manager account to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewManager {
    /// Login e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Initial password (8+ characters).
    pub password: String,
    /// Role id.
    pub role_id: String,
}

/// A role change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagerPatch {
    /// New role id.
    pub role_id: String,
}

/// Lists managers (team-management permission).
#[utoipa::path(get, path = "/desk/v1/managers", tag = "desk", responses((status = 200, body = ManagersEnvelope)))]
pub async fn list_managers(
    State(state): State<AppState>,
    Desk(ctx): Desk,
) -> ApiResult<Json<ManagersEnvelope>> {
    ctx.require(Permission::TeamManagement)?;
    let ms = state.app.store.managers(ctx.channel.channel.id).await?;
    Ok(Json(ManagersEnvelope {
        managers: ms.iter().map(ManagerView::from).collect(),
    }))
}

/// Adds a manager.
#[utoipa::path(post, path = "/desk/v1/managers", tag = "desk", request_body = NewManager,
    responses((status = 201, body = ManagerView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_manager(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<ManagerView>)> {
    ctx.require(Permission::TeamManagement)?;
    let req: NewManager = body.parse()?;
    let ch = ctx.channel.channel.id;
    let email = check_email("email", &req.email)?;
    check_password("password", &req.password)?;
    let name = sori_domain::value::display_name("name", &req.name, 100)?;
    let pw = req.password.clone();
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let m = Manager {
        channel_id: ch,
        id: new_id(),
        email,
        name: name.to_owned(),
        role_id: req.role_id,
        password_hash,
        created_at: now_ms(),
    };
    let view = ManagerView::from(&m);
    change_team(&state, &ctx, TeamWrite::AddManager(m))
        .await
        .map_err(|e| match e {
            sori_store::StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a manager with this e-mail already exists",
            ),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Changes a manager's role.
#[utoipa::path(patch, path = "/desk/v1/managers/{managerId}", tag = "desk", params(("managerId" = String, Path)),
    request_body = ManagerPatch, responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_manager(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    ctx.require(Permission::TeamManagement)?;
    let req: ManagerPatch = body.parse()?;
    let write = TeamWrite::SetRole {
        manager_id: id,
        role_id: req.role_id,
    };
    change_team(&state, &ctx, write).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a manager and ends their sessions.
#[utoipa::path(delete, path = "/desk/v1/managers/{managerId}", tag = "desk", params(("managerId" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_manager(
    State(state): State<AppState>,
    Desk(ctx): Desk,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require(Permission::TeamManagement)?;
    change_team(&state, &ctx, TeamWrite::RemoveManager(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
