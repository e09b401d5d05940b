//! Templates and versions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::JsonBody;
use crate::auth::Principal;
use crate::model::Template;
use crate::service::{NewTemplate, NewTemplateVersion};

#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = NewTemplate,
    responses((status = 201, body = Template), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_template(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(request): JsonBody<NewTemplate>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_template(request, &principal.name).await?)))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, body = [Template])))]
pub(super) async fn list_templates(State(state): State<AppState>) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(state.service.list_templates().await?))
}

/// A template by id or name.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates",
    responses((status = 200, body = Template), (status = 404, body = ErrorBody)))]
pub(super) async fn get_template(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Template>> {
    Ok(Json(state.service.resolve_template(&id).await?))
}

/// Adds a version (metadata only; files come with the registry).
#[utoipa::path(post, path = "/v1/templates/{id}/versions", tag = "templates", request_body = NewTemplateVersion,
    responses((status = 201, body = Template), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_template_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<NewTemplateVersion>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_template_version(&id, request, &principal.name).await?)))
}
