//! Guest-side SDK for Hyperplane plugins: the generated `driver` world bindings plus small
//! helpers over the host's services (logging, progress, typed key-value state, config parsing).
//!
//! A driver crate (a `cdylib` built for `wasm32-wasip2`) implements [`Guest`] and exports it:
//!
//! ```text
//! use hyperplane_guest::{Guest, types::*};
//!
//! struct MyDriver;
//! impl Guest for MyDriver { /* ... */ }
//! hyperplane_guest::export_driver!(MyDriver);
//! ```
//!
//! The host imports (`log`, `progress`, `state`, `endpoints`) only exist inside a component. On
//! native targets `log` and `progress` fall back to stderr and a no-op so that pure driver logic
//! can be unit-tested natively, and [`state::MemoryStore`] stands in for the host's store.

pub mod config;
pub mod log;
pub mod progress;
pub mod state;

pub use config::config;

/// Bindings for the `hyperplane:driver/driver@0.1.0` world, generated from `wit/`.
#[allow(unsafe_code, clippy::all)]
pub mod driver_bindings {
    wit_bindgen::generate!({
        world: "hyperplane:driver/driver@0.2.0",
        path: ["../../wit/host/0.1.0", "../../wit/driver/0.2.0"],
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_wasm_driver",
        default_bindings_module: "hyperplane_guest::driver_bindings",
    });
}

/// `export_driver!(MyDriver)` exports a type implementing [`Guest`] as the component's
/// `hyperplane:driver/hypervisor` interface. It expands to nothing on native targets, where
/// the component's export names (`hyperplane:driver/hypervisor@0.1.0#init`, …) are not valid
/// symbols, so a driver crate still builds and unit-tests natively.
#[macro_export]
macro_rules! export_driver {
    ($driver:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::driver_bindings::export_wasm_driver!($driver);
    };
}

/// The trait a driver implements: one method per function of `hyperplane:driver/hypervisor`.
pub use driver_bindings::exports::hyperplane::driver::hypervisor::Guest;
pub use driver_bindings::hyperplane::driver::transfer;
/// The records, variants and enums of `hyperplane:driver/types`.
pub use driver_bindings::hyperplane::driver::types;
/// Named byte streams the operator granted to the provider (`hyperplane:host/endpoints`).
pub use driver_bindings::hyperplane::host::endpoints;
/// The error every driver function returns.
pub use types::Error;
