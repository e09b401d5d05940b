//! What every storage backend must do, checked through the host's `BlobStore`: streamed puts
//! and gets with ranges, atomic replacement, stat, idempotent delete, ordered paged listing,
//! keys that leave the store refused, and an upload that breaks off leaving nothing.

use hyperplane::plugins::storage_types::{ByteRange, Error as StorageError};
use hyperplane::plugins::{BlobStore, CallError, StorageSink, StorageSource};

/// Bytes whose every position differs from its neighbours, so misplaced ranges show.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index % 251) as u8 ^ (index / 65_536) as u8).collect()
}

async fn get_all(store: &BlobStore, key: &str, range: Option<ByteRange>) -> Result<Vec<u8>, CallError> {
    store.get_bytes(key, range, 64 << 20).await
}

fn is_invalid(outcome: &Result<impl std::fmt::Debug, CallError>) -> bool {
    matches!(outcome, Err(CallError::Storage(StorageError::Invalid(_))))
}

/// A reader that yields `good` bytes and then fails, like a client that went away.
struct BreakingReader {
    remaining: Vec<u8>,
}

impl tokio::io::AsyncRead for BreakingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.remaining.is_empty() {
            return std::task::Poll::Ready(Err(std::io::Error::other("the client went away")));
        }
        let length = buffer.remaining().min(self.remaining.len());
        let piece: Vec<u8> = self.remaining.drain(..length).collect();
        buffer.put_slice(&piece);
        std::task::Poll::Ready(Ok(()))
    }
}

pub async fn run(store: &BlobStore) {
    put_get_and_ranges(store).await;
    replace_stat_delete(store).await;
    listing_is_ordered_and_paged(store).await;
    bad_keys_are_refused(store).await;
    a_broken_upload_leaves_nothing(store).await;
    a_sink_gets_no_more_than_it_asked_for(store).await;
}

async fn put_get_and_ranges(store: &BlobStore) {
    let large = pattern(3 * 1024 * 1024 + 17);
    let info = store.put("objects/large", StorageSource::from_bytes(large.clone())).await.expect("put");
    assert_eq!((info.key.as_str(), info.size), ("objects/large", large.len() as u64));
    assert_eq!(get_all(store, "objects/large", None).await.expect("get"), large);
    let middle = ByteRange { offset: 1_048_570, length: Some(20) };
    assert_eq!(get_all(store, "objects/large", Some(middle)).await.expect("range"), large[1_048_570..1_048_590]);
    let tail = ByteRange { offset: large.len() as u64 - 5, length: None };
    assert_eq!(get_all(store, "objects/large", Some(tail)).await.expect("tail"), large[large.len() - 5..]);
    let clamped = ByteRange { offset: large.len() as u64 - 5, length: Some(1000) };
    assert_eq!(get_all(store, "objects/large", Some(clamped)).await.expect("clamped"), large[large.len() - 5..]);
    let past = ByteRange { offset: large.len() as u64, length: None };
    assert!(is_invalid(&get_all(store, "objects/large", Some(past)).await), "a range past the end is invalid");

    store.put("objects/empty", StorageSource::from_bytes(Vec::new())).await.expect("empty put");
    assert_eq!(get_all(store, "objects/empty", None).await.expect("empty get"), Vec::<u8>::new());

    // A source of unknown size (a chunked upload) streams just the same.
    let reader = std::io::Cursor::new(pattern(100_000));
    store.put("objects/unsized", StorageSource::from_reader(reader, None, "an upload")).await.expect("unsized put");
    assert_eq!(get_all(store, "objects/unsized", None).await.expect("get"), pattern(100_000));

    let missing = get_all(store, "objects/missing", None).await;
    assert!(matches!(missing, Err(CallError::Storage(StorageError::NotFound(_)))), "{missing:?}");
}

async fn replace_stat_delete(store: &BlobStore) {
    store.put("replace/me", StorageSource::from_bytes(vec![1_u8; 5000])).await.expect("first");
    store.put("replace/me", StorageSource::from_bytes(vec![2_u8; 10])).await.expect("second");
    assert_eq!(get_all(store, "replace/me", None).await.expect("get"), vec![2_u8; 10]);
    let info = store.stat("replace/me").await.expect("stat").expect("exists");
    assert_eq!(info.size, 10);
    assert!(info.modified_ms > 1_600_000_000_000, "modified time in ms: {}", info.modified_ms);
    assert!(store.stat("replace/other").await.expect("stat").is_none());
    assert!(store.stat("replace").await.expect("stat of a prefix").is_none(), "a prefix is not an object");
    store.delete("replace/me").await.expect("delete");
    assert!(store.stat("replace/me").await.expect("stat").is_none());
    store.delete("replace/me").await.expect("deleting a missing object is fine");
}

async fn listing_is_ordered_and_paged(store: &BlobStore) {
    let keys = ["list/b/2", "list/a", "list/b/1", "list/c", "list/b/10", "listing-other"];
    for key in keys {
        store.put(key, StorageSource::from_bytes(key.as_bytes().to_vec())).await.expect("put");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list("list/", cursor.as_deref(), 2).await.expect("list");
        assert!(page.objects.len() <= 2);
        seen.extend(page.objects.iter().map(|object| (object.key.clone(), object.size)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<(String, u64)> = ["list/a", "list/b/1", "list/b/10", "list/b/2", "list/c"]
        .iter()
        .map(|key| (key.to_string(), key.len() as u64))
        .collect();
    assert_eq!(seen, expected);
    let partial = store.list("list/b", None, 100).await.expect("partial prefix");
    assert_eq!(partial.objects.len(), 3, "a prefix need not end at a '/'");
    assert!(partial.next_cursor.is_none());
    assert!(store.list("nothing-here/", None, 10).await.expect("empty").objects.is_empty());
    assert!(is_invalid(&store.list("list/", None, 0).await), "a page of 0 is invalid");
}

async fn bad_keys_are_refused(store: &BlobStore) {
    for key in ["../escape", "a/../../b", "/absolute", "a//b", ""] {
        let outcome = store.put(key, StorageSource::from_bytes(b"x".to_vec())).await;
        assert!(is_invalid(&outcome), "{key:?}: {outcome:?}");
        assert!(is_invalid(&store.stat(key).await), "stat {key:?}");
    }
}

async fn a_broken_upload_leaves_nothing(store: &BlobStore) {
    // Larger than a multipart threshold, so S3 backends start a multipart upload first.
    let reader = BreakingReader { remaining: pattern(9 * 1024 * 1024) };
    let outcome = store.put("broken/object", StorageSource::from_reader(reader, None, "an upload")).await;
    assert!(matches!(outcome, Err(CallError::Storage(_))), "{outcome:?}");
    assert!(store.stat("broken/object").await.expect("stat").is_none(), "no partial object is visible");
    assert!(store.list("broken/", None, 10).await.expect("list").objects.is_empty());

    let short = std::io::Cursor::new(vec![1_u8; 100]);
    let outcome = store.put("broken/short", StorageSource::from_reader(short, Some(200), "an upload")).await;
    assert!(outcome.is_err(), "a source shorter than announced fails: {outcome:?}");
    assert!(store.stat("broken/short").await.expect("stat").is_none());
}

async fn a_sink_gets_no_more_than_it_asked_for(store: &BlobStore) {
    store.put("sink/object", StorageSource::from_bytes(pattern(10_000))).await.expect("put");
    let outcome = store.get_bytes("sink/object", None, 100).await;
    assert!(outcome.is_err(), "a sink refuses more than its limit: {outcome:?}");
    let (sink, buffer) = StorageSink::buffer(10_000);
    assert_eq!(store.get("sink/object", None, sink).await.expect("get"), 10_000);
    assert_eq!(buffer.take(), pattern(10_000));
}
