//! Native tests of the store against temp directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hyperplane_guest::storage::{
    ByteRange, Error, MemorySink, MemorySource, ObjectInfo, ObjectSink, ObjectSource, PIECE_BYTES,
};

use crate::{FsStore, INCOMING_DIRECTORY, MAX_PAGE_OBJECTS};

/// A fresh directory under the system temp dir, removed on drop.
struct TestRoot {
    path: PathBuf,
}

impl TestRoot {
    fn new() -> Self {
        static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
        // Under WASI (the tests can run as a component too) only a preopened `/tmp` is there.
        let temp_directory = if cfg!(target_os = "wasi") { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let path = temp_directory.join(format!(
            "storage-fs-test-{}-{nanos}-{}",
            if cfg!(target_os = "wasi") { 0 } else { std::process::id() },
            NEXT_ROOT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create the test root");
        TestRoot { path }
    }

    fn store(&self) -> FsStore {
        FsStore::from_config(&config_for(&self.path)).expect("a store over the test root")
    }

    fn incoming_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path.join(INCOMING_DIRECTORY))
            .expect("read .incoming")
            .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn config_for(root: &Path) -> String {
    serde_json::json!({ "root": root.to_string_lossy() }).to_string()
}

/// `length` bytes that differ from piece to piece and within each.
fn patterned_bytes(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index % 251) as u8 ^ (index / 65_536) as u8).collect()
}

fn put_bytes(store: &FsStore, key: &str, bytes: &[u8]) -> ObjectInfo {
    store.put(key, &MemorySource::new(bytes.to_vec())).expect("put")
}

fn get_bytes(store: &FsStore, key: &str, range: Option<ByteRange>) -> Result<Vec<u8>, Error> {
    let sink = MemorySink::default();
    let written = store.get(key, range, &sink)?;
    let bytes = sink.into_bytes();
    assert_eq!(written, bytes.len() as u64, "get's count matches what the sink got");
    Ok(bytes)
}

fn range(offset: u64, length: Option<u64>) -> Option<ByteRange> {
    Some(ByteRange { offset, length })
}

fn expect_invalid<T: std::fmt::Debug>(outcome: Result<T, Error>, fragment: &str) {
    match outcome {
        Err(Error::Invalid(message)) => assert!(message.contains(fragment), "{message:?} lacks {fragment:?}"),
        other => panic!("expected invalid containing {fragment:?}, got {other:?}"),
    }
}

fn listed_keys(store: &FsStore, prefix: &str, cursor: Option<&str>, limit: u32) -> (Vec<String>, Option<String>) {
    let page = store.list(prefix, cursor, limit).expect("list");
    (page.objects.into_iter().map(|object| object.key).collect(), page.next_cursor)
}

/// A source that announces `announced` bytes but yields `bytes`.
struct MisleadingSource {
    announced: u64,
    inner: MemorySource,
}

impl ObjectSource for MisleadingSource {
    fn size(&self) -> Option<u64> {
        Some(self.announced)
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        self.inner.read(max)
    }
}

/// A sink whose receiver went away.
struct GoneSink;

impl ObjectSink for GoneSink {
    fn write(&self, _bytes: &[u8]) -> Result<(), String> {
        Err("the client went away".into())
    }
}

#[test]
fn objects_round_trip_whole() {
    let root = TestRoot::new();
    let store = root.store();

    let info = put_bytes(&store, "templates/alpine.img", b"hello");
    assert_eq!((info.key.as_str(), info.size), ("templates/alpine.img", 5));
    assert!(info.modified_ms > 1_600_000_000_000, "modified-ms is a recent time: {}", info.modified_ms);
    assert_eq!(get_bytes(&store, "templates/alpine.img", None).expect("get"), b"hello");
    let stat = store.stat("templates/alpine.img").expect("stat").expect("an object");
    assert_eq!((stat.size, stat.modified_ms), (5, info.modified_ms));

    assert_eq!(put_bytes(&store, "empty", b"").size, 0);
    assert_eq!(get_bytes(&store, "empty", None).expect("get of an empty object"), b"");
    assert_eq!(store.stat("empty").expect("stat").map(|object| object.size), Some(0));

    let large = patterned_bytes(2 * PIECE_BYTES as usize + 12_345);
    assert_eq!(put_bytes(&store, "chunks/large", &large).size, large.len() as u64);
    assert!(get_bytes(&store, "chunks/large", None).expect("get") == large, "the large object comes back");

    let unsized_source = MemorySource::new(large.clone()).without_size();
    assert_eq!(store.put("chunks/unsized", &unsized_source).expect("put without a size").size, large.len() as u64);
    assert!(get_bytes(&store, "chunks/unsized", None).expect("get") == large);

    assert!(root.incoming_files().is_empty(), "no temp file stays behind");
}

#[test]
fn ranges_read_part_of_an_object() {
    let root = TestRoot::new();
    let store = root.store();
    let bytes = patterned_bytes(100);
    put_bytes(&store, "object", &bytes);
    put_bytes(&store, "empty", b"");

    let check = |offset: u64, length: Option<u64>, expected: Option<&[u8]>| {
        let outcome = get_bytes(&store, "object", range(offset, length));
        match expected {
            Some(expected) => assert_eq!(outcome.expect("get of a range"), expected, "{offset} {length:?}"),
            None => expect_invalid(outcome, "at or past the end"),
        }
    };
    check(10, Some(5), Some(&bytes[10..15]));
    check(0, None, Some(&bytes[..]));
    check(90, None, Some(&bytes[90..]));
    check(95, Some(100), Some(&bytes[95..]));
    check(99, Some(1), Some(&bytes[99..]));
    check(10, Some(0), Some(&[]));
    check(100, None, None);
    check(100, Some(1), None);
    check(1_000, Some(1), None);
    check(u64::MAX, None, None);
    expect_invalid(get_bytes(&store, "empty", range(0, None)), "at or past the end");

    // A range spanning pieces.
    let large = patterned_bytes(3 * PIECE_BYTES as usize);
    put_bytes(&store, "large", &large);
    let start = PIECE_BYTES as usize - 7;
    let length = PIECE_BYTES as usize + 20;
    let part = get_bytes(&store, "large", range(start as u64, Some(length as u64))).expect("get");
    assert!(part == large[start..start + length], "the range across pieces is exact");
}

#[test]
fn overwrites_replace_whole_objects_and_failed_ones_keep_the_old() {
    let root = TestRoot::new();
    let store = root.store();
    put_bytes(&store, "k", &patterned_bytes(3_000));
    put_bytes(&store, "k", b"short");
    assert_eq!(get_bytes(&store, "k", None).expect("get"), b"short");
    assert_eq!(store.stat("k").expect("stat").map(|object| object.size), Some(5));

    let breaking = MemorySource::new(patterned_bytes(PIECE_BYTES as usize * 2)).failing_after(1_500_000);
    assert!(matches!(store.put("k", &breaking), Err(Error::Unavailable(_))));
    assert_eq!(get_bytes(&store, "k", None).expect("the old object"), b"short");
    assert!(root.incoming_files().is_empty());
}

#[test]
fn failed_puts_leave_nothing() {
    let root = TestRoot::new();
    let store = root.store();

    let breaking = MemorySource::new(patterned_bytes(PIECE_BYTES as usize * 2)).failing_after(1_500_000);
    match store.put("deep/down/object", &breaking) {
        Err(Error::Unavailable(message)) => assert!(message.contains("went away"), "{message}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(store.stat("deep/down/object").expect("stat").is_none());
    assert!(!root.path.join("deep").exists(), "no parent directory was created");
    assert!(root.incoming_files().is_empty(), "the temp file was removed");

    let short = MisleadingSource { announced: 10, inner: MemorySource::new(b"12345".to_vec()) };
    expect_invalid(store.put("short", &short), "announced as 10 bytes but 5 came");
    let long = MisleadingSource { announced: 3, inner: MemorySource::new(b"12345".to_vec()) };
    expect_invalid(store.put("long", &long), "announced as 3 bytes but at least 5 came");
    assert!(store.stat("short").expect("stat").is_none());
    assert!(store.stat("long").expect("stat").is_none());
    assert!(root.incoming_files().is_empty());
    assert_eq!(listed_keys(&store, "", None, 10).0, Vec::<String>::new());
}

#[test]
fn invalid_keys_are_refused_by_every_operation() {
    let root = TestRoot::new();
    let store = root.store();
    fs::write(root.path.join("outside-of-keys"), b"x").expect("write a file");
    let too_long = "k".repeat(1025);

    let check = |key: &str, fragment: &str| {
        expect_invalid(store.put(key, &MemorySource::new(b"x".to_vec())), fragment);
        expect_invalid(get_bytes(&store, key, None), fragment);
        expect_invalid(store.stat(key), fragment);
        expect_invalid(store.delete(key), fragment);
    };
    check("../x", "`..` segment");
    check("../outside-of-keys", "`..` segment");
    check("/abs", "starts with `/`");
    check("a//b", "empty segment");
    check("a/", "empty segment");
    check("a/./b", "`.` segment");
    check(".incoming/x", "starting with `.`");
    check("a/.hidden", "starting with `.`");
    check("", "empty");
    check(&too_long, "1025 bytes");
    check("a b", "contains ' '");
    check("a\\b", "contains '\\\\'");
    check("a?b", "contains '?'");
    check("\u{e9}t\u{e9}", "contains '\u{e9}'");

    assert!(root.incoming_files().is_empty());
    assert!(root.path.join("outside-of-keys").exists());
}

#[test]
fn directories_are_not_objects() {
    let root = TestRoot::new();
    let store = root.store();
    put_bytes(&store, "d/x", b"x");

    assert!(store.stat("d").expect("stat of a directory").is_none());
    assert!(store.stat("missing").expect("stat of a missing key").is_none());
    assert!(store.stat("d/x/y").expect("stat under an object").is_none());
    match get_bytes(&store, "missing", None) {
        Err(Error::NotFound(key)) => assert_eq!(key, "missing"),
        other => panic!("expected not-found, got {other:?}"),
    }
    assert!(matches!(get_bytes(&store, "d", None), Err(Error::NotFound(_))));
    assert!(matches!(get_bytes(&store, "d/x/y", None), Err(Error::NotFound(_))));

    expect_invalid(store.put("d", &MemorySource::new(b"x".to_vec())), "is a directory");
    expect_invalid(store.put("d/x/y", &MemorySource::new(b"x".to_vec())), "\"d/x\" is an object");
    assert_eq!(get_bytes(&store, "d/x", None).expect("get"), b"x");
    assert!(root.incoming_files().is_empty());
}

#[test]
fn deletes_are_idempotent_and_prune_empty_directories() {
    let root = TestRoot::new();
    let store = root.store();
    put_bytes(&store, "a/b/c/object", b"1");
    put_bytes(&store, "a/keep", b"2");

    store.delete("a/b/c/object").expect("delete");
    assert!(store.stat("a/b/c/object").expect("stat").is_none());
    assert!(!root.path.join("a/b").exists(), "the emptied directories are gone");
    assert!(root.path.join("a").is_dir(), "a directory still holding an object stays");
    store.delete("a/b/c/object").expect("deleting again");
    store.delete("never/stored").expect("deleting a missing key");
    store.delete("a").expect("deleting a directory's name");
    assert_eq!(get_bytes(&store, "a/keep", None).expect("get"), b"2");

    store.delete("a/keep").expect("delete");
    assert!(!root.path.join("a").exists());
    assert!(root.path.is_dir(), "the root stays");
    assert!(root.path.join(INCOMING_DIRECTORY).is_dir(), "the temp directory stays");
}

#[test]
fn lists_are_ordered_by_key_and_filtered_by_prefix() {
    let root = TestRoot::new();
    let store = root.store();
    let mut keys =
        vec!["b", "a/x", "a-b", "a.txt", "a/y/z", "chunks/ab/1", "chunks/abc/2", "chunks/b/3", "chunksx", "a/y-", "A"];
    for key in &keys {
        put_bytes(&store, key, key.as_bytes());
    }
    // Entries no key can name are not listed.
    fs::write(root.path.join(INCOMING_DIRECTORY).join("leftover.part"), b"x").expect("write");
    fs::write(root.path.join(".hidden"), b"x").expect("write");
    fs::write(root.path.join("bad name"), b"x").expect("write");
    fs::create_dir(root.path.join("empty-directory")).expect("mkdir");
    keys.sort_unstable();

    let check = |prefix: &str, cursor: Option<&str>, expected: &[&str]| {
        let (listed, next_cursor) = listed_keys(&store, prefix, cursor, 1000);
        assert_eq!(listed, expected, "prefix {prefix:?} cursor {cursor:?}");
        assert_eq!(next_cursor, None);
    };
    check("", None, &keys);
    check("chunks/ab", None, &["chunks/ab/1", "chunks/abc/2"]);
    check("chunks/", None, &["chunks/ab/1", "chunks/abc/2", "chunks/b/3"]);
    check("chunks", None, &["chunks/ab/1", "chunks/abc/2", "chunks/b/3", "chunksx"]);
    check("a", None, &["a-b", "a.txt", "a/x", "a/y-", "a/y/z"]);
    check("a/y", None, &["a/y-", "a/y/z"]);
    check("a/y/z", None, &["a/y/z"]);
    check("zzz", None, &[]);
    check("nowhere/", None, &[]);
    check("b/", None, &[]);
    check("", Some("a/x"), &["a/y-", "a/y/z", "b", "chunks/ab/1", "chunks/abc/2", "chunks/b/3", "chunksx"]);
    check("", Some("a/xx"), &["a/y-", "a/y/z", "b", "chunks/ab/1", "chunks/abc/2", "chunks/b/3", "chunksx"]);
    check("chunks/", Some("chunks/abc"), &["chunks/abc/2", "chunks/b/3"]);
    check("", Some("chunksx"), &[]);
    check("", Some("~"), &[]);

    let listed_object = store.list("b", None, 1).expect("list").objects;
    assert_eq!(listed_object.len(), 1);
    assert_eq!((listed_object[0].key.as_str(), listed_object[0].size), ("b", 1));
    assert!(listed_object[0].modified_ms > 0);
}

#[test]
fn lists_page_with_cursors_and_check_limits() {
    let root = TestRoot::new();
    let store = root.store();
    let mut keys: Vec<String> = (0..23).map(|index| format!("p/{}/{index}", index % 4)).collect();
    for key in &keys {
        put_bytes(&store, key, b"");
    }
    keys.sort_unstable();

    for limit in [1, 2, 5, 22, 23, 24] {
        let mut paged_keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (page, next_cursor) = listed_keys(&store, "p/", cursor.as_deref(), limit);
            assert!(page.len() <= limit as usize);
            paged_keys.extend(page.iter().cloned());
            match next_cursor {
                Some(next) => {
                    assert_eq!(page.last(), Some(&next), "the cursor is the page's last key");
                    assert_eq!(page.len(), limit as usize, "only full pages have a next page");
                    cursor = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(paged_keys, keys, "limit {limit}");
    }

    expect_invalid(store.list("", None, 0), "limit");
    expect_invalid(store.list("../", None, 10), "cannot start any key");
    expect_invalid(store.list("/", None, 10), "cannot start any key");
    expect_invalid(store.list(".incoming/", None, 10), "cannot start any key");
    expect_invalid(store.list("a b", None, 10), "cannot start any key");
}

#[test]
fn list_pages_are_capped() {
    let root = TestRoot::new();
    let store = root.store();
    let directory = root.path.join("many");
    fs::create_dir(&directory).expect("mkdir");
    for index in 0..=MAX_PAGE_OBJECTS {
        fs::write(directory.join(format!("{index:05}")), b"").expect("write");
    }
    let (page, next_cursor) = listed_keys(&store, "many/", None, u32::MAX);
    assert_eq!(page.len(), MAX_PAGE_OBJECTS as usize);
    assert_eq!(next_cursor.as_deref(), Some("many/00999"));
    let (rest, next_cursor) = listed_keys(&store, "many/", Some("many/00999"), u32::MAX);
    assert_eq!((rest, next_cursor), (vec!["many/01000".to_owned()], None));
}

#[test]
fn sink_failures_are_unavailable() {
    let root = TestRoot::new();
    let store = root.store();
    put_bytes(&store, "object", b"bytes");
    match store.get("object", None, &GoneSink) {
        Err(Error::Unavailable(message)) => assert!(message.contains("went away"), "{message}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[test]
fn config_errors_name_the_key() {
    let root = TestRoot::new();
    fs::write(root.path.join("a-file"), b"x").expect("write");

    let check = |config: &str, fragments: &[&str]| match FsStore::from_config(config) {
        Err(Error::InvalidConfig(message)) => {
            for fragment in fragments {
                assert!(message.contains(fragment), "{config}: {message:?} lacks {fragment:?}");
            }
        }
        other => panic!("expected invalid-config for {config}, got {other:?}"),
    };
    check(r#"{"root": 5}"#, &["root", "invalid type"]);
    check(r#"{"rooot": "/tmp"}"#, &["unknown field `rooot`"]);
    check(r#"{"root": ""}"#, &["root", "empty"]);
    check(&config_for(&root.path.join("missing")), &["root", "cannot be opened"]);
    check(&config_for(&root.path.join("a-file")), &["root", "not a directory"]);
    check("[1]", &["invalid config"]);
    if !Path::new(crate::DEFAULT_ROOT).exists() {
        check("{}", &["root", "/store"]);
    }

    let store = FsStore::from_config(&config_for(&root.path)).expect("a valid config");
    assert!(store.info().location.starts_with("fs:"));
    assert!(root.path.join(INCOMING_DIRECTORY).is_dir(), "init prepares the temp directory");
}

#[test]
fn init_removes_only_stale_temp_files() {
    let root = TestRoot::new();
    let incoming = root.path.join(INCOMING_DIRECTORY);
    fs::create_dir(&incoming).expect("mkdir");
    let stale = fs::File::create(incoming.join("stale.part")).expect("create");
    stale.set_modified(SystemTime::now() - Duration::from_secs(3 * 24 * 60 * 60)).expect("backdate the stale file");
    drop(stale);
    fs::write(incoming.join("recent.part"), b"x").expect("write");

    root.store();
    assert_eq!(root.incoming_files(), vec!["recent.part".to_owned()]);
}
