//! A small HTTP client of the native API for the CLI.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Uses `token`, or the local server's `./data/admin.token`.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        let token = match token {
            Some(token) => token,
            None => std::fs::read_to_string("data/admin.token")
                .map(|token| token.trim().to_owned())
                .context("no token: pass --token, set HYPERPLANE_TOKEN, or run next to the server's ./data")?,
        };
        Ok(Client { http: reqwest::Client::new(), base: url.trim_end_matches('/').to_owned(), token })
    }

    /// A client without a token, for logging in with a user name and password.
    pub fn without_token(url: &str) -> Client {
        Client { http: reqwest::Client::new(), base: url.trim_end_matches('/').to_owned(), token: String::new() }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["error"]["message"].as_str() {
            Some(message) => bail!("{status}: {message}"),
            None => bail!("{status}"),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::GET, path)).await?.json().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::POST, path).json(body)).await?.json().await?)
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::PATCH, path).json(body)).await?.json().await?)
    }

    pub async fn put(&self, path: &str) -> anyhow::Result<Value> {
        json_or_null(self.send(self.request(Method::PUT, path)).await?).await
    }

    /// PUT of a JSON body; the answer's JSON.
    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::PUT, path).json(body)).await?.json().await?)
    }

    /// PUT of raw bytes; the answer's status.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<reqwest::StatusCode> {
        let request = self.request(Method::PUT, path).header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        Ok(self.send(request.body(bytes)).await?.status())
    }

    /// GET of raw bytes.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        Ok(self.send(self.request(Method::GET, path)).await?.bytes().await?)
    }

    /// The answer's JSON, or `null` for `204 No Content`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        json_or_null(self.send(self.request(Method::DELETE, path)).await?).await
    }

    /// POST with HTTP basic auth instead of the token (logging in).
    pub async fn post_with_password(&self, path: &str, user: &str, password: &str) -> anyhow::Result<Value> {
        let request = self.http.post(format!("{}{path}", self.base)).basic_auth(user, Some(password));
        Ok(self.send(request).await?.json().await?)
    }

    /// Calls `each` for every JSON line of a streaming response.
    pub async fn stream_lines(&self, path: &str, mut each: impl FnMut(Value)) -> anyhow::Result<()> {
        let response = self.send(self.request(Method::GET, path)).await?;
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk?);
            while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                each(serde_json::from_slice(&line).context("the server sent a line that is not JSON")?);
            }
        }
        Ok(())
    }

    /// Polls the task (long-polling) until it ends, with a spinner on terminals.
    pub async fn wait_for_task(&self, id: &str, timeout: Duration, show_progress: bool) -> anyhow::Result<Value> {
        let started = Instant::now();
        let spinner = if show_progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(120));
        loop {
            let task = self.get(&format!("/v1/tasks/{id}?wait=2")).await?;
            let state = task["state"].as_str().unwrap_or("unknown");
            let progress = task["progress"].as_f64().unwrap_or(0.0) * 100.0;
            let message = task["message"].as_str().unwrap_or("");
            spinner
                .set_message(format!("{} {state} {progress:.0}% {message}", task["kind"].as_str().unwrap_or("task")));
            if matches!(state, "succeeded" | "failed" | "cancelled") {
                spinner.finish_and_clear();
                return Ok(task);
            }
            if started.elapsed() > timeout {
                spinner.finish_and_clear();
                return Err(anyhow!("task {id} is still {state} after {}s", timeout.as_secs()));
            }
        }
    }

    /// A host id from an id or a name.
    pub async fn resolve_host(&self, reference: &str) -> anyhow::Result<String> {
        let hosts = self.get("/v1/hosts").await?;
        hosts
            .as_array()
            .into_iter()
            .flatten()
            .find(|host| {
                host["id"] == reference
                    || host["name"] == reference
                    || format!("{}/{}", host["provider"].as_str().unwrap_or(""), host["name"].as_str().unwrap_or(""))
                        == reference
            })
            .and_then(|host| host["id"].as_str().map(str::to_owned))
            .ok_or_else(|| anyhow!("no host '{reference}'"))
    }
}

async fn json_or_null(response: Response) -> anyhow::Result<Value> {
    let bytes = response.bytes().await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).context("the server answered something that is not JSON")
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
