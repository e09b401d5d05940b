//! Task progress reported by plugins through `hyperplane:host/progress`, routed to the task on
//! whose behalf the call runs.
//!
//! The task engine wraps a driver call in [`scope`]; the runtime picks the sink up when the
//! call starts and hands every `report` of the plugin to it. Outside a scope reports are
//! dropped.

use std::future::Future;
use std::sync::Arc;

/// Receives `(fraction in [0, 1], message)` progress reports.
pub type ProgressSink = Arc<dyn Fn(f32, &str) + Send + Sync>;

tokio::task_local! {
    static CURRENT_PROGRESS_SINK: ProgressSink;
}

/// Runs `future` with `sink` receiving the progress that plugins report meanwhile.
pub async fn scope<F: Future>(sink: ProgressSink, future: F) -> F::Output {
    CURRENT_PROGRESS_SINK.scope(sink, future).await
}

/// The sink of the enclosing [`scope`], if any.
pub fn current_sink() -> Option<ProgressSink> {
    CURRENT_PROGRESS_SINK.try_with(Arc::clone).ok()
}

/// Clamps a plugin-reported fraction into [0, 1]; NaN becomes 0.
pub(crate) fn clamp_fraction(fraction: f32) -> f32 {
    if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) }
}
