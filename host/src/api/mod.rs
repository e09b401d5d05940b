//! HTTP front-end: the native `/v1` API (OpenAPI generated from the handlers), `/health` and
//! `/metrics`. Handlers are thin: extract, call the service, convert, respond.

pub mod error;
pub mod extract;
pub mod metrics;
mod v1;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::service::Service;
use error::ApiError;

/// Largest request body accepted (template image uploads have their own limit).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    pub authenticator: Authenticator,
    pub metrics: PrometheusHandle,
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let (v1_routes, openapi) = v1::routes(MAX_BODY_BYTES).split_for_parts();
    let openapi = Arc::new(openapi);
    let protected = Router::new()
        .merge(v1_routes)
        .route("/v1/openapi.json", get(move || std::future::ready(Json(openapi.as_ref().clone()))))
        .route("/metrics", get(render_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_authentication));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(metrics::record_http_metrics))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// The one authentication check: a valid bearer token, else 401.
async fn require_authentication(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    match state.authenticator.authenticate(authorization) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => ApiError::unauthorized(error.to_string()).into_response(),
    }
}

/// Longest `?wait=` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
