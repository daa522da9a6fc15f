//! `PgBus`: commits wake the other nodes, and ephemeral events reach them (not the sender).

use bytes::Bytes;
use im_channel::{MessageLog, Outcome, Pending, Reply};
use im_cluster::{Bus, Ephemeral, Inbound};
use im_protocol::{Target, UserId, conversation_of};
use im_store::{PgBus, PgConfig, PgStore};
use im_testkit::TempDatabase;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a node heard from the bus.
#[derive(Debug, PartialEq)]
enum Heard {
    Head(u64),
    Reconnected,
    Event(Ephemeral),
}

struct Ear(mpsc::UnboundedSender<Heard>);

impl Inbound for Ear {
    fn head(&self, head: u64) {
        let _ = self.0.send(Heard::Head(head));
    }
    fn reconnected(&self) {
        let _ = self.0.send(Heard::Reconnected);
    }
    fn event(&self, event: Ephemeral) {
        let _ = self.0.send(Heard::Event(event));
    }
}

/// Waits for the first thing heard that `want` accepts (a broken bus fails after a minute).
async fn hear(rx: &mut mpsc::UnboundedReceiver<Heard>, want: impl Fn(&Heard) -> bool) -> Heard {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(h) if want(&h) => return h,
                Some(_) => continue,
                None => panic!("the bus went away"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("heard nothing")
}

fn listen(bus: &PgBus) -> mpsc::UnboundedReceiver<Heard> {
    let (tx, rx) = mpsc::unbounded_channel();
    bus.start(Arc::new(Ear(tx)));
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wake_and_events_travel() {
    let db = TempDatabase::create().await;
    let store = PgStore::open(PgConfig::new(db.url())).await.unwrap();
    let (here, there) = (PgBus::new(db.url()).unwrap(), PgBus::new(db.url()).unwrap());
    let mut heard_here = listen(&here);
    let mut heard_there = listen(&there);
    for rx in [&mut heard_here, &mut heard_there] {
        hear(rx, |h| *h == Heard::Reconnected).await;
    }

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
        },
        reply,
    );
    let Outcome::Stored(m) = outcome.await.unwrap() else {
        panic!("stored")
    };
    let head = hear(&mut heard_there, |h| matches!(h, Heard::Head(_))).await;
    assert_eq!(head, Heard::Head(m.id.0));

    // An event reaches the other node, and the sender does not hear its own.
    let event = Ephemeral {
        users: vec![UserId(2), UserId(3)],
        frame: Bytes::from_static(b"event: typing\ndata: {}\n\n"),
    };
    here.publish(event.clone());
    let got = hear(&mut heard_there, |h| matches!(h, Heard::Event(_))).await;
    assert_eq!(got, Heard::Event(event));
    // The sender's own ear hears a later event from the other node first, never its own.
    let reply = Ephemeral {
        users: vec![UserId(1)],
        frame: Bytes::from_static(b"event: read\ndata: {}\n\n"),
    };
    there.publish(reply.clone());
    let first = hear(&mut heard_here, |h| matches!(h, Heard::Event(_))).await;
    assert_eq!(first, Heard::Event(reply));
}
