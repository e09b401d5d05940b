//! The authorization matrix: every operation of the OpenAPI document, sent with no
//! credentials, bad credentials, an expired API key, as a user who administers another
//! project, and as a user whose role lacks the permission, against the objects of project
//! `alpha`. Each answer must be a refusal (401, or 403/404), never a success and never a server
//! error, except for the self-service operations in [`judge`], whose answers are checked for what
//! they must and must not show. Refusals are audited; no secret reaches the event log or the
//! server log.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderName};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::harness::{Server, TOKEN, fast_sim_config};

/// Verbose enough that a secret logged anywhere in the request path would show.
const VERBOSE_LOG: &str = "hyperplane=trace,tower_http=trace,info";

/// The document has 68 operations; fewer than this means routes went missing from it, and the
/// matrix would silently test less.
const MIN_OPERATIONS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    NoCredentials,
    BadCredentials,
    ExpiredKey,
    /// `outsider`: the built-in `admin` role, bound to project `beta` only.
    OtherProject,
    /// `powerless`: a role holding only `event:list`, bound to project `alpha`.
    WithoutPermission,
}

const CASES: [Case; 5] =
    [Case::NoCredentials, Case::BadCredentials, Case::ExpiredKey, Case::OtherProject, Case::WithoutPermission];

/// A request body: JSON, or raw bytes for image uploads.
#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

/// Names and ids of what the admin set up, and every secret used.
struct Fixture {
    alpha_project_id: String,
    template_id: String,
    group_id: String,
    instance_id: String,
    task_id: String,
    /// The host the instance runs on (it caches alpha's template).
    instance_host_id: String,
    /// Another host, a member of alpha's node group.
    member_host_id: String,
    keyholder_binding_id: String,
    keyholder_session_id: String,
    outsider_session: String,
    powerless_key: String,
    expired_key: String,
    /// Everything that must never be logged or stored: tokens, secrets, passwords, including
    /// the wrong ones sent as bad credentials.
    secrets: Vec<String>,
}

const TEMPLATE: &str = "alpha-image";
const GROUP: &str = "alpha-group";
const SNAPSHOT: &str = "alpha-snapshot";
const KEYHOLDER: &str = "keyholder";
const KEYHOLDER_KEY: &str = "keyholder-ci";
const UNUSED_ROLE: &str = "alpha-operator";
const USER_GROUP: &str = "alpha-team";
const OUTSIDER: &str = "outsider";
const POWERLESS: &str = "powerless";
const POWERLESS_KEY: &str = "powerless-key";

impl Fixture {
    /// Markers of alpha's objects: none may show in what another project's user lists.
    fn alpha_markers(&self) -> [&str; 7] {
        [&self.alpha_project_id, &self.template_id, &self.group_id, &self.instance_id, &self.task_id, TEMPLATE, GROUP]
    }

    /// The value for path parameter `name` of `route`, or `None` for a parameter this test does
    /// not know yet (a new route: teach it here).
    fn path_parameter(&self, method: &Method, route: &str, name: &str) -> Option<String> {
        let value = match (route.split('/').nth(2).unwrap_or_default(), name) {
            ("groups", "id") => &self.group_id,
            ("groups", "host_id") => &self.member_host_id,
            ("hosts", "id") | ("templates", "host_id") => &self.instance_host_id,
            ("instances", "id") => &self.instance_id,
            ("instances", "action") => "stop",
            ("instances", "name") => SNAPSHOT,
            ("keys", "id") => KEYHOLDER_KEY,
            ("projects", "id") => "alpha",
            ("role-bindings", "id") => &self.keyholder_binding_id,
            ("roles", "name") => UNUSED_ROLE,
            ("sessions", "id") => &self.keyholder_session_id,
            ("tasks", "id") => &self.task_id,
            ("templates", "id") => &self.template_id,
            ("templates", "digest") => &image_digest(),
            ("templates", "name") => "disk",
            // Version 1 has an image to download; version 2 has none yet, so an upload that got
            // through would be accepted rather than refused as a conflict.
            ("templates", "number") if *method == Method::PUT => "2",
            ("templates", "number") => "1",
            ("user-groups", "name") => USER_GROUP,
            ("user-groups", "user") | ("users", "name") => KEYHOLDER,
            _ => return None,
        };
        Some(value.to_owned())
    }

    /// A valid body for the operation, so that validation cannot answer before authorization.
    fn body(&self, method: &Method, route: &str) -> Option<Body> {
        let body = match (method.as_str(), route) {
            ("POST", "/v1/groups") => json!({ "name": "matrix-group", "project": "alpha" }),
            ("PATCH", "/v1/groups/{id}") => json!({ "description": "changed" }),
            ("POST", "/v1/groups/{id}/hosts") => json!({ "host_ids": [self.instance_host_id] }),
            ("PATCH", "/v1/hosts/{id}") => json!({ "draining": true }),
            ("POST", "/v1/instances") | ("POST", "/v1/placement/plan") => {
                json!({ "template": TEMPLATE, "version": 1, "project": "alpha" })
            }
            ("PATCH", "/v1/instances/{id}") => json!({ "name": "renamed" }),
            ("POST", "/v1/instances/{id}/snapshots") => json!({ "name": "matrix-snapshot" }),
            ("POST", "/v1/instances/{id}/save") => json!({ "template": TEMPLATE, "tag": "matrix-saved" }),
            ("POST", "/v1/keys") => json!({ "id": "matrix-key", "user": KEYHOLDER }),
            ("PATCH", "/v1/keys/{id}") => json!({ "description": "changed" }),
            ("POST", "/v1/projects") => json!({ "name": "matrix-project" }),
            ("PATCH", "/v1/projects/{id}") => json!({ "description": "changed" }),
            ("POST", "/v1/role-bindings") => json!({ "role": "admin", "user": OUTSIDER, "project": "alpha" }),
            ("POST", "/v1/roles") => json!({ "name": "matrix-role", "permissions": ["instance:list"] }),
            ("POST", "/v1/templates") => json!({ "name": "matrix-image", "arch": "amd64", "project": "alpha" }),
            ("POST", "/v1/templates/{id}/versions") => json!({ "tag": "matrix" }),
            ("PUT", "/v1/templates/{id}/versions/{number}/image")
            | ("PUT", "/v1/templates/{id}/versions/{number}/files/{name}")
            | ("PUT", "/v1/templates/{id}/chunks/{digest}") => return Some(Body::Bytes(qcow2_image())),
            ("POST", "/v1/templates/{id}/chunks/missing") => json!({ "digests": [image_digest()] }),
            ("PUT", "/v1/templates/{id}/versions/{number}/files/{name}/manifest") => json!({
                "size_bytes": qcow2_image().len(), "sha256": image_digest(), "chunk_size": 1024 * 1024,
                "chunks": [image_digest()],
            }),
            ("POST", "/v1/templates/{id}/revert") | ("POST", "/v1/templates/{id}/distribute") => json!({}),
            ("POST", "/v1/user-groups") => json!({ "name": "matrix-team" }),
            ("POST", "/v1/users") => json!({ "name": "matrix-user", "password": "matrix-password" }),
            ("PATCH", "/v1/users/{name}") => json!({ "display_name": "Changed" }),
            _ => return None,
        };
        Some(Body::Json(body))
    }

    /// The credentials of `case` for the `index`th operation.
    fn credentials(&self, case: Case, index: usize) -> Vec<(HeaderName, String)> {
        let api_key = header("x-api-key");
        match case {
            Case::NoCredentials => Vec::new(),
            Case::BadCredentials => vec![bad_credentials(index)],
            Case::ExpiredKey if index.is_multiple_of(2) => vec![(api_key, self.expired_key.clone())],
            Case::ExpiredKey => vec![(AUTHORIZATION, bearer(&self.expired_key))],
            Case::OtherProject => vec![(AUTHORIZATION, bearer(&self.outsider_session))],
            Case::WithoutPermission => vec![(api_key, self.powerless_key.clone())],
        }
    }
}

/// Bad credentials of every kind, one per operation in turn. Wrong passwords are few and spread
/// over several user names: login throttling allows 5 failures per user and 20 per address.
fn bad_credentials(index: usize) -> (HeaderName, String) {
    if index % 10 == 4 {
        let user = [KEYHOLDER, OUTSIDER, POWERLESS, "nobody"][index / 10 % 4];
        return (AUTHORIZATION, basic(user, &format!("wrong-password-{index}")));
    }
    match index % 4 {
        0 => (AUTHORIZATION, bearer(&format!("not-the-admin-token-{index}"))),
        1 => (header("x-api-key"), format!("{KEYHOLDER_KEY}:wrong-secret-{index}")),
        2 => (header("nano-session"), format!("hps_forged-session-{index}")),
        _ => (COOKIE, format!("authenticationToken=hps_forged-cookie-{index}")),
    }
}

/// Every bad credential [`bad_credentials`] sends, as secrets that must not be logged.
fn bad_secrets(operations: usize) -> Vec<String> {
    (0..operations)
        .map(|index| match index % 10 {
            4 => format!("wrong-password-{index}"),
            _ => match index % 4 {
                0 => format!("not-the-admin-token-{index}"),
                1 => format!("wrong-secret-{index}"),
                2 => format!("forged-session-{index}"),
                _ => format!("forged-cookie-{index}"),
            },
        })
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn header(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("a header name")
}

/// The SHA-256 of [`qcow2_image`]: its only chunk, and the whole file.
fn image_digest() -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(qcow2_image()))
}

fn qcow2_image() -> Vec<u8> {
    let mut image = b"QFI\xfb".to_vec();
    image.extend((4..4096).map(|index| (index % 251) as u8));
    image
}

/// One request with exactly these headers (no admin token): the status and the body, as JSON
/// when it is JSON, else as a string.
async fn call(
    server: &Server,
    method: Method,
    path: &str,
    headers: &[(HeaderName, String)],
    body: Option<Body>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request = match body {
        Some(Body::Json(body)) => request.json(&body),
        Some(Body::Bytes(bytes)) => request.body(bytes),
        None => request,
    };
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(server: &Server, method: Method, path: &str, body: Option<Value>, expected: StatusCode) -> Value {
    let (status, answer) = server.request(method.clone(), path, body).await;
    assert_eq!(status, expected, "{method} {path}: {answer}");
    answer
}

fn text_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("{field} in {value}")).to_owned()
}

/// Logs in with a password and answers the session.
async fn log_in(server: &Server, user: &str, password: &str) -> Value {
    let (status, session) =
        call(server, Method::POST, "/v1/sessions", &[(AUTHORIZATION, basic(user, password))], None).await;
    assert_eq!(status, StatusCode::CREATED, "log in as {user}: {session}");
    session
}

/// Projects `alpha` (with a template, its image, a node group, a running instance and a
/// snapshot) and `beta`, the users and credentials of every case.
async fn set_up(server: &Server) -> Fixture {
    let mut secrets = vec![TOKEN.to_owned()];
    for project in ["alpha", "beta"] {
        admin(server, Method::POST, "/v1/projects", Some(json!({ "name": project })), StatusCode::CREATED).await;
    }
    let alpha = server.get("/v1/projects/alpha").await;
    let template = json!({ "name": TEMPLATE, "arch": "amd64", "project": "alpha" });
    let template = admin(server, Method::POST, "/v1/templates", Some(template), StatusCode::CREATED).await;
    let template_id = text_of(&template, "id");
    let versions = format!("/v1/templates/{template_id}/versions");
    admin(server, Method::POST, &versions, Some(json!({ "tag": "v1" })), StatusCode::CREATED).await;
    let (status, body) = server.send_bytes(Method::PUT, &format!("{versions}/1/image"), qcow2_image().into()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let instance = json!({ "template": TEMPLATE, "project": "alpha" });
    let task = admin(server, Method::POST, "/v1/instances?wait=60", Some(instance), StatusCode::OK).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let (task_id, instance_id) = (text_of(&task, "id"), text_of(&task, "object_id"));
    let instance = server.get(&format!("/v1/instances/{instance_id}")).await;
    assert_eq!(instance["state"], "running", "{instance}");
    let instance_host_id = text_of(&instance, "host_id");
    let snapshot = json!({ "name": SNAPSHOT });
    let snapshots = format!("/v1/instances/{instance_id}/snapshots?wait=30");
    let snapshot = admin(server, Method::POST, &snapshots, Some(snapshot), StatusCode::OK).await;
    assert_eq!(snapshot["state"], "succeeded", "{snapshot}");
    // Version 2 has no image: the upload route's target.
    admin(server, Method::POST, &versions, Some(json!({ "tag": "v2" })), StatusCode::CREATED).await;

    let group = json!({ "name": GROUP, "project": "alpha" });
    let group = admin(server, Method::POST, "/v1/groups", Some(group), StatusCode::CREATED).await;
    let group_id = text_of(&group, "id");
    let hosts = server.get("/v1/hosts").await;
    let member_host_id = hosts
        .as_array()
        .expect("a list")
        .iter()
        .map(|host| text_of(host, "id"))
        .find(|id| *id != instance_host_id)
        .expect("a second host");
    let members = json!({ "host_ids": [member_host_id] });
    admin(server, Method::POST, &format!("/v1/groups/{group_id}/hosts"), Some(members), StatusCode::OK).await;

    let password = |user: &str| format!("{user}-password-1234");
    for user in [KEYHOLDER, OUTSIDER, POWERLESS] {
        let body = json!({ "name": user, "password": password(user) });
        admin(server, Method::POST, "/v1/users", Some(body), StatusCode::CREATED).await;
        secrets.push(password(user));
    }
    admin(server, Method::POST, "/v1/user-groups", Some(json!({ "name": USER_GROUP })), StatusCode::CREATED).await;
    let member = format!("/v1/user-groups/{USER_GROUP}/members/{KEYHOLDER}");
    admin(server, Method::PUT, &member, None, StatusCode::OK).await;
    let role = json!({ "name": UNUSED_ROLE, "permissions": ["instance:*"] });
    admin(server, Method::POST, "/v1/roles", Some(role), StatusCode::CREATED).await;
    let role = json!({ "name": "event-reader", "permissions": ["event:list"] });
    admin(server, Method::POST, "/v1/roles", Some(role), StatusCode::CREATED).await;
    let mut keyholder_binding_id = String::new();
    for (role, user, project) in
        [("admin", KEYHOLDER, "alpha"), ("admin", OUTSIDER, "beta"), ("event-reader", POWERLESS, "alpha")]
    {
        let binding = json!({ "role": role, "user": user, "project": project });
        let binding = admin(server, Method::POST, "/v1/role-bindings", Some(binding), StatusCode::CREATED).await;
        if user == KEYHOLDER {
            keyholder_binding_id = text_of(&binding, "id");
        }
    }

    let keyholder_session = log_in(server, KEYHOLDER, &password(KEYHOLDER)).await;
    let outsider_session = text_of(&log_in(server, OUTSIDER, &password(OUTSIDER)).await, "token");
    let mut create_key = async |id: &str, user: &str, ttl: Option<u64>| {
        let key = json!({ "id": id, "user": user, "ttl": ttl });
        let token = text_of(&admin(server, Method::POST, "/v1/keys", Some(key), StatusCode::CREATED).await, "token");
        secrets.push(token.split_once(':').expect("<id>:<secret>").1.to_owned());
        secrets.push(token.clone());
        token
    };
    create_key(KEYHOLDER_KEY, KEYHOLDER, None).await;
    let powerless_key = create_key(POWERLESS_KEY, POWERLESS, None).await;
    let expired_key = create_key("soon-expired", KEYHOLDER, Some(1)).await;
    secrets.push(text_of(&keyholder_session, "token"));
    secrets.push(outsider_session.clone());

    let started = Instant::now();
    loop {
        let (status, _) =
            call(server, Method::GET, "/v1/sessions/current", &[(header("x-api-key"), expired_key.clone())], None)
                .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the key with a ttl of 1 s expires: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    Fixture {
        alpha_project_id: text_of(&alpha, "id"),
        template_id,
        group_id,
        instance_id,
        task_id,
        instance_host_id,
        member_host_id,
        keyholder_binding_id,
        keyholder_session_id: text_of(&keyholder_session, "id"),
        outsider_session,
        powerless_key,
        expired_key,
        secrets,
    }
}

/// Every operation of the OpenAPI document as (method, route, has a request body), with
/// `DELETE /v1/sessions/current` last: it ends the other project user's session.
fn operations(openapi: &Value) -> Vec<(Method, String, bool)> {
    let mut operations = Vec::new();
    for (route, items) in openapi["paths"].as_object().expect("paths") {
        for (method, operation) in items.as_object().expect("operations") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
            operations.push((method, route.clone(), operation.get("requestBody").is_some()));
        }
    }
    operations.sort_by_key(|(method, route, _)| *method == Method::DELETE && route == "/v1/sessions/current");
    operations
}

/// `route` with its `{parameters}` filled in, or the first parameter the fixture cannot fill.
fn fill(fixture: &Fixture, method: &Method, route: &str) -> Result<String, String> {
    let mut path = String::new();
    for segment in route.split('/').skip(1) {
        path.push('/');
        match segment.strip_prefix('{').and_then(|segment| segment.strip_suffix('}')) {
            Some(name) => path.push_str(
                &fixture.path_parameter(method, route, name).ok_or_else(|| format!("no value for {{{name}}}"))?,
            ),
            None => path.push_str(segment),
        }
    }
    Ok(path)
}

fn expect_status(status: StatusCode, allowed: &[StatusCode]) -> Result<(), String> {
    if allowed.contains(&status) { Ok(()) } else { Err(format!("expected one of {allowed:?}")) }
}

fn expect(holds: bool, what: &str) -> Result<(), String> {
    if holds { Ok(()) } else { Err(what.to_owned()) }
}

/// The items of a JSON list answer.
fn items(body: &Value) -> Vec<Value> {
    body.as_array().or_else(|| body["items"].as_array()).cloned().unwrap_or_default()
}

/// Whether the answer to `method route` under `case` is right: a refusal, or for the
/// self-service operations (the exemptions), exactly what the caller may see.
///
/// | operation                          | other project (`outsider`)     | without permission (`powerless`) |
/// | ---------------------------------- | ------------------------------ | -------------------------------- |
/// | `GET /v1/sessions/current`         | 200, itself                    | 200, itself                      |
/// | `GET /v1/permissions`              | 200, the catalogue             | 200, the catalogue               |
/// | `GET /v1/sessions`                 | 200, its own sessions only     | 200, its own sessions only       |
/// | `POST /v1/sessions`                | 201, a session of its own      | 422, a key cannot start one      |
/// | `DELETE /v1/sessions/current`      | 204, its own session ends      | 422, a key has no session        |
/// | `GET /v1/keys`                     | 200, its own keys only         | 200, its own keys only           |
/// | `GET /v1/projects`                 | 200, `beta` only               | 200, `alpha` (it is a member)    |
/// | `GET /v1/projects/{id}` (`alpha`)  | refused                        | 200 (it is a member)             |
/// | `GET /v1/events`                   | 200, its own events only       | 200, its own events only         |
/// | `GET` hosts, a host, providers     | 200, none of alpha's objects   | refused                          |
/// | `GET` instances, templates, groups, tasks | 200, none of alpha's objects | refused                   |
///
/// Nodes serve every project: reading them needs `node:list` in any project, but they may not
/// name another project's node groups or templates. Lists show only the caller's projects.
///
/// Everything else: 401 without valid credentials, 403 or 404 with them.
fn judge(
    fixture: &Fixture,
    method: &Method,
    route: &str,
    case: Case,
    status: StatusCode,
    body: &Value,
) -> Result<(), String> {
    use Case::{BadCredentials, ExpiredKey, NoCredentials, OtherProject, WithoutPermission};
    let (user, actor) = match case {
        WithoutPermission => (POWERLESS, format!("{POWERLESS}/{POWERLESS_KEY}")),
        _ => (OUTSIDER, OUTSIDER.to_owned()),
    };
    let shows_nothing_of_alpha = || {
        let text = body.to_string();
        let shown: Vec<&str> = fixture.alpha_markers().into_iter().filter(|marker| text.contains(marker)).collect();
        expect(shown.is_empty(), &format!("shows alpha's {shown:?}"))
    };
    match (method.as_str(), route, case) {
        (_, _, NoCredentials | BadCredentials | ExpiredKey) => expect_status(status, &[StatusCode::UNAUTHORIZED]),
        ("GET", "/v1/sessions/current", _) => {
            expect_status(status, &[StatusCode::OK])?;
            expect(body["name"] == actor.as_str(), "answers the caller")
        }
        ("GET", "/v1/permissions", _) => expect_status(status, &[StatusCode::OK]),
        ("GET", "/v1/sessions", _) => {
            expect_status(status, &[StatusCode::OK])?;
            let sessions = items(body);
            expect(case == WithoutPermission || !sessions.is_empty(), "lists the session the request was made with")?;
            expect(sessions.iter().all(|session| session["user"] == user), "lists only the caller's sessions")?;
            expect(!body.to_string().contains(&fixture.keyholder_session_id), "lists another user's session")
        }
        ("POST", "/v1/sessions", OtherProject) => {
            expect_status(status, &[StatusCode::CREATED])?;
            expect(body["user"] == user, "starts a session of the caller")
        }
        ("POST", "/v1/sessions", WithoutPermission) | ("DELETE", "/v1/sessions/current", WithoutPermission) => {
            expect_status(status, &[StatusCode::UNPROCESSABLE_ENTITY])
        }
        ("DELETE", "/v1/sessions/current", OtherProject) => expect_status(status, &[StatusCode::NO_CONTENT]),
        ("GET", "/v1/keys", _) => {
            expect_status(status, &[StatusCode::OK])?;
            let keys = items(body);
            expect(case == OtherProject || keys.iter().any(|key| key["id"] == POWERLESS_KEY), "lists its own key")?;
            expect(keys.iter().all(|key| key["user"] == user), "lists only the caller's keys")
        }
        ("GET", "/v1/projects", _) => {
            expect_status(status, &[StatusCode::OK])?;
            let names: Vec<Value> = items(body).iter().map(|project| project["name"].clone()).collect();
            let member_of = if case == OtherProject { "beta" } else { "alpha" };
            expect(names == [json!(member_of)], &format!("lists exactly the project the caller is in, {member_of}"))
        }
        ("GET", "/v1/projects/{id}", WithoutPermission) => {
            expect_status(status, &[StatusCode::OK])?;
            expect(body["name"] == "alpha", "answers the project the caller is a member of")
        }
        ("GET", "/v1/events", _) => {
            expect_status(status, &[StatusCode::OK])?;
            let text = body.as_str().unwrap_or_default();
            let events: Vec<Value> = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
            expect(events.len() == text.lines().count(), "answers NDJSON")?;
            expect(events.iter().all(|event| event["actor"] == actor.as_str()), "shows only the caller's own events")
        }
        ("GET", "/v1/hosts" | "/v1/hosts/{id}" | "/v1/providers", OtherProject)
        | ("GET", "/v1/instances" | "/v1/templates" | "/v1/groups" | "/v1/tasks", OtherProject) => {
            expect_status(status, &[StatusCode::OK])?;
            shows_nothing_of_alpha()
        }
        _ => expect_status(status, &[StatusCode::FORBIDDEN, StatusCode::NOT_FOUND]),
    }
}

fn excerpt(body: &Value) -> String {
    let text = match body {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.chars().take(300).collect()
}

#[tokio::test]
async fn every_operation_refuses_callers_without_access_to_alpha() {
    let server = Server::start_capturing_log(&fast_sim_config(), VERBOSE_LOG).await;
    let mut fixture = set_up(&server).await;

    let (status, health) = call(&server, Method::GET, "/health", &[], None).await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")), "/health is public: {health}");
    for path in ["/v1/openapi.json", "/metrics"] {
        assert_eq!(call(&server, Method::GET, path, &[], None).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }

    let operations = operations(&server.get("/v1/openapi.json").await);
    assert!(
        operations.len() >= MIN_OPERATIONS,
        "the OpenAPI document has {} operations, expected at least {MIN_OPERATIONS}",
        operations.len()
    );
    fixture.secrets.extend(bad_secrets(operations.len()));

    let mut failures = Vec::new();
    let mut checked = 0;
    let mut forbidden = [0usize; 2];
    for (index, (method, route, has_body)) in operations.iter().enumerate() {
        let path = match fill(&fixture, method, route) {
            Ok(path) => path,
            Err(problem) => {
                failures.push(format!("{method} {route}: {problem}; teach Fixture::path_parameter"));
                continue;
            }
        };
        let body = fixture.body(method, route);
        if *has_body && body.is_none() {
            failures.push(format!("{method} {route}: no request body; teach Fixture::body"));
            continue;
        }
        if *method == Method::GET {
            // The control: the path names objects that exist, so a 404 below is a refusal.
            let (status, answer) = call(&server, Method::GET, &path, &[(AUTHORIZATION, bearer(TOKEN))], None).await;
            if status != StatusCode::OK {
                failures.push(format!("GET {path} [admin]: {status}, expected 200; body: {}", excerpt(&answer)));
            }
        }
        for case in CASES {
            let (status, answer) =
                call(&server, method.clone(), &path, &fixture.credentials(case, index), body.clone()).await;
            checked += 1;
            if status == StatusCode::CREATED && route == "/v1/sessions" {
                fixture.secrets.extend(answer["token"].as_str().map(str::to_owned));
            }
            if status == StatusCode::FORBIDDEN {
                forbidden[usize::from(case == Case::WithoutPermission)] += 1;
            }
            let verdict = if status.is_server_error() {
                Err("a server error".to_owned())
            } else {
                judge(&fixture, method, route, case, status, &answer)
            };
            if let Err(problem) = verdict {
                failures.push(format!("{method} {path} [{case:?}]: {status}: {problem}; body: {}", excerpt(&answer)));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} checks failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(checked, operations.len() * CASES.len());

    let (status, me) = call(
        &server,
        Method::GET,
        &format!("/v1/users/{POWERLESS}"),
        &fixture.credentials(Case::WithoutPermission, 0),
        None,
    )
    .await;
    assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some(POWERLESS)), "a user reads itself: {me}");

    let events = server.events_since(0).await;
    let denied: Vec<&Value> = events.iter().filter(|event| event["type"] == "audit.denied").collect();
    for (refused, actor, scheme) in
        [(forbidden[0], OUTSIDER.to_owned(), "token"), (forbidden[1], format!("{POWERLESS}/{POWERLESS_KEY}"), "apikey")]
    {
        let audited: Vec<&&Value> = denied.iter().filter(|event| event["actor"] == actor.as_str()).collect();
        assert!(refused > 0, "{actor} was refused with 403 at least once");
        assert_eq!(audited.len(), refused, "each 403 answered to {actor} is audited: {audited:?}");
        for event in audited {
            assert_eq!(
                (event["scheme"].as_str(), event["outcome"].as_str()),
                (Some(scheme), Some("denied")),
                "{event}"
            );
            assert!(event["source"].as_str().is_some_and(|source| source.starts_with("127.0.0.1:")), "{event}");
        }
    }

    let events = serde_json::to_string(&events).expect("json");
    let log = server.log();
    assert!(log.contains("auth schemes loaded"), "the log was captured");
    for secret in &fixture.secrets {
        assert!(!events.contains(secret.as_str()), "the event log contains the secret {secret:?}");
        assert!(!log.contains(secret.as_str()), "the server log contains the secret {secret:?}");
    }
}
