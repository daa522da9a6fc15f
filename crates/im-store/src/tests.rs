use super::*;
use im_channel::{MessageHistory, MessageLog, Outcome, Pending, Reply};
use im_protocol::{Message, MessageId, Target, UserId, conversation_of};
use im_sse::ReplaySource;
use im_users::{UserStore, UserStoreError};

fn pending(from: u64, to: u64, text: &str, cid: Option<&str>) -> Pending {
    let to = Target::User(UserId(to));
    Pending {
        from: UserId(from),
        to,
        kind: "text".into(),
        body: serde_json::json!({"text": text}),
        client_id: cid.map(str::to_owned),
        conversation: conversation_of(UserId(from), to),
        sent_at: 1,
    }
}

async fn append(store: &SqliteStore, p: Pending) -> Outcome {
    let (reply, rx) = Reply::channel();
    store.append(p, reply);
    rx.await.unwrap()
}

fn stored(o: Outcome) -> Message {
    match o {
        Outcome::Stored(m) => m,
        other => panic!("not stored: {other:?}"),
    }
}

struct Recorder(parking_lot::Mutex<Vec<u64>>);
impl CommitListener for Recorder {
    fn committed(&self, msg: &Message) {
        self.0.lock().push(msg.id.0);
    }
}

#[tokio::test]
async fn append_history_replay_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), StoreConfig::default()).unwrap();
    let rec = Arc::new(Recorder(parking_lot::Mutex::new(Vec::new())));
    store.set_commit_listener(rec.clone());

    // Concurrent appends are batched; ids still come out increasing in append order.
    let mut receipts = Vec::new();
    for i in 0..50 {
        let (reply, rx) = Reply::channel();
        store.append(pending(1, 2, &i.to_string(), None), reply);
        receipts.push(rx);
    }
    let mut ids = Vec::new();
    for r in receipts {
        ids.push(stored(r.await.unwrap()).id.0);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        *rec.0.lock(),
        ids,
        "listener hears every commit in id order"
    );

    let first = stored(append(&store, pending(1, 2, "once", Some("c1"))).await);
    let again = append(&store, pending(1, 2, "twice", Some("c1"))).await;
    assert_eq!(again, Outcome::Duplicate(first.clone()));
    // Another sender may use the same client_id.
    stored(append(&store, pending(2, 1, "x", Some("c1"))).await);

    let conv = conversation_of(UserId(1), Target::User(UserId(2)));
    let page = store.history(&conv, Some(first.id), 10).await.unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page.last().unwrap().id.0, first.id.0 - 1);
    assert!(page.windows(2).all(|w| w[0].id < w[1].id));

    let convs = store.conversations(UserId(2)).await.unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].with, Target::User(UserId(1)));
    assert_eq!(convs[0].unread, 51);

    let since = store
        .since(UserId(2), MessageId(ids[9]), 1000)
        .await
        .unwrap();
    assert_eq!(since.len(), 40 + 2);
    assert!(
        store
            .since(UserId(3), MessageId(0), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let latest = store.latest_id().await.unwrap();
    drop(store);

    let store = SqliteStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.latest_id().await.unwrap(), latest);
    let next = stored(append(&store, pending(1, 2, "after reopen", None)).await);
    assert!(next.id > latest);
}

#[tokio::test]
async fn users_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), StoreConfig::default()).unwrap();
    let alice = store.create_user("alice", "h").await.unwrap();
    assert_eq!(
        store.create_user("alice", "h2").await,
        Err(UserStoreError::UsernameTaken)
    );
    let (u, hash) = store.login_record("alice").await.unwrap().unwrap();
    assert_eq!((u.id, hash.as_str()), (alice.id, "h"));
    assert!(store.login_record("bob").await.unwrap().is_none());
    let sid = store.create_session(alice.id, [7; 32]).await.unwrap();
    assert_eq!(store.session([7; 32]).await.unwrap().unwrap().session, sid);
    store.delete_session(sid).await.unwrap();
    assert!(store.session([7; 32]).await.unwrap().is_none());
    assert_eq!(store.all_users().await.unwrap(), vec![alice]);
}
