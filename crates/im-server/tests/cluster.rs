//! Three `im-server` processes on one PostgreSQL database form one deployment, on each bus
//! (PostgreSQL `NOTIFY`, Redis, NATS). The test client plays the load balancer: it sends
//! requests and reconnects to different nodes.

mod common;

use common::JsonValue;
use common::cluster::*;
use common::{PATIENCE, patient};
use http::{Method, StatusCode};
use im_client::Client;
use im_protocol::{GroupId, Target, UserId};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_users_chat_across_nodes_and_reconnects() {
    chat_across_nodes(TestBus::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_users_chat_across_nodes_and_reconnects_on_redis() {
    chat_across_nodes(TestBus::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_users_chat_across_nodes_and_reconnects_on_nats() {
    chat_across_nodes(TestBus::nats()).await;
}

async fn chat_across_nodes(bus: TestBus) {
    let cluster = Cluster::launch(3, bus, &[]).await;
    let nodes = cluster.addrs.clone();
    let alice = cluster.user("alice", 0).await;
    let bob = cluster.user("bob", 1).await;
    let carol = cluster.user("carol", 2).await;
    befriend(&alice, &bob, "bob", nodes[0], nodes[1]).await;
    befriend(&bob, &carol, "carol", nodes[1], nodes[2]).await;
    befriend(&carol, &alice, "alice", nodes[2], nodes[0]).await;
    let group = create_group(&alice.at(nodes[2]), "trio", &[2, 3]).await;
    let to = Target::Group(GroupId(group));

    const EACH: usize = 24;
    let users = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
    let mut readers = Vec::new();
    for (i, (_, c)) in users.iter().enumerate() {
        let mut first = c.at(nodes[i]).events(None).await.unwrap();
        let start = ready(&mut first).await;
        drop(first);
        let (c, nodes) = ((*c).clone(), nodes.clone());
        readers.push(tokio::spawn(read_all(c, nodes, start, 3 * EACH, 5)));
    }
    let mut senders = Vec::new();
    for (i, (name, c)) in users.iter().enumerate() {
        let (c, nodes, name) = ((*c).clone(), nodes.clone(), name.to_string());
        senders.push(tokio::spawn(async move {
            for k in 0..EACH {
                send_anywhere(&c, &nodes, i + k, to, &format!("{name}-{k}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let stored = cluster.stored_ids(&format!("g{group}")).await;
    assert_eq!(stored.len(), 3 * EACH);
    for ((name, _), r) in users.iter().zip(readers) {
        let got = r.await.unwrap();
        assert_in_order_once(&got, name);
        let ids: Vec<u64> = got.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, stored, "{name} got exactly what PostgreSQL holds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_under_load_loses_and_doubles_nothing() {
    kill_9_under_load(TestBus::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_under_load_loses_and_doubles_nothing_on_redis() {
    kill_9_under_load(TestBus::redis()).await;
}

async fn kill_9_under_load(bus: TestBus) {
    let mut cluster = Cluster::launch(3, bus, &[]).await;
    let nodes = cluster.addrs.clone();
    let alice = cluster.user("alice", 0).await;
    let bob = cluster.user("bob", 1).await;
    let carol = cluster.user("carol", 2).await;
    befriend(&alice, &bob, "bob", nodes[0], nodes[2]).await;
    befriend(&carol, &bob, "bob", nodes[2], nodes[1]).await;

    // Bob's stream lives on node 1, the one that will die.
    let mut first = bob.at(nodes[1]).events(None).await.unwrap();
    let start = ready(&mut first).await;
    drop(first);
    const EACH: usize = 60;
    let reader = {
        // Start on node 1: read_all moves to the next node only when a stream ends or
        // after `every` messages; a large `every` keeps it on node 1 until the kill.
        let order = vec![nodes[0], nodes[1], nodes[2]];
        tokio::spawn(read_all(bob.clone(), order, start, 2 * EACH, 1000))
    };
    let mut senders = Vec::new();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (i, (name, c)) in [("alice", &alice), ("carol", &carol)]
        .into_iter()
        .enumerate()
    {
        let (c, nodes, name, sent) = (c.clone(), nodes.clone(), name.to_string(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..EACH {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                acked.push(
                    send_anywhere(
                        &c,
                        &nodes,
                        i + k,
                        Target::User(UserId(2)),
                        &format!("{name}-{k}"),
                    )
                    .await,
                );
            }
            acked
        }));
    }
    // Kill node 1 while both senders are busy: after a third of the messages.
    patient("a third of the messages", async {
        while sent.load(std::sync::atomic::Ordering::Relaxed) < 2 * EACH / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    cluster.kill(1);
    let at_kill = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        at_kill < 2 * EACH,
        "the kill came while messages were still being sent"
    );
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let got = reader.await.unwrap();
    assert_in_order_once(&got, "bob");
    let mut stored = cluster.stored_ids("d1-2").await;
    stored.extend(cluster.stored_ids("d2-3").await);
    stored.sort();
    let acked: BTreeSet<u64> = acked.iter().map(|m| m.id.0).collect();
    assert_eq!(acked.len(), 2 * EACH, "each client_id was stored once");
    assert_eq!(
        stored,
        acked.iter().copied().collect::<Vec<_>>(),
        "nothing acknowledged is lost, nothing is doubled"
    );
    let ids: Vec<u64> = got.iter().map(|m| m.id.0).collect();
    assert_eq!(
        ids, stored,
        "bob resumed elsewhere and got every message once"
    );
}

/// Retries `check` for up to a second (the promise for changes made on another node).
async fn within_a_second<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what} within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_node_hold_on_the_others() {
    coherence(TestBus::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_node_hold_on_the_others_on_redis() {
    coherence(TestBus::redis()).await;
}

async fn coherence(bus: TestBus) {
    let cluster = Cluster::launch(3, bus, &[]).await;
    let n = cluster.addrs.clone();
    let alice = cluster.user("alice", 0).await;
    let bob = cluster.user("bob", 1).await;
    let carol = cluster.user("carol", 2).await;
    let dave = cluster.user("dave", 0).await;

    // An accept on node 2 lets a message through node 3 at once.
    befriend(&alice, &bob, "bob", n[0], n[1]).await;
    alice
        .at(n[2])
        .send_text(Target::User(UserId(2)), "right after the accept", None)
        .await
        .expect("an accept elsewhere lets the message through at once");

    // A block on node 1 refuses a direct message posted through node 3 within 1 s.
    bob.at(n[0])
        .call(Method::POST, "/api/v1/blocks", Some(&json!({"user_id": 1})))
        .await
        .unwrap()
        .expect(StatusCode::NO_CONTENT)
        .unwrap();
    within_a_second("the block", || async {
        let res = alice
            .at(n[2])
            .post_text(Target::User(UserId(2)), "after the block", None)
            .await
            .unwrap();
        res.status == StatusCode::FORBIDDEN && res.error_code().as_deref() == Some("blocked")
    })
    .await;

    // An upload on node 1 downloads from node 2.
    let png = b"\x89PNG\r\n\x1a\n0000 cluster bytes";
    let up = alice
        .at(n[0])
        .upload("cat.png", "image/png", png)
        .await
        .unwrap()
        .expect(StatusCode::CREATED)
        .unwrap()
        .value();
    let url = up["file"]["url"].as_str().unwrap().to_owned();
    let res = Client::new(n[1])
        .raw(Method::GET, &url, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(
        res.status,
        StatusCode::OK,
        "the upload is served by another node"
    );
    assert_eq!(&res.body[..], &png[..]);

    // A group change on node 2 reaches members' streams on nodes 1 and 3.
    befriend(&carol, &dave, "dave", n[2], n[0]).await;
    befriend(&carol, &alice, "alice", n[2], n[1]).await;
    let group = create_group(&carol.at(n[2]), "g", &[1]).await;
    let mut alice_stream = alice.at(n[0]).events(None).await.unwrap();
    let mut carol_stream = carol.at(n[2]).events(None).await.unwrap();
    ready(&mut alice_stream).await;
    ready(&mut carol_stream).await;
    carol
        .at(n[1])
        .call(
            Method::POST,
            &format!("/api/v1/groups/{group}/members"),
            Some(&json!({"user_id": 4})),
        )
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap();
    for stream in [&mut alice_stream, &mut carol_stream] {
        loop {
            let e = patient("the group event on another node", stream.next_event())
                .await
                .unwrap()
                .unwrap();
            if e.event == "group" && e.data.contains("member_added") {
                break;
            }
        }
    }

    // A logout on node 1 ends the stream on node 2, and the token is refused on node 3.
    let mut bob_stream = bob.at(n[1]).events(None).await.unwrap();
    ready(&mut bob_stream).await;
    // Node 3 has the session cached before the logout.
    bob.at(n[2])
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap();
    bob.at(n[0])
        .call(Method::POST, "/api/v1/auth/logout", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::NO_CONTENT)
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(item) = bob_stream.next_item().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream on node 2 ended");
    within_a_second("the logout", || async {
        let res = bob
            .at(n[2])
            .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
            .await
            .unwrap();
        res.status == StatusCode::UNAUTHORIZED
    })
    .await;
}

/// A backend talks to one node; what it does reaches streams and sessions on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_on_one_node_reaches_every_node() {
    const KEY: &str = "cluster-backend-key-0123";
    let cluster = Cluster::launch(2, TestBus::redis(), &[("IM_SERVER_API__KEYS", KEY)]).await;
    let n = cluster.addrs.clone();
    let backend = n[0];
    let call = |method: Method, path: String, body: Option<serde_json::Value>| async move {
        common::server_api(backend, method, &path, &[("x-api-key", KEY)], body.as_ref()).await
    };
    let bob = cluster.user("bob", 1).await;
    let bob_id = user_id(&bob).await;
    let mut stream = bob.at(n[1]).events(None).await.unwrap();
    ready(&mut stream).await;

    // Published through node 0, delivered on node 1.
    let draft =
        json!({"to": {"user": bob_id}, "kind": "text", "body": {"text": "hello from the backend"}});
    let res = call(Method::POST, "/messages".into(), Some(draft)).await;
    assert_eq!(res.status, StatusCode::CREATED);
    let got = next_message(&mut stream)
        .await
        .expect("delivered on node 1");
    assert_eq!(got.id.0, res.value()["message"]["id"].as_u64().unwrap());
    // Node 0 knows bob is online on node 1.
    patient("node 0 to list bob online", async {
        while call(Method::GET, "/online".into(), None).await.value()["users"]
            != json!([{"id": bob_id, "username": "bob"}])
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // A disconnect through node 0 ends bob's stream on node 1.
    let res = call(Method::POST, format!("/users/{bob_id}/disconnect"), None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(
        next_message(&mut stream).await.is_none(),
        "the stream ended"
    );
    // A revocation through node 0 holds on node 1.
    let mut again = bob.at(n[1]).events(None).await.unwrap();
    ready(&mut again).await;
    let res = call(Method::DELETE, format!("/users/{bob_id}/sessions"), None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(next_message(&mut again).await.is_none(), "the stream ended");
    let me = bob
        .at(n[1])
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_holds_on_every_node_despite_concurrent_requests() {
    let cluster = Cluster::start(2).await;
    let n = cluster.addrs.clone();
    Client::new(n[0])
        .register("bob", "bob-password")
        .await
        .unwrap();
    for _ in 0..5 {
        let bob = Client::new(n[0])
            .login("bob", "bob-password")
            .await
            .unwrap();
        let me = |c: Client| async move {
            c.call(Method::GET, "/api/v1/me", im_client::NO_BODY)
                .await
                .unwrap()
                .status
        };
        assert_eq!(me(bob.at(n[1])).await, StatusCode::OK);
        // Requests on both nodes keep going while the logout happens on node 1.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (c, stop) = (bob.at(n[i % 2]), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c.call(Method::GET, "/api/v1/me", im_client::NO_BODY).await;
                }
            }));
        }
        bob.call(Method::POST, "/api/v1/auth/logout", im_client::NO_BODY)
            .await
            .unwrap()
            .expect(StatusCode::NO_CONTENT)
            .unwrap();
        assert_eq!(me(bob.at(n[0])).await, StatusCode::UNAUTHORIZED);
        within_a_second("the logout on the other node", || {
            let other = bob.at(n[1]);
            async move { me(other).await == StatusCode::UNAUTHORIZED }
        })
        .await;
        // And it stays refused on both while the racing requests finish.
        for _ in 0..10 {
            for node in &n {
                assert_eq!(me(bob.at(*node)).await, StatusCode::UNAUTHORIZED);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
}
