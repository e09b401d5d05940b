//! Roles, their bindings to users and user groups, and the permission catalogue roles draw from.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, parse_id};
use crate::auth::Caller;
use crate::auth::identity::{Role, RoleBinding};
use crate::auth::permissions::Resource;
use crate::service::{NewRole, NewRoleBinding};

#[utoipa::path(get, path = "/v1/roles", tag = "roles",
    responses((status = 200, body = [Role]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_roles(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Role>>> {
    Ok(Json(state.service.list_roles(&caller).await?))
}

/// Creates a role from catalogue permissions (`resource:action`, `resource:*` or `*`).
#[utoipa::path(post, path = "/v1/roles", tag = "roles", request_body = NewRole,
    responses((status = 201, body = Role), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewRole>,
) -> ApiResult<(StatusCode, Json<Role>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_role(&caller, request).await?)))
}

/// Deletes a role that is not built in.
#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "roles",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_role(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/role-bindings", tag = "roles",
    responses((status = 200, body = [RoleBinding]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_role_bindings(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<RoleBinding>>> {
    Ok(Json(state.service.list_role_bindings(&caller).await?))
}

/// Grants a role to a user or a user group, in one project (or all), on some resources (or all).
#[utoipa::path(post, path = "/v1/role-bindings", tag = "roles", request_body = NewRoleBinding,
    responses((status = 201, body = RoleBinding), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn grant_role(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewRoleBinding>,
) -> ApiResult<(StatusCode, Json<RoleBinding>)> {
    Ok((StatusCode::CREATED, Json(state.service.grant_role(&caller, request).await?)))
}

/// Revokes a grant.
#[utoipa::path(delete, path = "/v1/role-bindings/{id}", tag = "roles",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_role_binding(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.revoke_role_binding(&caller, parse_id("role binding", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The actions of one kind of resource.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ResourcePermissions {
    resource: Resource,
    actions: Vec<PermissionAction>,
}

/// One action: `resource:action` in a role.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PermissionAction {
    name: String,
    /// What the permission allows.
    description: String,
}

/// The permission catalogue: every resource and its actions. Any authenticated caller may read it.
#[utoipa::path(get, path = "/v1/permissions", tag = "roles", responses((status = 200, body = [ResourcePermissions])))]
pub(super) async fn list_permissions() -> Json<Vec<ResourcePermissions>> {
    let catalogue = Resource::ALL
        .into_iter()
        .map(|resource| ResourcePermissions {
            resource,
            actions: resource
                .actions()
                .iter()
                .map(|(name, description)| PermissionAction {
                    name: (*name).to_owned(),
                    description: (*description).to_owned(),
                })
                .collect(),
        })
        .collect();
    Json(catalogue)
}
