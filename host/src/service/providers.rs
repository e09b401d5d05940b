//! Configured providers: loading their driver components, their status, the SQL-backed state
//! store the plugins use, and conversions between driver types and the domain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{BUNDLED_DRIVER_LIBVIRT, BUNDLED_DRIVER_SIM, Config, ProviderConfig};
use crate::model::{self, Arch, CachedTemplate, InstanceState, Provider, ProviderCapabilities, TaskError, Timestamp};
use crate::plugins::driver_types as driver;
use crate::plugins::{
    CallError, ComponentSource, Driver, EndpointAddress, PluginRuntime, PluginStateStore, ProviderSettings, TlsEndpoint,
};
use crate::store::{self, Store};

/// The drivers built from `plugins/` and bundled into the binary, by the name configs use.
const BUNDLED_DRIVERS: [(&str, &[u8]); 2] = [
    (BUNDLED_DRIVER_SIM, include_bytes!(env!("BUNDLED_DRIVER_SIM_WASM"))),
    (BUNDLED_DRIVER_LIBVIRT, include_bytes!(env!("BUNDLED_DRIVER_LIBVIRT_WASM"))),
];

/// All configured providers by name, each with its driver (when it loaded) and status.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: Arc<BTreeMap<String, ProviderEntry>>,
}

struct ProviderEntry {
    driver_label: String,
    driver: Option<Driver>,
    status: Mutex<ProviderStatus>,
}

#[derive(Default, Clone)]
struct ProviderStatus {
    hosts: usize,
    last_sync_at: Option<Timestamp>,
    last_error: Option<String>,
}

impl ProviderRegistry {
    /// The loaded driver of a provider, or `Unavailable` when it failed to load.
    pub fn driver(&self, name: &str) -> Result<&Driver, super::ServiceError> {
        match self.providers.get(name) {
            Some(ProviderEntry { driver: Some(driver), .. }) => Ok(driver),
            Some(entry) => Err(super::ServiceError::Unavailable(format!(
                "provider '{name}' is not available: {}",
                entry.status.lock().ok().and_then(|status| status.last_error.clone()).unwrap_or_default()
            ))),
            None => Err(super::ServiceError::not_found("provider", name)),
        }
    }

    pub fn loaded(&self) -> impl Iterator<Item = (&str, &Driver)> {
        self.providers.iter().filter_map(|(name, entry)| entry.driver.as_ref().map(|driver| (name.as_str(), driver)))
    }

    pub fn list(&self) -> Vec<Provider> {
        self.providers
            .iter()
            .map(|(name, entry)| {
                let status = entry.status.lock().map(|status| status.clone()).unwrap_or_default();
                Provider {
                    name: name.clone(),
                    driver: entry.driver_label.clone(),
                    status: if entry.driver.is_some() { "ready" } else { "failed" }.into(),
                    capabilities: entry.driver.as_ref().map(|driver| {
                        let capabilities = driver.capabilities();
                        ProviderCapabilities {
                            exec: capabilities.exec,
                            console: capabilities.console,
                            templates: capabilities.templates,
                            snapshots: capabilities.snapshots,
                            suspend: capabilities.suspend,
                        }
                    }),
                    hosts: status.hosts,
                    last_sync_at: status.last_sync_at,
                    last_error: status.last_error,
                }
            })
            .collect()
    }

    pub(super) fn record_sync(&self, name: &str, result: Result<usize, String>) {
        let Some(entry) = self.providers.get(name) else { return };
        let Ok(mut status) = entry.status.lock() else { return };
        match result {
            Ok(hosts) => {
                status.hosts = hosts;
                status.last_sync_at = Some(store::now());
                status.last_error = None;
            }
            Err(error) => status.last_error = Some(error),
        }
    }
}

/// Loads every configured provider (in parallel). A provider that fails to load is kept with
/// its error so that the server still starts and reports it.
pub async fn load_providers(config: &Config, runtime: &PluginRuntime, store: &Store) -> ProviderRegistry {
    let state: Arc<dyn PluginStateStore> = Arc::new(SqlPluginState { store: store.clone() });
    let loads = config.effective_providers().into_iter().map(|provider| {
        let state = state.clone();
        async move {
            let label = provider.driver.clone();
            let name = provider.name.clone();
            let loaded = match provider_settings(config, &provider) {
                Ok(settings) => Driver::load(runtime, settings, state).await.map_err(|error| error.to_string()),
                Err(error) => Err(error),
            };
            let (driver, last_error) = match loaded {
                Ok(driver) => {
                    tracing::info!(provider = %name, driver = %label, "provider loaded");
                    (Some(driver), None)
                }
                Err(error) => {
                    tracing::error!(provider = %name, driver = %label, error = %error, "provider failed to load");
                    (None, Some(error))
                }
            };
            let status = ProviderStatus { last_error, ..Default::default() };
            (name, ProviderEntry { driver_label: label, driver, status: Mutex::new(status) })
        }
    });
    let providers = futures::future::join_all(loads).await.into_iter().collect();
    ProviderRegistry { providers: Arc::new(providers) }
}

fn provider_settings(config: &Config, provider: &ProviderConfig) -> Result<ProviderSettings, String> {
    let bundled = BUNDLED_DRIVERS.iter().find(|(name, _)| *name == provider.driver);
    let component = match bundled {
        Some((name, bytes)) => ComponentSource::Bytes { label: (*name).into(), bytes: Arc::from(*bytes) },
        None => ComponentSource::File(provider.driver.clone().into()),
    };
    let mut endpoints = BTreeMap::new();
    for (name, address) in &provider.endpoints {
        let invalid = |error: &dyn std::fmt::Display| format!("providers.{}.endpoints.{name}: {error}", provider.name);
        let address: EndpointAddress = address.parse().map_err(|error| invalid(&error))?;
        // Certificate files are read again for every connection; checked here so that a
        // mistake shows when the provider loads.
        if let EndpointAddress::LibvirtTls { authority, pki } = &address {
            TlsEndpoint::load(authority, pki).map_err(|error| invalid(&error))?;
        }
        endpoints.insert(name.clone(), address);
    }
    let mib = |value: u64| (value as usize).saturating_mul(1024 * 1024);
    Ok(ProviderSettings {
        name: provider.name.clone(),
        component,
        config_json: provider.config.to_string(),
        call_timeout: Duration::from_secs_f64(provider.call_timeout_secs.unwrap_or(config.plugins.call_timeout_secs)),
        memory_limit_bytes: mib(provider.memory_limit_mib.unwrap_or(config.plugins.memory_limit_mib)),
        endpoints,
        allowed_http_hosts: provider.allowed_http_hosts.clone(),
        max_response_bytes: mib(config.plugins.max_response_mib),
    })
}

/// Plugin key-value state kept in the database, so that a simulated (or any) driver's state
/// survives restarts of the server.
struct SqlPluginState {
    store: Store,
}

fn describe(error: store::StoreError) -> String {
    error.to_string()
}

#[async_trait::async_trait]
impl PluginStateStore for SqlPluginState {
    async fn get(&self, provider: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut reader = self.store.reader().await.map_err(describe)?;
        store::plugin_state::get(&mut reader, provider, key).await.map_err(describe)
    }

    // One statement each, which SQLite commits on its own: no transaction around it.
    async fn set(&self, provider: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let mut writer = self.store.write_statement().await.map_err(describe)?;
        store::plugin_state::set(&mut writer, provider, key, value).await.map_err(describe)
    }

    async fn delete(&self, provider: &str, key: &str) -> Result<bool, String> {
        let mut writer = self.store.write_statement().await.map_err(describe)?;
        store::plugin_state::delete(&mut writer, provider, key).await.map_err(describe)
    }

    async fn scan(&self, provider: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut reader = self.store.reader().await.map_err(describe)?;
        store::plugin_state::scan(&mut reader, provider, prefix).await.map_err(describe)
    }

    async fn compare_and_swap(
        &self,
        provider: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, String> {
        // One statement, which SQLite commits on its own.
        let mut writer = self.store.write_statement().await.map_err(describe)?;
        store::plugin_state::compare_and_swap(&mut writer, provider, key, expected, value).await.map_err(describe)
    }
}

// ----- conversions between the driver contract and the domain -----

pub(super) fn arch_from_driver(arch: driver::Arch) -> Arch {
    match arch {
        driver::Arch::Amd64 => Arch::Amd64,
        driver::Arch::Arm64 => Arch::Arm64,
    }
}

pub(super) fn host_state_from_driver(state: driver::HostState) -> model::HostState {
    match state {
        driver::HostState::Active => model::HostState::Active,
        driver::HostState::Offline => model::HostState::Offline,
        driver::HostState::Updating => model::HostState::Updating,
    }
}

pub(super) fn instance_state_from_driver(state: driver::InstanceState) -> InstanceState {
    match state {
        driver::InstanceState::Stopped => InstanceState::Stopped,
        driver::InstanceState::Starting => InstanceState::Starting,
        driver::InstanceState::Running => InstanceState::Running,
        driver::InstanceState::Stopping => InstanceState::Stopping,
        driver::InstanceState::Suspended => InstanceState::Suspended,
        driver::InstanceState::Error => InstanceState::Error,
    }
}

pub(super) fn disk_format_to_driver(format: model::DiskFormat) -> driver::DiskFormat {
    match format {
        model::DiskFormat::Raw => driver::DiskFormat::Raw,
        model::DiskFormat::Qcow2 => driver::DiskFormat::Qcow2,
    }
}

/// What a driver reports cached, keeping when each was last used from `previous`.
pub(super) fn cached_templates_from_driver(
    templates: &[driver::CachedTemplate],
    previous: &[CachedTemplate],
) -> Vec<CachedTemplate> {
    templates
        .iter()
        .map(|template| CachedTemplate {
            name: template.name.clone(),
            version: template.version,
            tag: template.tag.clone(),
            size_bytes: template.size_bytes,
            last_used_at: previous
                .iter()
                .find(|known| known.name == template.name && known.version == template.version)
                .and_then(|known| known.last_used_at),
        })
        .collect()
}

/// A host's cached templates after a report asked for at `asked`: the reported ones, and those
/// recorded since (a pull that ended after the report was taken; the next report lists it).
pub(super) fn cached_templates_reported(
    reported: &[driver::CachedTemplate],
    previous: &[CachedTemplate],
    asked: Timestamp,
) -> Vec<CachedTemplate> {
    let mut templates = cached_templates_from_driver(reported, previous);
    let recorded_since = previous.iter().filter(|cached| {
        cached.last_used_at.is_some_and(|used| used >= asked)
            && !templates.iter().any(|listed| listed.name == cached.name && listed.version == cached.version)
    });
    templates.extend(recorded_since.cloned().collect::<Vec<_>>());
    templates
}

/// A driver call's failure as a task error: the driver's own kind, or what the host saw.
pub(super) fn task_error_from_call(function: &str, error: &CallError) -> TaskError {
    let (code, message) = match error {
        CallError::Driver(driver_error) => match driver_error {
            driver::Error::NotFound(message) => ("not_found", message.clone()),
            driver::Error::Conflict(message) => ("conflict", message.clone()),
            driver::Error::Invalid(message) => ("invalid", message.clone()),
            driver::Error::Unsupported(message) => ("unsupported", message.clone()),
            driver::Error::Unavailable(message) => ("unavailable", message.clone()),
            driver::Error::Backend(backend) => ("backend", format!("{} (code {})", backend.message, backend.code)),
        },
        other => ("plugin_failure", other.to_string()),
    };
    TaskError { code: code.into(), message: format!("{function}: {message}") }
}

/// A failed synchronous driver call as a service error: `not-found` becomes `not_found_kind`
/// `id`, conflicts and unsupported requests `conflict`, backend and plugin failures
/// `unavailable`; the message names the driver function.
pub(super) fn service_error_from_call(
    function: &str,
    error: &CallError,
    not_found_kind: &'static str,
    id: impl ToString,
) -> super::ServiceError {
    use super::ServiceError;
    match error {
        CallError::Driver(driver::Error::NotFound(_)) => ServiceError::not_found(not_found_kind, id),
        CallError::Driver(driver::Error::Conflict(message)) => ServiceError::Conflict(format!("{function}: {message}")),
        CallError::Driver(driver::Error::Invalid(message)) => ServiceError::Invalid(format!("{function}: {message}")),
        CallError::Driver(driver::Error::Unsupported(message)) => {
            ServiceError::Conflict(format!("{function}: unsupported by the provider: {message}"))
        }
        other => ServiceError::Unavailable(task_error_from_call(function, other).message),
    }
}

pub(super) fn snapshot_from_driver(snapshot: driver::Snapshot) -> model::Snapshot {
    model::Snapshot {
        created_at: chrono::DateTime::from_timestamp(snapshot.created_at, 0).unwrap_or_default(),
        name: snapshot.name,
        description: snapshot.description,
        state: instance_state_from_driver(snapshot.state),
        current: snapshot.current,
    }
}

pub(super) fn console_from_driver(endpoint: driver::ConsoleEndpoint) -> model::ConsoleEndpoint {
    model::ConsoleEndpoint {
        protocol: match endpoint.protocol {
            driver::ConsoleProtocol::Vnc => model::ConsoleProtocol::Vnc,
            driver::ConsoleProtocol::Spice => model::ConsoleProtocol::Spice,
            driver::ConsoleProtocol::Serial => model::ConsoleProtocol::Serial,
            driver::ConsoleProtocol::Ssh => model::ConsoleProtocol::Ssh,
        },
        host: endpoint.host,
        port: endpoint.port,
        password: endpoint.password,
    }
}

/// Whether a driver call failed because the object does not exist.
pub(super) fn is_not_found(error: &CallError) -> bool {
    matches!(error, CallError::Driver(driver::Error::NotFound(_)))
}

pub(super) fn is_conflict(error: &CallError) -> bool {
    matches!(error, CallError::Driver(driver::Error::Conflict(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(name: &str, last_used_at: Option<Timestamp>) -> CachedTemplate {
        CachedTemplate { name: name.into(), version: 1, tag: "v1".into(), size_bytes: 1, last_used_at }
    }

    #[test]
    fn a_report_keeps_the_templates_recorded_after_it_was_asked_for() {
        let asked = store::now();
        let before = asked - chrono::Duration::seconds(5);
        let after = asked + chrono::Duration::milliseconds(3);
        let reported = [driver::CachedTemplate { name: "listed".into(), version: 1, tag: "v1".into(), size_bytes: 1 }];
        let previous =
            [cached("listed", Some(before)), cached("pulled-since", Some(after)), cached("gone", Some(before))];
        let names: Vec<_> = cached_templates_reported(&reported, &previous, asked)
            .into_iter()
            .map(|template| (template.name, template.last_used_at))
            .collect();
        assert_eq!(names, [("listed".into(), Some(before)), ("pulled-since".into(), Some(after))]);
    }

    #[test]
    fn a_libvirt_tls_endpoint_whose_certificate_files_are_missing_fails_the_provider_naming_them() {
        let directory = tempfile::tempdir().expect("temp dir");
        let config = Config::from_toml(&format!(
            "[[providers]]\nname = \"kvm\"\ndriver = \"driver-libvirt\"\n\
             endpoints = {{ rack2 = \"libvirt+tls://10.0.0.12:16514?pkipath={}\" }}",
            directory.path().display()
        ))
        .expect("the address itself is valid");
        let error = provider_settings(&config, &config.providers[0]).expect_err("no certificate files");
        let ca = directory.path().join("cacert.pem");
        assert!(
            error.starts_with(&format!("providers.kvm.endpoints.rack2: CA certificate {}: ", ca.display())),
            "{error}"
        );
    }
}
