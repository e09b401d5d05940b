//! Extractors whose rejections are our [`ApiError`]: JSON bodies (whatever the content type,
//! since `curl -d` sends form encoding), query strings and path ids.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// A JSON request body. Errors name the field (`vcpu: invalid type: …`) and position.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), "invalid_request", rejection.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("request body is empty; expected a JSON object"));
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(deserializer).map(JsonBody).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let message = if path == "." || path.is_empty() {
                format!("invalid JSON body: {inner}")
            } else {
                format!("invalid JSON body: {path}: {inner}")
            };
            ApiError::invalid(message)
        })
    }
}

/// Query parameters; unknown or malformed ones are named in the error.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(QueryParams).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if path == "." || path.is_empty() {
                ApiError::invalid(format!("invalid query string: {inner}"))
            } else {
                ApiError::invalid(format!("invalid query parameter {path}: {inner}"))
            }
        })
    }
}

/// Parses a path segment as a UUID, naming the object kind when it is not one.
pub fn parse_id(kind: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} '{text}' not found (ids are UUIDs)"),
        )
    })
}

/// The authenticated caller with its access, for the service layer's permission checks. The
/// authentication middleware has put the chain's answer in the request.
impl FromRequestParts<super::AppState> for crate::auth::Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &super::AppState) -> Result<Self, ApiError> {
        let authenticated = parts
            .extensions
            .get::<crate::auth::chain::Authenticated>()
            .ok_or_else(|| ApiError::unauthorized("the request is not authenticated"))?;
        let caller =
            state.service.caller(authenticated.principal.clone(), &authenticated.scheme, &authenticated.source).await?;
        Ok(caller)
    }
}
