//! Shared helpers: one runtime for all tests, provider settings, and a metrics recorder that
//! counts counter increments.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use crate::plugins::{ComponentSource, PluginRuntime, ProviderSettings, RuntimeSettings};

pub(super) const DRIVER_SIM_WASM: &str = env!("BUNDLED_DRIVER_SIM_WASM");
pub(super) const DRIVER_HOSTILE_WASM: &str = env!("FIXTURE_DRIVER_HOSTILE_WASM");

/// One runtime for the whole test binary, so each component compiles once.
pub(super) fn shared_runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| PluginRuntime::new(RuntimeSettings::default()).expect("the plugin runtime starts"))
}

pub(super) fn provider_settings(name: &str, wasm_path: &str, config: serde_json::Value) -> ProviderSettings {
    ProviderSettings {
        name: name.to_string(),
        component: ComponentSource::File(wasm_path.into()),
        config_json: config.to_string(),
        call_timeout: Duration::from_secs(5),
        memory_limit_bytes: 64 * 1024 * 1024,
        endpoints: BTreeMap::new(),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 1024 * 1024,
    }
}

/// Counts counter increments by metric name and `provider` label; ignores everything else.
#[derive(Default)]
pub(super) struct CountingRecorder {
    counters: Mutex<HashMap<String, Arc<CounterCell>>>,
}

#[derive(Default)]
pub(super) struct CounterCell(AtomicU64);

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl CountingRecorder {
    /// The count of `name`, summed over all label sets that contain every one of `labels`.
    pub(super) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters
            .iter()
            .filter(|(rendered, _)| {
                rendered.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|(key, value)| rendered.contains(&format!("{key}={value};")))
            })
            .map(|(_, cell)| cell.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {}
    fn describe_gauge(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {}
    fn describe_histogram(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {}

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let labels: String = key.labels().map(|label| format!("{}={};", label.key(), label.value())).collect();
        let rendered = format!("{}{{{labels}}}", key.name());
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Counter::from_arc(counters.entry(rendered).or_default().clone())
    }

    fn register_gauge(&self, _key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
