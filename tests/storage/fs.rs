//! The conformance suite against `storage-fs` over a granted temporary directory, and what the
//! grant means: the plugin reaches that directory and nothing else.

use std::time::Duration;

use hyperplane::plugins::{BlobStore, ComponentSource, StorageSettings, StorageSource};

async fn load(directory: std::path::PathBuf) -> BlobStore {
    let settings = StorageSettings {
        name: "conformance-fs".into(),
        component: ComponentSource::File(env!("BUNDLED_STORAGE_FS_WASM").into()),
        config_json: "{}".into(),
        call_timeout: Duration::from_secs(30),
        memory_limit_bytes: 64 << 20,
        granted_directory: Some(directory),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 1 << 20,
    };
    BlobStore::load(crate::shared_runtime(), settings).await.expect("storage-fs loads")
}

#[tokio::test]
async fn storage_fs_passes_the_conformance_suite() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = load(directory.path().join("granted")).await;
    crate::conformance::run(&store).await;
}

#[tokio::test]
async fn storage_fs_keeps_objects_inside_the_granted_directory_only() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let granted = directory.path().join("granted");
    std::fs::write(directory.path().join("secret"), b"outside").expect("a file next to the grant");
    let store = load(granted.clone()).await;
    store.put("a/b", StorageSource::from_bytes(b"inside".to_vec())).await.expect("put");
    assert_eq!(std::fs::read(granted.join("a/b")).expect("the object is a file in the grant"), b"inside");
    assert!(store.get_bytes("../secret", None, 100).await.is_err());
    assert!(store.stat("../secret").await.is_err());
    assert_eq!(std::fs::read(directory.path().join("secret")).expect("untouched"), b"outside");
}
