//! The S3 logic of `storage-s3` against a real S3-compatible server: SeaweedFS started by
//! `tests/storage/setup-s3.sh` (once per test process), with SigV4 enforced. Every run works
//! under its own prefix, so runs and tests do not see each other's objects.

mod http_client;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use hyperplane_guest::storage::{ByteRange, Error, MemorySink, MemorySource, ObjectSink};
use storage_s3::{S3Settings, S3Store};

use http_client::TcpTransport;

const MIB: usize = 1024 * 1024;

/// The server's settings as the setup script prints them (`KEY=value`).
fn server() -> &'static HashMap<String, String> {
    static SERVER: OnceLock<HashMap<String, String>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/storage/setup-s3.sh");
        let output = std::process::Command::new("bash").arg(script).output().expect("running setup-s3.sh");
        assert!(
            output.status.success(),
            "setup-s3.sh failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    })
}

/// A prefix unique to this process.
fn run_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0);
        format!("storage-s3-tests/run-{}-{nanos}", std::process::id())
    })
}

fn config_with(test: &str, overrides: serde_json::Value) -> String {
    let server = server();
    let mut config = serde_json::json!({
        "endpoint": server["S3_ENDPOINT"],
        "bucket": server["S3_BUCKET"],
        "region": server["S3_REGION"],
        "access_key_id": server["S3_ACCESS_KEY_ID"],
        "secret_access_key": server["S3_SECRET_ACCESS_KEY"],
        "prefix": format!("{}/{test}", run_prefix()),
    });
    if let (Some(config), Some(overrides)) = (config.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            config.insert(key.clone(), value.clone());
        }
    }
    config.to_string()
}

fn store_with(test: &str, overrides: serde_json::Value) -> S3Store<TcpTransport> {
    S3Store::new(S3Settings::from_config(&config_with(test, overrides)).expect("valid config"), TcpTransport)
}

fn store(test: &str) -> S3Store<TcpTransport> {
    store_with(test, serde_json::json!({}))
}

/// Bytes that differ at every offset (so a misplaced range shows).
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index.wrapping_mul(31) ^ (index >> 8) ^ (index >> 16)) as u8).collect()
}

fn get_bytes(store: &S3Store<TcpTransport>, key: &str, range: Option<ByteRange>) -> Result<Vec<u8>, Error> {
    let sink = MemorySink::default();
    let written = store.get(key, range, &sink)?;
    let bytes = sink.into_bytes();
    assert_eq!(written, bytes.len() as u64, "get reports what it wrote");
    Ok(bytes)
}

fn range(offset: u64, length: Option<u64>) -> Option<ByteRange> {
    Some(ByteRange { offset, length })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

#[test]
fn small_objects_round_trip_with_ranges_stat_and_delete() {
    let store = store("small");
    let data = pattern(1000);
    let info = store.put("images/a.bin", &MemorySource::new(data.clone())).expect("put");
    assert_eq!((info.key.as_str(), info.size), ("images/a.bin", 1000));

    let stat = store.stat("images/a.bin").expect("stat").expect("the object exists");
    assert_eq!(stat.size, 1000);
    assert!(stat.modified_ms.abs_diff(now_ms()) < 300_000, "modified {} is about now", stat.modified_ms);

    assert_eq!(get_bytes(&store, "images/a.bin", None).expect("get"), data);
    assert_eq!(get_bytes(&store, "images/a.bin", range(10, Some(20))).expect("range"), &data[10..30]);
    assert_eq!(get_bytes(&store, "images/a.bin", range(990, None)).expect("tail"), &data[990..]);
    assert_eq!(get_bytes(&store, "images/a.bin", range(995, Some(100))).expect("past the end"), &data[995..]);
    assert_eq!(get_bytes(&store, "images/a.bin", range(999, Some(0))).expect("empty range"), Vec::<u8>::new());
    for offset in [1000, 5000] {
        assert!(
            matches!(get_bytes(&store, "images/a.bin", range(offset, Some(1))), Err(Error::Invalid(_))),
            "a range from {offset} is invalid"
        );
        assert!(matches!(get_bytes(&store, "images/a.bin", range(offset, None)), Err(Error::Invalid(_))));
        assert!(matches!(get_bytes(&store, "images/a.bin", range(offset, Some(0))), Err(Error::Invalid(_))));
    }

    // Replacing.
    store.put("images/a.bin", &MemorySource::new(b"short".to_vec()).without_size()).expect("overwrite");
    assert_eq!(get_bytes(&store, "images/a.bin", None).expect("get"), b"short");

    // An empty object.
    store.put("empty", &MemorySource::new(Vec::new())).expect("put empty");
    assert_eq!(store.stat("empty").expect("stat").map(|info| info.size), Some(0));
    assert_eq!(get_bytes(&store, "empty", None).expect("get empty"), Vec::<u8>::new());

    store.delete("images/a.bin").expect("delete");
    assert!(store.stat("images/a.bin").expect("stat").is_none());
    assert!(matches!(get_bytes(&store, "images/a.bin", None), Err(Error::NotFound(key)) if key == "images/a.bin"));
    store.delete("images/a.bin").expect("deleting a missing key is fine");
    store.delete("empty").expect("delete");
}

#[test]
fn missing_objects_are_not_found() {
    let store = store("missing");
    assert!(store.stat("nothing/here").expect("stat").is_none());
    assert!(matches!(get_bytes(&store, "nothing/here", None), Err(Error::NotFound(_))));
    assert!(matches!(get_bytes(&store, "nothing/here", range(0, Some(0))), Err(Error::NotFound(_))));
    store.delete("nothing/here").expect("delete of a missing key");
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_whole() {
    let store =
        store_with("multipart", serde_json::json!({"multipart_threshold_bytes": 5 * MIB, "part_size_bytes": 5 * MIB}));
    let data = pattern(12 * MIB + 12_345);
    let info = store.put("big.img", &MemorySource::new(data.clone()).without_size()).expect("multipart put");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(store.stat("big.img").expect("stat").map(|info| info.size), Some(data.len() as u64));
    assert!(get_bytes(&store, "big.img", None).expect("get") == data, "the object comes back whole");
    let across = range((5 * MIB - 100) as u64, Some(200));
    assert_eq!(get_bytes(&store, "big.img", across).expect("range across parts"), &data[5 * MIB - 100..5 * MIB + 100]);
    assert_eq!(store.multipart_uploads("").expect("uploads"), Vec::<String>::new(), "no upload is left open");

    // Exactly two parts, and one byte over the threshold.
    let two_parts = pattern(10 * MIB);
    store.put("two.img", &MemorySource::new(two_parts.clone())).expect("put");
    assert!(get_bytes(&store, "two.img", None).expect("get") == two_parts);
    let just_over = pattern(5 * MIB + 1);
    store.put("over.img", &MemorySource::new(just_over.clone())).expect("put");
    assert!(get_bytes(&store, "over.img", None).expect("get") == just_over);
    let at_threshold = pattern(5 * MIB);
    store.put("at.img", &MemorySource::new(at_threshold.clone())).expect("put");
    assert!(get_bytes(&store, "at.img", None).expect("get") == at_threshold);
    for key in ["big.img", "two.img", "over.img", "at.img"] {
        store.delete(key).expect("delete");
    }
}

#[test]
fn a_source_failing_midway_leaves_no_object_and_no_upload() {
    let store =
        store_with("failing", serde_json::json!({"multipart_threshold_bytes": 5 * MIB, "part_size_bytes": 5 * MIB}));
    // Midway through a multipart upload (after the first part went up).
    let failing = MemorySource::new(pattern(12 * MIB)).failing_after(7 * MIB);
    match store.put("broken.img", &failing) {
        Err(Error::Unavailable(message)) => assert!(message.contains("went away"), "{message}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(store.stat("broken.img").expect("stat").is_none());
    assert_eq!(store.multipart_uploads("").expect("uploads"), Vec::<String>::new(), "the upload was aborted");

    // Within the single-PUT threshold.
    let failing = MemorySource::new(pattern(1000)).failing_after(100);
    assert!(matches!(store.put("small-broken", &failing), Err(Error::Unavailable(_))));
    assert!(store.stat("small-broken").expect("stat").is_none());

    // A failed replacement keeps the old object.
    store.put("kept", &MemorySource::new(b"old".to_vec())).expect("put");
    let failing = MemorySource::new(pattern(6 * MIB)).failing_after(5 * MIB + 10);
    assert!(store.put("kept", &failing).is_err());
    assert_eq!(get_bytes(&store, "kept", None).expect("get"), b"old");
    store.delete("kept").expect("delete");
}

#[test]
fn listing_pages_by_prefix_and_cursor() {
    let store = store("list");
    let keys = ["dir/a", "dir/b", "dir/c/d", "dir/e", "dir/sp ace&<x>+é", "other/x"];
    for (index, key) in keys.iter().enumerate() {
        store.put(key, &MemorySource::new(vec![b'x'; index + 1])).expect("put");
    }
    let first = store.list("dir/", None, 2).expect("first page");
    let first_keys: Vec<&str> = first.objects.iter().map(|object| object.key.as_str()).collect();
    assert_eq!(first_keys, ["dir/a", "dir/b"]);
    assert_eq!(first.objects[1].size, 2);
    assert!(first.objects[0].modified_ms.abs_diff(now_ms()) < 300_000, "listed modified time is about now");
    assert_eq!(first.next_cursor.as_deref(), Some("dir/b"));

    let mut all = first_keys.iter().map(|key| (*key).to_owned()).collect::<Vec<_>>();
    let mut cursor = first.next_cursor;
    while let Some(after) = cursor {
        let page = store.list("dir/", Some(&after), 2).expect("next page");
        assert!(page.objects.len() <= 2);
        all.extend(page.objects.iter().map(|object| object.key.clone()));
        cursor = page.next_cursor;
    }
    assert_eq!(all, ["dir/a", "dir/b", "dir/c/d", "dir/e", "dir/sp ace&<x>+é"]);

    let everything = store.list("", None, 1000).expect("everything");
    assert_eq!(everything.objects.len(), keys.len());
    assert_eq!(everything.next_cursor, None);
    assert_eq!(store.list("dir/c", None, 10).expect("partial prefix").objects.len(), 1);
    assert!(store.list("none/", None, 10).expect("empty").objects.is_empty());
    assert!(matches!(store.list("dir/", None, 0), Err(Error::Invalid(_))));
    assert_eq!(store.stat("dir/sp ace&<x>+é").expect("stat").map(|info| info.size), Some(5));

    for key in keys {
        store.delete(key).expect("delete");
    }
    assert!(store.list("", None, 10).expect("emptied").objects.is_empty());
}

#[test]
fn a_wrong_secret_is_denied() {
    let store = store_with("denied", serde_json::json!({"secret_access_key": "not-the-secret"}));
    match store.put("x", &MemorySource::new(b"data".to_vec())) {
        Err(Error::Denied(message)) => assert!(message.contains("SignatureDoesNotMatch"), "{message}"),
        other => panic!("expected denied, got {other:?}"),
    }
    assert!(matches!(store.stat("x"), Err(Error::Denied(_))));
    assert!(matches!(store.list("", None, 10), Err(Error::Denied(_))));
    assert!(matches!(get_bytes(&store, "x", None), Err(Error::Denied(_))));
    assert!(matches!(store.delete("x"), Err(Error::Denied(_))));
    let unknown_key = store_with("denied", serde_json::json!({"access_key_id": "NOBODY"}));
    assert!(matches!(unknown_key.stat("x"), Err(Error::Denied(_))));
}

#[test]
fn an_unreachable_server_is_unavailable() {
    let store = store_with("unreachable", serde_json::json!({"endpoint": "http://127.0.0.1:1"}));
    assert!(matches!(store.stat("x"), Err(Error::Unavailable(_))));
    assert!(matches!(store.put("x", &MemorySource::new(b"data".to_vec())), Err(Error::Unavailable(_))));
}

#[test]
fn bad_keys_are_invalid_before_any_request() {
    let store = store_with("keys", serde_json::json!({"endpoint": "http://127.0.0.1:1"}));
    for key in ["", "/a", "a//b", "a/", "../x", "a/./b", "tab\there", &"k".repeat(1100)] {
        assert!(matches!(store.stat(key), Err(Error::Invalid(_))), "{key:?}");
    }
}

struct BrokenSink;

impl ObjectSink for BrokenSink {
    fn write(&self, _bytes: &[u8]) -> Result<(), String> {
        Err("the receiver went away".into())
    }
}

#[test]
fn a_receiver_going_away_stops_the_get() {
    let store = store("sink");
    store.put("obj", &MemorySource::new(pattern(3000))).expect("put");
    assert!(matches!(store.get("obj", None, &BrokenSink), Err(Error::Unavailable(_))));
    store.delete("obj").expect("delete");
}
