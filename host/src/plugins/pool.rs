//! A pool of component instances of one plugin (a driver provider or an auth scheme) and the
//! one way to call into them: with a deadline, a memory cap and a response-size limit.
//!
//! A call takes an idle instance (or instantiates a fresh one from the plugin's `InstancePre`
//! and runs `init` on it), runs on it, and returns it to the pool when the call ended cleanly,
//! including with the plugin's own WIT error. A trap, a timeout, the memory cap or an oversized
//! response discards the instance; the next call gets a fresh one. Concurrent calls run on
//! distinct instances, so one slow call never holds up another. A call takes the instance
//! given back last; instances unused for longer than the runtime's idle timeout
//! (`plugins.idle_instance_secs`) are dropped when an instance is given back.
//!
//! What differs between worlds (how exports are found, what `init` returns) is
//! [`GuestExports`]; everything else is here once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument as _;
use wasmtime::component::{Component, Instance, InstancePre, Linker};
use wasmtime::{Store, UpdateDeadline};

use super::component_cache::CacheOutcome;
use super::errors::{CallError, LoadError};
use super::progress::{self, ProgressSink};
use super::response_size::EstimatedSize;
use super::runtime::{PluginRuntime, RuntimeShared};
use super::settings::ComponentSource;
use super::store_data::{ProviderContext, StoreData};
use super::telemetry;

/// Most idle instances kept per plugin; more are dropped when their call ends. As many as may
/// run at once: a smaller pool churns under load (every surplus instance is instantiated, runs
/// `init` and, for libvirt, opens and closes a connection), which doubled the latency of
/// libvirt calls at 50 concurrent lifecycles (`cargo bench --bench libvirt`).
pub const MAX_IDLE_INSTANCES_PER_PROVIDER: usize = MAX_CONCURRENT_CALLS_PER_PROVIDER;
/// Most calls one plugin runs at once; further calls wait (within their deadline).
pub const MAX_CONCURRENT_CALLS_PER_PROVIDER: usize = 64;

/// The exports of one world, as the pool needs them: where they are in a component, how to
/// find them in an instance, and its `init`.
pub(crate) trait GuestExports: Sized + Send + 'static {
    /// The export indices, looked up once per component.
    type Indices: Send + Sync + 'static;
    /// What `init` reports about the plugin.
    type InitOutput: Send;

    /// The linker of this world (what the host offers such plugins).
    fn linker(runtime: &RuntimeShared) -> &Linker<StoreData>;
    /// Refuses a component that does not export this world's interface in the supported
    /// version, before linking it.
    fn check_exports<'a>(label: &str, export_names: impl Iterator<Item = &'a str>) -> Result<(), LoadError>;
    /// The world, for link errors: `hyperplane:driver@0.3.0`.
    fn world() -> &'static str;
    fn indices(instance_pre: &InstancePre<StoreData>) -> wasmtime::Result<Self::Indices>;
    fn load(indices: &Self::Indices, store: &mut Store<StoreData>, instance: &Instance) -> wasmtime::Result<Self>;
    /// Runs `init` with the plugin's configuration; the plugin's own error becomes a
    /// [`CallError`] of its kind.
    fn init(
        &self,
        store: &mut Store<StoreData>,
        config_json: &str,
    ) -> impl Future<Output = wasmtime::Result<Result<Self::InitOutput, CallError>>> + Send;
}

/// One instance of the component with its own store.
pub(crate) struct LiveInstance<G> {
    pub(crate) store: Store<StoreData>,
    pub(crate) exports: G,
}

/// The outcome of running a guest function on a checked-out instance: the instance comes
/// back with the result so that the pool decides whether to keep it. The inner error is the
/// plugin's own WIT error.
pub(crate) type GuestCallOutcome<G, T, E> = (LiveInstance<G>, wasmtime::Result<Result<T, E>>);

/// What a pool is made of besides the component: the plugin's shared context, its `init`
/// configuration and its limits.
pub(crate) struct PoolSettings {
    pub(crate) component: ComponentSource,
    pub(crate) context: Arc<ProviderContext>,
    pub(crate) config_json: String,
    pub(crate) call_timeout: Duration,
    pub(crate) max_response_bytes: usize,
}

/// Counters of a plugin's instance pool (a driver provider's or an auth scheme's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatistics {
    /// Fresh instances created (each ran `init`), including the one created at load.
    pub instances_created: u64,
    /// Instances thrown away after a trap, timeout, memory cap or oversized response.
    pub instances_discarded: u64,
    /// Instances waiting in the pool right now.
    pub idle_instances: usize,
}

pub(crate) struct InstancePool<G: GuestExports> {
    runtime: Arc<RuntimeShared>,
    pub(crate) context: Arc<ProviderContext>,
    instance_pre: InstancePre<StoreData>,
    indices: G::Indices,
    config_json: String,
    pub(crate) call_timeout: Duration,
    max_response_bytes: usize,
    /// Idle instances with when each was given back, the latest last (the next call takes it).
    idle_instances: Mutex<Vec<(LiveInstance<G>, Instant)>>,
    call_permits: Semaphore,
    pub(crate) cache_outcome: CacheOutcome,
    instances_created: AtomicU64,
    instances_discarded: AtomicU64,
}

impl<G: GuestExports> InstancePool<G> {
    /// Compiles the component (or takes it from the cache), links it against the host, and
    /// instantiates a first instance (kept idle) whose `init` output is returned.
    pub(crate) async fn load(
        runtime: &PluginRuntime,
        settings: PoolSettings,
    ) -> Result<(Arc<Self>, G::InitOutput), LoadError> {
        let runtime_shared = runtime.shared.clone();
        let label = settings.component.label();
        let (component, cache_outcome) = runtime_shared.component_cache.load(&settings.component).await?;
        let (instance_pre, indices) = link::<G>(&runtime_shared, &component, &label)?;
        let pool = Arc::new(InstancePool {
            runtime: runtime_shared,
            context: settings.context,
            instance_pre,
            indices,
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
        let (instance, init_output) = pool
            .instantiate_within_call_timeout()
            .await
            .map_err(|source| LoadError::Init { provider: pool.context.name.to_string(), source })?;
        tracing::info!(
            provider = %pool.context.name,
            component = %label,
            cache = ?cache_outcome,
            instantiate_and_init = ?started.elapsed(),
            "loaded plugin component"
        );
        pool.return_to_pool(instance);
        Ok((pool, init_output))
    }

    pub(crate) fn name(&self) -> &str {
        &self.context.name
    }

    pub(crate) fn statistics(&self) -> PoolStatistics {
        PoolStatistics {
            instances_created: self.instances_created.load(Ordering::Relaxed),
            instances_discarded: self.instances_discarded.load(Ordering::Relaxed),
            idle_instances: self.idle_instances.lock().unwrap_or_else(PoisonError::into_inner).len(),
        }
    }

    /// Instantiates and initializes instances until `count` are idle (at most
    /// [`MAX_IDLE_INSTANCES_PER_PROVIDER`]), so that the next calls skip instantiation.
    pub(crate) async fn prewarm(&self, count: usize) -> Result<(), CallError> {
        let target = count.min(MAX_IDLE_INSTANCES_PER_PROVIDER);
        while self.statistics().idle_instances < target {
            let (instance, _) = self.instantiate_within_call_timeout().await?;
            self.return_to_pool(instance);
        }
        Ok(())
    }

    /// Runs `guest_call` on an instance under the plugin's deadline, memory cap and response
    /// limit, with a tracing span and metrics.
    pub(crate) async fn call<T, E, F, Fut>(&self, function: &'static str, guest_call: F) -> Result<T, CallError>
    where
        Result<T, E>: EstimatedSize,
        CallError: From<E>,
        F: FnOnce(LiveInstance<G>) -> Fut,
        Fut: Future<Output = GuestCallOutcome<G, T, E>>,
    {
        self.call_within(function, self.call_timeout, guest_call).await
    }

    /// [`Self::call`] with a deadline of `timeout` instead of the plugin's call timeout.
    pub(crate) async fn call_within<T, E, F, Fut>(
        &self,
        function: &'static str,
        timeout: Duration,
        guest_call: F,
    ) -> Result<T, CallError>
    where
        Result<T, E>: EstimatedSize,
        CallError: From<E>,
        F: FnOnce(LiveInstance<G>) -> Fut,
        Fut: Future<Output = GuestCallOutcome<G, T, E>>,
    {
        let span = tracing::info_span!("plugin_call", provider = %self.context.name, function);
        let started = Instant::now();
        let progress_sink = progress::current_sink();
        let outcome =
            self.run_call(function, started, timeout, progress_sink, guest_call).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        telemetry::record_call(&self.context.name, function, elapsed, outcome.as_ref().err().map(CallError::kind));
        span.in_scope(|| match &outcome {
            Ok(_) => tracing::debug!(?elapsed, "plugin call succeeded"),
            Err(error) if !error.discarded_instance() => {
                tracing::debug!(?elapsed, %error, "plugin call returned the plugin's own error")
            }
            Err(error) => tracing::warn!(?elapsed, %error, "plugin call failed, instance discarded"),
        });
        outcome
    }

    async fn run_call<T, E, F, Fut>(
        &self,
        function: &'static str,
        started: Instant,
        timeout: Duration,
        progress_sink: Option<ProgressSink>,
        guest_call: F,
    ) -> Result<T, CallError>
    where
        Result<T, E>: EstimatedSize,
        CallError: From<E>,
        F: FnOnce(LiveInstance<G>) -> Fut,
        Fut: Future<Output = GuestCallOutcome<G, T, E>>,
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
                response.map_err(CallError::from)
            }
        }
    }

    /// Takes the instance given back last, or instantiates and initializes a fresh one.
    async fn checkout_instance(&self, deadline: Instant) -> Result<LiveInstance<G>, CallError> {
        if let Some((instance, _)) = self.idle_instances.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(instance);
        }
        self.instantiate(deadline).await.map(|(instance, _)| instance).map_err(|error| match error {
            timeout @ CallError::Timeout { .. } => timeout,
            other => CallError::Instantiate(other.to_string()),
        })
    }

    /// Keeps `instance` for the next call (unless the pool is full), and drops the instances
    /// unused for longer than the runtime's idle timeout: after a burst of calls, the
    /// instances it needed — and a driver's connections — do not stay open for good.
    fn return_to_pool(&self, instance: LiveInstance<G>) {
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut idle_instances = self.idle_instances.lock().unwrap_or_else(PoisonError::into_inner);
            if idle_instances.len() < MAX_IDLE_INSTANCES_PER_PROVIDER {
                idle_instances.push((instance, now));
            }
            let unused_since = self.runtime.idle_instance_timeout.and_then(|timeout| now.checked_sub(timeout));
            // Given back in order: the expired ones come first.
            let expired = unused_since.map_or(0, |since| idle_instances.partition_point(|(_, at)| *at < since));
            idle_instances.drain(..expired).collect()
        };
        // Dropped outside the lock: a driver's instance closes its connections.
        drop(expired);
    }

    /// [`Self::instantiate`] outside any call, bounded by the plugin's call timeout.
    async fn instantiate_within_call_timeout(&self) -> Result<(LiveInstance<G>, G::InitOutput), CallError> {
        let deadline = Instant::now() + self.call_timeout;
        tokio::time::timeout(self.call_timeout, self.instantiate(deadline))
            .await
            .unwrap_or(Err(CallError::Timeout { function: "init", after: self.call_timeout }))
    }

    /// Creates a fresh instance and runs `init` on it with the plugin's configuration.
    async fn instantiate(&self, deadline: Instant) -> Result<(LiveInstance<G>, G::InitOutput), CallError> {
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
            Ok(instance) => G::load(&self.indices, &mut store, &instance),
            Err(error) => Err(error),
        };
        let exports = match instantiated {
            Ok(exports) => exports,
            Err(error) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                return Err(self.classify_guest_failure(store.data(), "instantiate", self.call_timeout, &error));
            }
        };
        let initialized = exports.init(&mut store, &self.config_json).await;
        match initialized {
            Ok(Ok(init_output)) => {
                store.data_mut().end_call();
                Ok((LiveInstance { store, exports }, init_output))
            }
            Ok(Err(plugin_error)) => {
                self.instances_discarded.fetch_add(1, Ordering::Relaxed);
                Err(plugin_error)
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

/// Checks the component exports the world's interface, links it against the world's linker
/// and finds its exports.
fn link<G: GuestExports>(
    runtime: &RuntimeShared,
    component: &Component,
    label: &str,
) -> Result<(InstancePre<StoreData>, G::Indices), LoadError> {
    let component_type = component.component_type();
    G::check_exports(label, component_type.exports(&runtime.engine).map(|(name, _)| name))?;
    let link_error = |error: wasmtime::Error| LoadError::Link {
        label: label.to_string(),
        world: G::world(),
        message: format!("{error:#}"),
    };
    let instance_pre = G::linker(runtime).instantiate_pre(component).map_err(link_error)?;
    let indices = G::indices(&instance_pre).map_err(link_error)?;
    Ok((instance_pre, indices))
}
