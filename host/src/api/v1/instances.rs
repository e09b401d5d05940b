//! Instances.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{WaitParams, ndjson_response, task_response, wants_ndjson};
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, QueryParams, parse_id};
use crate::auth::Caller;
use crate::model::{Instance, InstanceAction, Task};
use crate::service::{ActionOptions, CreateInstances, InstanceList, InstancePatch, InstanceQuery, ServiceResult};

/// Creates instances: answers the task (`202`, or `200` when `wait` saw it end).
/// An `Idempotency-Key` header makes retries return the original task.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = CreateInstances,
    params(WaitParams, ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key")),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_instances(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(wait): QueryParams<WaitParams>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateInstances>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => {
            Some(value.to_str().map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?.to_owned())
        }
        None => None,
    };
    respond_after_wait(&state, wait, state.service.create_instances(&caller, request, idempotency_key)).await
}

/// Starts a task with `start` and answers it, after waiting up to `wait` for it to end. The
/// wait listens for task endings from before the start: the ending cannot be missed, and the
/// task needs no reading again.
pub(super) async fn respond_after_wait(
    state: &AppState,
    wait: Option<std::time::Duration>,
    start: impl Future<Output = ServiceResult<Task>>,
) -> ApiResult<Response> {
    let ended = wait.map(|_| state.service.subscribe_task_endings());
    let task = start.await?;
    let task = match (wait, ended) {
        (Some(wait), Some(ended)) => state.service.wait_started_task(task, ended, wait).await?,
        _ => task,
    };
    Ok(task_response(task))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// Page size (1-1000, default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Comma-separated top-level fields to return, e.g. `id,name,state`.
    fields: Option<String>,
    /// `field=value` terms joined by `,`: state (also `!=`, `a|b`), host, provider, template,
    /// name, external_id. Terminated instances are left out unless a state term asks for them.
    filter: Option<String>,
}

/// Lists instances; `Accept: application/x-ndjson` streams one instance per line.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(ListParams),
    responses((status = 200, body = InstanceList), (status = 400, body = ErrorBody)))]
pub(super) async fn list_instances(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<ListParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let list = state
        .service
        .list_instances(&caller, InstanceQuery { limit: params.limit, cursor: params.cursor, filter: params.filter })
        .await?;
    let items = project(&list.items, params.fields.as_deref())?;
    if wants_ndjson(&headers) {
        let mut response = ndjson_response(items);
        if let Some(cursor) = list.next_cursor.as_deref().and_then(|cursor| cursor.parse().ok()) {
            response.headers_mut().insert("x-next-cursor", cursor);
        }
        return Ok(response);
    }
    Ok(Json(serde_json::json!({ "items": items, "next_cursor": list.next_cursor })).into_response())
}

/// Keeps only the requested top-level fields; an unknown field name is an error.
fn project(instances: &[Instance], fields: Option<&str>) -> ApiResult<Vec<Value>> {
    let values = instances.iter().map(|instance| serde_json::to_value(instance).unwrap_or(Value::Null));
    let Some(fields) = fields else { return Ok(values.collect()) };
    let wanted: Vec<&str> = fields.split(',').map(str::trim).filter(|field| !field.is_empty()).collect();
    let known = instance_field_names();
    if let Some(unknown) = wanted.iter().find(|field| !known.contains(&field.to_string())) {
        return Err(ApiError::invalid(format!("unknown field '{unknown}' in fields (known: {})", known.join(", "))));
    }
    Ok(values
        .map(|value| match value {
            Value::Object(mut object) => {
                object.retain(|key, _| wanted.contains(&key.as_str()));
                Value::Object(object)
            }
            other => other,
        })
        .collect())
}

/// The top-level field names of an instance, from its schema.
fn instance_field_names() -> Vec<String> {
    use utoipa::PartialSchema;
    match Instance::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object)) => {
            object.properties.keys().cloned().collect()
        }
        _ => Vec::new(),
    }
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances",
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub(super) async fn get_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(state.service.get_instance(&caller, parse_id("instance", &id)?).await?))
}

/// Renames, sets the external id or replaces the metadata.
#[utoipa::path(patch, path = "/v1/instances/{id}", tag = "instances", request_body = InstancePatch,
    responses((status = 200, body = Instance), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<InstancePatch>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(state.service.update_instance(&caller, parse_id("instance", &id)?, patch).await?))
}

/// Deletes an instance: a task that stops and removes it on its host.
#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances", params(WaitParams),
    responses((status = 202, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(wait): QueryParams<WaitParams>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    respond_after_wait(&state, wait, state.service.delete_instance(&caller, parse_id("instance", &id)?)).await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionParams {
    /// Seconds to wait for the task to end (at most 3600).
    wait: Option<f64>,
    /// `stop`/`restart`: power off at once instead of a graceful shutdown.
    #[serde(default)]
    force: bool,
    /// `stop`: seconds the guest gets to shut down before it is powered off (0-3600; default
    /// `instances.stop_grace_secs` of the configuration).
    grace: Option<f64>,
}

/// `start`, `stop` (graceful within `grace`, or `force`), `restart`, `suspend` (a running
/// instance, in memory) or `resume` (a suspended one): answers the task.
#[utoipa::path(post, path = "/v1/instances/{id}/actions/{action}", tag = "instances", params(ActionParams),
    responses((status = 202, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn instance_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
    QueryParams(params): QueryParams<ActionParams>,
) -> ApiResult<Response> {
    let id = parse_id("instance", &id)?;
    let action: InstanceAction =
        action.parse().map_err(|message: String| ApiError::new(StatusCode::NOT_FOUND, "not_found", message))?;
    let options = ActionOptions { force: params.force, grace_secs: params.grace };
    let wait = super::parse_wait(params.wait)?;
    respond_after_wait(&state, wait, state.service.instance_action(&caller, id, action, options)).await
}
