//! The bundled auth scheme components (`plugins/auth-*`, built to wasm by `host/build.rs`) in
//! the real runtime and the real [`AuthChain`], over a test double of the host's credential
//! checks: good, bad and absent credentials for each scheme, challenges, order, throttling,
//! deadlines, that only an identity the host issued authenticates, and that an OIDC identity
//! counts only from an issuer the operator trusts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use uuid::Uuid;

use super::support::{DRIVER_SIM_WASM, shared_runtime};
use crate::auth::chain::{AuthChain, AuthFailure, AuthRequest, AuthScheme, Authenticated};
use crate::auth::{CredentialError, Credentials, NewSession, Principal, PrincipalKind};
use crate::plugins::{AuthSchemePlugin, AuthSchemeSettings, ComponentSource, LoadError};

const AUTH_TOKEN_WASM: &str = env!("BUNDLED_AUTH_TOKEN_WASM");
const AUTH_BASIC_WASM: &str = env!("BUNDLED_AUTH_BASIC_WASM");
const AUTH_SESSION_WASM: &str = env!("BUNDLED_AUTH_SESSION_WASM");
const AUTH_APIKEY_WASM: &str = env!("BUNDLED_AUTH_APIKEY_WASM");
const AUTH_OIDC_WASM: &str = env!("BUNDLED_AUTH_OIDC_WASM");

/// An Ed25519-signed JWT of `https://login.example.com` for audience `hyperplane`: subject
/// `user-42`, `preferred_username` alice, groups `["operators"]`, expiring in 2100. Made once
/// for this test; the signing key was thrown away, only the public key below is kept.
const OIDC_TOKEN: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImZpeHR1cmUifQ.\
    eyJpc3MiOiJodHRwczovL2xvZ2luLmV4YW1wbGUuY29tIiwiYXVkIjoiaHlwZXJwbGFuZSIsInN1YiI6InVzZXItNDIiLCJwcmVmZXJyZWRfdXNlcm5h\
    bWUiOiJhbGljZSIsImdyb3VwcyI6WyJvcGVyYXRvcnMiXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjQxMDI0NDQ4MDB9.\
    wgWuMSkh1oOrDmJYkfdNThGQQo-3DQB8WhQCkPywRbgaNP7o4R8id8rPLktGshwRzXLmPNTKtoBehBwZUBSMCw";
const OIDC_ISSUER: &str = "https://login.example.com";

const SOURCE: &str = "192.0.2.7:5000";

/// The host's checks as a table: one admin token, one password, one API key, one session;
/// `locked` is throttled and `slow` takes a minute. Remembers every check with its source.
#[derive(Default)]
struct TestCredentials {
    checks: Mutex<Vec<String>>,
}

fn alice() -> Principal {
    Principal { kind: PrincipalKind::User { user_id: Uuid::nil(), session_id: None }, name: "alice".into() }
}

impl TestCredentials {
    fn record(&self, check: String) {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner).push(check);
    }

    fn checks(&self) -> Vec<String> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait::async_trait]
impl Credentials for TestCredentials {
    async fn verify_password(&self, user: &str, password: &str, source: &str) -> Result<Principal, CredentialError> {
        self.record(format!("password {user} from {source}"));
        match (user, password) {
            ("alice", "secret") => Ok(alice()),
            ("locked", _) => Err(CredentialError::Throttled(Duration::from_secs(30))),
            _ => Err(CredentialError::Rejected("wrong user name or password".into())),
        }
    }

    async fn verify_api_key(&self, id: &str, secret: &str, source: &str) -> Result<Principal, CredentialError> {
        self.record(format!("api key {id} from {source}"));
        match (id, secret) {
            ("ci", "key-secret") => Ok(Principal {
                kind: PrincipalKind::ApiKey { user_id: Uuid::nil(), key_id: "ci".into() },
                name: "alice/ci".into(),
            }),
            _ => Err(CredentialError::Rejected("unknown API key".into())),
        }
    }

    async fn verify_session(&self, token: &str, source: &str) -> Result<Principal, CredentialError> {
        self.record(format!("session from {source}"));
        match token {
            "session-1" => Ok(Principal {
                kind: PrincipalKind::User { user_id: Uuid::nil(), session_id: Some(Uuid::nil()) },
                name: "alice".into(),
            }),
            _ => Err(CredentialError::Rejected("unknown or expired session".into())),
        }
    }

    async fn verify_token(&self, token: &str, source: &str) -> Result<Principal, CredentialError> {
        self.record(format!("token from {source}"));
        match token {
            "admin-token" => Ok(Principal::admin()),
            "locked" => Err(CredentialError::Throttled(Duration::from_secs(30))),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Principal::admin())
            }
            _ => Err(CredentialError::Rejected("invalid token".into())),
        }
    }

    async fn create_session(&self, principal: &Principal) -> Result<NewSession, CredentialError> {
        self.record(format!("create session for {}", principal.name));
        Ok(NewSession { token: "session-new".into(), idle_timeout: Duration::from_secs(3600) })
    }

    async fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<Principal, CredentialError> {
        self.record(format!("external identity {issuer} {subject} {username} {groups:?}"));
        match subject {
            "user-42" => Ok(alice()),
            _ => Err(CredentialError::Rejected("no user for this identity".into())),
        }
    }
}

fn settings(name: &str, wasm_path: &str, config: serde_json::Value) -> AuthSchemeSettings {
    AuthSchemeSettings {
        name: name.into(),
        component: ComponentSource::File(wasm_path.into()),
        config_json: config.to_string(),
        call_timeout: Duration::from_secs(5),
        memory_limit_bytes: 64 * 1024 * 1024,
        allowed_http_hosts: Vec::new(),
        trusted_issuers: Vec::new(),
        max_response_bytes: 1024 * 1024,
    }
}

async fn scheme(
    name: &str,
    wasm_path: &str,
    config: serde_json::Value,
    credentials: &Arc<TestCredentials>,
) -> Arc<dyn AuthScheme> {
    let settings = settings(name, wasm_path, config);
    let credentials: Arc<dyn Credentials> = credentials.clone();
    let loaded = AuthSchemePlugin::load(shared_runtime(), settings, credentials).await;
    Arc::new(loaded.unwrap_or_else(|error| panic!("{name} loads: {error}")))
}

/// The default chain of the server: token, apikey, session, basic.
async fn default_chain(credentials: &Arc<TestCredentials>) -> AuthChain {
    AuthChain::new(vec![
        scheme("token", AUTH_TOKEN_WASM, serde_json::json!({}), credentials).await,
        scheme("apikey", AUTH_APIKEY_WASM, serde_json::json!({}), credentials).await,
        scheme("session", AUTH_SESSION_WASM, serde_json::json!({}), credentials).await,
        scheme("basic", AUTH_BASIC_WASM, serde_json::json!({}), credentials).await,
    ])
}

fn request(headers: &[(&str, &str)]) -> AuthRequest {
    AuthRequest {
        method: "GET".into(),
        path: "/v1/instances?limit=1".into(),
        headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
        source: SOURCE.into(),
        body: None,
    }
}

fn basic(user_and_password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_and_password))
}

/// Who the chain found, by which scheme: `alice by basic`, or the failure's message.
fn summary(answer: &Result<Authenticated, AuthFailure>) -> String {
    match answer {
        Ok(authenticated) => format!("{} by {}", authenticated.principal.name, authenticated.scheme),
        Err(failure) => format!("{}: {failure}", status(failure)),
    }
}

fn status(failure: &AuthFailure) -> u16 {
    match failure {
        AuthFailure::MissingCredentials { .. } | AuthFailure::Rejected { .. } => 401,
        AuthFailure::Throttled { .. } => 429,
        AuthFailure::SchemeFailed { .. } => 503,
    }
}

/// Runs `headers` through `chain` and checks the summary of its answer.
async fn check(chain: &AuthChain, headers: &[(&str, &str)], expected: &str) {
    let answer = chain.authenticate(&request(headers)).await;
    assert_eq!(summary(&answer), expected, "{headers:?}");
}

#[tokio::test]
async fn each_bundled_scheme_answers_good_bad_and_absent_credentials() {
    let credentials = Arc::new(TestCredentials::default());
    let chain = default_chain(&credentials).await;
    let good_basic = basic("alice:secret");
    let bad_basic = basic("alice:guess");

    check(&chain, &[("authorization", "Bearer admin-token")], "admin by token").await;
    check(&chain, &[("cookie", "authenticationToken=admin-token")], "admin by token").await;
    check(&chain, &[("authorization", "Bearer forged")], "401: token: invalid token").await;

    check(&chain, &[("authorization", &good_basic)], "alice by basic").await;
    check(&chain, &[("authorization", &bad_basic)], "401: basic: wrong user name or password").await;

    check(&chain, &[("x-api-key", "ci:key-secret")], "alice/ci by apikey").await;
    check(&chain, &[("x-api-key", "ci:guess")], "401: apikey: unknown API key").await;

    check(&chain, &[("nano-session", "session-1")], "alice by session").await;
    check(&chain, &[("nano-session", "stale")], "401: session: unknown or expired session").await;

    assert_eq!(
        credentials.checks(),
        [
            "token from 192.0.2.7:5000",
            "token from 192.0.2.7:5000",
            "token from 192.0.2.7:5000",
            "password alice from 192.0.2.7:5000",
            "password alice from 192.0.2.7:5000",
            "api key ci from 192.0.2.7:5000",
            "api key ci from 192.0.2.7:5000",
            "session from 192.0.2.7:5000",
            "session from 192.0.2.7:5000",
        ],
        "every check ran in the host with the request's source"
    );
}

#[tokio::test]
async fn without_credentials_the_challenges_of_every_scheme_are_collected() {
    let credentials = Arc::new(TestCredentials::default());
    let chain = default_chain(&credentials).await;
    let failure = chain.authenticate(&request(&[("accept", "application/json")])).await.expect_err("401");
    let AuthFailure::MissingCredentials { message, challenges } = failure else {
        panic!("expected missing credentials, got {failure:?}");
    };
    assert!(challenges.contains(&"Bearer realm=\"hyperplane\"".to_owned()), "{challenges:?}");
    assert!(challenges.contains(&"Basic realm=\"hyperplane\"".to_owned()), "{challenges:?}");
    let bearer = challenges.iter().position(|challenge| challenge.starts_with("Bearer"));
    let basic = challenges.iter().position(|challenge| challenge.starts_with("Basic"));
    assert!(bearer < basic, "challenges keep the chain's order: {challenges:?}");
    for name in ["token", "apikey", "session", "basic"] {
        assert!(message.contains(name), "{message:?} names {name}");
    }
    assert!(credentials.checks().is_empty(), "nothing was sent, so nothing was checked");
}

#[tokio::test]
async fn the_first_scheme_in_the_operators_order_that_decides_wins() {
    let credentials = Arc::new(TestCredentials::default());
    let token = scheme("token", AUTH_TOKEN_WASM, serde_json::json!({}), &credentials).await;
    let basic_scheme = scheme("basic", AUTH_BASIC_WASM, serde_json::json!({}), &credentials).await;
    // A good password and a bad token cookie: whichever scheme comes first decides.
    let good_basic = basic("alice:secret");
    let both = [("authorization", good_basic.as_str()), ("cookie", "authenticationToken=forged")];
    check(&AuthChain::new(vec![token.clone(), basic_scheme.clone()]), &both, "401: token: invalid token").await;
    check(&AuthChain::new(vec![basic_scheme, token]), &both, "alice by basic").await;
}

#[tokio::test]
async fn a_throttled_caller_is_told_when_to_retry() {
    let credentials = Arc::new(TestCredentials::default());
    let chain = default_chain(&credentials).await;
    for headers in [[("authorization", basic("locked:x"))], [("authorization", "Bearer locked".to_owned())]] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        match chain.authenticate(&request(&headers)).await {
            Err(AuthFailure::Throttled { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(30)),
            other => panic!("{headers:?}: expected throttled, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn basic_can_start_a_session_cookie_through_the_host() {
    let credentials = Arc::new(TestCredentials::default());
    let chain = AuthChain::new(vec![
        scheme("basic", AUTH_BASIC_WASM, serde_json::json!({ "session_cookie": "hp_session" }), &credentials).await,
    ]);
    let authenticated = chain.authenticate(&request(&[("authorization", &basic("alice:secret"))])).await;
    let authenticated = authenticated.expect("authenticated");
    assert_eq!(
        authenticated.response_headers,
        [(
            "set-cookie".to_owned(),
            "hp_session=session-new; HttpOnly; SameSite=Strict; Path=/; Max-Age=3600".to_owned()
        )]
    );
    assert_eq!(credentials.checks(), ["password alice from 192.0.2.7:5000", "create session for alice"]);
}

#[tokio::test]
async fn a_scheme_past_its_deadline_fails_the_request_not_the_host() {
    let credentials = Arc::new(TestCredentials::default());
    let mut slow_settings = settings("token", AUTH_TOKEN_WASM, serde_json::json!({}));
    slow_settings.call_timeout = Duration::from_millis(300);
    let dyn_credentials: Arc<dyn Credentials> = credentials.clone();
    let plugin = AuthSchemePlugin::load(shared_runtime(), slow_settings, dyn_credentials).await.expect("loads");
    let chain = AuthChain::new(vec![Arc::new(plugin.clone())]);
    check(&chain, &[("authorization", "Bearer slow")], "503: auth scheme token failed (timeout); see the server log")
        .await;
    assert_eq!(plugin.statistics().instances_discarded, 1);
    // The next request gets a fresh instance.
    check(&chain, &[("authorization", "Bearer admin-token")], "admin by token").await;
}

#[tokio::test]
async fn a_component_that_is_not_an_auth_scheme_is_refused_at_load() {
    let credentials: Arc<dyn Credentials> = Arc::new(TestCredentials::default());
    let error =
        AuthSchemePlugin::load(shared_runtime(), settings("sim", DRIVER_SIM_WASM, serde_json::json!({})), credentials)
            .await
            .expect_err("a driver is not a scheme");
    assert!(matches!(error, LoadError::NoAuthSchemeInterface { .. }), "{error}");
}

#[tokio::test]
async fn a_bad_scheme_config_fails_the_load_naming_the_key() {
    let credentials: Arc<dyn Credentials> = Arc::new(TestCredentials::default());
    let settings = settings("token", AUTH_TOKEN_WASM, serde_json::json!({ "cookies": "x" }));
    let error = AuthSchemePlugin::load(shared_runtime(), settings, credentials).await.expect_err("invalid config");
    let described =
        format!("{error}: {}", std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default());
    assert!(described.contains("token") && described.contains("cookies"), "{described}");
}

#[tokio::test]
async fn an_oidc_identity_counts_only_from_an_issuer_the_operator_trusts() {
    let credentials = Arc::new(TestCredentials::default());
    let oidc = |trusted_issuers: Vec<String>| {
        let mut settings = settings(
            "oidc",
            AUTH_OIDC_WASM,
            serde_json::json!({
                "issuer": OIDC_ISSUER,
                "audience": "hyperplane",
                "jwks": { "keys": [{
                    "kty": "OKP", "crv": "Ed25519", "x": "xRmNeftYOFa_f0eGR0_W_Jc3uTN2YmUkQbWKGNjXBMo",
                    "kid": "fixture", "use": "sig", "alg": "EdDSA"
                }] }
            }),
        );
        settings.trusted_issuers = trusted_issuers;
        let credentials: Arc<dyn Credentials> = credentials.clone();
        async move {
            let plugin = AuthSchemePlugin::load(shared_runtime(), settings, credentials).await.expect("oidc loads");
            AuthChain::new(vec![Arc::new(plugin)])
        }
    };
    let bearer = format!("Bearer {OIDC_TOKEN}");

    let untrusting = oidc(Vec::new()).await;
    check(
        &untrusting,
        &[("authorization", &bearer)],
        "401: oidc: issuer https://login.example.com is not trusted by auth scheme oidc",
    )
    .await;
    assert!(credentials.checks().is_empty(), "the host refused before looking for a user");

    let trusting = oidc(vec![OIDC_ISSUER.to_owned()]).await;
    check(&trusting, &[("authorization", &bearer)], "alice by oidc").await;
    assert_eq!(credentials.checks(), ["external identity https://login.example.com user-42 alice [\"operators\"]"]);

    // A signature that does not verify never reaches the host.
    let tampered = format!("{}A", bearer.trim_end_matches('w'));
    let answer = trusting.authenticate(&request(&[("authorization", &tampered)])).await;
    assert!(matches!(answer, Err(AuthFailure::Rejected { .. })), "{answer:?}");
    assert_eq!(credentials.checks().len(), 1);
}

#[tokio::test]
async fn an_oversized_answer_fails_the_request_and_discards_the_instance() {
    let credentials = Arc::new(TestCredentials::default());
    let mut tiny = settings("token", AUTH_TOKEN_WASM, serde_json::json!({}));
    // The challenge `Bearer realm="hyperplane"` is longer than this.
    tiny.max_response_bytes = 8;
    let dyn_credentials: Arc<dyn Credentials> = credentials.clone();
    let plugin = AuthSchemePlugin::load(shared_runtime(), tiny, dyn_credentials).await.expect("loads");
    let chain = AuthChain::new(vec![Arc::new(plugin.clone())]);
    check(&chain, &[], "503: auth scheme token failed (response_too_large); see the server log").await;
    assert_eq!(plugin.statistics().instances_discarded, 1);
}

#[tokio::test]
async fn a_scheme_over_its_memory_cap_does_not_load() {
    let credentials: Arc<dyn Credentials> = Arc::new(TestCredentials::default());
    let mut capped = settings("basic", AUTH_BASIC_WASM, serde_json::json!({}));
    capped.memory_limit_bytes = 64 * 1024;
    let error = AuthSchemePlugin::load(shared_runtime(), capped, credentials).await.expect_err("over the cap");
    let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("exceeded its memory limit of 65536 bytes"), "{error}: {source}");
}
