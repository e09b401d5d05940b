//! Templates and versions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::instances::respond_after_wait;
use super::parse_wait;
use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, QueryParams};
use crate::auth::Caller;
use crate::model::{Task, Template};
use crate::service::{NewTemplate, NewTemplateVersion};

#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = NewTemplate,
    responses((status = 201, body = Template), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_template(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewTemplate>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_template(&caller, request).await?)))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, body = [Template])))]
pub(super) async fn list_templates(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(state.service.list_templates(&caller).await?))
}

/// A template by id or name.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates",
    responses((status = 200, body = Template), (status = 404, body = ErrorBody)))]
pub(super) async fn get_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Template>> {
    Ok(Json(state.service.resolve_template(&caller, &id).await?))
}

/// Deletes a template with its versions and files. `409` while an instance uses it.
#[utoipa::path(delete, path = "/v1/templates/{id}", tag = "templates",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.delete_template(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a version (metadata; its files are pushed with `PUT …/versions/{number}/files/{name}`).
#[utoipa::path(post, path = "/v1/templates/{id}/versions", tag = "templates", request_body = NewTemplateVersion,
    responses((status = 201, body = Template), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_template_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<NewTemplateVersion>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_template_version(&caller, &id, request).await?)))
}

/// `DELETE /v1/templates/{id}/hosts` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveFromAllHostsParams {
    /// Remove only this version (default: every version).
    version: Option<u32>,
    /// Seconds to wait for the batch to end before answering (at most 3600).
    wait: Option<f64>,
}

/// Removes the template (every cached version, or `?version=`) from every host that caches it:
/// a batch with one `template.remove_from_host` task per host; hosts where an instance uses it
/// are skipped and listed in the batch's input. `404` when no host caches it.
#[utoipa::path(delete, path = "/v1/templates/{id}/hosts", tag = "templates", params(RemoveFromAllHostsParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn remove_template_from_all_hosts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<RemoveFromAllHostsParams>,
) -> ApiResult<Response> {
    let wait = parse_wait(params.wait)?;
    respond_after_wait(&state, wait, state.service.remove_template_from_all_hosts(&caller, &id, params.version)).await
}

/// `DELETE /v1/templates/{id}/hosts/{host_id}` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveFromHostParams {
    /// Remove only this version (default: every version of the template cached on the host).
    version: Option<u32>,
    /// Seconds to wait for the task to end before answering (at most 3600).
    wait: Option<f64>,
}

/// Removes the template (id or name) from the cache of the host (id, name or `provider/name`)
/// through the host's driver: every cached version, or `?version=`. Answers the task
/// (`template.remove_from_host`). `404` when the template or host is unknown or the template is
/// not cached there; `409` while an instance on that host uses it.
#[utoipa::path(delete, path = "/v1/templates/{id}/hosts/{host_id}", tag = "templates",
    params(RemoveFromHostParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn remove_template_from_host(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, host_id)): Path<(String, String)>,
    QueryParams(params): QueryParams<RemoveFromHostParams>,
) -> ApiResult<Response> {
    let wait = parse_wait(params.wait)?;
    respond_after_wait(&state, wait, state.service.remove_template_from_host(&caller, &id, &host_id, params.version))
        .await
}
