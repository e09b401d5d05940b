//! The chain of credential schemes the operator enabled: asks them in the configured order; the
//! first that authenticates or rejects the request decides. When none does, the answer is 401
//! with every scheme's challenge. Knows nothing of wasmtime: a scheme is anything that
//! implements [`AuthScheme`] (the plugin runtime's `AuthSchemePlugin`, or a test double).

use std::sync::Arc;
use std::time::Duration;

use super::Principal;

/// Counter of authentication answers, labels `scheme` (empty when no scheme decided) and
/// `outcome`: `authenticated`, `rejected`, `throttled`, `failed`, `missing`.
pub const AUTH_REQUESTS_TOTAL: &str = "hyperplane_auth_requests_total";

/// What a scheme sees of an HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthRequest {
    pub method: String,
    /// Path and query as sent, e.g. `/v1/instances?limit=10`.
    pub path: String,
    /// Header names in lowercase, values as sent; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// The client's address (`ip:port`), or `unknown`.
    pub source: String,
    /// The body, when a scheme of the chain asked for it and it was small enough.
    pub body: Option<Vec<u8>>,
}

/// One scheme's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemeOutcome {
    /// The caller is `principal`, as a credential check of the host found it.
    Authenticated { principal: Principal, response_headers: Vec<(String, String)> },
    /// A credential of this scheme was sent and is not valid (or the caller is throttled).
    Rejected { message: String, retry_after: Option<Duration> },
    /// No credential of this scheme was sent; a `WWW-Authenticate` value saying how to send one.
    Challenge(String),
    /// No credential of this scheme was sent and it has nothing to ask for.
    NotApplicable,
}

/// A scheme that could not answer: it trapped, timed out, hit its memory cap or reported its
/// own error. `kind` is short and safe to show; `message` is for the server log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SchemeFailure {
    pub kind: &'static str,
    pub message: String,
}

/// A credential scheme of the chain.
#[async_trait::async_trait]
pub trait AuthScheme: Send + Sync + 'static {
    /// The operator's name for the scheme (`token`, `basic`, …).
    fn name(&self) -> &str;
    /// Whether [`AuthScheme::authenticate`] wants the request body.
    fn needs_body(&self) -> bool;
    async fn authenticate(&self, request: &AuthRequest) -> Result<SchemeOutcome, SchemeFailure>;
}

/// A request the chain authenticated: the principal, the scheme that authenticated it and the
/// client's address (what `auth::Caller` is built from, for permission checks and the audit
/// trail). The API keeps it as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    pub scheme: String,
    pub source: String,
    /// To add to the response (a session cookie, say); the plugin runtime has already kept
    /// only the headers a scheme may set.
    pub response_headers: Vec<(String, String)>,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No scheme found a credential of its kind: 401 with every challenge.
    #[error("{message}")]
    MissingCredentials { message: String, challenges: Vec<String> },
    /// A scheme found its credential and it is not valid: 401.
    #[error("{scheme}: {message}")]
    Rejected { scheme: String, message: String, challenges: Vec<String> },
    /// A scheme refused the caller for now: 429 with `Retry-After`.
    #[error("{scheme}: {message}")]
    Throttled { scheme: String, message: String, retry_after: Duration },
    /// A scheme could not answer: 503. Details are in the server log.
    #[error("auth scheme {scheme} failed ({kind}); see the server log")]
    SchemeFailed { scheme: String, kind: &'static str },
}

/// The enabled schemes in the operator's order. Cheap to clone.
#[derive(Clone)]
pub struct AuthChain {
    schemes: Arc<[Arc<dyn AuthScheme>]>,
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("AuthChain").field("schemes", &self.scheme_names()).finish()
    }
}

impl AuthChain {
    pub fn new(schemes: Vec<Arc<dyn AuthScheme>>) -> AuthChain {
        AuthChain { schemes: schemes.into() }
    }

    pub fn scheme_names(&self) -> Vec<&str> {
        self.schemes.iter().map(|scheme| scheme.name()).collect()
    }

    /// Whether any scheme wants the request body.
    pub fn needs_body(&self) -> bool {
        self.schemes.iter().any(|scheme| scheme.needs_body())
    }

    /// Asks the schemes in order; the first `authenticated` or `rejected` decides.
    pub async fn authenticate(&self, request: &AuthRequest) -> Result<Authenticated, AuthFailure> {
        let answer = self.decide(request).await;
        let (scheme, outcome) = match &answer {
            Ok(authenticated) => (authenticated.scheme.clone(), "authenticated"),
            Err(AuthFailure::Rejected { scheme, .. }) => (scheme.clone(), "rejected"),
            Err(AuthFailure::Throttled { scheme, .. }) => (scheme.clone(), "throttled"),
            Err(AuthFailure::SchemeFailed { scheme, .. }) => (scheme.clone(), "failed"),
            Err(AuthFailure::MissingCredentials { .. }) => (String::new(), "missing"),
        };
        metrics::counter!(AUTH_REQUESTS_TOTAL, "scheme" => scheme, "outcome" => outcome).increment(1);
        answer
    }

    async fn decide(&self, request: &AuthRequest) -> Result<Authenticated, AuthFailure> {
        let mut challenges = Vec::new();
        let mut accepted = Vec::new();
        for scheme in self.schemes.iter() {
            let name = scheme.name();
            let outcome = scheme.authenticate(request).await.map_err(|failure| {
                tracing::warn!(scheme = name, kind = failure.kind, error = %failure, "auth scheme failed");
                AuthFailure::SchemeFailed { scheme: name.to_owned(), kind: failure.kind }
            })?;
            match outcome {
                SchemeOutcome::Authenticated { principal, response_headers } => {
                    return Ok(Authenticated {
                        principal,
                        scheme: name.to_owned(),
                        source: request.source.clone(),
                        response_headers,
                    });
                }
                SchemeOutcome::Rejected { message, retry_after: Some(retry_after) } => {
                    return Err(AuthFailure::Throttled { scheme: name.to_owned(), message, retry_after });
                }
                SchemeOutcome::Rejected { message, retry_after: None } => {
                    return Err(AuthFailure::Rejected { scheme: name.to_owned(), message, challenges });
                }
                SchemeOutcome::Challenge(challenge) => {
                    accepted.push(format!("{name} ({challenge})"));
                    challenges.push(challenge);
                }
                SchemeOutcome::NotApplicable => accepted.push(name.to_owned()),
            }
        }
        let message = if accepted.is_empty() {
            "missing credentials: no auth scheme is enabled".to_owned()
        } else {
            format!("missing credentials; this server accepts: {}", accepted.join(", "))
        };
        Err(AuthFailure::MissingCredentials { message, challenges })
    }
}

/// Seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    let whole = retry_after.as_secs();
    let rounded = if retry_after.subsec_nanos() > 0 { whole.saturating_add(1) } else { whole };
    rounded.max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A scheme that answers the same every time and counts how often it was asked.
    struct Fixed {
        name: &'static str,
        outcome: Result<SchemeOutcome, SchemeFailure>,
        asked: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl AuthScheme for Fixed {
        fn name(&self) -> &str {
            self.name
        }

        fn needs_body(&self) -> bool {
            false
        }

        async fn authenticate(&self, _request: &AuthRequest) -> Result<SchemeOutcome, SchemeFailure> {
            *self.asked.lock().expect("not poisoned") += 1;
            self.outcome.clone()
        }
    }

    fn fixed(name: &'static str, outcome: Result<SchemeOutcome, SchemeFailure>) -> Arc<Fixed> {
        Arc::new(Fixed { name, outcome, asked: Mutex::new(0) })
    }

    fn chain(schemes: &[&Arc<Fixed>]) -> AuthChain {
        AuthChain::new(schemes.iter().map(|scheme| (*scheme).clone() as Arc<dyn AuthScheme>).collect())
    }

    fn authenticated(name: &str) -> Result<SchemeOutcome, SchemeFailure> {
        Ok(SchemeOutcome::Authenticated {
            principal: Principal { kind: super::super::PrincipalKind::Admin, name: name.into() },
            response_headers: vec![("set-cookie".into(), "a=b".into())],
        })
    }

    fn rejected(retry_after: Option<Duration>) -> Result<SchemeOutcome, SchemeFailure> {
        Ok(SchemeOutcome::Rejected { message: "wrong".into(), retry_after })
    }

    fn request() -> AuthRequest {
        AuthRequest { source: "192.0.2.1:4000".into(), ..AuthRequest::default() }
    }

    #[tokio::test]
    async fn the_first_scheme_that_decides_wins_in_order() {
        let skipped = fixed("skipped", Ok(SchemeOutcome::NotApplicable));
        let first = fixed("first", authenticated("alice"));
        let second = fixed("second", authenticated("bob"));
        let answer = chain(&[&skipped, &first, &second]).authenticate(&request()).await.expect("authenticated");
        assert_eq!(answer.principal.name, "alice");
        assert_eq!(answer.scheme, "first");
        assert_eq!(answer.source, "192.0.2.1:4000");
        assert_eq!(answer.response_headers, vec![("set-cookie".to_owned(), "a=b".to_owned())]);
        assert_eq!(*second.asked.lock().expect("not poisoned"), 0, "later schemes are not asked");

        let rejecting = fixed("rejecting", rejected(None));
        let failure = chain(&[&rejecting, &first]).authenticate(&request()).await.expect_err("rejected");
        assert_eq!(failure.to_string(), "rejecting: wrong");
        assert!(matches!(failure, AuthFailure::Rejected { .. }));
    }

    #[tokio::test]
    async fn without_a_credential_every_challenge_is_collected() {
        let bearer = fixed("token", Ok(SchemeOutcome::Challenge("Bearer realm=\"hyperplane\"".into())));
        let quiet = fixed("session", Ok(SchemeOutcome::NotApplicable));
        let basic = fixed("basic", Ok(SchemeOutcome::Challenge("Basic realm=\"hyperplane\"".into())));
        let failure = chain(&[&bearer, &quiet, &basic]).authenticate(&request()).await.expect_err("401");
        let AuthFailure::MissingCredentials { message, challenges } = failure else {
            panic!("expected missing credentials, got {failure:?}");
        };
        assert_eq!(challenges, ["Bearer realm=\"hyperplane\"", "Basic realm=\"hyperplane\""]);
        assert_eq!(
            message,
            "missing credentials; this server accepts: token (Bearer realm=\"hyperplane\"), session, basic (Basic \
             realm=\"hyperplane\")"
        );
    }

    #[tokio::test]
    async fn throttled_and_failed_schemes_decide_too() {
        let throttled = fixed("basic", rejected(Some(Duration::from_millis(2500))));
        let later = fixed("token", authenticated("alice"));
        let failure = chain(&[&throttled, &later]).authenticate(&request()).await.expect_err("throttled");
        assert_eq!(
            failure,
            AuthFailure::Throttled {
                scheme: "basic".into(),
                message: "wrong".into(),
                retry_after: Duration::from_millis(2500)
            }
        );

        let broken = fixed("oidc", Err(SchemeFailure { kind: "timeout", message: "timed out after 5s".into() }));
        let failure = chain(&[&broken, &later]).authenticate(&request()).await.expect_err("failed");
        assert_eq!(failure.to_string(), "auth scheme oidc failed (timeout); see the server log");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (duration, expected) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (60_000, 60)] {
            assert_eq!(retry_after_secs(Duration::from_millis(duration)), expected, "{duration} ms");
        }
    }
}
