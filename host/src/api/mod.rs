//! HTTP front-end: the native `/v1` API (OpenAPI generated from the handlers), `/health` and
//! `/metrics`. Handlers are thin: extract, call the service, convert, respond.

pub mod error;
pub mod extract;
pub mod metrics;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::auth::chain::{AuthChain, AuthFailure, AuthRequest, Authenticated, retry_after_secs};
use crate::service::Service;
use error::ApiError;

/// Largest request body accepted (template image uploads have their own limit).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest body handed to an auth scheme that asked for it (a form login); larger or
/// streamed bodies are not read for authentication.
const MAX_AUTH_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    /// The operator's credential schemes, asked in order by the one authentication check.
    pub auth: AuthChain,
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
        .route_layer(middleware::from_fn_with_state(state.auth.clone(), require_authentication))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit_failed_calls));
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

/// The one authentication check: the auth chain decides who the caller is (its
/// [`Authenticated`] answer and the [`Principal`] in it become request extensions) or answers
/// 401, 429 or 503.
///
/// [`Authenticated`]: crate::auth::chain::Authenticated
/// [`Principal`]: crate::auth::Principal
async fn require_authentication(State(chain): State<AuthChain>, request: Request, next: Next) -> Response {
    let (request, auth_request) = match auth_request(&chain, request).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    match chain.authenticate(&auth_request).await {
        Ok(authenticated) => {
            let mut request = request;
            let response_headers = authenticated.response_headers.clone();
            request.extensions_mut().insert(authenticated.principal.clone());
            request.extensions_mut().insert(authenticated.clone());
            let mut response = next.run(request).await;
            append_headers(response.headers_mut(), &response_headers);
            // For the audit layer around this one.
            response.extensions_mut().insert(authenticated);
            response
        }
        Err(failure) => auth_failure_response(failure),
    }
}

/// Records mutating requests that fail in the audit trail: refused authentication, and failures
/// other than 403 (the service records those itself, naming the permission missing).
async fn audit_failed_calls(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutating {
        return next.run(request).await;
    }
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(address)| address.to_string());
    let response = next.run(request).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && status != StatusCode::FORBIDDEN {
        let authenticated = response.extensions().get::<Authenticated>();
        let who = authenticated.map(|authenticated| (&authenticated.principal, authenticated.scheme.as_str()));
        let source = authenticated.map_or(peer.as_str(), |authenticated| authenticated.source.as_str());
        state.service.record_failed_call(who, source, &method, &path, status.as_u16()).await;
    }
    response
}

/// What the schemes see of `request`: method, path and query, lowercase headers, the peer
/// address (`unknown` without `ConnectInfo`, as under `oneshot` in tests) and, when a scheme
/// asked for it, a body of at most [`MAX_AUTH_BODY_BYTES`] that declared its length.
async fn auth_request(chain: &AuthChain, request: Request) -> Result<(Request, AuthRequest), ApiError> {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(address)| address.to_string());
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let mut auth_request = AuthRequest {
        method: request.method().to_string(),
        path: request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), |path| path.to_string()),
        headers,
        source,
        body: None,
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if !chain.needs_body() || declared_length.is_none_or(|length| length > MAX_AUTH_BODY_BYTES) {
        return Ok((request, auth_request));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_AUTH_BODY_BYTES)
        .await
        .map_err(|error| ApiError::invalid(format!("cannot read the request body: {error}")))?;
    auth_request.body = Some(bytes.to_vec());
    Ok((Request::from_parts(parts, Body::from(bytes)), auth_request))
}

fn auth_failure_response(failure: AuthFailure) -> Response {
    let message = failure.to_string();
    match failure {
        AuthFailure::MissingCredentials { challenges, .. } | AuthFailure::Rejected { challenges, .. } => {
            let mut response = ApiError::unauthorized(message).into_response();
            let challenges: Vec<(String, String)> =
                challenges.into_iter().map(|challenge| (header::WWW_AUTHENTICATE.to_string(), challenge)).collect();
            if !challenges.is_empty() {
                response.headers_mut().remove(header::WWW_AUTHENTICATE);
                append_headers(response.headers_mut(), &challenges);
            }
            response
        }
        AuthFailure::Throttled { retry_after, .. } => {
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(retry_after)));
            response
        }
        AuthFailure::SchemeFailed { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", message).into_response()
        }
    }
}

/// Appends headers a scheme set; a name or value that is not valid HTTP is dropped.
fn append_headers(headers: &mut HeaderMap, extra: &[(String, String)]) {
    for (name, value) in extra {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(header = %name, "auth scheme header is not valid HTTP; dropped"),
        }
    }
}

/// Longest `?wait=` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests;
