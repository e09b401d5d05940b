//! The plugin runtime: the only part of the host that knows wasmtime. It compiles and caches
//! driver, auth scheme and storage components, instantiates them with deny-by-default capabilities and
//! runs every call under a deadline, a memory cap and a response-size limit.
//!
//! Entry points: [`PluginRuntime::new`] once per process, then [`Driver::load`] per provider and
//! [`AuthSchemePlugin::load`] per auth scheme and [`BlobStore::load`] per storage backend.

mod auth;
mod bindings;
mod component_cache;
mod driver;
mod endpoints;
mod errors;
mod http;
mod log;
mod pool;
pub mod progress;
mod response_size;
mod runtime;
mod settings;
mod state;
mod storage;
mod store_data;
pub mod telemetry;
mod tls;
mod transfer;
mod version;

#[cfg(test)]
mod tests;

pub use auth::{ALLOWED_RESPONSE_HEADERS, AuthSchemePlugin, AuthSchemeSettings};
pub use component_cache::{CacheOutcome, ComponentCacheStatistics};
pub use driver::Driver;
pub use endpoints::{
    ENDPOINT_OPEN_TIMEOUT, EndpointConnection, MAX_OPEN_CONNECTIONS_PER_INSTANCE, MAX_READ_CHUNK_BYTES,
    MAX_READ_EXACT_BYTES,
};
pub use errors::{CallError, LoadError, describe_driver_error};
pub use http::InvalidAllowedHttpHost;
pub use pool::{MAX_CONCURRENT_CALLS_PER_PROVIDER, MAX_IDLE_INSTANCES_PER_PROVIDER, PoolStatistics};
pub use runtime::{EPOCH_TICK, PluginRuntime};
pub use settings::{
    ComponentSource, EndpointAddress, EndpointAddressError, PkiFiles, ProviderSettings, RuntimeSettings,
};
pub use state::{MAX_STATE_KEY_BYTES, MAX_STATE_VALUE_BYTES, MemoryStateStore, PluginStateStore};
pub use storage::{
    BlobStore, MAX_STREAM_PIECE_BYTES, SinkBuffer, StorageSettings, StorageSink, StorageSource, describe_storage_error,
};
pub use store_data::GRANTED_DIRECTORY_GUEST_PATH;
pub use tls::{TlsEndpoint, TlsSetupError};
pub use transfer::{ByteSource, DeliveredBytes, ImageDelta, MAX_TRANSFER_READ_BYTES, MIN_TRANSFER_BYTES_PER_SEC};
pub use version::{SUPPORTED_AUTH_VERSION, SUPPORTED_DRIVER_VERSION, SUPPORTED_STORAGE_VERSION};

/// The plain data types of `hyperplane:driver/types@0.3.0`, generated from the WIT.
pub mod driver_types {
    pub use super::bindings::hyperplane::driver::types::{
        Arch, BackendError, ByteSpan, CachedTemplate, Capabilities, ConsoleEndpoint, ConsoleProtocol, DiskFormat,
        Error, Error as DriverError, ExecResult, ExportedDisk, HostReport, HostState, Instance, InstanceSpec,
        InstanceState, KeyValue, Snapshot, TemplateRef,
    };
}

/// The plain data types of `hyperplane:storage/types@0.1.0`, generated from the WIT.
pub mod storage_types {
    pub use super::bindings::storage::hyperplane::storage::types::{
        ByteRange, Error, ObjectInfo, ObjectPage, StoreInfo,
    };
}
