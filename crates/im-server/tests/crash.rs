//! Crash safety: SIGKILL while several writers post; after a restart on the same data dir,
//! every acknowledged (201) message is in history and is delivered exactly once on resume.

mod common;

use common::JsonValue;
use common::{ServerProcess, patient};
use http::StatusCode;
use im_client::Client;
use im_protocol::{Message, Target, UserId};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

const WRITERS: usize = 4;
/// Kill once this many messages were acknowledged, so the kill lands mid-stream.
const KILL_AFTER: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let anon = server.client();
    let (alice, _bob) = common::alice_and_bob(&anon).await;

    let acked: Arc<Mutex<BTreeMap<String, Message>>> = Arc::default();
    let unanswered: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (alice, acked, unanswered) = (alice.clone(), acked.clone(), unanswered.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}-{i}");
                match alice
                    .post_text(Target::User(UserId(2)), &key, Some(&key))
                    .await
                {
                    Ok(res) if res.status == StatusCode::CREATED => {
                        let m: Message =
                            serde_json::from_value(res.value()["message"].clone()).unwrap();
                        acked.lock().unwrap().insert(key, m);
                    }
                    // The server died under this request: its fate is unknown to the client.
                    _ => {
                        unanswered.lock().unwrap().push(key);
                        return;
                    }
                }
            }
        }));
    }
    patient("enough acknowledged messages", async {
        while acked.lock().unwrap().len() < KILL_AFTER {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    server.signal("KILL");
    for w in writers {
        patient("writers to notice", w).await.unwrap();
    }
    drop(server);

    let server = ServerProcess::start(dir.path());
    let alice = server
        .client()
        .login("alice", "alice-password")
        .await
        .unwrap();
    let bob = server.client().login("bob", "bob-password").await.unwrap();
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged message is in history, unchanged.
    let conversation = acked.values().next().unwrap().conversation.clone();
    let history = all_history(&bob, &conversation).await;
    let by_id: BTreeMap<u64, &Message> = history.iter().map(|m| (m.id.0, m)).collect();
    for m in acked.values() {
        assert_eq!(
            by_id.get(&m.id.0),
            Some(&m),
            "acknowledged message {} lost",
            m.id
        );
    }

    // Resume from the start: every stored message exactly once, in id order.
    let mut stream = bob.events(Some(0)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < history.len() {
        seen.push(
            patient("replay", stream.next_message())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen, history);
    let ids: HashSet<u64> = seen.iter().map(|m| m.id.0).collect();
    assert_eq!(ids.len(), seen.len(), "no duplicates");

    // Retrying the unanswered posts with their client_id never duplicates: 200 if it had been
    // committed before the kill, 201 if not.
    let stored_keys: HashSet<String> = history.iter().filter_map(|m| m.client_id.clone()).collect();
    let unanswered = unanswered.lock().unwrap().clone();
    for key in &unanswered {
        let res = alice
            .post_text(Target::User(UserId(2)), key, Some(key))
            .await
            .unwrap();
        let want = if stored_keys.contains(key) {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        assert_eq!(res.status, want, "retry of {key}");
    }
    let after = all_history(&bob, &conversation).await;
    let keys: Vec<_> = after.iter().filter_map(|m| m.client_id.clone()).collect();
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(keys.len(), unique.len(), "every client_id stored once");
    assert_eq!(
        after.len(),
        history.len()
            + unanswered
                .iter()
                .filter(|k| !stored_keys.contains(*k))
                .count()
    );
}

async fn all_history(client: &Client, conversation: &str) -> Vec<Message> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = client
            .history(conversation, before, Some(200))
            .await
            .unwrap();
        let Some(first) = page.first() else { break };
        before = Some(first.id.0);
        let mut page = page;
        page.append(&mut out);
        out = page;
    }
    out
}
