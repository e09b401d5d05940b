//! Tests of the plugin runtime: host services on their own, then the real driver components
//! (driver-sim and the hostile fixture) and auth schemes (`auth-*`) that `host/build.rs` builds
//! to wasm.

mod auth_schemes;
mod driver_sim;
mod host_services;
mod hostile;
mod support;
