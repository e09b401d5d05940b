//! Starting, stopping and talking to a real server process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const TOKEN: &str = "e2e-admin-token";

/// A simulated fleet that answers quickly: 5 hosts of 20 vCPU / 64 GiB.
pub fn fast_sim_config() -> String {
    r#"
[reconcile]
interval_secs = 0.5

[[providers]]
name = "sim"
driver = "driver-sim"
config = { hosts = 5, cpu = 20, ram_mb = 65536, delays_ms = { create = 20, start = 30, stop = 20, restart = 30, delete = 10, pull = 30 } }
"#
    .into()
}

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    config_file: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    /// With [`Server::start_capturing_log`]: the `HYPERPLANE_LOG` filter and every line the
    /// server has written to stderr.
    captured_log: Option<(String, Arc<Mutex<String>>)>,
    _directory: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with `config` (TOML) on a fresh data directory.
    pub async fn start(config: &str) -> Server {
        Server::start_with(config, None)
    }

    /// Like [`Server::start`], keeping what the server logs at `filter` (an `HYPERPLANE_LOG`
    /// value) for [`Server::log`] instead of passing it through.
    pub async fn start_capturing_log(config: &str, filter: &str) -> Server {
        Server::start_with(config, Some((filter.to_owned(), Arc::default())))
    }

    fn start_with(config: &str, captured_log: Option<(String, Arc<Mutex<String>>)>) -> Server {
        let directory = tempfile::tempdir().expect("temporary directory");
        let data_dir = directory.path().join("data");
        let config_file = directory.path().join("hyperplane.toml");
        std::fs::write(&config_file, with_shared_plugin_cache(config)).expect("write config");
        let mut server = Server {
            url: String::new(),
            data_dir,
            config_file,
            child: None,
            http: reqwest::Client::new(),
            captured_log,
            _directory: Some(directory),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_file)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("HYPERPLANE_ADMIN_TOKEN", TOKEN)
            .env("HYPERPLANE_LOG", self.captured_log.as_ref().map_or("error", |(filter, _)| filter.as_str()))
            .stdout(Stdio::piped())
            .stderr(if self.captured_log.is_some() { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .expect("start the hyperplane binary");
        if let (Some((_, log)), Some(stderr)) = (&self.captured_log, child.stderr.take()) {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Hyperplane is listening on ") {
                    let _ = sender.send(url.trim().to_owned());
                }
            }
        });
        self.url = receiver.recv_timeout(Duration::from_secs(120)).expect("the server starts and prints its address");
        self.child = Some(child);
    }

    /// What the server has logged so far (empty unless started with
    /// [`Server::start_capturing_log`]).
    pub fn log(&self) -> String {
        self.captured_log
            .as_ref()
            .map_or_else(String::new, |(_, log)| log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// The log once one of its lines contains every one of `needles`. Lines reach the log
    /// through a pipe and a reader thread, possibly after the response that caused them: this
    /// waits for them (up to ten seconds, then fails showing the log).
    pub async fn log_once_a_line_has(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.lines().any(|line| needles.iter().all(|needle| line.contains(needle))) {
                return log;
            }
            assert!(tokio::time::Instant::now() < deadline, "no line has all of {needles:?} after ten seconds:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same data directory and configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a raw body (for malformed JSON) with the given headers.
    pub async fn raw(&self, method: Method, path: &str, body: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends `body` as a raw request body (a template image, say).
    pub async fn send_bytes(&self, method: Method, path: &str, body: reqwest::Body) -> (StatusCode, Value) {
        let request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(TOKEN).body(body);
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET `path` as raw bytes, with the response's headers.
    pub async fn get_bytes(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let response =
            self.http.get(format!("{}{path}", self.url)).bearer_auth(TOKEN).send().await.expect("the server answers");
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.bytes().await.expect("a body").to_vec())
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.request(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn create_template(&self, name: &str) -> Value {
        let (status, body) = self.post("/v1/templates", json!({ "name": name, "arch": "amd64" })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Waits until `check` holds for the value of GET `path`, or panics after `timeout`.
    pub async fn wait_until(&self, path: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.get(path).await;
            if check(&value) {
                return value;
            }
            assert!(started.elapsed() < timeout, "timed out waiting on {path}; last answer: {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The event log after `since`, read as NDJSON.
    pub async fn events_since(&self, since: i64) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/v1/events?since={since}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.expect("a body");
        text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
    }

    /// Every instance, across pages, terminated ones included.
    pub async fn all_instances(&self) -> Vec<Value> {
        let filter =
            "state=scheduling|pulling|starting|running|stopping|stopped|suspended|terminating|terminated|error";
        let mut items = Vec::new();
        let mut path = format!("/v1/instances?limit=100&filter={filter}");
        loop {
            let page = self.get(&path).await;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/instances?limit=100&filter={filter}&cursor={cursor}"),
                None => return items,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tests share one compiled-component cache so that each server does not compile again.
fn with_shared_plugin_cache(config: &str) -> String {
    let cache: &Path = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cache = cache.join("plugin-cache");
    if config.contains("[plugins]") {
        config.replacen("[plugins]", &format!("[plugins]\ncache_dir = {:?}", cache.display().to_string()), 1)
    } else {
        format!("[plugins]\ncache_dir = {:?}\n{config}", cache.display().to_string())
    }
}

/// Path of a built fixture component.
pub fn hostile_component() -> &'static str {
    env!("FIXTURE_DRIVER_HOSTILE_WASM")
}
