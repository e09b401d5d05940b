//! `storage-fs`: a blob store in one directory the operator grants to the component.
//!
//! # Host setup
//! The host preopens the granted directory at the guest path `/store`; nothing outside it is
//! reachable. Objects are files under their key (`chunks/ab/abcd…` is `/store/chunks/ab/abcd…`);
//! `put` writes into `/store/.incoming/` first and renames into place, so the directory must be
//! writable and `.incoming` must stay on the same filesystem.
//!
//! # Config (JSON given to `init`; unknown keys are `invalid-config`)
//! `root` (`"/store"`): the directory holding the objects. Only tests change it.
//!
//! # Behaviour
//! Keys are checked strictly (see [`keys`]). `put` streams the source into a temp file, syncs it
//! and renames it onto the key: readers see the old or the whole new object, and a failed put
//! leaves nothing. `get` streams the file or a range of it. `delete` removes now-empty parent
//! directories. `list` walks only the directories that can hold matching keys, in key order,
//! stopping once a page is full.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyperplane_guest::storage::{
    ByteRange, Error, ObjectInfo, ObjectPage, ObjectSink, ObjectSource, PIECE_BYTES, StoreInfo,
};
use serde::Deserialize;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;
pub mod keys;
mod listing;
#[cfg(test)]
mod tests;

/// Where the host preopens the granted directory.
pub const DEFAULT_ROOT: &str = "/store";

/// The directory under the root where `put` writes before renaming into place.
pub const INCOMING_DIRECTORY: &str = ".incoming";

/// The most objects one `list` page holds, whatever `limit` asks for.
pub const MAX_PAGE_OBJECTS: u32 = 1000;

/// Temp files older than this are left over from an instance that died mid-put; `init` removes them.
const STALE_INCOMING_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Makes temp file names unique within this instance (the time part separates instances).
static TEMP_FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The provider config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsSettings {
    /// The directory holding the objects.
    pub root: String,
}

impl Default for FsSettings {
    fn default() -> Self {
        FsSettings { root: DEFAULT_ROOT.into() }
    }
}

/// A blob store over the directory `root`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Parses the provider config, checks that the root is a usable directory and prepares the
    /// temp directory (removing temp files left over long ago).
    pub fn from_config(config_json: &str) -> Result<Self, Error> {
        let settings: FsSettings = hyperplane_guest::config(config_json).map_err(|error| match error {
            hyperplane_guest::Error::Invalid(message) => Error::InvalidConfig(message),
            other => Error::Internal(format!("parsing the config failed unexpectedly: {other:?}")),
        })?;
        if settings.root.is_empty() {
            return Err(Error::InvalidConfig("invalid config at `root`: the root is empty".into()));
        }
        let store = FsStore { root: PathBuf::from(&settings.root) };
        match fs::metadata(&store.root) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidConfig(format!(
                    "invalid config at `root`: {} is not a directory",
                    settings.root
                )));
            }
            Err(error) => {
                return Err(Error::InvalidConfig(format!(
                    "invalid config at `root`: {} cannot be opened ({error}); the host must grant \
                     the store a directory (preopened at {DEFAULT_ROOT})",
                    settings.root
                )));
            }
        }
        store.ensure_incoming_directory()?;
        store.remove_stale_incoming_files();
        Ok(store)
    }

    /// What `init` tells the host.
    pub fn info(&self) -> StoreInfo {
        StoreInfo { location: format!("fs:{}", self.root.display()) }
    }

    /// Stores everything `source` yields under `key`, atomically.
    pub fn put<Source: ObjectSource + ?Sized>(&self, key: &str, source: &Source) -> Result<ObjectInfo, Error> {
        keys::validate_key(key)?;
        self.ensure_incoming_directory()?;
        let (temp_file, temp_file_guard) = self.create_temp_file()?;
        // The file is closed when `fill_and_move` returns, before the guard removes it on failure.
        let info = self.fill_and_move(key, source, temp_file, &temp_file_guard)?;
        temp_file_guard.disarm();
        Ok(info)
    }

    /// Copies `source` into the temp file, syncs it and renames it onto `key`.
    fn fill_and_move<Source: ObjectSource + ?Sized>(
        &self,
        key: &str,
        source: &Source,
        mut temp_file: File,
        temp_file_guard: &TempFileGuard,
    ) -> Result<ObjectInfo, Error> {
        let temp_relative = temp_file_guard.relative.as_str();
        let expected_size = source.size();
        let mut written_bytes: u64 = 0;
        loop {
            let piece = source
                .read(PIECE_BYTES)
                .map_err(|message| Error::Unavailable(format!("reading the data for {key:?} failed: {message}")))?;
            if piece.is_empty() {
                break;
            }
            written_bytes = written_bytes.saturating_add(piece.len() as u64);
            if let Some(expected) = expected_size
                && written_bytes > expected
            {
                return Err(size_mismatch(key, expected, written_bytes, "at least "));
            }
            temp_file.write_all(&piece).map_err(|error| io_error("writing", temp_relative, &error))?;
        }
        if let Some(expected) = expected_size
            && written_bytes != expected
        {
            return Err(size_mismatch(key, expected, written_bytes, ""));
        }
        temp_file.sync_all().map_err(|error| io_error("syncing", temp_relative, &error))?;
        let modified_ms = temp_file.metadata().map(|metadata| modified_ms(&metadata)).unwrap_or(0);
        drop(temp_file);

        self.move_into_place(&temp_file_guard.path, key)?;
        Ok(ObjectInfo { key: key.to_owned(), size: written_bytes, modified_ms })
    }

    /// Writes the object under `key` (or `range` of it) into `sink`; returns the bytes written.
    pub fn get<Sink: ObjectSink + ?Sized>(
        &self,
        key: &str,
        range: Option<ByteRange>,
        sink: &Sink,
    ) -> Result<u64, Error> {
        keys::validate_key(key)?;
        let mut file = match File::open(self.path_of(key)) {
            Ok(file) => file,
            Err(error) if is_missing(&error) => return Err(Error::NotFound(key.to_owned())),
            Err(error) => return Err(io_error("opening", key, &error)),
        };
        let metadata = file.metadata().map_err(|error| io_error("reading the metadata of", key, &error))?;
        if !metadata.is_file() {
            return Err(Error::NotFound(key.to_owned()));
        }
        let size = metadata.len();
        let (offset, length) = match range {
            None => (0, size),
            Some(ByteRange { offset, length }) => {
                if offset >= size {
                    return Err(Error::Invalid(format!(
                        "the range starts at byte {offset}, at or past the end of {key:?} ({size} bytes)"
                    )));
                }
                let available = size - offset;
                (offset, length.map_or(available, |length| length.min(available)))
            }
        };
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(|error| io_error("seeking in", key, &error))?;
        }

        let mut buffer = vec![0u8; (PIECE_BYTES as usize).min(usize::try_from(length).unwrap_or(usize::MAX))];
        let mut remaining = length;
        let mut sent_bytes: u64 = 0;
        while remaining > 0 {
            let wanted = buffer.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let read_bytes = match file.read(&mut buffer[..wanted]) {
                Ok(0) => break,
                Ok(read_bytes) => read_bytes,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error("reading", key, &error)),
            };
            sink.write(&buffer[..read_bytes])
                .map_err(|message| Error::Unavailable(format!("sending {key:?} failed: {message}")))?;
            remaining -= read_bytes as u64;
            sent_bytes += read_bytes as u64;
        }
        Ok(sent_bytes)
    }

    /// The object under `key`, or `None` (directories are not objects).
    pub fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, Error> {
        keys::validate_key(key)?;
        match fs::metadata(self.path_of(key)) {
            Ok(metadata) if metadata.is_file() => Ok(Some(object_info(key, &metadata))),
            Ok(_) => Ok(None),
            Err(error) if is_missing(&error) => Ok(None),
            Err(error) => Err(io_error("reading the metadata of", key, &error)),
        }
    }

    /// Removes the object under `key` (a missing one is fine) and then its parent directories
    /// that became empty, up to the root.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        keys::validate_key(key)?;
        let path = self.path_of(key);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) => {}
            Err(error) if is_missing(&error) => return Ok(()),
            Err(error) => return Err(io_error("reading the metadata of", key, &error)),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if is_missing(&error) => return Ok(()),
            Err(error) => return Err(io_error("removing", key, &error)),
        }
        self.remove_empty_parents(key);
        Ok(())
    }

    /// One page of the objects whose key starts with `prefix`, after `cursor`, in key order.
    pub fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ObjectPage, Error> {
        if limit == 0 {
            return Err(Error::Invalid("the limit is 0; a page holds at least one object".into()));
        }
        keys::validate_prefix(prefix)?;
        listing::list_page(&self.root, prefix, cursor, limit.min(MAX_PAGE_OBJECTS) as usize)
    }

    /// The path of `key` (a valid key) under the root.
    fn path_of(&self, key: &str) -> PathBuf {
        key.split('/').fold(self.root.clone(), |path, segment| path.join(segment))
    }

    fn ensure_incoming_directory(&self) -> Result<(), Error> {
        match fs::create_dir(self.root.join(INCOMING_DIRECTORY)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(io_error("creating", INCOMING_DIRECTORY, &error)),
        }
    }

    /// A new, uniquely named file in the temp directory, and the guard that removes it.
    fn create_temp_file(&self) -> Result<(File, TempFileGuard), Error> {
        let now_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
        let mut last_error = None;
        for _ in 0..16 {
            let counter = TEMP_FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{now_nanos:x}-{counter:x}.part");
            let relative = format!("{INCOMING_DIRECTORY}/{name}");
            let path = self.root.join(INCOMING_DIRECTORY).join(&name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, TempFileGuard { path, relative, armed: true })),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some((relative, error)),
                Err(error) => return Err(io_error("creating", &relative, &error)),
            }
        }
        Err(match last_error {
            Some((relative, error)) => io_error("creating", &relative, &error),
            None => Error::Internal("no temp file name was free".into()),
        })
    }

    /// Renames the finished temp file onto `key`, creating its parent directories. Retries when a
    /// concurrent `delete` removed a parent it had just emptied.
    fn move_into_place(&self, temp_path: &Path, key: &str) -> Result<(), Error> {
        let target = self.path_of(key);
        let mut attempts_left = 3;
        loop {
            self.create_parent_directories(key)?;
            match fs::rename(temp_path, &target) {
                Ok(()) => break,
                Err(error) if error.kind() == io::ErrorKind::NotFound && attempts_left > 1 => attempts_left -= 1,
                Err(error) => {
                    if fs::symlink_metadata(&target).is_ok_and(|metadata| metadata.is_dir()) {
                        return Err(Error::Invalid(format!("{key:?} is a directory of other objects")));
                    }
                    return Err(io_error("renaming onto", key, &error));
                }
            }
        }
        // Best effort: make the rename durable (not every filesystem lets a directory be synced).
        if let Some(parent) = target.parent()
            && let Ok(directory) = File::open(parent)
        {
            let _ = directory.sync_all();
        }
        Ok(())
    }

    /// Creates the directories above `key`; [`Error::Invalid`] when an object is in the way.
    fn create_parent_directories(&self, key: &str) -> Result<(), Error> {
        let segments: Vec<&str> = key.split('/').collect();
        let mut path = self.root.clone();
        for (depth, segment) in segments.iter().enumerate().take(segments.len().saturating_sub(1)) {
            path.push(segment);
            let relative = segments[..=depth].join("/");
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::metadata(&path).is_ok_and(|metadata| metadata.is_dir()) {
                        return Err(Error::Invalid(format!(
                            "{key:?} cannot be stored: {relative:?} is an object, not a directory"
                        )));
                    }
                }
                Err(error) => return Err(io_error("creating the directory", &relative, &error)),
            }
        }
        Ok(())
    }

    /// Removes the directories above `key` that are empty, deepest first (best effort).
    fn remove_empty_parents(&self, key: &str) {
        let segments: Vec<&str> = key.split('/').collect();
        for depth in (1..segments.len()).rev() {
            if fs::remove_dir(self.path_of(&segments[..depth].join("/"))).is_err() {
                break;
            }
        }
    }

    /// Removes temp files that no running put can still be writing (best effort).
    fn remove_stale_incoming_files(&self) {
        let Ok(entries) = fs::read_dir(self.root.join(INCOMING_DIRECTORY)) else {
            return;
        };
        let mut removed_files = 0u64;
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .ok()
                .filter(|metadata| metadata.is_file())
                .and_then(|metadata| metadata.modified().ok())
                .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                .is_some_and(|age| age > STALE_INCOMING_AGE);
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed_files += 1;
            }
        }
        if removed_files > 0 {
            hyperplane_guest::log::info(
                "removed temp files of puts that never finished",
                &[("count", &removed_files.to_string())],
            );
        }
    }
}

/// Removes the temp file when a put fails, unless disarmed after the rename.
struct TempFileGuard {
    path: PathBuf,
    relative: String,
    armed: bool,
}

impl TempFileGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = fs::remove_file(&self.path)
            && !is_missing(&error)
        {
            hyperplane_guest::log::warn(
                "a failed put left its temp file",
                &[("file", &self.relative), ("error", &error.to_string())],
            );
        }
    }
}

fn size_mismatch(key: &str, expected: u64, got: u64, qualifier: &str) -> Error {
    Error::Invalid(format!("the data for {key:?} was announced as {expected} bytes but {qualifier}{got} came"))
}

/// Whether `error` means the path is not there (also when a parent is a file).
pub(crate) fn is_missing(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// The store's error for an io failure while `action` the root-relative `relative`.
pub(crate) fn io_error(action: &str, relative: &str, error: &io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::NotFound => Error::NotFound(relative.to_owned()),
        io::ErrorKind::PermissionDenied => Error::Denied(format!("{action} {relative:?}: {error}")),
        _ => Error::Internal(format!("{action} {relative:?} failed: {error}")),
    }
}

/// The last change of a file in milliseconds since the Unix epoch; 0 when unknown.
pub(crate) fn modified_ms(metadata: &fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|modified| modified.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn object_info(key: &str, metadata: &fs::Metadata) -> ObjectInfo {
    ObjectInfo { key: key.to_owned(), size: metadata.len(), modified_ms: modified_ms(metadata) }
}
