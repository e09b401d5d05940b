//! Authentication through the real server and the bundled auth schemes (the default chain:
//! token, apikey, session, basic; and a configured one): challenges, the admin token as a
//! bearer or a cookie, rejections, their metrics, and a scheme that fails to load stopping the
//! start.

use std::process::Command;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};

use super::harness::{Server, TOKEN, fast_sim_config};

async fn get(server: &Server, headers: &[(reqwest::header::HeaderName, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}/v1/hosts", server.url));
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.expect("the server answers")
}

fn challenges(response: &reqwest::Response) -> Vec<String> {
    response.headers().get_all(WWW_AUTHENTICATE).iter().map(|value| value.to_str().expect("ascii").to_owned()).collect()
}

#[tokio::test]
async fn the_default_schemes_accept_the_admin_token_and_say_what_they_accept() {
    let server = Server::start(&fast_sim_config()).await;

    let missing = get(&server, &[]).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let offered = challenges(&missing);
    assert!(offered.contains(&"Bearer realm=\"hyperplane\"".to_owned()), "{offered:?}");
    assert!(offered.contains(&"Basic realm=\"hyperplane\"".to_owned()), "{offered:?}");
    let body: serde_json::Value = missing.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("apikey") && message.contains("basic"), "{message}");

    assert_eq!(get(&server, &[(AUTHORIZATION, &format!("Bearer {TOKEN}"))]).await.status(), StatusCode::OK);
    let cookie = format!("authenticationToken={TOKEN}");
    assert_eq!(get(&server, &[(COOKIE, &cookie)]).await.status(), StatusCode::OK);

    let rejected = get(&server, &[(AUTHORIZATION, "Bearer not-the-token")]).await;
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = rejected.json().await.expect("json");
    assert!(body["error"]["message"].as_str().expect("message").starts_with("token: "), "{body}");
    let unknown_key = get(&server, &[("x-api-key".parse().expect("name"), "nobody:secret")]).await;
    assert_eq!(unknown_key.status(), StatusCode::UNAUTHORIZED);

    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (scheme, outcome) in
        [("token", "authenticated"), ("token", "rejected"), ("apikey", "rejected"), ("", "missing")]
    {
        let counted = metrics.lines().any(|line| {
            line.starts_with("hyperplane_auth_requests_total{")
                && line.contains(&format!("scheme=\"{scheme}\""))
                && line.contains(&format!("outcome=\"{outcome}\""))
        });
        assert!(counted, "{scheme} {outcome} is counted in:\n{metrics}");
    }
}

#[tokio::test]
async fn only_the_configured_schemes_are_asked() {
    let config = format!("{}\n[[auth.schemes]]\nname = \"basic\"\nplugin = \"auth-basic\"\n", fast_sim_config());
    let server = Server::start(&config).await;
    let refused = get(&server, &[(AUTHORIZATION, &format!("Bearer {TOKEN}"))]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "no token scheme, so the admin token is not asked about");
    assert_eq!(challenges(&refused), ["Basic realm=\"hyperplane\""]);
}

#[test]
fn a_scheme_that_does_not_load_stops_the_start() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let config = directory.path().join("hyperplane.toml");
    std::fs::write(
        &config,
        "[[auth.schemes]]\nname = \"token\"\nplugin = \"auth-token\"\nconfig = { cookies = \"x\" }\n",
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(directory.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("HYPERPLANE_ADMIN_TOKEN", TOKEN)
        .env("HYPERPLANE_LOG", "error")
        .output()
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot load auth scheme token (auth.schemes[0], plugin auth-token)"), "{stderr}");
}
