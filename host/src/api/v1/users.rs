//! Users and user groups.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::auth::identity::{User, UserGroup};
use crate::service::{NewUser, NewUserGroup, UserPatch};

#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = [User]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_users(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(state.service.list_users(&caller).await?))
}

/// Creates a user; with a password (at least 8 characters) it can log in with HTTP basic auth.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_user(&caller, request).await?)))
}

/// A user by name; users may read themselves.
#[utoipa::path(get, path = "/v1/users/{name}", tag = "users",
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.service.get_user(&caller, &name).await?))
}

/// Changes a user. Users may change their own password, display name and email; a new password
/// or disabling the user ends every session of the user.
#[utoipa::path(patch, path = "/v1/users/{name}", tag = "users", request_body = UserPatch,
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.service.update_user(&caller, &name, patch).await?))
}

#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_user(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/user-groups", tag = "users",
    responses((status = 200, body = [UserGroup]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_user_groups(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<UserGroup>>> {
    Ok(Json(state.service.list_user_groups(&caller).await?))
}

#[utoipa::path(post, path = "/v1/user-groups", tag = "users", request_body = NewUserGroup,
    responses((status = 201, body = UserGroup), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_user_group(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewUserGroup>,
) -> ApiResult<(StatusCode, Json<UserGroup>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_user_group(&caller, request).await?)))
}

#[utoipa::path(delete, path = "/v1/user-groups/{name}", tag = "users",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_user_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_user_group(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds the user to the group (adding a member twice changes nothing).
#[utoipa::path(put, path = "/v1/user-groups/{name}/members/{user}", tag = "users",
    responses((status = 200, body = UserGroup), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn add_user_group_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Json<UserGroup>> {
    Ok(Json(state.service.set_user_group_member(&caller, &name, &user, true).await?))
}

/// Removes the user from the group.
#[utoipa::path(delete, path = "/v1/user-groups/{name}/members/{user}", tag = "users",
    responses((status = 200, body = UserGroup), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_user_group_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Json<UserGroup>> {
    Ok(Json(state.service.set_user_group_member(&caller, &name, &user, false).await?))
}
