//! Projects: what instances, templates and node groups belong to, their quotas and usage.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::auth::identity::{Project, Quota, Usage};
use crate::service::{NewProject, ProjectPatch};

/// The projects the caller is a member of (has any permission in).
#[utoipa::path(get, path = "/v1/projects", tag = "projects",
    responses((status = 200, body = [Project]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_projects(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(state.service.list_projects(&caller).await?))
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_project(&caller, request).await?)))
}

/// A project by name or id.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects",
    responses((status = 200, body = Project), (status = 404, body = ErrorBody)))]
pub(super) async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.service.resolve_project(&caller, &id).await?))
}

/// Changes the description or replaces the quota.
#[utoipa::path(patch, path = "/v1/projects/{id}", tag = "projects", request_body = ProjectPatch,
    responses((status = 200, body = Project), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ProjectPatch>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.service.update_project(&caller, &id, patch).await?))
}

/// Deletes a project that owns nothing any more.
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn delete_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_project(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's usage next to its quota.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProjectUsage {
    project: String,
    usage: Usage,
    quota: Quota,
}

#[utoipa::path(get, path = "/v1/projects/{id}/usage", tag = "projects",
    responses((status = 200, body = ProjectUsage), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn project_usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProjectUsage>> {
    let (project, usage) = state.service.project_usage(&caller, &id).await?;
    Ok(Json(ProjectUsage { project: project.name, usage, quota: project.quota }))
}
