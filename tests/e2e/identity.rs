//! Users, sessions, API keys and permissions through the real server and the bundled auth
//! schemes: logging in with a password, every way of sending a session token, logout, keys
//! until revoked, refusals in the audit trail, throttling, validation, the CLI, and that no
//! secret reaches the log or the event log.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use reqwest::header::{AUTHORIZATION, COOKIE, HeaderName, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::harness::{Server, TOKEN, fast_sim_config};

/// Verbose enough that a secret logged anywhere in the request path would show.
const VERBOSE_LOG: &str = "hyperplane=trace,tower_http=trace,info";

/// One request with exactly these headers (no admin token), answering the status and JSON body.
async fn call(
    server: &Server,
    method: Method,
    path: &str,
    headers: &[(HeaderName, &str)],
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.expect("a body");
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn header(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("a header name")
}

async fn create_user(server: &Server, name: &str, password: &str) {
    let (status, body) = server.post("/v1/users", json!({ "name": name, "password": password })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!((body["name"].as_str(), body["has_password"].as_bool()), (Some(name), Some(true)), "{body}");
    assert!(body.get("password_hash").is_none() && body.get("password").is_none(), "{body}");
}

/// Logs in with HTTP basic auth and answers the session token.
async fn log_in(server: &Server, user: &str, password: &str) -> String {
    let (status, _, session) =
        call(server, Method::POST, "/v1/sessions", &[(AUTHORIZATION, &basic(user, password))], None).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert_eq!(session["user"], user, "{session}");
    let token = session["token"].as_str().expect("the token is shown once").to_owned();
    assert!(token.starts_with("hps_"), "{token}");
    token
}

/// Who `headers` authenticate as, or the failing status.
async fn whoami(server: &Server, headers: &[(HeaderName, &str)]) -> Result<Value, StatusCode> {
    match call(server, Method::GET, "/v1/sessions/current", headers, None).await {
        (StatusCode::OK, _, caller) => Ok(caller),
        (status, _, _) => Err(status),
    }
}

/// No secret appears in what the server logged, nor anywhere in the event log.
async fn assert_secrets_kept(server: &Server, secrets: &[&str]) {
    let log = server.log();
    assert!(log.contains("auth schemes loaded"), "the log was captured: {log}");
    let events = serde_json::to_string(&server.events_since(0).await).expect("json");
    for secret in secrets {
        assert!(!log.contains(secret), "the server log contains the secret {secret:?}");
        assert!(!events.contains(secret), "the event log contains the secret {secret:?}");
    }
}

#[tokio::test]
async fn a_user_logs_in_with_a_password_and_the_session_token_works_until_logout() {
    let server = Server::start_capturing_log(&fast_sim_config(), VERBOSE_LOG).await;
    let password = "correct horse battery";
    create_user(&server, "alice", password).await;
    let token = log_in(&server, "alice", password).await;

    let as_bearer = bearer(&token);
    let as_cookie = format!("authenticationToken={token}");
    let ways: [(&str, (HeaderName, &str)); 3] = [
        ("token", (AUTHORIZATION, &as_bearer)),
        ("session", (header("nano-session"), &token)),
        ("token", (COOKIE, &as_cookie)),
    ];
    let mut session_id = Value::Null;
    for (scheme, sent) in &ways {
        let caller = whoami(&server, std::slice::from_ref(sent)).await.expect("the session authenticates");
        assert_eq!((caller["name"].as_str(), caller["kind"].as_str()), (Some("alice"), Some("user")), "{caller}");
        assert_eq!(caller["scheme"], *scheme, "{caller}");
        assert!(caller["source"].as_str().is_some_and(|source| source.starts_with("127.0.0.1:")), "{caller}");
        assert_eq!(caller["permissions"], json!([]), "no grants yet: {caller}");
        assert!(caller["session_id"].is_string(), "{caller}");
        session_id = caller["session_id"].clone();
    }
    let (status, _, sessions) = call(&server, Method::GET, "/v1/sessions", &[ways[0].1.clone()], None).await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
    let listed: Vec<&Value> = sessions.as_array().expect("a list").iter().map(|session| &session["id"]).collect();
    assert_eq!(listed, [&session_id], "alice sees her one session");
    assert!(sessions[0].get("token").is_none(), "a listed session never shows its token: {sessions}");

    let admin = whoami(&server, &[(AUTHORIZATION, &bearer(TOKEN))]).await.expect("the admin token works");
    assert_eq!((admin["kind"].as_str(), admin["permissions"].clone()), (Some("admin"), json!(["*"])), "{admin}");

    let (status, _, body) = call(&server, Method::DELETE, "/v1/sessions/current", &[ways[1].1.clone()], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for (_, sent) in &ways {
        assert_eq!(whoami(&server, std::slice::from_ref(sent)).await, Err(StatusCode::UNAUTHORIZED), "{sent:?}");
    }
    let (status, _, body) =
        call(&server, Method::DELETE, "/v1/sessions/current", &[(AUTHORIZATION, &bearer(TOKEN))], None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the admin token has no session to end: {body}");

    let events = server.events_since(0).await;
    let ended = events.iter().find(|event| event["type"] == "session.ended").expect("logout is an event");
    assert_eq!((ended["actor"].as_str(), ended["scheme"].as_str()), (Some("alice"), Some("session")), "{ended}");
    assert_secrets_kept(&server, &[password, &token, token.trim_start_matches("hps_")]).await;
}

#[tokio::test]
async fn an_api_key_authenticates_until_it_is_revoked() {
    let server = Server::start_capturing_log(&fast_sim_config(), VERBOSE_LOG).await;
    let password = "bobs-own-password";
    create_user(&server, "bob", password).await;
    let (status, created) = server.post("/v1/keys", json!({ "id": "ci-runner", "user": "bob", "ttl": 3600 })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("the token is shown once").to_owned();
    let secret = token.strip_prefix("ci-runner:").expect("the token is <id>:<secret>").to_owned();
    assert!(created["expires_at"].is_string() && created["revoked_at"].is_null(), "{created}");

    let api_key = header("x-api-key");
    for (sent, scheme) in [((api_key.clone(), token.as_str()), "apikey"), ((AUTHORIZATION, &bearer(&token)), "token")] {
        let caller = whoami(&server, &[sent]).await.expect("the key authenticates");
        assert_eq!((caller["name"].as_str(), caller["kind"].as_str()), (Some("bob/ci-runner"), Some("api_key")));
        assert_eq!((caller["key_id"].as_str(), caller["scheme"].as_str()), (Some("ci-runner"), Some(scheme)));
    }
    let (status, _, keys) = call(&server, Method::GET, "/v1/keys", &[(api_key.clone(), &token)], None).await;
    assert_eq!(status, StatusCode::OK, "bob lists his own keys: {keys}");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert!(keys[0].get("token").is_none(), "{keys}");

    let (status, patched) =
        server.request(Method::PATCH, "/v1/keys/ci-runner", Some(json!({ "description": "CI" }))).await;
    assert_eq!((status, patched["description"].as_str()), (StatusCode::OK, Some("CI")), "{patched}");
    let (status, revoked) = server.request(Method::DELETE, "/v1/keys/ci-runner", None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "the revoked key is answered: {revoked}");
    assert_eq!(whoami(&server, &[(api_key, &token)]).await, Err(StatusCode::UNAUTHORIZED), "revoked at once");
    assert_eq!(whoami(&server, &[(AUTHORIZATION, &bearer(&token))]).await, Err(StatusCode::UNAUTHORIZED));
    let listed = server.get("/v1/keys/ci-runner").await;
    assert!(listed["revoked_at"].is_string(), "a revoked key stays listed: {listed}");
    assert_secrets_kept(&server, &[password, &token, &secret]).await;
}

#[tokio::test]
async fn a_user_without_grants_is_refused_and_the_refusal_is_audited() {
    let server = Server::start(&fast_sim_config()).await;
    let password = "carols-password";
    create_user(&server, "carol", password).await;
    let carol = [(AUTHORIZATION, basic("carol", password))];
    let carol: Vec<(HeaderName, &str)> = carol.iter().map(|(name, value)| (name.clone(), value.as_str())).collect();

    let (status, _, body) = call(&server, Method::GET, "/v1/users", &carol, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("user:list") && message.contains("carol"), "{message}");
    let events = server.events_since(0).await;
    let denied = events.iter().find(|event| event["type"] == "audit.denied").expect("the refusal is an event");
    assert_eq!(denied["actor"], "carol", "{denied}");
    assert_eq!(denied["scheme"], "basic", "{denied}");
    assert!(denied["source"].as_str().is_some_and(|source| source.starts_with("127.0.0.1:")), "{denied}");
    assert_eq!(denied["outcome"], "denied", "{denied}");
    assert_eq!(denied["data"]["permission"], "user:list", "{denied}");

    let (status, _, catalogue) = call(&server, Method::GET, "/v1/permissions", &carol, None).await;
    assert_eq!(status, StatusCode::OK, "any authenticated caller reads the catalogue: {catalogue}");
    let user = catalogue.as_array().expect("a list").iter().find(|entry| entry["resource"] == "user").expect("user");
    assert!(
        user["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|action| action["name"] == "list"
                && action["description"].as_str().is_some_and(|text| !text.is_empty()))
    );
    let (status, _, me) = call(&server, Method::GET, "/v1/users/carol", &carol, None).await;
    assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some("carol")), "a user reads herself: {me}");

    let (status, role) = server.post("/v1/roles", json!({ "name": "user-reader", "permissions": ["user:list"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (status, binding) = server.post("/v1/role-bindings", json!({ "role": "user-reader", "user": "carol" })).await;
    assert_eq!(status, StatusCode::CREATED, "{binding}");
    let (status, _, users) = call(&server, Method::GET, "/v1/users", &carol, None).await;
    assert_eq!(status, StatusCode::OK, "granted: {users}");
    let caller = whoami(&server, &carol).await.expect("carol");
    assert_eq!(caller["permissions"], json!(["user:list"]), "{caller}");

    let bindings = server.get("/v1/role-bindings").await;
    assert!(bindings.as_array().expect("a list").iter().any(|found| found["id"] == binding["id"]), "{bindings}");
    let binding_path = format!("/v1/role-bindings/{}", binding["id"].as_str().expect("id"));
    let (status, body) = server.request(Method::DELETE, &binding_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(call(&server, Method::GET, "/v1/users", &carol, None).await.0, StatusCode::FORBIDDEN, "revoked");
    let (status, body) = server.request(Method::DELETE, "/v1/roles/user-reader", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn repeated_wrong_passwords_are_throttled() {
    let server = Server::start_capturing_log(&fast_sim_config(), VERBOSE_LOG).await;
    let password = "dave-knows-this";
    create_user(&server, "dave", password).await;
    let wrong = ["guess-1", "guess-2", "guess-3", "guess-4", "guess-5"];
    for guess in wrong {
        let (status, _, body) =
            call(&server, Method::POST, "/v1/sessions", &[(AUTHORIZATION, &basic("dave", guess))], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{guess}: {body}");
    }
    for attempt in ["guess-6", password] {
        let (status, headers, body) =
            call(&server, Method::POST, "/v1/sessions", &[(AUTHORIZATION, &basic("dave", attempt))], None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let retry_after: u64 = headers[RETRY_AFTER].to_str().expect("ascii").parse().expect("seconds");
        assert!((1..=15 * 60).contains(&retry_after), "{retry_after}");
    }
    let failures =
        server.events_since(0).await.into_iter().filter(|event| event["type"] == "audit.login_failed").count();
    assert_eq!(failures, wrong.len(), "each wrong password is in the audit trail");
    let mut secrets = wrong.to_vec();
    secrets.push(password);
    assert_secrets_kept(&server, &secrets).await;
}

#[tokio::test]
async fn invalid_identity_requests_are_refused_naming_the_field_or_value() {
    let server = Server::start(&fast_sim_config()).await;
    server.post("/v1/user-groups", json!({ "name": "devs" })).await;
    create_user(&server, "erin", "erins-password").await;
    let check = |path: &'static str, method: Method, body: Value, status: StatusCode, fragment: &'static str| {
        let server = &server;
        async move {
            let (got, answer) = server.request(method, path, Some(body)).await;
            let message = answer["error"]["message"].as_str().unwrap_or_default().to_owned();
            assert_eq!(got, status, "{path}: {answer}");
            assert!(message.contains(fragment), "{path}: {message:?} should name {fragment:?}");
        }
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    check("/v1/users", Method::POST, json!({ "name": "no spaces" }), unprocessable, "user name 'no spaces'").await;
    check("/v1/users", Method::POST, json!({ "name": "frank", "password": "short" }), unprocessable, "password").await;
    check("/v1/users", Method::POST, json!({ "name": "frank", "groups": ["ops"] }), unprocessable, "'ops'").await;
    check("/v1/users", Method::POST, json!({ "name": "erin" }), StatusCode::CONFLICT, "'erin'").await;
    check("/v1/users", Method::POST, json!({ "name": "g", "admin": true }), StatusCode::BAD_REQUEST, "admin").await;
    check("/v1/users/erin", Method::PATCH, json!({ "password": "1234" }), unprocessable, "password").await;
    check("/v1/user-groups", Method::POST, json!({ "name": "a/b" }), unprocessable, "user group name").await;
    check("/v1/roles", Method::POST, json!({ "name": "r", "permissions": ["vm:list"] }), unprocessable, "'vm'").await;
    check("/v1/roles", Method::POST, json!({ "name": "r", "permissions": ["user:fly"] }), unprocessable, "'fly'").await;
    check("/v1/roles", Method::POST, json!({ "name": "r", "permissions": [] }), unprocessable, "permission").await;
    let grant = json!({ "role": "nope", "user": "erin" });
    check("/v1/role-bindings", Method::POST, grant, unprocessable, "role 'nope'").await;
    let grant = json!({ "role": "viewer", "user": "nobody" });
    check("/v1/role-bindings", Method::POST, grant, unprocessable, "user 'nobody'").await;
    let grant = json!({ "role": "viewer", "user": "erin", "group": "devs" });
    check("/v1/role-bindings", Method::POST, grant, unprocessable, "exactly one").await;
    let key = json!({ "id": "bad id", "user": "erin" });
    check("/v1/keys", Method::POST, key, unprocessable, "key id").await;
    let key = json!({ "id": "k", "user": "erin", "ttl": 0 });
    check("/v1/keys", Method::POST, key, unprocessable, "ttl").await;
    let key = json!({ "id": "k", "user": "erin", "groups": ["devs"] });
    check("/v1/keys", Method::POST, key, unprocessable, "'devs'").await;

    let (status, body) = server.request(Method::DELETE, "/v1/role-bindings/not-a-uuid", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server.request(Method::DELETE, "/v1/roles/viewer", None).await;
    assert!(status.is_client_error(), "a built-in role stays: {status} {body}");
    let (status, body) = server.request(Method::DELETE, "/v1/users/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn users_and_groups_are_managed_and_documented() {
    let server = Server::start(&fast_sim_config()).await;
    let (status, group) = server.post("/v1/user-groups", json!({ "name": "ops", "description": "on call" })).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    create_user(&server, "gina", "ginas-password").await;
    let (status, group) = server.request(Method::PUT, "/v1/user-groups/ops/members/gina", None).await;
    assert_eq!((status, group["members"].clone()), (StatusCode::OK, json!(["gina"])), "{group}");
    assert_eq!(server.get("/v1/users/gina").await["groups"], json!(["ops"]));
    let (status, group) = server.request(Method::DELETE, "/v1/user-groups/ops/members/gina", None).await;
    assert_eq!((status, group["members"].clone()), (StatusCode::OK, json!([])), "{group}");

    let (status, user) = server
        .request(Method::PATCH, "/v1/users/gina", Some(json!({ "display_name": "Gina", "disabled": true })))
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!((user["display_name"].as_str(), user["disabled"].as_bool()), (Some("Gina"), Some(true)));
    let (status, _, _) =
        call(&server, Method::POST, "/v1/sessions", &[(AUTHORIZATION, &basic("gina", "ginas-password"))], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a disabled user cannot log in");
    let names: Vec<Value> =
        server.get("/v1/users").await.as_array().expect("a list").iter().map(|user| user["name"].clone()).collect();
    assert_eq!(names, [json!("gina")]);
    let (status, body) = server.request(Method::DELETE, "/v1/users/gina", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = server.request(Method::DELETE, "/v1/user-groups/ops", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(server.get("/v1/users").await, json!([]));
    let roles = server.get("/v1/roles").await;
    let builtin: Vec<&str> =
        roles.as_array().expect("a list").iter().filter_map(|role| role["name"].as_str()).collect();
    assert!(["admin", "member", "viewer"].iter().all(|name| builtin.contains(name)), "{builtin:?}");

    let openapi = server.get("/v1/openapi.json").await;
    for path in [
        "/v1/users",
        "/v1/users/{name}",
        "/v1/user-groups/{name}/members/{user}",
        "/v1/roles",
        "/v1/role-bindings/{id}",
        "/v1/permissions",
        "/v1/keys/{id}",
        "/v1/sessions",
        "/v1/sessions/current",
        "/v1/sessions/{id}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is documented");
    }
    for schema in ["NewUser", "User", "CreatedApiKey", "StartedSession", "CurrentCaller", "ResourcePermissions"] {
        assert!(openapi["components"]["schemas"][schema].is_object(), "schema {schema} is documented");
    }
}

fn hyperplane(server: &Server, token: Option<&str>, arguments: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hyperplane"));
    command.args(["--url", &server.url]).args(arguments).env_remove("HYPERPLANE_TOKEN");
    if let Some(token) = token {
        command.env("HYPERPLANE_TOKEN", token);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hyperplane binary");
    child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("the command ends")
}

fn succeed(server: &Server, token: Option<&str>, arguments: &[&str], stdin: &str) -> String {
    let output = hyperplane(server, token, arguments, stdin);
    assert!(output.status.success(), "hyperplane {arguments:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test]
async fn the_cli_manages_identities_and_logs_in_and_out() {
    let server = Server::start(&fast_sim_config()).await;
    let admin = Some(TOKEN);
    succeed(&server, admin, &["user-group", "create", "devs"], "");
    let created =
        succeed(&server, admin, &["user", "create", "hana", "--group", "devs", "--password-stdin"], "hanas-password\n");
    assert!(created.contains("hana") && created.contains("devs"), "{created}");
    let role = succeed(&server, admin, &["role", "create", "lister", "--permission", "user:list"], "");
    assert!(role.contains("user:list"), "{role}");
    let granted = succeed(&server, admin, &["role", "grant", "lister", "--group", "devs", "--json"], "");
    let binding: Value = serde_json::from_str(&granted).expect("json");
    assert_eq!(binding[0]["group"], "devs", "{binding}");
    assert!(succeed(&server, admin, &["role", "bindings"], "").contains("lister"));

    let login = succeed(&server, None, &["login", "hana", "--password-stdin"], "hanas-password\n");
    let token = login.trim().strip_prefix("export HYPERPLANE_TOKEN=").expect("an export line").to_owned();
    assert!(token.starts_with("hps_"), "{login}");
    let me: Value = serde_json::from_str(&succeed(&server, Some(&token), &["whoami", "--json"], "")).expect("json");
    assert_eq!((me[0]["name"].as_str(), me[0]["permissions"].clone()), (Some("hana"), json!(["user:list"])), "{me}");
    assert!(succeed(&server, Some(&token), &["user", "list"], "").contains("hana"), "granted through devs");

    let key = succeed(&server, Some(&token), &["key", "create", "hana-ci", "--ttl", "600"], "");
    assert!(key.contains("hana-ci:") && key.contains("shown only now"), "{key}");
    let key_token = key.lines().find_map(|line| line.split(": ").nth(1).filter(|value| value.starts_with("hana-ci:")));
    let key_token = key_token.expect("the token line").trim().to_owned();
    assert!(succeed(&server, Some(&key_token), &["whoami"], "").contains("hana/hana-ci"));
    assert!(succeed(&server, Some(&token), &["key", "revoke", "hana-ci"], "").contains("hana-ci"));
    assert!(!hyperplane(&server, Some(&key_token), &["whoami"], "").status.success(), "revoked");

    succeed(&server, Some(&token), &["logout"], "");
    let after = hyperplane(&server, Some(&token), &["whoami"], "");
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("401"), "{}", String::from_utf8_lossy(&after.stderr));
    let wrong = hyperplane(&server, None, &["login", "hana", "--password-stdin"], "not-her-password\n");
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("401"));

    succeed(&server, admin, &["user-group", "remove", "devs", "hana"], "");
    succeed(&server, admin, &["user", "update", "hana", "--display-name", "Hana", "--disable"], "");
    let shown: Value =
        serde_json::from_str(&succeed(&server, admin, &["user", "show", "hana", "--json"], "")).expect("json");
    assert_eq!((shown[0]["display_name"].as_str(), shown[0]["disabled"].as_bool()), (Some("Hana"), Some(true)));
    succeed(&server, admin, &["user", "delete", "hana"], "");
    let binding_id = binding[0]["id"].as_str().expect("id");
    succeed(&server, admin, &["role", "revoke", binding_id], "");
    succeed(&server, admin, &["role", "delete", "lister"], "");
    succeed(&server, admin, &["user-group", "delete", "devs"], "");
    assert!(!succeed(&server, admin, &["user", "list"], "").contains("hana"));
}

#[tokio::test]
async fn failed_and_unauthenticated_changes_are_in_the_audit_trail() {
    let server = Server::start(&fast_sim_config()).await;
    let (status, _, _) =
        call(&server, Method::POST, "/v1/templates", &[(AUTHORIZATION, "Bearer not-a-token")], Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server.post("/v1/templates", json!({ "name": "bad name!", "arch": "amd64" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Reads are not audited, failing or not.
    assert_eq!(call(&server, Method::GET, "/v1/templates/nothing", &[], None).await.0, StatusCode::UNAUTHORIZED);

    let events = server.events_since(0).await;
    let unauthenticated: Vec<&Value> = events.iter().filter(|event| event["type"] == "audit.unauthenticated").collect();
    assert_eq!(unauthenticated.len(), 1, "{unauthenticated:?}");
    let event = unauthenticated[0];
    assert_eq!((event["actor"].as_str(), event["outcome"].as_str()), (Some("anonymous"), Some("denied")), "{event}");
    assert_eq!((event["data"]["method"].as_str(), event["data"]["status"].as_u64()), (Some("POST"), Some(401)));
    assert!(event["source"].as_str().is_some_and(|source| source.starts_with("127.0.0.1:")), "{event}");
    let failed = events.iter().find(|event| event["type"] == "audit.call_failed").expect("the 422 is recorded");
    assert_eq!((failed["actor"].as_str(), failed["scheme"].as_str()), (Some("admin"), Some("token")), "{failed}");
    assert_eq!((failed["outcome"].as_str(), failed["data"]["status"].as_u64()), (Some("failed"), Some(422)));
    assert_eq!(failed["object_id"], "/v1/templates", "{failed}");
    assert!(!events.iter().any(|event| event.to_string().contains("not-a-token")), "no token in events");
}

#[tokio::test]
async fn the_cli_manages_projects_and_their_quotas() {
    let server = Server::start(&fast_sim_config()).await;
    let admin = Some(TOKEN);
    let created = succeed(&server, admin, &["project", "create", "lab", "--max-instances", "1"], "");
    assert!(created.contains("lab"), "{created}");
    succeed(&server, admin, &["template", "create", "lab-base", "--project", "lab"], "");
    succeed(&server, admin, &["instance", "create", "--template", "lab-base", "--project", "lab"], "");
    let refused = hyperplane(&server, admin, &["instance", "create", "--template", "lab-base", "--project", "lab"], "");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("max_instances is 1"), "{message}");
    let usage = succeed(&server, admin, &["--json", "project", "show", "lab"], "");
    let usage: Value = serde_json::from_str(&usage).expect("json");
    assert_eq!(
        (usage[0]["usage"]["instances"].as_u64(), usage[0]["quota"]["max_instances"].as_u64()),
        (Some(1), Some(1))
    );
    succeed(&server, admin, &["project", "update", "lab", "--max-instances", "2"], "");
    succeed(&server, admin, &["instance", "create", "--template", "lab-base", "--project", "lab"], "");
    let listed = succeed(&server, admin, &["project", "list"], "");
    assert!(listed.contains("lab") && listed.contains("default"), "{listed}");
    let busy = hyperplane(&server, admin, &["project", "delete", "lab"], "");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("still has instances"), "{busy:?}");
}
