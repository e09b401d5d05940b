//! A loaded driver provider: a pool of component instances of the `driver@0.3.0` world behind
//! typed async calls, each with a deadline, a memory cap and a response-size limit (see
//! `pool.rs` for how instances are pooled, reused and discarded).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{Instance as ComponentInstance, InstancePre, Linker, Resource};

use super::bindings;
use super::component_cache::CacheOutcome;
use super::driver_types::{
    CachedTemplate, Capabilities, ConsoleEndpoint, DriverError, ExecResult, ExportedDisk, HostReport, Instance,
    InstanceSpec, Snapshot, TemplateRef,
};
use super::errors::{CallError, LoadError};
use super::http::OutgoingHttpAllowList;
use super::pool::{GuestExports, InstancePool, PoolSettings, PoolStatistics};
use super::runtime::{PluginRuntime, RuntimeShared};
use super::settings::ProviderSettings;
use super::state::PluginStateStore;
use super::storage::StorageSink;
use super::store_data::{ProviderContext, StoreData};
use super::transfer::{ByteSource, ImageDelta};
use super::version::check_driver_exports;

impl From<DriverError> for CallError {
    fn from(error: DriverError) -> Self {
        CallError::Driver(error)
    }
}

impl GuestExports for bindings::Hypervisor {
    type Indices = bindings::HypervisorIndices;
    type InitOutput = Capabilities;

    fn linker(runtime: &RuntimeShared) -> &Linker<StoreData> {
        &runtime.linker
    }

    fn check_exports<'a>(label: &str, export_names: impl Iterator<Item = &'a str>) -> Result<(), LoadError> {
        check_driver_exports(label, export_names)
    }

    fn world() -> &'static str {
        "hyperplane:driver@0.3.0"
    }

    fn indices(instance_pre: &InstancePre<StoreData>) -> wasmtime::Result<Self::Indices> {
        bindings::HypervisorIndices::new(instance_pre)
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<StoreData>,
        instance: &ComponentInstance,
    ) -> wasmtime::Result<Self> {
        indices.load(store, instance)
    }

    async fn init(
        &self,
        store: &mut Store<StoreData>,
        config_json: &str,
    ) -> wasmtime::Result<Result<Capabilities, CallError>> {
        Ok(self.call_init(store, config_json).await?.map_err(CallError::Driver))
    }
}

/// A loaded driver provider. Cheap to clone; clones share the instance pool.
#[derive(Clone)]
pub struct Driver {
    pool: Arc<InstancePool<bindings::Hypervisor>>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Driver")
            .field("name", &self.name())
            .field("capabilities", &self.capabilities)
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Compiles the component (or takes it from the cache), links it against the host, and
    /// instantiates a first instance whose `init` reports the driver's capabilities.
    pub async fn load(
        runtime: &PluginRuntime,
        settings: ProviderSettings,
        state: Arc<dyn PluginStateStore>,
    ) -> Result<Driver, LoadError> {
        let provider_name: Arc<str> = settings.name.as_str().into();
        let http_allow_list = OutgoingHttpAllowList::parse(provider_name.clone(), &settings.allowed_http_hosts)?;
        let context = Arc::new(ProviderContext {
            name: provider_name,
            endpoints: settings.endpoints,
            http_allow_list,
            state_store: state,
            memory_limit_bytes: settings.memory_limit_bytes,
            auth: None,
            granted_directory: None,
        });
        let (pool, capabilities) = InstancePool::load(
            runtime,
            PoolSettings {
                component: settings.component,
                context,
                config_json: settings.config_json,
                call_timeout: settings.call_timeout,
                max_response_bytes: settings.max_response_bytes,
            },
        )
        .await?;
        tracing::info!(provider = %pool.name(), ?capabilities, "loaded driver provider");
        Ok(Driver { pool, capabilities })
    }

    pub fn name(&self) -> &str {
        self.pool.name()
    }

    /// What `init` of the first instance reported.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// How the compiled component was obtained when this provider loaded.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.pool.cache_outcome
    }

    pub fn statistics(&self) -> PoolStatistics {
        self.pool.statistics()
    }

    /// Instantiates and initializes instances until `count` are idle (at most
    /// [`super::MAX_IDLE_INSTANCES_PER_PROVIDER`]), so that the next calls skip instantiation.
    pub async fn prewarm(&self, count: usize) -> Result<(), CallError> {
        self.pool.prewarm(count).await
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostReport>, CallError> {
        self.pool
            .call("list-hosts", move |mut instance| async move {
                let result = instance.exports.call_list_hosts(&mut instance.store).await;
                (instance, result)
            })
            .await
    }

    pub async fn list_instances(&self) -> Result<Vec<Instance>, CallError> {
        self.pool
            .call("list-instances", move |mut instance| async move {
                let result = instance.exports.call_list_instances(&mut instance.store).await;
                (instance, result)
            })
            .await
    }

    pub async fn create_instance(&self, spec: InstanceSpec) -> Result<Instance, CallError> {
        self.pool
            .call("create-instance", move |mut instance| async move {
                let result = instance.exports.call_create_instance(&mut instance.store, &spec).await;
                (instance, result)
            })
            .await
    }

    pub async fn start_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.pool
            .call("start-instance", move |mut instance| async move {
                let result = instance.exports.call_start_instance(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    /// A graceful stop that powers off after `grace`; the call's deadline is the provider's
    /// call timeout plus `grace`, so the driver can wait out the whole grace period.
    pub async fn stop_instance(&self, id: &str, force: bool, grace: Duration) -> Result<Instance, CallError> {
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        let timeout = self.pool.call_timeout.saturating_add(grace);
        self.pool
            .call_within("stop-instance", timeout, move |mut instance| async move {
                let result = instance.exports.call_stop_instance(&mut instance.store, id, force, grace_ms).await;
                (instance, result)
            })
            .await
    }

    pub async fn suspend_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.pool
            .call("suspend-instance", move |mut instance| async move {
                let result = instance.exports.call_suspend_instance(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn resume_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.pool
            .call("resume-instance", move |mut instance| async move {
                let result = instance.exports.call_resume_instance(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn restart_instance(&self, id: &str, force: bool) -> Result<Instance, CallError> {
        self.pool
            .call("restart-instance", move |mut instance| async move {
                let result = instance.exports.call_restart_instance(&mut instance.store, id, force).await;
                (instance, result)
            })
            .await
    }

    pub async fn delete_instance(&self, id: &str) -> Result<(), CallError> {
        self.pool
            .call("delete-instance", move |mut instance| async move {
                let result = instance.exports.call_delete_instance(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn get_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.pool
            .call("get-instance", move |mut instance| async move {
                let result = instance.exports.call_get_instance(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn list_templates(&self, host: &str) -> Result<Vec<CachedTemplate>, CallError> {
        self.pool
            .call("list-templates", move |mut instance| async move {
                let result = instance.exports.call_list_templates(&mut instance.store, host).await;
                (instance, result)
            })
            .await
    }

    /// Hands `image` to the driver as a `transfer.byte-source`, and `delta` (the same image as
    /// changes to a version the driver may have) when there is one. The call's deadline is the
    /// provider's call timeout plus the image's size at [`super::MIN_TRANSFER_BYTES_PER_SEC`].
    pub async fn pull_template(
        &self,
        host: &str,
        template: TemplateRef,
        image: ByteSource,
        delta: Option<ImageDelta>,
    ) -> Result<CachedTemplate, CallError> {
        let timeout = self.pool.call_timeout.saturating_add(image.transfer_allowance());
        self.pool
            .call_within("pull-template", timeout, move |mut instance| async move {
                let table = &mut instance.store.data_mut().table;
                let pushed =
                    table.push(image).and_then(|image| Ok((image, delta.map(|delta| table.push(delta)).transpose()?)));
                let result = match pushed {
                    Ok((image, delta)) => {
                        instance.exports.call_pull_template(&mut instance.store, host, &template, image, delta).await
                    }
                    Err(error) => Err(error.into()),
                };
                (instance, result)
            })
            .await
    }

    /// Has the driver write the instance's disk into `sink` as one standalone image. The call's
    /// deadline is the provider's call timeout plus `expected_bytes` at
    /// [`super::MIN_TRANSFER_BYTES_PER_SEC`].
    pub async fn export_disk(
        &self,
        id: &str,
        sink: StorageSink,
        expected_bytes: u64,
    ) -> Result<ExportedDisk, CallError> {
        let allowance = Duration::from_secs_f64(expected_bytes as f64 / super::MIN_TRANSFER_BYTES_PER_SEC as f64);
        let timeout = self.pool.call_timeout.saturating_add(allowance);
        self.pool
            .call_within("export-disk", timeout, move |mut instance| async move {
                let result = match instance.store.data_mut().table.push(sink) {
                    Ok(sink) => {
                        let lent = Resource::new_borrow(sink.rep());
                        let result = instance.exports.call_export_disk(&mut instance.store, id, lent).await;
                        instance.store.data_mut().take_back_sink(sink).await;
                        result
                    }
                    Err(error) => Err(error.into()),
                };
                (instance, result)
            })
            .await
    }

    pub async fn remove_template(&self, host: &str, template: TemplateRef) -> Result<(), CallError> {
        self.pool
            .call("remove-template", move |mut instance| async move {
                let result = instance.exports.call_remove_template(&mut instance.store, host, &template).await;
                (instance, result)
            })
            .await
    }

    pub async fn exec(&self, id: &str, script: &str, timeout_ms: u32) -> Result<ExecResult, CallError> {
        self.pool
            .call("exec", move |mut instance| async move {
                let result = instance.exports.call_exec(&mut instance.store, id, script, timeout_ms).await;
                (instance, result)
            })
            .await
    }

    pub async fn console(&self, id: &str) -> Result<ConsoleEndpoint, CallError> {
        self.pool
            .call("console", move |mut instance| async move {
                let result = instance.exports.call_console(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn list_snapshots(&self, id: &str) -> Result<Vec<Snapshot>, CallError> {
        self.pool
            .call("list-snapshots", move |mut instance| async move {
                let result = instance.exports.call_list_snapshots(&mut instance.store, id).await;
                (instance, result)
            })
            .await
    }

    pub async fn create_snapshot(&self, id: &str, name: &str, description: &str) -> Result<Snapshot, CallError> {
        self.pool
            .call("create-snapshot", move |mut instance| async move {
                let result = instance.exports.call_create_snapshot(&mut instance.store, id, name, description).await;
                (instance, result)
            })
            .await
    }

    pub async fn revert_snapshot(&self, id: &str, name: &str) -> Result<Instance, CallError> {
        self.pool
            .call("revert-snapshot", move |mut instance| async move {
                let result = instance.exports.call_revert_snapshot(&mut instance.store, id, name).await;
                (instance, result)
            })
            .await
    }

    pub async fn delete_snapshot(&self, id: &str, name: &str) -> Result<(), CallError> {
        self.pool
            .call("delete-snapshot", move |mut instance| async move {
                let result = instance.exports.call_delete_snapshot(&mut instance.store, id, name).await;
                (instance, result)
            })
            .await
    }
}
