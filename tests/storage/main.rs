//! Storage plugin tests through the real host runtime and the real components: one conformance
//! suite against every backend — `storage-fs` over a granted temporary directory and
//! `storage-s3` against a real S3-compatible server (SeaweedFS, started by `setup-s3.sh`).

mod conformance;
mod fs;
mod s3;

use std::sync::OnceLock;

use hyperplane::plugins::{PluginRuntime, RuntimeSettings};

/// One runtime per test binary, so each component compiles once.
fn shared_runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| PluginRuntime::new(RuntimeSettings::default()).expect("the plugin runtime starts"))
}

/// A prefix no earlier run used, so runs against a long-lived server never see each other.
fn unique_prefix(label: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    format!("{label}-{}-{nanos}", std::process::id())
}
