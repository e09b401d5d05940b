//! Metric names of the plugin runtime and the helpers that record them.

use std::time::Duration;

/// Histogram of call durations, labels `provider`, `function`.
pub const PLUGIN_CALL_DURATION_SECONDS: &str = "hyperplane_plugin_call_duration_seconds";
/// Counter of failed calls, labels `provider`, `function`, `kind` (see `CallError::kind`).
pub const PLUGIN_CALL_FAILURES_TOTAL: &str = "hyperplane_plugin_call_failures_total";
/// Counter of capability requests the host refused, labels `provider`, `capability`.
pub const PLUGIN_CAPABILITY_DENIALS_TOTAL: &str = "hyperplane_plugin_capability_denials_total";
/// Counter of fresh instances created, label `provider`.
pub const PLUGIN_INSTANTIATIONS_TOTAL: &str = "hyperplane_plugin_instantiations_total";

pub(crate) fn record_call(
    provider: &str,
    function: &'static str,
    duration: Duration,
    failure_kind: Option<&'static str>,
) {
    metrics::histogram!(
        PLUGIN_CALL_DURATION_SECONDS,
        "provider" => provider.to_string(),
        "function" => function,
    )
    .record(duration.as_secs_f64());
    if let Some(kind) = failure_kind {
        metrics::counter!(
            PLUGIN_CALL_FAILURES_TOTAL,
            "provider" => provider.to_string(),
            "function" => function,
            "kind" => kind,
        )
        .increment(1);
    }
}

pub(crate) fn record_capability_denial(provider: &str, capability: &'static str) {
    metrics::counter!(
        PLUGIN_CAPABILITY_DENIALS_TOTAL,
        "provider" => provider.to_string(),
        "capability" => capability,
    )
    .increment(1);
}

pub(crate) fn record_instantiation(provider: &str) {
    metrics::counter!(PLUGIN_INSTANTIATIONS_TOTAL, "provider" => provider.to_string()).increment(1);
}
