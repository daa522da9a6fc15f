//! `PgBus`: commits wake the other nodes from inside the commit (the frame contract is in
//! im-bus's `contract` tests, with the other buses).

use im_channel::{MessageLog, Outcome, Pending, Reply};
use im_protocol::{Target, UserId, conversation_of};
use im_store::{PgBus, PgConfig, PgStore};
use im_testkit::TempDatabase;
use im_testkit::bus::{Heard, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wake_other_nodes() {
    let db = TempDatabase::create().await;
    let store = PgStore::open(PgConfig::new(db.url())).await.unwrap();
    let there = PgBus::new(db.url());
    let mut heard_there = start(&there).await;

    // A commit anywhere is announced with its head.
    let to = Target::User(UserId(2));
    let (reply, outcome) = Reply::channel();
    store.append(
        Pending {
            from: UserId(1),
            to,
            kind: "text".into(),
            body: serde_json::json!({"text": "wake up"}),
            client_id: None,
            conversation: conversation_of(UserId(1), to),
            sent_at: 0,
            reply_to: None,
            amend: None,
        },
        reply,
    );
    let Outcome::Stored(m) = outcome.await.unwrap() else {
        panic!("stored")
    };
    let head = heard_there
        .next_where("a head", |h| matches!(h, Heard::Head(_)))
        .await;
    assert_eq!(head, Heard::Head(m.id.0));
}
