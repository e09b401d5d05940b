//! A loaded driver provider: a pool of component instances behind typed async calls, each with
//! a deadline, a memory cap and a response-size limit.
//!
//! A call takes an idle instance (or instantiates a fresh one from the provider's
//! `InstancePre` and runs `init` on it), runs on it, and returns it to the pool when the call
//! ended cleanly, including with the driver's own WIT error. A trap, a timeout, the memory cap
//! or an oversized response discards the instance; the next call gets a fresh one. Concurrent
//! calls run on distinct instances, so one slow call never holds up another.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument as _;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, UpdateDeadline};

use super::bindings;
use super::component_cache::CacheOutcome;
use super::driver_types::{
    CachedTemplate, Capabilities, ConsoleEndpoint, DriverError, ExecResult, HostReport, Instance, InstanceSpec,
    Snapshot, TemplateRef,
};
use super::errors::{CallError, LoadError};
use super::http::OutgoingHttpAllowList;
use super::progress::{self, ProgressSink};
use super::response_size::EstimatedSize;
use super::runtime::{PluginRuntime, RuntimeShared};
use super::settings::ProviderSettings;
use super::state::PluginStateStore;
use super::store_data::{ProviderContext, StoreData};
use super::telemetry;
use super::transfer::ByteSource;
use super::version::check_driver_exports;

/// Most idle instances kept per provider; more are dropped when their call ends. As many as may
/// run at once: a smaller pool churns under load (every surplus instance is instantiated, runs
/// `init` and, for libvirt, opens and closes a connection), which doubled the latency of
/// libvirt calls at 50 concurrent lifecycles (`cargo bench --bench libvirt`).
pub const MAX_IDLE_INSTANCES_PER_PROVIDER: usize = MAX_CONCURRENT_CALLS_PER_PROVIDER;
/// Most calls one provider runs at once; further calls wait (within their deadline).
pub const MAX_CONCURRENT_CALLS_PER_PROVIDER: usize = 64;

/// One instance of the component with its own store.
struct LiveInstance {
    store: Store<StoreData>,
    hypervisor: bindings::Hypervisor,
}

/// The outcome of running a guest function on a checked-out instance: the instance comes
/// back with the result so the caller decides whether to keep it.
type GuestCallOutcome<R> = (LiveInstance, wasmtime::Result<Result<R, DriverError>>);

struct ProviderShared {
    runtime: Arc<RuntimeShared>,
    context: Arc<ProviderContext>,
    instance_pre: InstancePre<StoreData>,
    hypervisor_indices: bindings::HypervisorIndices,
    config_json: String,
    call_timeout: Duration,
    max_response_bytes: usize,
    idle_instances: Mutex<Vec<LiveInstance>>,
    call_permits: Semaphore,
    cache_outcome: CacheOutcome,
    instances_created: AtomicU64,
    instances_discarded: AtomicU64,
}

/// Counters of a provider's instance pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverStatistics {
    /// Fresh instances created (each ran `init`), including the one created at load.
    pub instances_created: u64,
    /// Instances thrown away after a trap, timeout, memory cap or oversized response.
    pub instances_discarded: u64,
    /// Instances waiting in the pool right now.
    pub idle_instances: usize,
}

/// A loaded driver provider. Cheap to clone; clones share the instance pool.
#[derive(Clone)]
pub struct Driver {
    shared: Arc<ProviderShared>,
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
        let runtime_shared = runtime.shared.clone();
        let label = settings.component.label();
        let provider_name: Arc<str> = settings.name.as_str().into();
        let http_allow_list = OutgoingHttpAllowList::parse(provider_name.clone(), &settings.allowed_http_hosts)?;

        let (component, cache_outcome) = runtime_shared.component_cache.load(&settings.component).await?;
        let (instance_pre, hypervisor_indices) = link(&runtime_shared, &component, &label)?;
        let context = Arc::new(ProviderContext {
            name: provider_name,
            endpoints: settings.endpoints,
            http_allow_list,
            state_store: state,
            memory_limit_bytes: settings.memory_limit_bytes,
        });
        let shared = Arc::new(ProviderShared {
            runtime: runtime_shared,
            context,
            instance_pre,
            hypervisor_indices,
            config_json: settings.config_json,
            call_timeout: settings.call_timeout,
            max_response_bytes: settings.max_response_bytes,
            idle_instances: Mutex::new(Vec::new()),
            call_permits: Semaphore::new(MAX_CONCURRENT_CALLS_PER_PROVIDER),
            cache_outcome,
            instances_created: AtomicU64::new(0),
            instances_discarded: AtomicU64::new(0),
        });

        let started = Instant::now();
        let (instance, capabilities) = shared
            .instantiate_within_call_timeout()
            .await
            .map_err(|source| LoadError::Init { provider: shared.context.name.to_string(), source })?;
        tracing::info!(
            provider = %shared.context.name,
            component = %label,
            cache = ?cache_outcome,
            instantiate_and_init = ?started.elapsed(),
            ?capabilities,
            "loaded driver provider"
        );
        shared.return_to_pool(instance);
        Ok(Driver { shared, capabilities })
    }

    pub fn name(&self) -> &str {
        &self.shared.context.name
    }

    /// What `init` of the first instance reported.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// How the compiled component was obtained when this provider loaded.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.shared.cache_outcome
    }

    pub fn statistics(&self) -> DriverStatistics {
        DriverStatistics {
            instances_created: self.shared.instances_created.load(Ordering::Relaxed),
            instances_discarded: self.shared.instances_discarded.load(Ordering::Relaxed),
            idle_instances: self.shared.idle_instances.lock().unwrap_or_else(PoisonError::into_inner).len(),
        }
    }

    /// Instantiates and initializes instances until `count` are idle (at most
    /// [`MAX_IDLE_INSTANCES_PER_PROVIDER`]), so that the next calls skip instantiation.
    pub async fn prewarm(&self, count: usize) -> Result<(), CallError> {
        let target = count.min(MAX_IDLE_INSTANCES_PER_PROVIDER);
        while self.statistics().idle_instances < target {
            let (instance, _) = self.shared.instantiate_within_call_timeout().await?;
            self.shared.return_to_pool(instance);
        }
        Ok(())
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostReport>, CallError> {
        self.call("list-hosts", move |mut instance| async move {
            let result = instance.hypervisor.call_list_hosts(&mut instance.store).await;
            (instance, result)
        })
        .await
    }

    pub async fn list_instances(&self) -> Result<Vec<Instance>, CallError> {
        self.call("list-instances", move |mut instance| async move {
            let result = instance.hypervisor.call_list_instances(&mut instance.store).await;
            (instance, result)
        })
        .await
    }

    pub async fn create_instance(&self, spec: InstanceSpec) -> Result<Instance, CallError> {
        self.call("create-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_create_instance(&mut instance.store, &spec).await;
            (instance, result)
        })
        .await
    }

    pub async fn start_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.call("start-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_start_instance(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    /// A graceful stop that powers off after `grace`; the call's deadline is the provider's
    /// call timeout plus `grace`, so the driver can wait out the whole grace period.
    pub async fn stop_instance(&self, id: &str, force: bool, grace: Duration) -> Result<Instance, CallError> {
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        let timeout = self.shared.call_timeout.saturating_add(grace);
        self.call_within("stop-instance", timeout, move |mut instance| async move {
            let result = instance.hypervisor.call_stop_instance(&mut instance.store, id, force, grace_ms).await;
            (instance, result)
        })
        .await
    }

    pub async fn suspend_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.call("suspend-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_suspend_instance(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn resume_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.call("resume-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_resume_instance(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn restart_instance(&self, id: &str, force: bool) -> Result<Instance, CallError> {
        self.call("restart-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_restart_instance(&mut instance.store, id, force).await;
            (instance, result)
        })
        .await
    }

    pub async fn delete_instance(&self, id: &str) -> Result<(), CallError> {
        self.call("delete-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_delete_instance(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn get_instance(&self, id: &str) -> Result<Instance, CallError> {
        self.call("get-instance", move |mut instance| async move {
            let result = instance.hypervisor.call_get_instance(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn list_templates(&self, host: &str) -> Result<Vec<CachedTemplate>, CallError> {
        self.call("list-templates", move |mut instance| async move {
            let result = instance.hypervisor.call_list_templates(&mut instance.store, host).await;
            (instance, result)
        })
        .await
    }

    /// Hands `image` to the driver as a `transfer.byte-source`. The call's deadline is the
    /// provider's call timeout plus the image's size at [`super::MIN_TRANSFER_BYTES_PER_SEC`].
    pub async fn pull_template(
        &self,
        host: &str,
        template: TemplateRef,
        image: ByteSource,
    ) -> Result<CachedTemplate, CallError> {
        let timeout = self.shared.call_timeout.saturating_add(image.transfer_allowance());
        self.call_within("pull-template", timeout, move |mut instance| async move {
            let result = match instance.store.data_mut().table.push(image) {
                Ok(image) => instance.hypervisor.call_pull_template(&mut instance.store, host, &template, image).await,
                Err(error) => Err(error.into()),
            };
            (instance, result)
        })
        .await
    }

    pub async fn remove_template(&self, host: &str, template: TemplateRef) -> Result<(), CallError> {
        self.call("remove-template", move |mut instance| async move {
            let result = instance.hypervisor.call_remove_template(&mut instance.store, host, &template).await;
            (instance, result)
        })
        .await
    }

    pub async fn exec(&self, id: &str, script: &str, timeout_ms: u32) -> Result<ExecResult, CallError> {
        self.call("exec", move |mut instance| async move {
            let result = instance.hypervisor.call_exec(&mut instance.store, id, script, timeout_ms).await;
            (instance, result)
        })
        .await
    }

    pub async fn console(&self, id: &str) -> Result<ConsoleEndpoint, CallError> {
        self.call("console", move |mut instance| async move {
            let result = instance.hypervisor.call_console(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn list_snapshots(&self, id: &str) -> Result<Vec<Snapshot>, CallError> {
        self.call("list-snapshots", move |mut instance| async move {
            let result = instance.hypervisor.call_list_snapshots(&mut instance.store, id).await;
            (instance, result)
        })
        .await
    }

    pub async fn create_snapshot(&self, id: &str, name: &str, description: &str) -> Result<Snapshot, CallError> {
        self.call("create-snapshot", move |mut instance| async move {
            let result = instance.hypervisor.call_create_snapshot(&mut instance.store, id, name, description).await;
            (instance, result)
        })
        .await
    }

    pub async fn revert_snapshot(&self, id: &str, name: &str) -> Result<Instance, CallError> {
        self.call("revert-snapshot", move |mut instance| async move {
            let result = instance.hypervisor.call_revert_snapshot(&mut instance.store, id, name).await;
            (instance, result)
        })
        .await
    }

    pub async fn delete_snapshot(&self, id: &str, name: &str) -> Result<(), CallError> {
        self.call("delete-snapshot", move |mut instance| async move {
            let result = instance.hypervisor.call_delete_snapshot(&mut instance.store, id, name).await;
            (instance, result)
        })
        .await
    }

    /// Runs `guest_call` on an instance under the provider's deadline, memory cap and
    /// response limit, with a tracing span and metrics.
    async fn call<R, F, Fut>(&self, function: &'static str, guest_call: F) -> Result<R, CallError>
    where
        R: EstimatedSize,
        F: FnOnce(LiveInstance) -> Fut,
        Fut: Future<Output = GuestCallOutcome<R>>,
    {
        self.call_within(function, self.shared.call_timeout, guest_call).await
    }

    /// [`Self::call`] with a deadline of `timeout` instead of the provider's call timeout.
    async fn call_within<R, F, Fut>(
        &self,
        function: &'static str,
        timeout: Duration,
        guest_call: F,
    ) -> Result<R, CallError>
    where
        R: EstimatedSize,
        F: FnOnce(LiveInstance) -> Fut,
        Fut: Future<Output = GuestCallOutcome<R>>,
    {
        let shared = &*self.shared;
        let span = tracing::info_span!("plugin_call", provider = %shared.context.name, function);
        let started = Instant::now();
        let progress_sink = progress::current_sink();
        let outcome =
            shared.run_call(function, started, timeout, progress_sink, guest_call).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        telemetry::record_call(&shared.context.name, function, elapsed, outcome.as_ref().err().map(CallError::kind));
        span.in_scope(|| match &outcome {
            Ok(_) => tracing::debug!(?elapsed, "plugin call succeeded"),
            Err(error @ CallError::Driver(_)) => {
                tracing::debug!(?elapsed, %error, "plugin call returned a driver error")
            }
            Err(error) => tracing::warn!(?elapsed, %error, "plugin call failed, instance discarded"),
        });
        outcome
    }
}

impl ProviderShared {
    async fn run_call<R, F, Fut>(
        &self,
        function: &'static str,
        started: Instant,
        timeout: Duration,
        progress_sink: Option<ProgressSink>,
        guest_call: F,
    ) -> Result<R, CallError>
    where
        R: EstimatedSize,
        F: FnOnce(LiveInstance) -> Fut,
        Fut: Future<Output = GuestCallOutcome<R>>,
    {
        let deadline = started + timeout;
        let guest_running = AtomicBool::new(false);
        // Dropping this future on timeout drops the instance inside it: a timed-out instance
        // is never reused.
        let attempt = tokio::time::timeout(timeout, async {
            let _permit =
                self.call_permits.acquire().await.map_err(|error| CallError::Instantiate(error.to_string()))?;
            let mut instance = self.checkout_instance(deadline).await?;
            guest_running.store(true, Ordering::Relaxed);
            instance.store.data_mut().begin_call(function, deadline, progress_sink);
            instance.store.set_epoch_deadline(1);
            Ok::<_, CallError>(guest_call(instance).await)
        })
        .await;

        let (mut instance, result) = match attempt {
            Err(_elapsed) => {
                if guest_running.load(Ordering::Relaxed) {
                    self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                }
                return Err(CallError::Timeout { function, after: timeout });
            }
            Ok(Err(error)) => return Err(error),
            Ok(Ok(outcome)) => outcome,
        };
        match result {
            Err(wasm_error) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                Err(self.classify_guest_failure(instance.store.data(), function, timeout, &wasm_error))
            }
            Ok(response) => {
                if response.estimated_size_bytes() > self.max_response_bytes {
                    self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                    return Err(CallError::ResponseTooLarge { function, limit_bytes: self.max_response_bytes });
                }
                instance.store.data_mut().end_call();
                self.return_to_pool(instance);
                response.map_err(CallError::Driver)
            }
        }
    }

    /// Takes an idle instance, or instantiates and initializes a fresh one.
    async fn checkout_instance(&self, deadline: Instant) -> Result<LiveInstance, CallError> {
        if let Some(instance) = self.idle_instances.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(instance);
        }
        self.instantiate(deadline).await.map(|(instance, _)| instance).map_err(|error| match error {
            timeout @ CallError::Timeout { .. } => timeout,
            other => CallError::Instantiate(other.to_string()),
        })
    }

    fn return_to_pool(&self, instance: LiveInstance) {
        let mut idle_instances = self.idle_instances.lock().unwrap_or_else(PoisonError::into_inner);
        if idle_instances.len() < MAX_IDLE_INSTANCES_PER_PROVIDER {
            idle_instances.push(instance);
        }
    }

    /// [`Self::instantiate`] outside any call, bounded by the provider's call timeout.
    async fn instantiate_within_call_timeout(&self) -> Result<(LiveInstance, Capabilities), CallError> {
        let deadline = Instant::now() + self.call_timeout;
        tokio::time::timeout(self.call_timeout, self.instantiate(deadline))
            .await
            .unwrap_or(Err(CallError::Timeout { function: "init", after: self.call_timeout }))
    }

    /// Creates a fresh instance and runs `init` on it with the provider's configuration.
    async fn instantiate(&self, deadline: Instant) -> Result<(LiveInstance, Capabilities), CallError> {
        let mut store = Store::new(&self.runtime.engine, StoreData::new(self.context.clone()));
        store.limiter(|data| &mut data.memory_cap);
        store.epoch_deadline_callback(|mut context| {
            let data = context.data_mut();
            if Instant::now() >= data.call.deadline {
                data.call.deadline_exceeded = true;
                return Err(wasmtime::Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        store.data_mut().begin_call("init", deadline, None);
        store.set_epoch_deadline(1);
        self.instances_created.fetch_add(1, Ordering::Relaxed);
        telemetry::record_instantiation(&self.context.name);

        let instantiated = match self.instance_pre.instantiate_async(&mut store).await {
            Ok(instance) => self.hypervisor_indices.load(&mut store, &instance),
            Err(error) => Err(error),
        };
        let hypervisor = match instantiated {
            Ok(hypervisor) => hypervisor,
            Err(error) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                return Err(self.classify_guest_failure(store.data(), "instantiate", self.call_timeout, &error));
            }
        };
        let initialized = hypervisor.call_init(&mut store, &self.config_json).await;
        match initialized {
            Ok(Ok(capabilities)) => {
                store.data_mut().end_call();
                Ok((LiveInstance { store, hypervisor }, capabilities))
            }
            Ok(Err(driver_error)) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                Err(CallError::Driver(driver_error))
            }
            Err(error) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                Err(self.classify_guest_failure(store.data(), "init", self.call_timeout, &error))
            }
        }
    }

    /// Tells a deadline interruption and a memory-cap refusal apart from other traps.
    fn classify_guest_failure(
        &self,
        data: &StoreData,
        function: &'static str,
        timeout: Duration,
        error: &wasmtime::Error,
    ) -> CallError {
        if data.call.deadline_exceeded {
            return CallError::Timeout { function, after: timeout };
        }
        if data.memory_cap.exceeded {
            return CallError::MemoryLimit { function, limit_bytes: self.context.memory_limit_bytes };
        }
        let mut message = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => error.to_string(),
        };
        if let Some(guest_stderr) = data.recent_stderr.joined() {
            message.push_str(&format!(" (guest stderr: {guest_stderr})"));
        }
        CallError::Trap { function, message }
    }
}

/// Checks the component speaks the supported driver version, links it against the runtime's
/// linker and finds its `hypervisor` export.
fn link(
    runtime: &RuntimeShared,
    component: &Component,
    label: &str,
) -> Result<(InstancePre<StoreData>, bindings::HypervisorIndices), LoadError> {
    let component_type = component.component_type();
    check_driver_exports(label, component_type.exports(&runtime.engine).map(|(name, _)| name))?;
    let link_error =
        |error: wasmtime::Error| LoadError::Link { label: label.to_string(), message: format!("{error:#}") };
    let instance_pre = runtime.linker.instantiate_pre(component).map_err(link_error)?;
    let hypervisor_indices = bindings::HypervisorIndices::new(&instance_pre).map_err(link_error)?;
    Ok((instance_pre, hypervisor_indices))
}
