//! Node groups and placement questions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, parse_id};
use crate::auth::Caller;
use crate::model::Group;
use crate::service::{CreateInstances, GroupPatch, NewGroup, PlacementExplanation};

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = NewGroup,
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewGroup>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_group(&caller, request).await?)))
}

#[utoipa::path(get, path = "/v1/groups", tag = "groups", responses((status = 200, body = [Group])))]
pub(super) async fn list_groups(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(state.service.list_groups(&caller).await?))
}

/// A group by id or name.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub(super) async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Group>> {
    Ok(Json(state.service.resolve_group(&caller, &id).await?))
}

/// Renames, describes, or sets the fallback group (cycles are refused) or the strategy.
#[utoipa::path(patch, path = "/v1/groups/{id}", tag = "groups", request_body = GroupPatch,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<GroupPatch>,
) -> ApiResult<Json<Group>> {
    Ok(Json(state.service.update_group(&caller, &id, patch).await?))
}

#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "groups",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_group(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HostIds {
    host_ids: Vec<Uuid>,
}

/// Adds hosts to the group.
#[utoipa::path(post, path = "/v1/groups/{id}/hosts", tag = "groups", request_body = HostIds,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub(super) async fn add_group_hosts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<HostIds>,
) -> ApiResult<Json<Group>> {
    Ok(Json(state.service.set_group_membership(&caller, &id, &request.host_ids, true).await?))
}

/// Removes a host from the group.
#[utoipa::path(delete, path = "/v1/groups/{id}/hosts/{host_id}", tag = "groups",
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_group_host(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, host_id)): Path<(String, String)>,
) -> ApiResult<Json<Group>> {
    let host_id = parse_id("host", &host_id)?;
    Ok(Json(state.service.set_group_membership(&caller, &id, &[host_id], false).await?))
}

/// Why a waiting instance is not placed: hosts ruled out per constraint, and its place in the queue.
#[utoipa::path(get, path = "/v1/instances/{id}/placement", tag = "instances",
    responses((status = 200, body = PlacementExplanation), (status = 404, body = ErrorBody)))]
pub(super) async fn explain_placement(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PlacementExplanation>> {
    Ok(Json(state.service.explain_placement(&caller, parse_id("instance", &id)?).await?))
}

/// Dry run: where an instance request would go now (or why nowhere). Creates nothing.
#[utoipa::path(post, path = "/v1/placement/plan", tag = "instances", request_body = CreateInstances,
    responses((status = 200, body = PlacementExplanation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn plan_placement(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateInstances>,
) -> ApiResult<Json<PlacementExplanation>> {
    Ok(Json(state.service.plan_placement(&caller, request).await?))
}
