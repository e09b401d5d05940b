//! OpenID Connect through the real server and the bundled `auth-oidc` component, which fetches
//! the issuer's key set over outgoing HTTP from a key set server run by the test: a signed JWT
//! becomes a user whose user groups follow the token, the key set is fetched once, each failed
//! check is a 401 naming it, and the host refuses an untrusted issuer and a key set host outside
//! the scheme's allow-list.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::harness::{Server, fast_sim_config};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "hyperplane";
/// The `kid` of the one key in the issuer's key set.
const KEY_ID: &str = "idp-test-key-1";
/// A 2048-bit RSA key made for tests only, shared with the plugin's unit tests.
const TEST_ONLY_RSA_KEY_PEM: &str = include_str!("../../plugins/auth-oidc/tests/fixtures/test-only-rsa-2048.pem");

/// The fixture key (PKCS#1 PEM; its DER read here, as `jsonwebtoken` is built without PEM support).
fn signing_key() -> EncodingKey {
    use base64::Engine;
    let body: String = TEST_ONLY_RSA_KEY_PEM.lines().filter(|line| !line.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).expect("the fixture is PEM");
    EncodingKey::from_rsa_der(&der)
}

/// The issuer's key set: the fixture key's public half (`n`, `e`) under [`KEY_ID`].
fn key_set_document() -> String {
    let mut public_key = Jwk::from_encoding_key(&signing_key(), Algorithm::RS256).expect("an RSA JWK");
    public_key.common.key_id = Some(KEY_ID.to_owned());
    public_key.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_string(&JwkSet { keys: vec![public_key] }).expect("a JWK set serializes")
}

/// Serves the issuer's key set at `http://127.0.0.1:<port>/jwks` on the test's runtime and counts
/// the requests it gets.
struct KeySetServer {
    authority: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KeySetServer {
    async fn start() -> KeySetServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let authority = listener.local_addr().expect("a local address").to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let document = key_set_document();
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let document = document.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], document) }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the key set server runs");
        });
        KeySetServer { authority, requests, task }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.authority)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server whose schemes are `auth-oidc` (keys from `key_set_url`, outgoing HTTP allowed to
/// `allowed_http_host`, identities of `trusted_issuer` accepted), then `auth-token` leaving JWTs
/// alone so that the admin token still works.
fn config(key_set_url: &str, allowed_http_host: &str, trusted_issuer: &str) -> String {
    format!(
        r#"{}
[[auth.schemes]]
name = "oidc"
plugin = "auth-oidc"
config = {{ issuer = "{ISSUER}", audience = "{AUDIENCE}", jwks_url = "{key_set_url}" }}
allowed_http_hosts = ["{allowed_http_host}"]
trusted_issuers = ["{trusted_issuer}"]

[[auth.schemes]]
name = "token"
plugin = "auth-token"
config = {{ skip_jwt = true }}
"#,
        fast_sim_config()
    )
}

fn now_unix_secs() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(elapsed.as_secs()).expect("seconds fit")
}

/// Dana's claims as the issuer asserts them, valid for 5 minutes, with `changes` applied (a
/// `null` removes the claim).
fn claims(changes: Value) -> Value {
    let now = now_unix_secs();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "idp-subject-dana", "preferred_username": "dana",
        "groups": ["ci", "unknown-group"], "iat": now, "exp": now + 300,
    });
    let (Some(fields), Some(changes)) = (claims.as_object_mut(), changes.as_object()) else {
        panic!("claims and changes are JSON objects");
    };
    for (name, value) in changes {
        if value.is_null() {
            fields.remove(name);
        } else {
            fields.insert(name.clone(), value.clone());
        }
    }
    claims
}

/// `claims` signed with the fixture key (RS256), naming `key_id` as its key.
fn sign(key_id: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key_id.to_owned());
    jsonwebtoken::encode(&header, claims, &signing_key()).expect("the token is signed")
}

/// `token` with one character in the middle of its signature changed.
fn with_tampered_signature(token: &str) -> String {
    let (signed_part, signature) = token.rsplit_once('.').expect("a JWT has a signature");
    let mut signature: Vec<char> = signature.chars().collect();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == 'A' { 'B' } else { 'A' };
    format!("{signed_part}.{}", signature.into_iter().collect::<String>())
}

/// A request carrying only `Authorization: Bearer <token>`.
async fn as_bearer(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (StatusCode, Value) {
    server.raw(method, path, &body.map(|body| body.to_string()).unwrap_or_default(), Some(token)).await
}

/// `token` is refused with 401 by the oidc scheme, the message naming `failed_check` and
/// holding no part of the token.
async fn check_rejected(server: &Server, token: &str, failed_check: &str) {
    let (status, body) = as_bearer(server, Method::GET, "/v1/sessions/current", None, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{failed_check}: {body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.starts_with("oidc: ") && message.contains(failed_check), "{message:?} names {failed_check:?}");
    let answer = body.to_string();
    for part in token.split('.') {
        assert!(!answer.contains(part), "the answer {answer} echoes part of the token");
    }
}

#[tokio::test]
async fn a_valid_token_becomes_a_user_with_its_groups_and_each_failed_check_is_named() {
    let key_set = KeySetServer::start().await;
    let server = Server::start(&config(&key_set.url(), &key_set.authority, ISSUER)).await;
    let (status, group) = server.post("/v1/user-groups", json!({ "name": "ci" })).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let (status, binding) = server.post("/v1/role-bindings", json!({ "role": "viewer", "group": "ci" })).await;
    assert_eq!(status, StatusCode::CREATED, "{binding}");
    assert_eq!(key_set.requests(), 0, "the admin token is no JWT: the oidc scheme fetched nothing");

    let token = sign(KEY_ID, &claims(json!({})));
    let (status, caller) = as_bearer(&server, Method::GET, "/v1/sessions/current", None, &token).await;
    assert_eq!(status, StatusCode::OK, "{caller}");
    assert_eq!((caller["name"].as_str(), caller["kind"].as_str()), (Some("dana"), Some("user")), "{caller}");
    assert_eq!(caller["scheme"], "oidc", "{caller}");
    let dana = server.get("/v1/users/dana").await;
    assert_eq!(dana["external_issuer"], ISSUER, "{dana}");
    assert_eq!(dana["external_subject"], "idp-subject-dana", "{dana}");
    assert_eq!(dana["groups"], json!(["ci"]), "only existing groups are joined: {dana}");
    assert_eq!(dana["has_password"], false, "{dana}");
    let groups = server.get("/v1/user-groups").await;
    let group_names: Vec<&str> =
        groups.as_array().expect("a list").iter().filter_map(|group| group["name"].as_str()).collect();
    assert_eq!(group_names, ["ci"], "a group the token names is never created");

    let (status, templates) = as_bearer(&server, Method::GET, "/v1/templates", None, &token).await;
    assert_eq!(status, StatusCode::OK, "viewer may list templates: {templates}");
    let template = json!({ "name": "dana-template", "arch": "amd64" });
    let (status, refused) = as_bearer(&server, Method::POST, "/v1/templates", Some(template), &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewer may not create templates: {refused}");

    let fetches = key_set.requests();
    assert!(fetches >= 1, "the key set was fetched over HTTP");
    for _ in 0..3 {
        let (status, caller) = as_bearer(&server, Method::GET, "/v1/sessions/current", None, &token).await;
        assert_eq!((status, caller["name"].as_str()), (StatusCode::OK, Some("dana")), "{caller}");
    }
    assert_eq!(key_set.requests(), fetches, "the cached key set is used, not fetched per request");

    let now = now_unix_secs();
    let failures = [
        (sign(KEY_ID, &claims(json!({ "iat": now - 900, "exp": now - 600 }))), "has expired (`exp`)"),
        (sign(KEY_ID, &claims(json!({ "aud": "another-client" }))), "audience (`aud`) does not include `hyperplane`"),
        (
            sign(KEY_ID, &claims(json!({ "iss": "https://impostor.test" }))),
            "issuer (`iss`) is not the configured issuer",
        ),
        (with_tampered_signature(&token), "signature does not verify"),
    ];
    for (rejected_token, failed_check) in &failures {
        check_rejected(&server, rejected_token, failed_check).await;
    }
    assert_eq!(key_set.requests(), fetches, "a token under a known key needs no fetch");

    let unknown_key = sign("rotated-key", &claims(json!({})));
    for _ in 0..2 {
        check_rejected(&server, &unknown_key, "signing key `rotated-key` is not in the issuer's key set").await;
    }
    assert!(key_set.requests() <= fetches + 1, "an unknown key refetches at most once: {}", key_set.requests());
    let (status, caller) = as_bearer(&server, Method::GET, "/v1/sessions/current", None, &token).await;
    assert_eq!((status, caller["name"].as_str()), (StatusCode::OK, Some("dana")), "{caller}");
}

#[tokio::test]
async fn the_host_refuses_an_issuer_the_scheme_does_not_trust() {
    let key_set = KeySetServer::start().await;
    let server = Server::start(&config(&key_set.url(), &key_set.authority, "https://other-idp.test")).await;
    let token = sign(KEY_ID, &claims(json!({})));
    check_rejected(&server, &token, "issuer https://idp.test is not trusted by auth scheme oidc").await;
    assert!(key_set.requests() >= 1, "the plugin verified the token with the fetched key set first");
    assert_eq!(server.get("/v1/users").await, json!([]), "no user was created");
}

#[tokio::test]
async fn a_key_set_host_outside_the_allow_list_is_never_contacted() {
    let key_set = KeySetServer::start().await;
    let server = Server::start_capturing_log(&config(&key_set.url(), "idp.test", ISSUER), "warn,hyperplane=warn").await;
    let token = sign(KEY_ID, &claims(json!({})));
    for _ in 0..2 {
        let (status, body) = as_bearer(&server, Method::GET, "/v1/sessions/current", None, &token).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "without keys the scheme cannot answer: {body}");
        assert_eq!(body["error"]["code"], "auth_unavailable", "{body}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.contains("auth scheme oidc failed"), "{message}");
        assert!(!body.to_string().contains(&token), "{body}");
    }
    assert_eq!(key_set.requests(), 0, "the host denied the fetch before any connection");
    // The scheme's failure says the host denied the fetch.
    let log = server.log_once_a_line_has(&["auth scheme failed", "oidc", "HttpRequestDenied"]).await;
    let denied = log
        .lines()
        .find(|line| line.contains("outside its allow-list denied"))
        .unwrap_or_else(|| panic!("the denial is logged:\n{log}"));
    assert!(denied.contains(&key_set.authority) && denied.contains("oidc"), "{denied}");
    assert!(!log.contains(&token), "the token is not logged");
}
