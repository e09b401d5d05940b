//! The conformance suite against the simulated driver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyperplane::plugins::driver_types::{DiskFormat, TemplateRef};
use hyperplane::plugins::{ComponentSource, Driver, MemoryStateStore, ProviderSettings};
use serde_json::json;

use crate::conformance::Fixture;

pub async fn fixture() -> Fixture {
    let settings = ProviderSettings {
        name: "conformance-sim".into(),
        component: ComponentSource::File(env!("BUNDLED_DRIVER_SIM_WASM").into()),
        config_json: json!({
            "hosts": 1,
            "delays_ms": { "create": 0, "start": 0, "stop": 0, "restart": 0, "delete": 0, "pull": 0 },
            "pull_bytes_per_sec": 0,
        })
        .to_string(),
        call_timeout: Duration::from_secs(10),
        memory_limit_bytes: 64 << 20,
        endpoints: BTreeMap::new(),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 1 << 20,
    };
    let driver = Driver::load(crate::shared_runtime(), settings, Arc::new(MemoryStateStore::new()))
        .await
        .expect("driver-sim loads");
    let template = |name: &str| TemplateRef {
        name: name.into(),
        version: 1,
        tag: "v1".into(),
        size_bytes: 4096,
        format: DiskFormat::Raw,
    };
    Fixture {
        driver,
        host: "sim-1".into(),
        template: template("conformance"),
        spare_template: template("conformance-spare"),
        image: crate::scratch_image(),
    }
}

crate::conformance_cases!(fixture);
