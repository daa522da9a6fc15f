//! The core flow over real TCP: accounts, event streams, 100 messages, resume, idempotency.

mod common;
mod server_api;

use common::JsonValue;
use common::{TestServer, patient};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::sse::Item;
use im_protocol::{Message, Target, UserId};

async fn collect(stream: &mut EventStream, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = patient("a message", stream.next_message())
            .await
            .expect("stream ended")
            .unwrap();
        out.push(m);
    }
    out
}

async fn pair(server: &TestServer) -> (Client, Client) {
    common::alice_and_bob(&server.client()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_messages_every_session_history_and_resume() {
    let server = TestServer::start().await;
    let (alice, bob) = pair(&server).await;
    let bob_id = UserId(2);

    let mut bob1 = bob.events(None).await.unwrap();
    // A second login (another device) and a second tab of the first login.
    let bob_phone = server.client().login("bob", "bob-password").await.unwrap();
    let mut bob2 = bob_phone.events(None).await.unwrap();
    let mut bob3 = bob.events(None).await.unwrap();
    // The sender's own other session receives too.
    let mut alice_tab = alice.events(None).await.unwrap();

    let mut sent = Vec::new();
    for i in 0..100 {
        let m = alice
            .send_text(Target::User(bob_id), &format!("message {i}"), None)
            .await
            .unwrap();
        sent.push(m);
    }
    assert!(sent.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    for stream in [&mut bob1, &mut bob2, &mut bob3, &mut alice_tab] {
        let got = collect(stream, 100).await;
        assert_eq!(got, sent, "every session gets all 100, in order, as stored");
    }

    // History returns the same 100.
    let conversation = sent[0].conversation.clone();
    let history = bob.history(&conversation, None, Some(100)).await.unwrap();
    assert_eq!(history, sent);
    let older = bob
        .history(&conversation, Some(sent[50].id.0), Some(10))
        .await
        .unwrap();
    assert_eq!(older, sent[40..50].to_vec());

    // Resume after the 50th: exactly 51..100, then live, with no duplicates.
    let mut resumed = bob.events(Some(sent[49].id.0)).await.unwrap();
    let replay = collect(&mut resumed, 50).await;
    assert_eq!(replay, sent[50..].to_vec());
    let live = alice
        .send_text(Target::User(bob_id), "after resume", None)
        .await
        .unwrap();
    let next = collect(&mut resumed, 1).await;
    assert_eq!(next, vec![live]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_frames_and_headers_match_the_contract() {
    let server = TestServer::start().await;
    let (alice, bob) = pair(&server).await;
    let res = bob
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.value()["user"]["username"], "bob");

    // Raw look at the SSE response: headers, retry hint, then an id/event/data frame.
    let mut stream = bob.events(None).await.unwrap();
    let header = |name: &str| {
        stream
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(header("content-encoding"), None);
    let first = patient("retry hint", stream.next_item())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, Item::Retry(ms) if ms > 0));
    // Then the position the stream is caught up to (no message yet, so nothing of bob's
    // lies at or below it; 0 on SQLite, where only messages take positions).
    let ready = patient("ready", stream.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.event, "ready");
    let caught_up: u64 = ready.id.as_deref().unwrap().parse().unwrap();
    let m = alice
        .send_text(Target::User(UserId(2)), "hello", None)
        .await
        .unwrap();
    let ev = patient("event", stream.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.id, Some(m.id.0.to_string()));
    assert!(m.id.0 > caught_up);
    assert_eq!(ev.event, "message");
    let json: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    for key in [
        "id",
        "conversation",
        "from",
        "to",
        "kind",
        "body",
        "client_id",
        "sent_at",
    ] {
        assert!(json.get(key).is_some(), "message JSON has `{key}`");
    }
    assert_eq!(json["to"], serde_json::json!({"user": 2}));
    assert_eq!(json["body"]["text"], "hello");

    let anon = server.client();
    let res = anon
        .call(Method::GET, "/healthz", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!((res.status, &res.body[..]), (StatusCode::OK, &b"ok"[..]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_makes_posts_idempotent() {
    let server = TestServer::start().await;
    let (alice, bob) = pair(&server).await;
    let mut stream = bob.events(None).await.unwrap();
    let first = alice
        .post_text(Target::User(UserId(2)), "once", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let again = alice
        .post_text(Target::User(UserId(2)), "once", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(first.value()["message"], again.value()["message"]);
    // The repeat produced no new event: the next event bob sees is the next message.
    let next = alice
        .send_text(Target::User(UserId(2)), "next", None)
        .await
        .unwrap();
    let got = collect(&mut stream, 2).await;
    assert_eq!(got[0].client_id.as_deref(), Some("k-1"));
    assert_eq!(got[1], next);
    // Another sender may reuse the key.
    let res = bob
        .post_text(Target::User(UserId(1)), "mine", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    // A retry stays a 200 even when the message would now be refused: the first send was
    // stored, whatever changed since (here the friendship ended).
    let res = alice
        .call(Method::DELETE, "/api/v1/friends/2", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let retry = alice
        .post_text(Target::User(UserId(2)), "once", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.value()["message"], first.value()["message"]);
    refused_as_strangers(&alice).await;
    server.shutdown().await;
}

/// The server restarted on its data, and alice logged in again.
async fn restarted(server: TestServer) -> (TestServer, Client) {
    let server = server.restart().await;
    let alice = server
        .client()
        .login("alice", "alice-password")
        .await
        .unwrap();
    (server, alice)
}

/// After alice unfriended bob, a message with a new `client_id` is refused.
async fn refused_as_strangers(alice: &Client) {
    let fresh = alice
        .post_text(Target::User(UserId(2)), "new", Some("k-2"))
        .await
        .unwrap();
    assert_eq!(fresh.error_code().as_deref(), Some("not_friends"));
}

/// A retry the server does not remember (it restarted since, as it forgets after many
/// messages) still gets the first message: from the log's own check when the chain accepts
/// it, and from a lookup after the refusal when the chain refuses it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_still_gets_the_first_message() {
    let server = TestServer::start().await;
    let (alice, _) = pair(&server).await;
    let first = alice
        .post_text(Target::User(UserId(2)), "once", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let (server, alice) = restarted(server).await;
    let again = alice
        .post_text(Target::User(UserId(2)), "changed", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.value()["message"], first.value()["message"]);

    let (server, alice) = restarted(server).await;
    let res = alice
        .call(Method::DELETE, "/api/v1/friends/2", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    for body in ["once", "not even text"] {
        let retry = if body == "once" {
            alice
                .post_text(Target::User(UserId(2)), body, Some("k-1"))
                .await
        } else {
            // A kind nobody registered: refused by the classifier, before any chain.
            let draft = serde_json::json!(
                {"to": {"user": 2}, "kind": "nope", "body": {}, "client_id": "k-1"}
            );
            alice
                .call(Method::POST, "/api/v1/messages", Some(&draft))
                .await
        }
        .unwrap();
        assert_eq!(retry.status, StatusCode::OK, "{body}");
        assert_eq!(retry.value()["message"], first.value()["message"]);
    }
    refused_as_strangers(&alice).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_list_with_unread() {
    let server = TestServer::start().await;
    let (alice, bob) = pair(&server).await;
    for i in 0..3 {
        alice
            .send_text(Target::User(UserId(2)), &format!("{i}"), None)
            .await
            .unwrap();
    }
    let last = bob
        .send_text(Target::User(UserId(1)), "reply", None)
        .await
        .unwrap();
    let res = bob
        .call(Method::GET, "/api/v1/conversations", im_client::NO_BODY)
        .await
        .unwrap();
    let list = res.value()["conversations"].as_array().cloned().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["with"], serde_json::json!({"user": 1}));
    assert_eq!(list[0]["unread"], 3);
    assert_eq!(list[0]["last_message"]["id"], last.id.0);
    let res = alice
        .call(Method::GET, "/api/v1/conversations", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.value()["conversations"][0]["unread"], 1);
    // A third user is not a party to alice and bob's conversation.
    let carol = server
        .client()
        .signup("carol", "carol-password")
        .await
        .unwrap();
    let path = format!("/api/v1/conversations/{}/messages", last.conversation);
    let res = carol
        .call(Method::GET, &path, im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("not_participant"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_origin_check_and_logout() {
    let server = TestServer::start().await;
    let anon = server.client();
    let a = anon.signup("alice", "alice-password").await.unwrap();
    let b = anon.signup("bob", "bob-password").await.unwrap();
    a.befriend(&b, "bob").await.unwrap();
    let body = serde_json::json!({"username": "alice", "password": "alice-password"});
    let res = anon
        .call(Method::POST, "/api/v1/auth/login", Some(&body))
        .await
        .unwrap();
    let set_cookie = res.headers["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["im_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie} has {attr}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let msg = r#"{"to":{"user":2},"kind":"text","body":{"text":"via cookie"}}"#;
    let host = server.addr.to_string();
    let same_origin = format!("http://{host}");
    let json = ("content-type", "application/json");

    let res = anon
        .raw(Method::GET, "/api/v1/me", &[("cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(res.value()["user"]["username"], "alice");
    let res = anon
        .raw(
            Method::POST,
            "/api/v1/messages",
            &[("cookie", &cookie), json, ("origin", &same_origin)],
            msg,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    let res = anon
        .raw(
            Method::POST,
            "/api/v1/messages",
            &[("cookie", &cookie), json, ("origin", "http://evil.example")],
            msg,
        )
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("foreign_origin"))
    );

    // Logout revokes the session and ends the streams opened with it.
    let alice = anon.login("alice", "alice-password").await.unwrap();
    let mut stream = alice.events(None).await.unwrap();
    let res = alice
        .call(Method::POST, "/api/v1/auth/logout", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    while let Some(item) = patient("stream end", stream.next_item()).await {
        item.unwrap();
    }
    let res = alice
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    // The cookie session is a different session and still works.
    let res = anon
        .raw(Method::GET, "/api/v1/me", &[("cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    server.shutdown().await;
}

/// The same port speaks HTTP/2 with prior knowledge (h2c), chosen without consuming bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge() {
    use http_body_util::{BodyExt, Empty};
    let server = TestServer::start().await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/healthz", "/api/v1/auth/session"] {
        let req = http::Request::get(format!("http://{}{path}", server.addr))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(
            (res.status(), res.version()),
            (StatusCode::OK, http::Version::HTTP_2)
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    server.shutdown().await;
}
