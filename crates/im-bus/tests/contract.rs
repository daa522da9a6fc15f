//! The bus contract (`im_testkit::bus::contract`) against every adapter: in memory,
//! PostgreSQL `NOTIFY`, Redis and NATS, on the real servers. Each test uses its own prefix,
//! subject or database, so other users of the shared servers are never disturbed.

use im_bus::{NatsBus, RedisBus};
use im_cluster::{Bus, MemoryHub, NodeId};
use im_testkit::TempDatabase;
use im_testkit::bus::{contract, nats_url, redis_url, unique_prefix};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    let hubs = [MemoryHub::new(), MemoryHub::new()];
    contract(|space| Arc::new(hubs[space].bus()) as Arc<dyn Bus>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify() {
    // NOTIFY reaches the listeners of one database: a deployment is a database.
    let dbs = [TempDatabase::create().await, TempDatabase::create().await];
    contract(|space| Arc::new(im_store::PgBus::new(dbs[space].url())) as Arc<dyn Bus>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let url = redis_url();
    let prefixes = [unique_prefix(':'), unique_prefix(':')];
    contract(|space| {
        Arc::new(RedisBus::new(&url, &prefixes[space], NodeId::random()).unwrap()) as Arc<dyn Bus>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats() {
    let url = nats_url();
    let prefixes = [unique_prefix('.'), unique_prefix('.')];
    contract(|space| {
        Arc::new(NatsBus::new(&url, &prefixes[space], NodeId::random()).unwrap()) as Arc<dyn Bus>
    })
    .await;
}

#[test]
fn bad_prefixes_are_refused() {
    assert!(RedisBus::new("redis://127.0.0.1/", "has space:", NodeId(1)).is_err());
    assert!(RedisBus::new("not a url", "im:", NodeId(1)).is_err());
    for bad in ["im..", "a*.", "a>.", "sp ace."] {
        assert!(
            NatsBus::new("nats://127.0.0.1:4222", bad, NodeId(1)).is_err(),
            "{bad:?}"
        );
    }
    assert!(NatsBus::new("nats://127.0.0.1:4222", "im.", NodeId(1)).is_ok());
}
