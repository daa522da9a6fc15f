//! The `FileStore` contract. Every byte store the server can be given passes the same
//! checks: the disk adapter, the `object_store` directory the server uses for
//! `files.backend = "dir"`, and S3 (`files.backend = "s3"`) against a real moto server.

use futures_util::StreamExt;
use im_files::{
    ByteStream, DiskFileStore, FileError, FileStore, ObjectFileStore, S3Credentials, S3Settings,
};
use im_testkit::{MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET, MotoServer};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A store under test, with a way to see what unfinished uploads left behind.
struct Backend {
    name: &'static str,
    store: Box<dyn FileStore>,
    /// Staged state of uploads that were neither committed nor cleaned up: part files in a
    /// directory, pending multipart uploads in a bucket.
    leftovers: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The byte at offset `i` of every test file: depends on the position, so a chunk written
/// or read in the wrong place shows.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn bytes(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(byte_at).collect()
}

async fn read_all(mut body: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("a chunk"));
    }
    out
}

/// Uploads `len` test bytes under `key` in chunks of `chunk` bytes, then commits.
async fn put(store: &dyn FileStore, key: &str, len: u64, chunk: u64) {
    let mut sink = store.create(key).await.expect("create");
    let mut at = 0;
    while at < len {
        let end = (at + chunk).min(len);
        sink.write(&bytes(at..end)).await.expect("write");
        at = end;
    }
    sink.commit().await.expect("commit");
}

async fn key_names(store: &dyn FileStore) -> Vec<String> {
    let mut keys: Vec<String> = store
        .keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.key)
        .collect();
    keys.sort();
    keys
}

fn is_not_found<T>(r: Result<T, FileError>) -> bool {
    matches!(r, Err(FileError::NotFound))
}

/// Every check, in order, on one fresh store; each leaves the store empty behind it.
async fn contract(b: &Backend) {
    let store = b.store.as_ref();
    assert!(
        key_names(store).await.is_empty(),
        "{}: starts empty",
        b.name
    );
    roundtrip(b).await;
    ranged_reads(b).await;
    remove_is_idempotent(b).await;
    keys_list_committed_uploads(b).await;
    unfinished_uploads_leave_nothing(b).await;
    large_upload_streams(b).await;
    bad_keys_are_refused(b).await;
    assert!(key_names(store).await.is_empty(), "{}: ends empty", b.name);
    assert_eq!((b.leftovers)(), 0, "{}: no staged leftovers", b.name);
}

async fn roundtrip(b: &Backend) {
    let store = b.store.as_ref();
    // Odd chunk sizes, so chunk and part boundaries never line up.
    put(store, "a0", 100_000, 7_777).await;
    let got = read_all(store.open("a0", 0, 99_999).await.unwrap()).await;
    assert!(got == bytes(0..100_000), "{}: roundtrip", b.name);

    // An empty upload commits and is listed, like any other.
    store.create("a1").await.unwrap().commit().await.unwrap();
    assert_eq!(key_names(store).await, ["a0", "a1"], "{}", b.name);
    assert!(is_not_found(store.open("a2", 0, 0).await), "{}", b.name);
    store.remove("a0").await.unwrap();
    store.remove("a1").await.unwrap();
}

async fn ranged_reads(b: &Backend) {
    let store = b.store.as_ref();
    const LEN: u64 = 300_000;
    put(store, "b0", LEN, 65_536).await;
    for (start, end, what) in [
        (0, 0, "the first byte"),
        (0, 99, "the start"),
        (1_000, 70_000, "the middle, across a 64 KiB read"),
        (150_000, 150_000, "one byte in the middle"),
        (LEN - 100, LEN - 1, "the end"),
        (LEN - 1, LEN - 1, "the last byte"),
        (0, LEN - 1, "everything"),
    ] {
        let got = read_all(store.open("b0", start, end).await.unwrap()).await;
        assert_eq!(got.len() as u64, end - start + 1, "{}: {what}", b.name);
        assert!(got == bytes(start..end + 1), "{}: {what}", b.name);
    }
    store.remove("b0").await.unwrap();
}

async fn remove_is_idempotent(b: &Backend) {
    let store = b.store.as_ref();
    put(store, "c0", 10, 10).await;
    store.remove("c0").await.unwrap();
    store
        .remove("c0")
        .await
        .unwrap_or_else(|e| panic!("{}: removing twice: {e}", b.name));
    store
        .remove("c1")
        .await
        .unwrap_or_else(|e| panic!("{}: removing a key never written: {e}", b.name));
    assert!(is_not_found(store.open("c0", 0, 0).await), "{}", b.name);
    assert!(key_names(store).await.is_empty(), "{}", b.name);
}

async fn keys_list_committed_uploads(b: &Backend) {
    let store = b.store.as_ref();
    let before = SystemTime::now();
    for key in ["d2", "d0", "d1"] {
        put(store, key, 1_000, 1_000).await;
    }
    // Started but not committed: not a key yet.
    let mut sink = store.create("d3").await.unwrap();
    sink.write(b"in progress").await.unwrap();
    let keys = store.keys().await.unwrap();
    let mut names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    names.sort();
    assert_eq!(names, ["d0", "d1", "d2"], "{}", b.name);
    for k in &keys {
        // Upkeep spares young bytes by this time; allow for coarse clocks either side.
        let slack = Duration::from_secs(5);
        assert!(
            k.modified + slack >= before && k.modified <= SystemTime::now() + slack,
            "{}: {} modified at {:?}, written after {before:?}",
            b.name,
            k.key,
            k.modified
        );
    }
    sink.commit().await.unwrap();
    assert_eq!(
        key_names(store).await,
        ["d0", "d1", "d2", "d3"],
        "{}",
        b.name
    );
    for key in ["d0", "d1", "d2", "d3"] {
        store.remove(key).await.unwrap();
    }
}

/// Waits (the abort of a dropped sink runs on a spawned task) until nothing is staged.
async fn until_no_leftovers(b: &Backend, what: &str) {
    for _ in 0..500 {
        if (b.leftovers)() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{}: {what} left {} staged uploads", b.name, (b.leftovers)());
}

async fn unfinished_uploads_leave_nothing(b: &Backend) {
    let store = b.store.as_ref();
    // Aborted (over the size cap, a broken body).
    let mut sink = store.create("e0").await.unwrap();
    sink.write(&bytes(0..100_000)).await.unwrap();
    assert!((b.leftovers)() > 0, "{}: an upload is staged", b.name);
    sink.abort().await;
    assert!(is_not_found(store.open("e0", 0, 0).await), "{}", b.name);
    until_no_leftovers(b, "an aborted upload").await;

    // Dropped mid-way (the client went away).
    let mut sink = store.create("e1").await.unwrap();
    sink.write(&bytes(0..100_000)).await.unwrap();
    drop(sink);
    assert!(is_not_found(store.open("e1", 0, 0).await), "{}", b.name);
    until_no_leftovers(b, "a dropped upload").await;
    assert!(key_names(store).await.is_empty(), "{}", b.name);
}

async fn large_upload_streams(b: &Backend) {
    let store = b.store.as_ref();
    // Several parts of any store's part size (5 MiB on S3), streamed in 64 KiB writes.
    const LEN: u64 = 23 * 1024 * 1024 + 123;
    put(store, "f0", LEN, 64 * 1024).await;
    let mut body = store.open("f0", 0, LEN - 1).await.unwrap();
    let (mut at, mut largest) = (0u64, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        assert!(
            chunk.iter().zip(at..).all(|(got, i)| *got == byte_at(i)),
            "{}: bytes at {at}",
            b.name
        );
        at += chunk.len() as u64;
        largest = largest.max(chunk.len());
    }
    assert_eq!(at, LEN, "{}: every byte", b.name);
    assert!(
        (largest as u64) < LEN,
        "{}: streamed in chunks, not read whole",
        b.name
    );
    let tail = read_all(store.open("f0", LEN - 3, LEN - 1).await.unwrap()).await;
    assert!(tail == bytes(LEN - 3..LEN), "{}: the tail", b.name);
    store.remove("f0").await.unwrap();
}

async fn bad_keys_are_refused(b: &Backend) {
    let store = b.store.as_ref();
    for bad in [
        "",
        "../x",
        "ab/cd",
        "00ff#1",
        "00ff.part",
        "00 ff",
        "README",
    ] {
        assert!(is_not_found(store.create(bad).await), "{}: {bad:?}", b.name);
        assert!(
            is_not_found(store.open(bad, 0, 0).await),
            "{}: {bad:?}",
            b.name
        );
        assert!(is_not_found(store.remove(bad).await), "{}: {bad:?}", b.name);
    }
}

/// Names in `dir` that are not keys: staged uploads of either directory adapter.
fn staged_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.bytes().all(|b| b.is_ascii_hexdigit()))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_file_store_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    contract(&Backend {
        name: "DiskFileStore",
        store: Box::new(DiskFileStore::open(dir.path()).unwrap()),
        leftovers: Box::new(move || staged_files(&path)),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_directory_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    contract(&Backend {
        name: "ObjectFileStore::local_dir",
        store: Box::new(ObjectFileStore::local_dir(dir.path()).unwrap()),
        leftovers: Box::new(move || staged_files(&path)),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_passes() {
    let moto = std::sync::Arc::new(MotoServer::start());
    let bucket = moto.bucket();
    let settings = S3Settings {
        endpoint: Some(moto.endpoint()),
        bucket: bucket.clone(),
        region: MOTO_REGION.into(),
        allow_http: true,
    };
    let credentials = S3Credentials {
        key_id: MOTO_KEY_ID.into(),
        secret_key: MOTO_SECRET.into(),
        token: None,
    };
    let store = ObjectFileStore::s3_with(&settings, &credentials).unwrap();
    let server = moto.clone();
    contract(&Backend {
        name: "ObjectFileStore::s3",
        store: Box::new(store),
        leftovers: Box::new(move || server.pending_uploads(&bucket)),
    })
    .await;
}

#[test]
fn s3_settings_are_checked_before_any_request() {
    let credentials = S3Credentials {
        key_id: "k".into(),
        secret_key: "s".into(),
        token: Some("t".into()),
    };
    let good = S3Settings {
        endpoint: Some("http://127.0.0.1:9".into()),
        bucket: "b".into(),
        region: String::new(),
        allow_http: true,
    };
    assert!(ObjectFileStore::s3_with(&good, &credentials).is_ok());
    let no_bucket = S3Settings {
        bucket: " ".into(),
        ..good.clone()
    };
    let e = ObjectFileStore::s3_with(&no_bucket, &credentials).unwrap_err();
    assert!(e.to_string().contains("bucket"), "{e}");
    let plain_http = S3Settings {
        allow_http: false,
        ..good.clone()
    };
    let e = ObjectFileStore::s3_with(&plain_http, &credentials).unwrap_err();
    assert!(e.to_string().contains("allow_http"), "{e}");
    let shown = format!("{credentials:?}");
    assert!(
        !shown.contains("\"s\"") && !shown.contains("\"t\""),
        "secrets stay out of Debug: {shown}"
    );
}
