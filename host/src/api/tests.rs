//! The authentication middleware over test schemes: what a client sees for each answer of the
//! chain (statuses, `WWW-Authenticate`, `Retry-After`, the scheme's response headers) and what
//! handlers get. The real scheme plugins are tested in `plugins/tests/auth_schemes.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::middleware;
use axum::routing::{get, post};
use tower::ServiceExt as _;

use super::require_authentication;
use crate::auth::Principal;
use crate::auth::chain::{AuthChain, AuthRequest, AuthScheme, Authenticated, SchemeFailure, SchemeOutcome};

/// A scheme that answers by the request's `x-test` header: `yes` (admin, with a cookie),
/// `no`, `slow-down`, `broken`; nothing: a challenge.
struct ByHeader {
    challenge: &'static str,
}

#[async_trait::async_trait]
impl AuthScheme for ByHeader {
    fn name(&self) -> &str {
        "test"
    }

    fn needs_body(&self) -> bool {
        false
    }

    async fn authenticate(&self, request: &AuthRequest) -> Result<SchemeOutcome, SchemeFailure> {
        let sent = request.headers.iter().find(|(name, _)| name == "x-test").map(|(_, value)| value.as_str());
        Ok(match sent {
            Some("yes") => SchemeOutcome::Authenticated {
                principal: Principal::admin(),
                response_headers: vec![("set-cookie".into(), "session=s1; HttpOnly".into())],
            },
            Some("no") => SchemeOutcome::Rejected { message: "wrong secret".into(), retry_after: None },
            Some("slow-down") => SchemeOutcome::Rejected {
                message: "too many attempts".into(),
                retry_after: Some(Duration::from_secs(30)),
            },
            Some(_) => return Err(SchemeFailure { kind: "trap", message: "wasm trap: unreachable".into() }),
            None => SchemeOutcome::Challenge(self.challenge.into()),
        })
    }
}

fn app() -> axum::Router {
    let chain = AuthChain::new(vec![
        Arc::new(ByHeader { challenge: "Bearer realm=\"hyperplane\"" }) as Arc<dyn AuthScheme>,
        Arc::new(ByHeader { challenge: "Basic realm=\"hyperplane\"" }),
    ]);
    axum::Router::new()
        .route(
            "/who",
            get(|Extension(principal): Extension<Principal>, Extension(authenticated): Extension<Authenticated>| async move {
                format!("{} by {} from {}", principal.name, authenticated.scheme, authenticated.source)
            }),
        )
        .route_layer(middleware::from_fn_with_state(chain, require_authentication))
}

async fn send(test_header: Option<&str>) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::get("/who?x=1");
    if let Some(value) = test_header {
        request = request.header("X-Test", value);
    }
    let response = app().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn all(headers: &axum::http::HeaderMap, name: header::HeaderName) -> Vec<&str> {
    headers.get_all(name).iter().map(|value| value.to_str().expect("ascii")).collect()
}

#[tokio::test]
async fn an_authenticated_request_reaches_the_handler_with_its_caller() {
    let (status, headers, body) = send(Some("yes")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "admin by test from unknown");
    assert_eq!(all(&headers, header::SET_COOKIE), ["session=s1; HttpOnly"]);
}

#[tokio::test]
async fn without_credentials_the_answer_carries_every_challenge() {
    let (status, headers, body) = send(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(all(&headers, header::WWW_AUTHENTICATE), ["Bearer realm=\"hyperplane\"", "Basic realm=\"hyperplane\""]);
    assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    assert!(body.contains("this server accepts: test (Bearer"), "{body}");
}

#[tokio::test]
async fn rejected_throttled_and_failing_schemes_have_their_statuses() {
    let (status, headers, body) = send(Some("no")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("test: wrong secret"), "{body}");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    let (status, headers, body) = send(Some("slow-down")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(all(&headers, header::RETRY_AFTER), ["30"]);
    assert!(body.contains("too_many_requests"), "{body}");

    let (status, _, body) = send(Some("garbage")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("auth scheme test failed (trap)"), "{body}");
    assert!(!body.contains("unreachable"), "internals stay in the log: {body}");
}

/// A form login: authenticates when the body it asked for is `user=alice`.
struct FormLogin;

#[async_trait::async_trait]
impl AuthScheme for FormLogin {
    fn name(&self) -> &str {
        "form"
    }

    fn needs_body(&self) -> bool {
        true
    }

    async fn authenticate(&self, request: &AuthRequest) -> Result<SchemeOutcome, SchemeFailure> {
        Ok(match request.body.as_deref() {
            Some(b"user=alice") => {
                SchemeOutcome::Authenticated { principal: Principal::admin(), response_headers: vec![] }
            }
            Some(_) => SchemeOutcome::Rejected { message: "unknown user".into(), retry_after: None },
            None => SchemeOutcome::Challenge("Form".into()),
        })
    }
}

#[tokio::test]
async fn a_scheme_that_asks_for_the_body_gets_it_and_the_handler_still_does() {
    let app = || {
        let chain = AuthChain::new(vec![Arc::new(FormLogin) as Arc<dyn AuthScheme>]);
        axum::Router::new()
            .route("/login", post(|body: String| async move { format!("handler got {body}") }))
            .route_layer(middleware::from_fn_with_state(chain, require_authentication))
    };
    let request = Request::post("/login").header(header::CONTENT_LENGTH, "10").body(Body::from("user=alice"));
    let response = app().oneshot(request.expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    assert_eq!(body, "handler got user=alice");

    // Without a declared length (streamed) or above the limit the body is not read for auth.
    let streamed = Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>("user=alice")]));
    let response = app().oneshot(Request::post("/login").body(streamed).expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let large = "x".repeat(super::MAX_AUTH_BODY_BYTES + 1);
    let request =
        Request::post("/login").header(header::CONTENT_LENGTH, large.len().to_string()).body(Body::from(large));
    let response = app().oneshot(request.expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
