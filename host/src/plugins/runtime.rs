//! The process-wide plugin runtime: one wasmtime `Engine` with epoch interruption, the epoch
//! ticker thread, one linker per world (drivers: WASI, wasi:http and `hyperplane:host`; auth
//! schemes: WASI, wasi:http, the host's log and `hyperplane:auth/credentials`; storage: the same
//! with `hyperplane:storage/streams`), and the cache of compiled components.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings;
use super::component_cache::{ComponentCache, ComponentCacheStatistics};
use super::errors::LoadError;
use super::settings::RuntimeSettings;
use super::store_data::StoreData;

/// How often the ticker bumps the engine epoch; also the slice after which a running guest
/// yields to the async executor and its deadline is checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Shared by the runtime handle and every loaded driver, so the ticker runs while any of
/// them is alive.
pub(crate) struct RuntimeShared {
    pub(crate) engine: Engine,
    /// What drivers are linked against.
    pub(crate) linker: Linker<StoreData>,
    /// What auth schemes are linked against: no endpoints, state or progress, which they have
    /// no use for; the credential checks instead.
    pub(crate) auth_linker: Linker<StoreData>,
    /// What storage plugins are linked against: the host's log and streams (and WASI, whose
    /// filesystem holds only the directory granted to the plugin).
    pub(crate) storage_linker: Linker<StoreData>,
    pub(crate) component_cache: Arc<ComponentCache>,
    /// See [`super::RuntimeSettings::idle_instance_timeout`].
    pub(crate) idle_instance_timeout: Option<Duration>,
    _epoch_ticker: EpochTicker,
}

/// The plugin runtime of the process. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    pub(crate) shared: Arc<RuntimeShared>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PluginRuntime")
            .field("component_cache", &self.shared.component_cache.statistics())
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Creates the engine, starts the epoch ticker and prepares the compiled-component cache.
    pub fn new(settings: RuntimeSettings) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|error| LoadError::Engine(error.to_string()))?;

        let engine_error = |error: wasmtime::Error| LoadError::Engine(error.to_string());
        let wasi_linker = || -> Result<Linker<StoreData>, LoadError> {
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_error)?;
            Ok(linker)
        };
        let mut linker = wasi_linker()?;
        bindings::Driver::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(engine_error)?;
        let mut auth_linker = wasi_linker()?;
        bindings::auth::AuthScheme::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut auth_linker, |data| data)
            .map_err(engine_error)?;
        let mut storage_linker = wasi_linker()?;
        bindings::storage::Storage::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut storage_linker, |data| data)
            .map_err(engine_error)?;

        let component_cache = Arc::new(ComponentCache::new(engine.clone(), settings.cache_dir)?);
        let epoch_ticker = EpochTicker::start(&engine).map_err(|error| LoadError::Engine(error.to_string()))?;
        Ok(PluginRuntime {
            shared: Arc::new(RuntimeShared {
                engine,
                linker,
                auth_linker,
                storage_linker,
                component_cache,
                idle_instance_timeout: settings.idle_instance_timeout,
                _epoch_ticker: epoch_ticker,
            }),
        })
    }

    /// How components were obtained so far: compiled, from the disk cache or from memory.
    pub fn cache_statistics(&self) -> ComponentCacheStatistics {
        self.shared.component_cache.statistics()
    }
}

/// A thread that increments the engine epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        // A weak handle, so the thread never keeps the engine alive on its own.
        let weak_engine = engine.weak();
        thread::Builder::new().name("plugin-epoch-ticker".to_string()).spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                thread::sleep(EPOCH_TICK);
                match weak_engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
