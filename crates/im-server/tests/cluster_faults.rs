//! Faults a cluster on Redis meets: one node's bus connection cut, a node killed while its
//! users are online, and a rolling restart of every node under steady load.

mod common;

use common::JsonValue;
use common::cluster::*;
use common::{PATIENCE, patient};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::{Message, Target};
use im_testkit::bus::redis_url;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's `GET /readyz` answer (whatever its status).
async fn readyz(addr: SocketAddr) -> Value {
    Client::new(addr)
        .call(Method::GET, "/readyz", im_client::NO_BODY)
        .await
        .unwrap()
        .value()
}

/// Waits until a node says it is ready.
async fn until_ready(addr: SocketAddr) {
    patient("readiness", async {
        loop {
            let answer = Client::new(addr)
                .call(Method::GET, "/readyz", im_client::NO_BODY)
                .await;
            if answer.is_ok_and(|r| r.status == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// `CLIENT LIST` of the shared Redis: connection name -> connection id, for names that
/// start with `prefix` (only this test's connections).
async fn redis_clients(prefix: &str) -> Vec<(String, u64)> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .map(str::to_owned)
            };
            let name = field("name=")?;
            let id = field("id=")?.parse().ok()?;
            name.starts_with(prefix).then_some((name, id))
        })
        .collect()
}

async fn redis_kill(id: u64) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1, "exactly one connection cut");
}

fn prefix(cluster: &Cluster) -> String {
    match &cluster.bus {
        TestBus::Redis(p) => p.clone(),
        other => panic!("a Redis cluster, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_bus_connection_costs_its_node_nothing() {
    let cluster = Cluster::launch(3, TestBus::redis(), &[]).await;
    let prefix = prefix(&cluster);
    let nodes = cluster.addrs.clone();
    for &n in &nodes {
        until_ready(n).await;
    }
    let alice = cluster.user("alice", 0).await;
    let bob = cluster.user("bob", 1).await;
    befriend(&alice, &bob, "bob", nodes[0], nodes[1]).await;
    let bob_id = user_id(&bob).await;

    // Bob listens on node 2, whose Redis connection is cut half-way.
    let victim = readyz(nodes[2]).await["node"].as_str().unwrap().to_owned();
    let victim_name = format!("{prefix}node-{victim}");
    let before = redis_clients(&prefix).await;
    assert_eq!(before.len(), 3, "one connection per node: {before:?}");
    let mut stream = bob.at(nodes[2]).events(None).await.unwrap();
    let after = ready(&mut stream).await;

    let mut sent = Vec::new();
    for i in 0..60 {
        if i == 20 {
            let (_, id) = before.iter().find(|(n, _)| *n == victim_name).unwrap();
            redis_kill(*id).await;
        }
        // Only nodes 0 and 1 write: node 2 hears of the commits through the bus (or, while
        // it is cut off, through its catch-up from PostgreSQL).
        let m = send_anywhere(
            &alice,
            &nodes[..2],
            i,
            Target::User(bob_id.into()),
            &format!("m{i}"),
        )
        .await;
        sent.push(m.id.0);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = next_message(&mut stream)
            .await
            .expect("node 2's stream stayed open");
        assert!(m.id.0 > after);
        got.push(m.id.0);
    }
    assert_eq!(got, sent, "every message once, in order, despite the cut");

    // Node 2 reconnected (a new connection under its name); the others were not touched.
    let reconnected = patient("node 2's new connection", async {
        loop {
            let now = redis_clients(&prefix).await;
            if now.len() == 3 {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    for (name, id) in &before {
        let now = reconnected
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id);
        if *name == victim_name {
            assert!(now.is_some_and(|new| new != *id), "node 2 reconnected");
        } else {
            assert_eq!(now, Some(*id), "{name} kept its connection");
        }
    }
    until_ready(nodes[2]).await;
}

/// The next `presence` event about `user` on `stream`.
async fn presence_of(stream: &mut EventStream, user: u64) -> bool {
    patient("a presence event", async {
        loop {
            let e = stream.next_event().await.unwrap().unwrap();
            if e.event == "presence" {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                if data["user"] == user {
                    return data["online"].as_bool().unwrap();
                }
            }
        }
    })
    .await
}

async fn online_in_friends(client: &Client, user: u64) -> bool {
    let friends = client
        .call(Method::GET, "/api/v1/friends", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap()
        .value();
    friends["friends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == user)
        .map(|f| f["online"].as_bool().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_users_go_offline_on_the_others() {
    let mut cluster = Cluster::launch(
        3,
        TestBus::redis(),
        &[("IM_CLUSTER__PRESENCE_TTL_SECS", "3")],
    )
    .await;
    let nodes = cluster.addrs.clone();
    let alice = cluster.user("alice", 0).await;
    let bob = cluster.user("bob", 1).await;
    let mut watch = alice.at(nodes[0]).events(None).await.unwrap();
    ready(&mut watch).await;
    befriend(&alice, &bob, "bob", nodes[0], nodes[1]).await;
    let bob_id = user_id(&bob).await;
    // The befriending tells alice bob's presence; it crosses the bus from node 1, so it is
    // read here, before bob connects, rather than mistaken for the answer below.
    assert!(
        !presence_of(&mut watch, bob_id).await,
        "bob offline at first"
    );

    // Bob comes online on node 2: alice hears it on node 0, and node 1 knows it too.
    let mut bobs = bob.at(nodes[2]).events(None).await.unwrap();
    ready(&mut bobs).await;
    assert!(presence_of(&mut watch, bob_id).await, "bob online");
    patient("node 1 to see bob online", async {
        while !online_in_friends(&alice.at(nodes[1]), bob_id).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // Node 2 dies without a word; its word expires and bob is offline everywhere.
    cluster.kill(2);
    assert!(!presence_of(&mut watch, bob_id).await, "bob offline");
    assert!(!online_in_friends(&alice.at(nodes[0]), bob_id).await);
    // Node 1's word expires on its own clock, at about the same time.
    patient("node 1 to see bob offline", async {
        while online_in_friends(&alice.at(nodes[1]), bob_id).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(bobs);
}

/// Reads messages across nodes until `done` and every acknowledged id has arrived,
/// reconnecting with `Last-Event-ID` to the next node whenever a stream ends.
async fn follow(
    client: Client,
    nodes: Vec<SocketAddr>,
    start: usize,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    done: Arc<AtomicBool>,
) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    let mut after = None;
    let mut node = start;
    let complete = |got: &[Message]| {
        done.load(Ordering::SeqCst) && {
            let have: BTreeSet<u64> = got.iter().map(|m| m.id.0).collect();
            acked.lock().unwrap().is_subset(&have)
        }
    };
    while !complete(&got) {
        node += 1;
        let Ok(mut stream) = client.at(nodes[node % nodes.len()]).events(after).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue; // a node that is restarting: try the next
        };
        loop {
            match tokio::time::timeout(Duration::from_millis(500), stream.next_message()).await {
                Ok(Some(Ok(m))) => {
                    after = Some(m.id.0);
                    got.push(m);
                }
                Ok(_) => break, // the node ended the stream (it is stopping)
                Err(_) if complete(&got) => break,
                Err(_) => {}
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let mut cluster = Cluster::launch(3, TestBus::redis(), &[]).await;
    let nodes = cluster.addrs.clone();
    let users = [
        cluster.user("alice", 0).await,
        cluster.user("bob", 1).await,
        cluster.user("carol", 2).await,
    ];
    let mut ids = Vec::new();
    for u in &users {
        ids.push(user_id(u).await);
    }
    befriend(&users[0], &users[1], "bob", nodes[0], nodes[1]).await;
    befriend(&users[0], &users[2], "carol", nodes[0], nodes[2]).await;
    let group = create_group(&users[0], "ops", &ids[1..]).await;
    let to = Target::Group(group.into());

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = users[1..]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            tokio::spawn(follow(
                u.clone(),
                nodes.clone(),
                i,
                acked.clone(),
                done.clone(),
            ))
        })
        .collect();
    let writers: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|w| {
            let (client, nodes, acked, done) =
                (users[w].clone(), nodes.clone(), acked.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    let m = send_anywhere(&client, &nodes, n, to, &format!("w{w}-{n}")).await;
                    acked.lock().unwrap().insert(m.id.0);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();

    for (i, &addr) in nodes.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let node = cluster.nodes[i].as_mut().unwrap();
        node.signal("TERM");
        let status = patient("a clean stop", async {
            loop {
                if let Some(status) = node.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(status.success(), "node {i} stopped cleanly: {status}");
        cluster.restart(i);
        until_ready(addr).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    done.store(true, Ordering::SeqCst);
    for w in writers {
        patient("a writer", w).await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "steady load: {} messages", acked.len());
    let stored: BTreeSet<u64> = cluster
        .stored_ids(&format!("g{group}"))
        .await
        .into_iter()
        .collect();
    assert_eq!(
        stored, acked,
        "everything stored was acknowledged, and the reverse"
    );
    for (r, reader) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(PATIENCE * 2, reader)
            .await
            .expect("a reader finished")
            .unwrap();
        assert_in_order_once(&got, &format!("reader {r}"));
        let ids: BTreeSet<u64> = got.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, acked, "reader {r} has the complete history");
    }
}
