//! Tasks.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::{WaitParams, task_response};
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{QueryParams, parse_id};
use crate::auth::Caller;
use crate::model::{Task, TaskState};
use crate::service::TaskQuery;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskListParams {
    state: Option<String>,
    /// Tasks working on this instance.
    object_id: Option<String>,
    /// Children of this batch.
    parent_id: Option<String>,
    /// Page size (1-1000, default 100).
    limit: Option<u32>,
    /// Only tasks created after this task id.
    after: Option<String>,
}

/// Tasks, oldest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskListParams),
    responses((status = 200, body = [Task]), (status = 400, body = ErrorBody)))]
pub(super) async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<TaskListParams>,
) -> ApiResult<Json<Vec<Task>>> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and 1000, got {limit}")));
    }
    let query = TaskQuery {
        state: params.state.as_deref().map(str::parse::<TaskState>).transpose().map_err(ApiError::invalid)?,
        object_id: params.object_id.as_deref().map(|id| parse_id("instance", id)).transpose()?,
        parent_id: params.parent_id.as_deref().map(|id| parse_id("task", id)).transpose()?,
        after: params.after.as_deref().map(|id| parse_id("task", id)).transpose()?,
        limit,
    };
    Ok(Json(state.service.list_tasks(&caller, query).await?))
}

/// A task; with `?wait=<seconds>` answers when it ends or the wait expires.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(WaitParams),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
pub(super) async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(wait): QueryParams<WaitParams>,
) -> ApiResult<Json<Task>> {
    let id = parse_id("task", &id)?;
    let task = match wait.duration()? {
        Some(wait) => state.service.wait_task(&caller, id, wait).await?,
        None => state.service.get_task(&caller, id).await?,
    };
    Ok(Json(task))
}

/// Requests cancellation; answers the task (`200` if it had already ended).
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks",
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody)))]
pub(super) async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(task_response(state.service.cancel_task(&caller, parse_id("task", &id)?).await?))
}
