//! Templates and versions.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::instances::respond_after_wait;
use super::parse_wait;
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
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

/// Adds a version (metadata; its disk image is uploaded with `PUT …/versions/{number}/image`).
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

/// Parses a version number path segment, naming it when it is not one.
fn parse_version_number(template: &str, text: &str) -> ApiResult<u32> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("template version '{template}:{text}' not found (version numbers are positive integers)"),
        )
    })
}

/// Uploads the version's disk image as the raw request body, streamed to disk. The format is
/// detected from the first bytes (qcow2 by its magic, else raw); size and SHA-256 are recorded.
/// A version takes one image: a second upload is `409`.
#[utoipa::path(put, path = "/v1/templates/{id}/versions/{number}/image", tag = "templates",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the disk image"),
    responses((status = 201, body = Template), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn upload_template_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let number = parse_version_number(&id, &number)?;
    let template = state.service.upload_template_image(&caller, &id, number, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(template)))
}

/// Downloads the version's disk image. `ETag` is its SHA-256, `X-Disk-Format` its format.
#[utoipa::path(get, path = "/v1/templates/{id}/versions/{number}/image", tag = "templates",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody)))]
pub(super) async fn download_template_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
) -> ApiResult<Response> {
    let number = parse_version_number(&id, &number)?;
    let image = state.service.download_template_image(&caller, &id, number).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, image.size_bytes.to_string()),
        (header::ETAG, format!("\"{}\"", image.sha256)),
        (header::HeaderName::from_static("x-disk-format"), image.format.to_string()),
    ];
    Ok((headers, Body::from_stream(image.chunks)).into_response())
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
    let task = state.service.remove_template_from_host(&caller, &id, &host_id, params.version).await?;
    respond_after_wait(&state, &caller, task, wait).await
}
