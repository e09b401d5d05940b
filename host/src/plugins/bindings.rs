//! Host bindings of the `hyperplane:driver/driver@0.3.0`, `hyperplane:auth/auth-scheme@0.1.0` and
//! `hyperplane:storage/storage@0.1.0` worlds, generated from `wit/`: never edit by hand. The host supports these versions of the
//! contracts; `version` refuses components that export another one.

wasmtime::component::bindgen!({
    path: ["../wit/host/0.1.0", "../wit/driver/0.3.0"],
    world: "hyperplane:driver/driver",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "hyperplane:host/endpoints.connection": super::endpoints::EndpointConnection,
        "hyperplane:driver/transfer.byte-source": super::transfer::ByteSource,
        "hyperplane:driver/transfer.image-delta": super::transfer::ImageDelta,
        "hyperplane:driver/transfer.byte-sink": super::storage::StorageSink,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub(crate) use exports::hyperplane::driver::hypervisor::{Guest as Hypervisor, GuestIndices as HypervisorIndices};

/// `types` holds only data: the host side of its (empty) import.
impl hyperplane::driver::types::Host for super::store_data::StoreData {}

/// The `hyperplane:auth/auth-scheme@0.1.0` world. It shares `hyperplane:host/log` with the
/// driver world (one host implementation); an `identity` is the host's [`IssuedIdentity`].
///
/// [`IssuedIdentity`]: super::auth::IssuedIdentity
pub(crate) mod auth {
    wasmtime::component::bindgen!({
        path: ["../wit/host/0.1.0", "../wit/auth/0.1.0"],
        world: "hyperplane:auth/auth-scheme",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "hyperplane:host/log": super::hyperplane::host::log,
            "hyperplane:auth/credentials.identity": super::super::auth::IssuedIdentity,
        },
    });

    pub(crate) use exports::hyperplane::auth::scheme::{Guest as Scheme, GuestIndices as SchemeIndices};
}

/// The `hyperplane:storage/storage@0.1.0` world. It shares `hyperplane:host/log` with the driver
/// world; its streams are the host's [`StorageSource`] and [`StorageSink`].
///
/// [`StorageSource`]: super::storage::StorageSource
/// [`StorageSink`]: super::storage::StorageSink
pub(crate) mod storage {
    wasmtime::component::bindgen!({
        path: ["../wit/host/0.1.0", "../wit/storage/0.1.0"],
        world: "hyperplane:storage/storage",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "hyperplane:host/log": super::hyperplane::host::log,
            "hyperplane:storage/streams.byte-source": super::super::storage::StorageSource,
            "hyperplane:storage/streams.byte-sink": super::super::storage::StorageSink,
        },
    });

    pub(crate) use exports::hyperplane::storage::blob_store::{
        Guest as BlobStoreExports, GuestIndices as BlobStoreIndices,
    };

    /// `types` holds only data: the host side of its (empty) import.
    impl hyperplane::storage::types::Host for super::super::store_data::StoreData {}
}
