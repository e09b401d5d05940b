//! Snapshots, the console and save-image of an instance.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;

use super::WaitParams;
use super::instances::respond_after_wait;
use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, QueryParams, parse_id};
use crate::auth::Caller;
use crate::model::{ConsoleEndpoint, Snapshot, Task};
use crate::service::{NewSnapshot, SaveImageRequest};

/// The instance's snapshots, oldest first, live from its driver.
#[utoipa::path(get, path = "/v1/instances/{id}/snapshots", tag = "instances",
    responses((status = 200, body = [Snapshot]), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Snapshot>>> {
    Ok(Json(state.service.list_snapshots(&caller, parse_id("instance", &id)?).await?))
}

/// Snapshots a running, stopped or suspended instance: answers the task.
#[utoipa::path(post, path = "/v1/instances/{id}/snapshots", tag = "instances", request_body = NewSnapshot,
    params(WaitParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(wait): QueryParams<WaitParams>,
    JsonBody(request): JsonBody<NewSnapshot>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    respond_after_wait(&state, wait, state.service.create_snapshot(&caller, parse_id("instance", &id)?, request)).await
}

/// Returns the instance to the snapshot, in the state the snapshot holds: answers the task.
#[utoipa::path(post, path = "/v1/instances/{id}/snapshots/{name}/revert", tag = "instances", params(WaitParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn revert_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    QueryParams(wait): QueryParams<WaitParams>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    respond_after_wait(&state, wait, state.service.revert_snapshot(&caller, parse_id("instance", &id)?, &name)).await
}

/// Deletes the snapshot; the instance stays as it is: answers the task.
#[utoipa::path(delete, path = "/v1/instances/{id}/snapshots/{name}", tag = "instances", params(WaitParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn delete_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    QueryParams(wait): QueryParams<WaitParams>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    respond_after_wait(&state, wait, state.service.delete_snapshot(&caller, parse_id("instance", &id)?, &name)).await
}

/// Where the instance's console answers (protocol, host, port, password), live from its driver.
#[utoipa::path(get, path = "/v1/instances/{id}/console", tag = "instances",
    responses((status = 200, body = ConsoleEndpoint), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn get_console(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ConsoleEndpoint>> {
    Ok(Json(state.service.instance_console(&caller, parse_id("instance", &id)?).await?))
}

/// Saves the instance's disk as a new tag of an existing template (`template`) or as the first
/// tag of a new one (`new_template`): suspends (or stops) it, optionally reverts the target's
/// latest tag first, streams the disk from the driver into the registry, then deletes the
/// instance unless `keep_instance`. Answers the `instance.save_image` task.
#[utoipa::path(post, path = "/v1/instances/{id}/save", tag = "instances", request_body = SaveImageRequest,
    params(WaitParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn save_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(wait): QueryParams<WaitParams>,
    JsonBody(request): JsonBody<SaveImageRequest>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    respond_after_wait(&state, wait, state.service.save_instance_image(&caller, parse_id("instance", &id)?, request))
        .await
}
