//! Compiled components, cached in memory and on disk as `<cache_dir>/<key>.cwasm`, where the
//! key is the sha256 of the component bytes and the engine's compatibility hash.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::errors::LoadError;
use super::settings::ComponentSource;

/// How a load obtained its compiled component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Compiled now (and written to the disk cache when there is one).
    Compiled,
    /// Deserialized from the disk cache.
    DiskHit,
    /// Already compiled in this process.
    MemoryHit,
}

/// Counts of [`CacheOutcome`]s since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentCacheStatistics {
    pub compiled: u64,
    pub disk_hits: u64,
    pub memory_hits: u64,
}

pub(crate) struct ComponentCache {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    compiled_by_key: Mutex<HashMap<String, Component>>,
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
}

/// Feeds `Hash` output into sha256; only `write` is meaningful.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The first bytes of a binary component: `\0asm`, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

impl ComponentCache {
    pub(crate) fn new(engine: Engine, cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        if let Some(path) = &cache_dir {
            std::fs::create_dir_all(path).map_err(|source| LoadError::CacheDirectory { path: path.clone(), source })?;
        }
        Ok(ComponentCache {
            engine,
            cache_dir,
            compiled_by_key: Mutex::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
        })
    }

    pub(crate) fn statistics(&self) -> ComponentCacheStatistics {
        ComponentCacheStatistics {
            compiled: self.compiled.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// The cache key of `bytes` for this engine, as lowercase hex.
    fn cache_key(&self, bytes: &[u8]) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.0.update(bytes);
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        hex::encode(hasher.0.finalize())
    }

    /// Returns the compiled component of `source`, compiling it only when neither the memory
    /// nor the disk cache holds it. Blocking work runs on the blocking thread pool.
    pub(crate) async fn load(
        self: &Arc<Self>,
        source: &ComponentSource,
    ) -> Result<(Component, CacheOutcome), LoadError> {
        let label = source.label();
        let bytes: Arc<[u8]> = match source {
            ComponentSource::Bytes { bytes, .. } => bytes.clone(),
            ComponentSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|source| LoadError::ReadComponent { path: path.clone(), source })?
                .into(),
        };
        if !bytes.starts_with(&COMPONENT_HEADER) {
            return Err(LoadError::InvalidComponent {
                label,
                message:
                    "the file does not start with the webassembly component header (core modules are not accepted)"
                        .to_string(),
            });
        }
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.load_blocking(&label, &bytes))
            .await
            .map_err(|error| LoadError::BackgroundTask(error.to_string()))?
    }

    fn load_blocking(&self, label: &str, bytes: &[u8]) -> Result<(Component, CacheOutcome), LoadError> {
        let key = self.cache_key(bytes);
        if let Some(component) = self.compiled_by_key.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((component.clone(), CacheOutcome::MemoryHit));
        }
        let cached_file = self.cache_dir.as_ref().map(|directory| directory.join(format!("{key}.cwasm")));
        if let Some(path) = cached_file.as_deref().filter(|path| path.exists()) {
            match deserialize_cached_component(&self.engine, path) {
                Ok(component) => {
                    self.disk_hits.fetch_add(1, Ordering::Relaxed);
                    self.remember(key, &component);
                    return Ok((component, CacheOutcome::DiskHit));
                }
                Err(error) => {
                    tracing::warn!(component = label, path = %path.display(), %error, "discarding unusable cached component");
                }
            }
        }

        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|error| LoadError::Compile { label: label.to_string(), message: format!("{error:#}") })?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(component = label, elapsed = ?started.elapsed(), "compiled plugin component");
        if let Some(path) = &cached_file {
            match component.serialize() {
                Ok(serialized) => {
                    if let Err(error) = write_atomically(path, &serialized) {
                        tracing::warn!(component = label, path = %path.display(), %error, "could not cache compiled component");
                    }
                }
                Err(error) => tracing::warn!(component = label, %error, "could not serialize compiled component"),
            }
        }
        self.remember(key, &component);
        Ok((component, CacheOutcome::Compiled))
    }

    fn remember(&self, key: String, component: &Component) {
        self.compiled_by_key.lock().unwrap_or_else(PoisonError::into_inner).insert(key, component.clone());
    }
}

/// Writes `contents` to a temporary file next to `path` and renames it over `path`, so that
/// readers never see a partial file.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary_path =
        path.with_extension(format!("cwasm.{}-{:016x}.tmp", std::process::id(), rand::random::<u64>()));
    let written = std::fs::File::create(&temporary_path).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temporary_path, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temporary_path);
    }
    renamed
}

/// Loads a component this module compiled and serialized earlier.
#[allow(unsafe_code)]
fn deserialize_cached_component(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that deserialized bytes come from `Component::serialize` of a
    // compatible engine and were not tampered with. The file lives in the operator-owned
    // cache directory, is written only by `write_atomically` above (never partially: temp file
    // + rename), and its name is the sha256 of the source component and of this engine's
    // compatibility hash; wasmtime itself also rejects files of another version or config.
    // Someone able to write the cache directory could equally replace the host binary.
    unsafe { Component::deserialize_file(engine, path) }
}
