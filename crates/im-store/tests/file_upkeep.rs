//! File upkeep in a cluster: one node at a time, and never an upload another node has just
//! committed and not yet recorded.

use im_files::{DiskFileStore, FileIndex, FileProxy, FileStore, FilesConfig};
use im_store::{PgConfig, PgStore, SqliteStore, StoreConfig};
use im_testkit::TempDatabase;
use std::sync::Arc;
use std::time::Duration;

async fn stray(store: &DiskFileStore, key: &str) {
    let mut sink = store.create(key).await.unwrap();
    sink.write(b"bytes nobody recorded (yet)").await.unwrap();
    sink.commit().await.unwrap();
}

async fn keys(store: &DiskFileStore) -> Vec<String> {
    store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect()
}

#[tokio::test]
async fn young_bytes_without_metadata_are_spared_old_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        Arc::new(SqliteStore::open(&dir.path().join("db"), StoreConfig::default()).unwrap());
    let bytes = DiskFileStore::open(&dir.path().join("files")).unwrap();
    stray(&bytes, "aa").await;
    let config = |grace| FilesConfig {
        orphan_grace: grace,
        ..FilesConfig::default()
    };
    // Another node may be about to record them: spared while younger than the grace.
    FileProxy::new(
        Arc::new(bytes.clone()),
        index.clone(),
        config(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(keys(&bytes).await, ["aa"]);
    // Past the grace (zero here), they go.
    FileProxy::new(Arc::new(bytes.clone()), index, config(Duration::ZERO))
        .await
        .unwrap();
    assert!(keys(&bytes).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_at_a_time_holds_the_sweep_lease() {
    let db = TempDatabase::create().await;
    let a = PgStore::open(PgConfig::new(db.url())).await.unwrap();
    let b = PgStore::open(PgConfig::new(db.url())).await.unwrap();
    let held = a.sweep_lease().await.unwrap();
    assert!(held.is_some());
    assert!(
        b.sweep_lease().await.unwrap().is_none(),
        "a second node waits"
    );
    assert!(
        a.sweep_lease().await.unwrap().is_none(),
        "even the same node's second try"
    );
    // Dropping the lease closes its connection, which releases the lock (as a node's death
    // would); the server notices the close a moment later.
    drop(held);
    let mut got = None;
    for _ in 0..200 {
        got = b.sweep_lease().await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got.is_some(), "the lease passed to the other node");
}

#[tokio::test]
async fn upkeep_while_serving_spares_an_upload_between_its_bytes_and_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        Arc::new(SqliteStore::open(&dir.path().join("db"), StoreConfig::default()).unwrap());
    let bytes = DiskFileStore::open(&dir.path().join("files")).unwrap();
    let config = FilesConfig {
        orphan_grace: Duration::ZERO, // one process: nothing to spare at start-up
        ..FilesConfig::default()
    };
    let proxy = FileProxy::new(Arc::new(bytes.clone()), index, config)
        .await
        .unwrap();
    // Bytes committed a moment ago, whose metadata insert is still on its way.
    stray(&bytes, "bb").await;
    proxy.maintain().await.unwrap();
    assert_eq!(keys(&bytes).await, ["bb"], "a periodic round spared them");
}
