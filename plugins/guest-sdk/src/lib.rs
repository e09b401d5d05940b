//! Guest-side SDK for Hyperplane plugins: the generated `driver` world bindings plus small
//! helpers over the host's services (logging, progress, typed key-value state, config parsing,
//! reading the byte streams the host hands over).
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
//! The host imports (`log`, `progress`, `state`, `endpoints`, `transfer`) only exist inside a
//! component. On native targets `log` and `progress` fall back to stderr and a no-op so that pure
//! driver logic can be unit-tested natively, [`state::MemoryStore`] stands in for the host's
//! store and [`bytes::MemoryBytes`] for a `transfer.byte-source`.
//!
//! An auth scheme crate implements [`auth::SchemeGuest`] and exports it with
//! [`export_auth_scheme!`]; [`auth`] keeps its decision logic natively testable against
//! [`auth_testing::FakeCredentials`].

pub mod auth;
pub mod auth_testing;
pub mod bytes;
pub mod config;
pub mod log;
pub mod progress;
pub mod state;
pub mod storage;

pub use config::config;

/// Bindings for the `hyperplane:driver/driver@0.3.0` world, generated from `wit/`.
#[allow(unsafe_code, clippy::all)]
pub mod driver_bindings {
    wit_bindgen::generate!({
        world: "hyperplane:driver/driver@0.3.0",
        path: ["../../wit/host/0.1.0", "../../wit/driver/0.3.0"],
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_wasm_driver",
        default_bindings_module: "hyperplane_guest::driver_bindings",
    });
}

/// `export_driver!(MyDriver)` exports a type implementing [`Guest`] as the component's
/// `hyperplane:driver/hypervisor` interface. It expands to nothing on native targets, where
/// the component's export names (`hyperplane:driver/hypervisor@0.3.0#init`, …) are not valid
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
/// Byte streams the host hands to a driver, such as a template's image (`hyperplane:driver/transfer`).
pub use driver_bindings::hyperplane::driver::transfer;
/// The records, variants and enums of `hyperplane:driver/types`.
pub use driver_bindings::hyperplane::driver::types;
/// Named byte streams the operator granted to the provider (`hyperplane:host/endpoints`).
pub use driver_bindings::hyperplane::host::endpoints;
/// The error every driver function returns.
pub use types::Error;

/// Bindings for the `hyperplane:auth/auth-scheme@0.1.0` world (auth scheme plugins), generated
/// from `wit/`. `hyperplane:host/log` is shared with [`driver_bindings`], so [`log`] serves both.
#[allow(unsafe_code, clippy::all)]
pub mod auth_bindings {
    wit_bindgen::generate!({
        world: "hyperplane:auth/auth-scheme@0.1.0",
        path: ["../../wit/host/0.1.0", "../../wit/auth/0.1.0"],
        with: { "hyperplane:host/log@0.1.0": crate::driver_bindings::hyperplane::host::log },
        pub_export_macro: true,
        export_macro_name: "export_wasm_auth_scheme",
        default_bindings_module: "hyperplane_guest::auth_bindings",
    });
}

/// `export_auth_scheme!(MyScheme)` exports a type implementing [`auth::SchemeGuest`] as the
/// component's `hyperplane:auth/scheme` interface. Like [`export_driver!`] it expands to nothing
/// on native targets, so a scheme crate still builds and unit-tests natively.
#[macro_export]
macro_rules! export_auth_scheme {
    ($scheme:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::auth_bindings::export_wasm_auth_scheme!($scheme);
    };
}

/// Bindings for the `hyperplane:storage/storage@0.1.0` world (blob store plugins), generated
/// from `wit/`. `hyperplane:host/log` is shared with [`driver_bindings`], so [`log`] serves all.
#[allow(unsafe_code, clippy::all)]
pub mod storage_bindings {
    wit_bindgen::generate!({
        world: "hyperplane:storage/storage@0.1.0",
        path: ["../../wit/host/0.1.0", "../../wit/storage/0.1.0"],
        with: { "hyperplane:host/log@0.1.0": crate::driver_bindings::hyperplane::host::log },
        pub_export_macro: true,
        export_macro_name: "export_wasm_blob_store",
        default_bindings_module: "hyperplane_guest::storage_bindings",
    });
}

/// `export_blob_store!(MyStore)` exports a type implementing the storage bindings'
/// `exports::hyperplane::storage::blob_store::Guest` as the component's
/// `hyperplane:storage/blob-store` interface. Like [`export_driver!`] it expands to nothing on
/// native targets, so a storage crate still builds and unit-tests natively.
#[macro_export]
macro_rules! export_blob_store {
    ($store:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::storage_bindings::export_wasm_blob_store!($store);
    };
}
