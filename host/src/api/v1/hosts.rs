//! Providers and hosts.

use axum::Json;
use axum::extract::{Path, State};

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, parse_id};
use crate::auth::Caller;
use crate::model::{Host, Provider};
use crate::service::HostPatch;

/// Configured providers and their status.
#[utoipa::path(get, path = "/v1/providers", tag = "hosts", responses((status = 200, body = [Provider])))]
pub(super) async fn list_providers(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Provider>>> {
    Ok(Json(state.service.list_providers(&caller).await?))
}

/// Every host reported by any provider, with capacity and usage.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = [Host])))]
pub(super) async fn list_hosts(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(state.service.list_hosts(&caller).await?))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts",
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub(super) async fn get_host(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(state.service.get_host(&caller, parse_id("host", &id)?).await?))
}

/// Drain a host, set its capacity limits or labels.
#[utoipa::path(patch, path = "/v1/hosts/{id}", tag = "hosts", request_body = HostPatch,
    responses((status = 200, body = Host), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_host(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<HostPatch>,
) -> ApiResult<Json<Host>> {
    Ok(Json(state.service.update_host(&caller, parse_id("host", &id)?, patch).await?))
}
