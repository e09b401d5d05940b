//! Sessions: logging in (a session token for a user who authenticated, typically with HTTP basic
//! auth), who the caller is, and logging out.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::parse_id;
use crate::auth::identity::Session;
use crate::auth::{Caller, PrincipalKind};
use crate::service::StartedSession;

/// Starts a session for the authenticated user. Log in with `Authorization: Basic`; the answer's
/// `token` (shown only here) then authenticates as `Authorization: Bearer`, the `Nano-Session`
/// header or the `authenticationToken` cookie until it is unused for 30 minutes, 12 hours have
/// passed, or the user logs out.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    responses((status = 201, body = StartedSession), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub(super) async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<(StatusCode, Json<StartedSession>)> {
    Ok((StatusCode::CREATED, Json(state.service.create_session(&caller).await?)))
}

/// The caller's live sessions, or everyone's with `user:list`.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    responses((status = 200, body = [Session]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_sessions(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Session>>> {
    Ok(Json(state.service.list_sessions(&caller).await?))
}

/// Who a request authenticated as, and what it may do.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CurrentCaller {
    /// `alice`, `alice/ci-runner` (a key of alice) or `admin`.
    name: String,
    kind: CallerKind,
    /// The user, for users and their API keys.
    user_id: Option<Uuid>,
    /// The session the request was made with, if any.
    session_id: Option<Uuid>,
    /// The API key the request was made with, if any.
    key_id: Option<String>,
    /// The auth scheme that authenticated the request (`token`, `basic`, `session`, `apikey`…).
    scheme: String,
    /// The client's address.
    source: String,
    /// Every permission granted anywhere, as `resource:action`; `*` is everything.
    permissions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum CallerKind {
    Admin,
    User,
    ApiKey,
    System,
}

impl From<Caller> for CurrentCaller {
    fn from(caller: Caller) -> Self {
        let (kind, user_id, session_id, key_id) = match caller.principal.kind {
            PrincipalKind::Admin => (CallerKind::Admin, None, None, None),
            PrincipalKind::System => (CallerKind::System, None, None, None),
            PrincipalKind::User { user_id, session_id } => (CallerKind::User, Some(user_id), session_id, None),
            PrincipalKind::ApiKey { user_id, key_id } => (CallerKind::ApiKey, Some(user_id), None, Some(key_id)),
        };
        CurrentCaller {
            permissions: caller.access.summary(),
            name: caller.principal.name,
            kind,
            user_id,
            session_id,
            key_id,
            scheme: caller.scheme,
            source: caller.source,
        }
    }
}

#[utoipa::path(get, path = "/v1/sessions/current", tag = "sessions", responses((status = 200, body = CurrentCaller)))]
pub(super) async fn current_caller(caller: Caller) -> Json<CurrentCaller> {
    Json(CurrentCaller::from(caller))
}

/// Logs out: ends the session the request was made with.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "sessions",
    responses((status = 204), (status = 422, body = ErrorBody)))]
pub(super) async fn end_current_session(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    state.service.end_session(&caller, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends a session: the caller's own, or anyone's with `user:update`.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn end_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.end_session(&caller, Some(parse_id("session", &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
