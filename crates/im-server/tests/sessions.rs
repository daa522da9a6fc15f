//! Sessions end when they should, everywhere: revocation is race-free (requests made with a
//! token while it logs out can never put the session back); idle and absolute expiry refuse
//! the token and end its streams; one session, all of them, or all but this one (a password
//! change) can be ended, each ending exactly the streams it should.

mod common;

use common::JsonValue;
use common::{TestServer, alice_and_bob, ended, patient, status_of_me};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::{Target, UserId};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Hammers `GET /me` with `client` from several tasks until `stop` is set.
fn hammer(client: &Client, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..6)
        .map(|_| {
            let (c, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.call(Method::GET, "/api/v1/me", im_client::NO_BODY).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_fails_once_logout_returned_despite_concurrent_requests() {
    let server = TestServer::start().await;
    let anon = server.client();
    anon.register("bob", "bob-password").await.unwrap();
    for round in 0..25 {
        let bob = anon.login("bob", "bob-password").await.unwrap();
        assert_eq!(status_of_me(&bob).await, StatusCode::OK);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = hammer(&bob, &stop);
        bob.call(Method::POST, "/api/v1/auth/logout", im_client::NO_BODY)
            .await
            .unwrap()
            .expect(StatusCode::NO_CONTENT)
            .unwrap();
        // Logout has returned: from now on the token fails, however the racing requests
        // interleaved with it.
        for _ in 0..10 {
            assert_eq!(
                status_of_me(&bob).await,
                StatusCode::UNAUTHORIZED,
                "round {round}: the token works after logout returned"
            );
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(status_of_me(&bob).await, StatusCode::UNAUTHORIZED);
    }
}

// ----- expiry, the session list, ending sessions, password change -----

/// Reads `stream` until the server ends it.
/// Waits for the stream's `ready` event, so the stream is registered before the test acts.
async fn opened(c: &Client) -> EventStream {
    let mut s = c.events(None).await.unwrap();
    loop {
        let e = patient("the ready event", s.next_event())
            .await
            .unwrap()
            .unwrap();
        if e.event == "ready" {
            return s;
        }
    }
}

/// Bob's stream is alive: a message from Alice reaches it.
async fn still_delivers(alice: &Client, stream: &mut EventStream, text: &str) {
    alice
        .send_text(Target::User(UserId(2)), text, None)
        .await
        .unwrap();
    let m = patient("a message on the live stream", stream.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.body["text"], text);
}

async fn sessions_of(c: &Client) -> Vec<Value> {
    let res = c
        .call(Method::GET, "/api/v1/auth/sessions", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap();
    res.value()["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The id of the caller's own session, as the list marks it.
async fn current_session(c: &Client) -> u64 {
    sessions_of(c)
        .await
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["id"].as_u64())
        .expect("the list marks the current session")
}

fn max_age(set_cookie: &str) -> Option<u64> {
    set_cookie
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_times_the_agent_and_the_current_session() {
    let server = TestServer::start().await;
    let anon = server.client();
    anon.register("bob", "bob-password").await.unwrap();
    let body = json!({"username": "bob", "password": "bob-password"});
    let res = anon
        .raw(
            Method::POST,
            "/api/v1/auth/login",
            &[
                ("content-type", "application/json"),
                ("user-agent", "Firefox on a test"),
            ],
            body.to_string(),
        )
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap();
    // The cookie lives as long as the session may (the default absolute expiry, 90 days).
    let cookie = res.headers["set-cookie"].to_str().unwrap();
    assert_eq!(max_age(cookie), Some(90 * 24 * 3600), "{cookie}");
    let first = anon
        .clone()
        .with_token(res.value()["token"].as_str().unwrap());
    let second = anon.login("bob", "bob-password").await.unwrap();
    let list = sessions_of(&second).await;
    assert_eq!(list.len(), 2, "{list:?}");
    for s in &list {
        let (created, seen, expires) = (
            s["created_at"].as_u64().unwrap(),
            s["last_seen_at"].as_u64().unwrap(),
            s["expires_at"].as_u64().unwrap(),
        );
        assert!(created > 0 && created <= seen && seen < expires, "{s}");
        assert!(expires <= created + 90 * 24 * 3600 * 1000, "{s}");
    }
    let current: Vec<_> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{list:?}");
    let other = list.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(other["user_agent"], "Firefox on a test");
    assert_eq!(current_session(&first).await, other["id"].as_u64().unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_everywhere_and_its_stream_ends() {
    let server = TestServer::start_config(
        |c| {
            c.sessions.idle_secs = 2;
            c.sessions.sweep_secs = 1;
        },
        |b| b,
    )
    .await;
    let anon = server.client();
    let bob = anon.signup("bob", "bob-password").await.unwrap();
    let mut stream = opened(&bob).await;
    // An open stream is not use: with no request for idle_secs, the session ends.
    ended("the stream of an idle session", &mut stream).await;
    assert_eq!(status_of_me(&bob).await, StatusCode::UNAUTHORIZED);
    let refused = bob.events(None).await;
    assert!(
        matches!(refused, Err(im_client::ClientError::Status { status, .. }) if status == StatusCode::UNAUTHORIZED),
        "{refused:?}"
    );
    // A new login works, and the expired session is gone from the list.
    let again = anon.login("bob", "bob-password").await.unwrap();
    assert_eq!(sessions_of(&again).await.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_use_ends_at_its_absolute_expiry() {
    let server = TestServer::start_config(
        |c| {
            c.sessions.lifetime_secs = 3;
            c.sessions.sweep_secs = 1;
        },
        |b| b,
    )
    .await;
    let anon = server.client();
    anon.register("bob", "bob-password").await.unwrap();
    let body = json!({"username": "bob", "password": "bob-password"});
    let res = anon
        .call(Method::POST, "/api/v1/auth/login", Some(&body))
        .await
        .unwrap();
    assert_eq!(
        max_age(res.headers["set-cookie"].to_str().unwrap()),
        Some(3),
        "the cookie lives as long as the session"
    );
    let bob = anon
        .clone()
        .with_token(res.value()["token"].as_str().unwrap());
    let mut stream = opened(&bob).await;
    // Used all the time, the session still ends once it is lifetime_secs old.
    patient("the absolute expiry", async {
        loop {
            let me = bob
                .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
                .await
                .unwrap();
            if me.status == StatusCode::UNAUTHORIZED {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    ended("the stream of an expired session", &mut stream).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_one_session_ends_its_stream_and_no_other() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let bob2 = anon.login("bob", "bob-password").await.unwrap();
    let mut s1 = opened(&bob).await;
    let mut s2 = opened(&bob2).await;
    let id2 = current_session(&bob2).await;
    // Someone else's session, and one that does not exist, are both 404.
    let alices = current_session(&alice).await;
    for id in [alices, 999_999] {
        let res = bob
            .call(
                Method::DELETE,
                &format!("/api/v1/auth/sessions/{id}"),
                im_client::NO_BODY,
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::NOT_FOUND, "session {id}");
    }
    alice
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap();
    bob.call(
        Method::DELETE,
        &format!("/api/v1/auth/sessions/{id2}"),
        im_client::NO_BODY,
    )
    .await
    .unwrap()
    .expect(StatusCode::NO_CONTENT)
    .unwrap();
    ended("the ended session's stream", &mut s2).await;
    assert_eq!(status_of_me(&bob2).await, StatusCode::UNAUTHORIZED);
    still_delivers(&alice, &mut s1, "still here").await;
    assert_eq!(sessions_of(&bob).await.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_ends_every_session_and_clears_the_cookie() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let bob2 = anon.login("bob", "bob-password").await.unwrap();
    let mut s1 = opened(&bob).await;
    let mut s2 = opened(&bob2).await;
    let res = bob2
        .call(Method::POST, "/api/v1/auth/logout-all", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::NO_CONTENT)
        .unwrap();
    let cookie = res.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("im_session=;") && max_age(cookie) == Some(0),
        "{cookie}"
    );
    ended("the first stream", &mut s1).await;
    ended("the second stream", &mut s2).await;
    for c in [&bob, &bob2] {
        assert_eq!(status_of_me(c).await, StatusCode::UNAUTHORIZED);
    }
    // Nobody else is touched.
    assert_eq!(status_of_me(&alice).await, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_the_other_sessions_and_keeps_this_one() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let bob2 = anon.login("bob", "bob-password").await.unwrap();
    let mut s1 = opened(&bob).await;
    let mut s2 = opened(&bob2).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let path = "/api/v1/auth/password";
    let res = bob
        .call(
            Method::POST,
            path,
            Some(&change("wrong-password", "new-password")),
        )
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::UNAUTHORIZED, Some("bad_credentials"))
    );
    let res = bob
        .call(Method::POST, path, Some(&change("bob-password", "short")))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("weak_password"))
    );
    // Refused changes ended nothing.
    still_delivers(&alice, &mut s2, "before").await;
    bob.call(
        Method::POST,
        path,
        Some(&change("bob-password", "new-password")),
    )
    .await
    .unwrap()
    .expect(StatusCode::NO_CONTENT)
    .unwrap();
    ended("the other session's stream", &mut s2).await;
    assert_eq!(status_of_me(&bob2).await, StatusCode::UNAUTHORIZED);
    // This session carries on, stream and all.
    assert_eq!(status_of_me(&bob).await, StatusCode::OK);
    let m = patient("the message sent before", s1.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.body["text"], "before");
    still_delivers(&alice, &mut s1, "after").await;
    let body = json!({"username": "bob", "password": "bob-password"});
    let res = anon
        .call(Method::POST, "/api/v1/auth/login", Some(&body))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "the old password");
    anon.login("bob", "new-password").await.unwrap();
    server.shutdown().await;
}

/// Ending sessions and expiry hold across the nodes of a cluster: the revocation goes
/// through the log, so a stream on another node ends, and a use seen by one node keeps the
/// session alive on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_on_every_node_of_a_cluster() {
    use common::cluster::{Cluster, TestBus};
    let cluster = Cluster::launch(
        2,
        TestBus::Postgres,
        &[
            ("IM_SESSIONS__IDLE_SECS", "5"),
            ("IM_SESSIONS__SWEEP_SECS", "1"),
        ],
    )
    .await;
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    Client::new(n0)
        .register("bob", "bob-password")
        .await
        .unwrap();
    let here = Client::new(n0).login("bob", "bob-password").await.unwrap();
    let there = Client::new(n0)
        .login("bob", "bob-password")
        .await
        .unwrap()
        .at(n1);

    // Node 1 caches the session, then sees no use of it while node 0 sees plenty: node 1
    // must not take it for idle.
    let me = |c: &Client| {
        let c = c.clone();
        async move {
            c.call(Method::GET, "/api/v1/me", im_client::NO_BODY)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(me(&there).await, StatusCode::OK);
    let busy_until = std::time::Instant::now() + std::time::Duration::from_secs(7);
    while std::time::Instant::now() < busy_until {
        assert_eq!(me(&there.at(n0)).await, StatusCode::OK);
        assert_eq!(me(&here).await, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        me(&there).await,
        StatusCode::OK,
        "used on node 0, alive on node 1"
    );

    // Logging out everywhere on node 0 ends the stream on node 1.
    let mut stream = opened(&there).await;
    here.call(Method::POST, "/api/v1/auth/logout-all", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::NO_CONTENT)
        .unwrap();
    ended("the stream on the other node", &mut stream).await;
    patient("the revocation on node 1", async {
        while me(&there).await != StatusCode::UNAUTHORIZED {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;

    // An idle session's stream on node 1 ends, whichever node's sweep revoked it.
    let idle = Client::new(n1).login("bob", "bob-password").await.unwrap();
    let mut stream = opened(&idle).await;
    ended("the idle session's stream", &mut stream).await;
    assert_eq!(me(&idle.at(n0)).await, StatusCode::UNAUTHORIZED);
}
