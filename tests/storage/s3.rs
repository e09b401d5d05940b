//! The conformance suite against `storage-s3` and a real S3-compatible server: SeaweedFS,
//! started by `setup-s3.sh` (SigV4 enforced), reached only through the host's outgoing-HTTP
//! allow-list.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use hyperplane::plugins::storage_types::Error as StorageError;
use hyperplane::plugins::{BlobStore, CallError, ComponentSource, StorageSettings, StorageSource};
use serde_json::json;

/// The server's settings, once per process (`KEY=value` lines of `setup-s3.sh`).
fn server() -> &'static BTreeMap<String, String> {
    static SETTINGS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/storage/setup-s3.sh");
        let output = std::process::Command::new("bash").arg(script).output().expect("setup-s3.sh runs");
        assert!(output.status.success(), "setup-s3.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    })
}

async fn load(secret: &str, allowed_http_hosts: Vec<String>) -> Result<BlobStore, String> {
    let server = server();
    let config = json!({
        "endpoint": server["S3_ENDPOINT"],
        "bucket": server["S3_BUCKET"],
        "region": server["S3_REGION"],
        "access_key_id": server["S3_ACCESS_KEY_ID"],
        "secret_access_key": secret,
        "prefix": crate::unique_prefix("conformance"),
        "multipart_threshold_bytes": 5 * 1024 * 1024,
        "part_size_bytes": 5 * 1024 * 1024,
    });
    let settings = StorageSettings {
        name: "conformance-s3".into(),
        component: ComponentSource::File(env!("BUNDLED_STORAGE_S3_WASM").into()),
        config_json: config.to_string(),
        call_timeout: Duration::from_secs(30),
        memory_limit_bytes: 64 << 20,
        granted_directory: None,
        allowed_http_hosts,
        max_response_bytes: 1 << 20,
    };
    BlobStore::load(crate::shared_runtime(), settings).await.map_err(|error| error.to_string())
}

fn endpoint_authority() -> String {
    server()["S3_ENDPOINT"].trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn storage_s3_passes_the_conformance_suite_against_seaweedfs() {
    let store = load(&server()["S3_SECRET_ACCESS_KEY"], vec![endpoint_authority()]).await.expect("storage-s3 loads");
    crate::conformance::run(&store).await;
}

#[tokio::test]
async fn storage_s3_with_a_wrong_secret_is_denied() {
    let store = load("not-the-secret", vec![endpoint_authority()]).await.expect("loads: init makes no request");
    let outcome = store.put("denied/object", StorageSource::from_bytes(b"x".to_vec())).await;
    assert!(matches!(outcome, Err(CallError::Storage(StorageError::Denied(_)))), "{outcome:?}");
}

#[tokio::test]
async fn storage_s3_reaches_only_hosts_the_operator_allows() {
    let store = load(&server()["S3_SECRET_ACCESS_KEY"], vec!["s3.example.com".into()]).await.expect("loads");
    let outcome = store.put("refused/object", StorageSource::from_bytes(b"x".to_vec())).await;
    assert!(matches!(outcome, Err(CallError::Storage(StorageError::Unavailable(_)))), "{outcome:?}");
}
