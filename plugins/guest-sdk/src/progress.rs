//! Progress of the task on whose behalf the current call runs (`hyperplane:host/progress`).

/// Reports `fraction` (clamped to [0, 1] by the host) and a message shown to users as is.
/// A no-op natively, so that driver logic calling it stays unit-testable.
pub fn report(fraction: f32, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::driver_bindings::hyperplane::host::progress::report(fraction, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (fraction, message);
}
