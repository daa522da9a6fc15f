//! The examples' handler and kind, registered through the builder, change what is delivered.

mod common;

#[path = "../examples/custom_kind.rs"]
#[allow(dead_code)]
mod custom_kind;
#[path = "../examples/word_filter.rs"]
#[allow(dead_code)]
mod word_filter;

use common::{TestServer, patient};
use http::{Method, StatusCode};
use im_protocol::{Target, UserId};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_filter_rewrites_and_rejects() {
    let server = TestServer::start_with(|b| b.handler(word_filter::demo_filter())).await;
    let anon = server.client();
    let alice = anon.signup("alice", "alice-password").await.unwrap();
    let bob = anon.signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();
    let mut stream = bob.events(None).await.unwrap();

    let res = alice
        .post_text(Target::User(UserId(2)), "Buy SPAM now", None)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.error_code().as_deref(), Some("forbidden_word"));

    let stored = alice
        .send_text(Target::User(UserId(2)), "Oh darn, heck!", None)
        .await
        .unwrap();
    assert_eq!(stored.body["text"], "Oh ****, ****!");
    let delivered = patient("message", stream.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        delivered.body["text"], "Oh ****, ****!",
        "bob sees the rewritten text"
    );
    assert_eq!(
        delivered.id, stored.id,
        "the rejected message never reached bob"
    );
    let clean = alice
        .send_text(Target::User(UserId(2)), "darning socks", None)
        .await
        .unwrap();
    assert_eq!(
        clean.body["text"], "darning socks",
        "only whole words are masked"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_kind_is_accepted_validated_and_delivered() {
    let server = TestServer::start_with(|b| b.kind(custom_kind::location_kind())).await;
    let anon = server.client();
    let alice = anon.signup("alice", "alice-password").await.unwrap();
    let bob = anon.signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();
    let mut stream = bob.events(None).await.unwrap();

    let post = |body: serde_json::Value| {
        let alice = alice.clone();
        async move {
            let msg = json!({"to": {"user": 2}, "kind": "location", "body": body});
            alice
                .call(Method::POST, "/api/v1/messages", Some(&msg))
                .await
                .unwrap()
        }
    };
    let bad = post(json!({"lat": 100.0, "lon": 0.0})).await;
    assert_eq!(
        (bad.status, bad.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let ok = post(json!({"lat": 52.5, "lon": 13.4, "label": "Berlin"})).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let got = patient("message", stream.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind, "location");
    assert_eq!(
        got.body,
        json!({"lat": 52.5, "lon": 13.4, "label": "Berlin"})
    );
    server.shutdown().await;
}
