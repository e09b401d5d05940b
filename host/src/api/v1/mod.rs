//! The native API, version 1. Paths here are the public contract.

mod events;
mod groups;
mod hosts;
mod instance_operations;
mod instances;
mod keys;
mod projects;
mod registry;
mod roles;
mod sessions;
mod tasks;
mod templates;
mod users;

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::{AppState, MAX_WAIT};
use crate::model::Task;

#[derive(OpenApi)]
#[openapi(
    info(title = "Hyperplane API", description = "One control plane for virtual machines on every hypervisor."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every `/v1` route. Request bodies are limited to `max_body_bytes`, except template file
/// pushes, which stream into the registry under their own limit, and chunk uploads.
pub(super) fn routes(max_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(hosts::list_providers))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(hosts::get_host, hosts::update_host))
        .routes(routes!(templates::create_template, templates::list_templates))
        .routes(routes!(templates::get_template, templates::delete_template))
        .routes(routes!(templates::create_template_version))
        .routes(routes!(templates::remove_template_from_host))
        .routes(routes!(templates::remove_template_from_all_hosts))
        .routes(routes!(instances::create_instances, instances::list_instances))
        .routes(routes!(instances::get_instance, instances::update_instance, instances::delete_instance))
        .routes(routes!(instances::instance_action))
        .routes(routes!(instance_operations::list_snapshots, instance_operations::create_snapshot))
        .routes(routes!(instance_operations::revert_snapshot))
        .routes(routes!(instance_operations::delete_snapshot))
        .routes(routes!(instance_operations::get_console))
        .routes(routes!(instance_operations::save_image))
        .routes(routes!(tasks::list_tasks))
        .routes(routes!(tasks::get_task, tasks::cancel_task))
        .routes(routes!(events::list_events))
        .routes(routes!(groups::create_group, groups::list_groups))
        .routes(routes!(groups::get_group, groups::update_group, groups::delete_group))
        .routes(routes!(groups::add_group_hosts))
        .routes(routes!(groups::remove_group_host))
        .routes(routes!(groups::explain_placement))
        .routes(routes!(groups::plan_placement))
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::get_project, projects::update_project, projects::delete_project))
        .routes(routes!(projects::project_usage))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::get_user, users::update_user, users::delete_user))
        .routes(routes!(users::list_user_groups, users::create_user_group))
        .routes(routes!(users::delete_user_group))
        .routes(routes!(users::add_user_group_member, users::remove_user_group_member))
        .routes(routes!(roles::list_roles, roles::create_role))
        .routes(routes!(roles::delete_role))
        .routes(routes!(roles::list_role_bindings, roles::grant_role))
        .routes(routes!(roles::revoke_role_binding))
        .routes(routes!(roles::list_permissions))
        .routes(routes!(keys::list_api_keys, keys::create_api_key))
        .routes(routes!(keys::get_api_key, keys::update_api_key, keys::revoke_api_key))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::current_caller, sessions::end_current_session))
        .routes(routes!(sessions::end_session))
        .routes(routes!(registry::get_manifest, registry::commit_manifest))
        .routes(routes!(registry::missing_chunks))
        .routes(routes!(registry::revert))
        .routes(routes!(registry::distribute))
        .routes(routes!(registry::collect_garbage))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        // Streamed or limited by their handlers.
        .routes(routes!(registry::upload_image, registry::download_image))
        .routes(routes!(registry::push_file, registry::download_file))
        .routes(routes!(registry::upload_chunk, registry::download_chunk))
}

/// `?wait=<seconds>` on operations that start a task.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitParams {
    /// Seconds to wait for the task to end before answering (at most 3600).
    wait: Option<f64>,
}

impl WaitParams {
    fn duration(&self) -> Result<Option<Duration>, ApiError> {
        parse_wait(self.wait)
    }
}

pub(super) fn parse_wait(wait: Option<f64>) -> Result<Option<Duration>, ApiError> {
    match wait {
        None => Ok(None),
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Some(Duration::from_secs_f64(seconds).min(MAX_WAIT)))
        }
        Some(seconds) => Err(ApiError::invalid(format!("wait must be a number of seconds >= 0, got {seconds}"))),
    }
}

/// Answers a task: `200` when it has ended, else `202`, with `Location: /v1/tasks/{id}`.
pub(super) fn task_response(task: Task) -> Response {
    let status = if task.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.id)) {
        headers.insert(header::LOCATION, location);
    }
    (status, headers, Json(task)).into_response()
}

/// Whether the client asked for newline-delimited JSON.
pub(super) fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/x-ndjson"))
}

pub(super) fn ndjson_response(lines: impl IntoIterator<Item = serde_json::Value>) -> Response {
    let mut body = String::new();
    for line in lines {
        body.push_str(&line.to_string());
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
