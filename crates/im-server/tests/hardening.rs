//! Defences against what an attacker with a free account (or none) tries; each test failed on
//! the code before its fix.

mod common;

use common::{TestServer, alice_and_bob, patient, upload};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::{Target, UserId};
use serde_json::json;

/// Reads events until a message arrives; returns the names of the events before it.
async fn events_before_next_message(stream: &mut EventStream) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let e = patient("an event", stream.next_event())
            .await
            .unwrap()
            .unwrap();
        if e.event == "message" {
            return seen;
        }
        seen.push(e.event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_reach_neither_strangers_nor_blocked_users() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let mallory = anon.signup("mallory", "mallory-password").await.unwrap();
    let mut alice_events = alice.events(None).await.unwrap();
    let read = |c: &Client, conversation: &str| {
        let (c, path) = (
            c.clone(),
            format!("/api/v1/conversations/{conversation}/read"),
        );
        async move {
            c.call(Method::POST, &path, Some(&json!({"up_to": 1_000_000})))
                .await
                .unwrap()
        }
    };
    // A stranger with no conversation at all.
    assert_eq!(read(&mallory, "d1-3").await.status, StatusCode::NO_CONTENT);
    // A friend who has since been blocked by alice, in a conversation that has messages.
    bob.send_text(Target::User(UserId(1)), "before the block", None)
        .await
        .unwrap();
    assert_eq!(
        events_before_next_message(&mut alice_events)
            .await
            .iter()
            .filter(|e| *e == "read")
            .count(),
        0
    );
    alice
        .call(Method::POST, "/api/v1/blocks", Some(&json!({"user_id": 2})))
        .await
        .unwrap()
        .expect(StatusCode::NO_CONTENT)
        .unwrap();
    assert_eq!(read(&bob, "d1-2").await.status, StatusCode::NO_CONTENT);
    // A message to herself marks the end of what alice's stream got meanwhile.
    alice
        .send_text(Target::User(UserId(1)), "marker", None)
        .await
        .unwrap();
    let seen = events_before_next_message(&mut alice_events).await;
    assert!(
        !seen.iter().any(|e| e == "read"),
        "no read receipt crossed: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_characters_are_stripped_from_file_names() {
    let server = TestServer::start().await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    // A right-to-left override makes "invoice\u{202e}gnp.exe" display as "invoiceexe.png".
    for (sent, kept) in [
        ("invoice\u{202e}gnp.exe", "invoicegnp.exe"),
        ("zero\u{200b}width\u{feff}.txt", "zerowidth.txt"),
        ("soft\u{ad}hyphen\u{2066}.txt", "softhyphen.txt"),
    ] {
        let file = upload(&alice, sent, "text/plain", b"hello").await;
        assert_eq!(file["name"], kept, "{sent:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_is_not_plain_digits_gets_resync() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    for i in 0..6 {
        alice
            .send_text(Target::User(UserId(2)), &format!("m{i}"), None)
            .await
            .unwrap();
    }
    for position in ["+5", " +5", "5e0", "0x5"] {
        let mut stream = bob
            .raw_events(&[("last-event-id", position)])
            .await
            .unwrap();
        let first = patient("first event", stream.next_event())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.event, "resync", "{position:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_stream_cap_loses_the_oldest_stream() {
    let server = TestServer::start_config(|c| c.sse.max_streams_per_user = 4, |b| b).await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = bob.events(None).await.unwrap();
        // Registered once its `ready` arrives.
        loop {
            let e = patient("ready", s.next_event()).await.unwrap().unwrap();
            if e.event == "ready" {
                break;
            }
        }
        streams.push(s);
    }
    // The fifth stream closed the first, which ends.
    let mut oldest = streams.remove(0);
    patient("the oldest stream to end", async {
        while let Some(Ok(_)) = oldest.next_item().await {}
    })
    .await;
    // The other four keep working.
    let m = alice
        .send_text(Target::User(UserId(2)), "still here", None)
        .await
        .unwrap();
    for s in &mut streams {
        let got = patient("message", s.next_message()).await.unwrap().unwrap();
        assert_eq!(got, m);
    }
}
