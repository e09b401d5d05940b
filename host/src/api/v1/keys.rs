//! API keys: a user's long-lived credentials for scripts and CI, each `<id>:<secret>`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::auth::identity::ApiKey;
use crate::service::{ApiKeyPatch, CreatedApiKey, NewApiKey};

/// The caller's keys, or every user's with `key:list`; revoked keys stay listed.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = [ApiKey]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_api_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ApiKey>>> {
    Ok(Json(state.service.list_api_keys(&caller).await?))
}

/// Creates a key for the caller (or, with `key:create`, for `user`). The answer's `token` is the
/// only time the secret is shown: send it as `X-API-Key` or `Authorization: Bearer`.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_api_key(&caller, request).await?)))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys",
    responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.service.get_api_key(&caller, &id).await?))
}

/// Changes a key's groups, lifetime (`ttl` seconds from now) or description.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", request_body = ApiKeyPatch,
    responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn update_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ApiKeyPatch>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.service.update_api_key(&caller, &id, patch).await?))
}

/// Revokes the key at once and answers it, revoked; it stays listed.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.service.revoke_api_key(&caller, &id).await?))
}
