//! `list`: a depth-first walk in key order that visits only directories able to hold matches.
//!
//! Sorting a directory's entries by name, with `/` appended to directory names, puts the keys of
//! its whole subtree in byte order (`a-b` < `a.txt` < `a/x`), so the walk can stop as soon as the
//! page is full and holds only the entries of the directories on its current path in memory.

use std::fs::{self, DirEntry};
use std::path::Path;

use hyperplane_guest::storage::{Error, ObjectInfo, ObjectPage};

use crate::keys::{MAX_KEY_BYTES, validate_key};
use crate::{io_error, is_missing, object_info};

/// One page of the objects under `root` whose key starts with `prefix` (a valid prefix), after
/// `cursor`, at most `page_objects` of them.
pub(crate) fn list_page(
    root: &Path,
    prefix: &str,
    cursor: Option<&str>,
    page_objects: usize,
) -> Result<ObjectPage, Error> {
    // The deepest directory the prefix names in full: `chunks/` for `chunks/ab`, the root for `ab`.
    let base_directory_key = prefix.rfind('/').map_or("", |slash| &prefix[..=slash]);
    let base_directory_path = base_directory_key
        .split('/')
        .filter(|segment| !segment.is_empty())
        .fold(root.to_path_buf(), |path, segment| path.join(segment));

    // One more than a page tells whether another page follows.
    let mut walk = Walk { prefix, cursor, wanted_objects: page_objects + 1, found_objects: Vec::new() };
    walk.visit(&base_directory_path, base_directory_key)?;

    let more_remain = walk.found_objects.len() > page_objects;
    let mut objects = walk.found_objects;
    objects.truncate(page_objects);
    let next_cursor = if more_remain { objects.last().map(|object| object.key.clone()) } else { None };
    Ok(ObjectPage { objects, next_cursor })
}

struct Walk<'request> {
    prefix: &'request str,
    cursor: Option<&'request str>,
    wanted_objects: usize,
    found_objects: Vec<ObjectInfo>,
}

/// What a directory entry is to the store.
enum EntryKind {
    Object,
    Directory,
}

impl Walk<'_> {
    fn is_full(&self) -> bool {
        self.found_objects.len() >= self.wanted_objects
    }

    /// Visits the directory at `directory_path`, whose keys start with `directory_key` (empty for
    /// the root, else ending in `/`).
    fn visit(&mut self, directory_path: &Path, directory_key: &str) -> Result<(), Error> {
        let relative = if directory_key.is_empty() { "." } else { directory_key.trim_end_matches('/') };
        let entries = match fs::read_dir(directory_path) {
            Ok(entries) => entries,
            // Not there (or deleted meanwhile): nothing to list.
            Err(error) if is_missing(&error) => return Ok(()),
            Err(error) => return Err(io_error("listing", relative, &error)),
        };

        let mut sorted_entries: Vec<(String, String, EntryKind)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| io_error("listing", relative, &error))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            // Skips `.incoming`, hidden files and names no key could have.
            if validate_key(&name).is_err() {
                continue;
            }
            let Some(kind) = entry_kind(&entry) else { continue };
            let sort_key = match kind {
                EntryKind::Directory => format!("{name}/"),
                EntryKind::Object => name.clone(),
            };
            sorted_entries.push((sort_key, name, kind));
        }
        sorted_entries.sort_unstable_by(|left, right| left.0.cmp(&right.0));

        for (sort_key, name, kind) in sorted_entries {
            let key = format!("{directory_key}{sort_key}");
            match kind {
                EntryKind::Directory => {
                    if self.may_hold_matches(&key) {
                        self.visit(&directory_path.join(&name), &key)?;
                    }
                }
                EntryKind::Object => {
                    if key.len() <= MAX_KEY_BYTES
                        && key.starts_with(self.prefix)
                        && self.cursor.is_none_or(|cursor| key.as_str() > cursor)
                        && let Some(info) = object_metadata(&directory_path.join(&name), &key)?
                    {
                        self.found_objects.push(info);
                    }
                }
            }
            if self.is_full() {
                break;
            }
        }
        Ok(())
    }

    /// Whether the subtree whose keys start with `subtree_key` (ending in `/`) can hold a key
    /// that starts with the prefix and comes after the cursor.
    fn may_hold_matches(&self, subtree_key: &str) -> bool {
        if subtree_key.len() >= MAX_KEY_BYTES {
            return false;
        }
        if !(subtree_key.starts_with(self.prefix) || self.prefix.starts_with(subtree_key)) {
            return false;
        }
        // A cursor past `subtree_key` that does not extend it is past every key of the subtree.
        self.cursor.is_none_or(|cursor| cursor <= subtree_key || cursor.starts_with(subtree_key))
    }
}

/// Objects are regular files, directories are walked; a symbolic link counts as the file it
/// points to, never as a directory (no loops).
fn entry_kind(entry: &DirEntry) -> Option<EntryKind> {
    let file_type = entry.file_type().ok()?;
    if file_type.is_file() {
        Some(EntryKind::Object)
    } else if file_type.is_dir() {
        Some(EntryKind::Directory)
    } else if file_type.is_symlink() && fs::metadata(entry.path()).is_ok_and(|metadata| metadata.is_file()) {
        Some(EntryKind::Object)
    } else {
        None
    }
}

/// The object at `path`; `None` when it vanished meanwhile.
fn object_metadata(path: &Path, key: &str) -> Result<Option<ObjectInfo>, Error> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(Some(object_info(key, &metadata))),
        Ok(_) => Ok(None),
        Err(error) if is_missing(&error) => Ok(None),
        Err(error) => Err(io_error("reading the metadata of", key, &error)),
    }
}
