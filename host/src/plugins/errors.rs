//! Errors of loading a provider component and of calling into it.

use std::path::PathBuf;
use std::time::Duration;

use super::driver_types::DriverError;
use super::http::InvalidAllowedHttpHost;
use super::settings::EndpointAddressError;
use super::storage_types::Error as StorageError;

/// Why a provider component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not configure the wasmtime engine: {0}")]
    Engine(String),
    #[error("could not create the compiled-component cache directory {path}")]
    CacheDirectory { path: PathBuf, source: std::io::Error },
    #[error("could not read component file {path}")]
    ReadComponent { path: PathBuf, source: std::io::Error },
    #[error("component {label} is not a valid webassembly component: {message}")]
    InvalidComponent { label: String, message: String },
    #[error("could not compile component {label}: {message}")]
    Compile { label: String, message: String },
    #[error(
        "component {label} exports hyperplane:driver/hypervisor@{exported}, but this host supports only \
         @{supported}; rebuild the driver against wit/driver/{supported}"
    )]
    UnsupportedDriverVersion { label: String, exported: String, supported: &'static str },
    #[error("component {label} exports no hyperplane:driver/hypervisor interface; it is not a driver")]
    NoDriverInterface { label: String },
    #[error(
        "component {label} exports no hyperplane:auth/scheme@{supported} interface; it is not an auth scheme \
         of the version this host supports"
    )]
    NoAuthSchemeInterface { label: String, supported: &'static str },
    #[error(
        "component {label} exports no hyperplane:storage/blob-store@{supported} interface; it is not a storage \
         plugin of the version this host supports"
    )]
    NoStorageInterface { label: String, supported: &'static str },
    #[error("could not create the directory {path} granted to a storage plugin")]
    GrantedDirectory { path: PathBuf, source: std::io::Error },
    #[error("component {label} does not fit the {world} world: {message}")]
    Link { label: String, world: &'static str, message: String },
    #[error("provider {provider} failed to initialize")]
    Init { provider: String, source: CallError },
    #[error(transparent)]
    InvalidEndpointAddress(#[from] EndpointAddressError),
    #[error(transparent)]
    InvalidAllowedHttpHost(#[from] InvalidAllowedHttpHost),
    #[error("the compilation task panicked or was cancelled: {0}")]
    BackgroundTask(String),
}

/// Why a call into a plugin failed. Every variant except `Driver`, `Scheme` and `Storage` means the
/// instance that served the call was discarded.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The driver answered with its own WIT `error` variant; its instance stays in service.
    #[error("{}", describe_driver_error(.0))]
    Driver(DriverError),
    /// An auth scheme answered with its own WIT `error` variant (`kind: message`); its instance
    /// stays in service.
    #[error("{0}")]
    Scheme(String),
    /// A storage plugin answered with its own WIT `error` variant; its instance stays in
    /// service.
    #[error("{}", super::storage::describe_storage_error(.0))]
    Storage(StorageError),
    #[error("provider function {function} timed out after {after:?}")]
    Timeout { function: &'static str, after: Duration },
    #[error("provider function {function} exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit { function: &'static str, limit_bytes: usize },
    #[error("provider function {function} trapped: {message}")]
    Trap { function: &'static str, message: String },
    #[error("provider function {function} returned a response larger than {limit_bytes} bytes")]
    ResponseTooLarge { function: &'static str, limit_bytes: usize },
    #[error("could not instantiate the provider component: {0}")]
    Instantiate(String),
}

impl CallError {
    /// A short stable name of the failure kind, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Driver(_) => "driver",
            CallError::Scheme(_) => "scheme",
            CallError::Storage(_) => "storage",
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::Trap { .. } => "trap",
            CallError::ResponseTooLarge { .. } => "response_too_large",
            CallError::Instantiate(_) => "instantiate",
        }
    }

    /// Whether the instance that served the call was thrown away because of this failure.
    pub fn discarded_instance(&self) -> bool {
        !matches!(self, CallError::Driver(_) | CallError::Scheme(_) | CallError::Storage(_))
    }
}

/// Renders a driver's WIT error as `kind: message`.
pub fn describe_driver_error(error: &DriverError) -> String {
    match error {
        DriverError::NotFound(message) => format!("not found: {message}"),
        DriverError::Conflict(message) => format!("conflict: {message}"),
        DriverError::Invalid(message) => format!("invalid request: {message}"),
        DriverError::Unsupported(message) => format!("unsupported: {message}"),
        DriverError::Unavailable(message) => format!("backend unavailable: {message}"),
        DriverError::Backend(backend_error) => {
            format!("backend error {}: {}", backend_error.code, backend_error.message)
        }
    }
}
