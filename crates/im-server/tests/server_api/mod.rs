//! The server API (`/api/v1/server/…`) as a backend uses it: keys, publishing as the system
//! sender, presence, disconnects and revocations. Part of `messaging`, so it runs on SQLite
//! and again on PostgreSQL.

use crate::common::JsonValue;
use crate::common::cluster::{create_group, ready};
use crate::common::{TestServer, alice_and_bob, ended, patient, server_api, status_of_me};
use http::{Method, StatusCode};
use im_client::{EventStream, Response};
use im_protocol::{Message, Target, UserId};
use serde_json::{Value, json};

const KEY: &str = "backend-key-0123456789";

/// A server whose server API takes [`KEY`] (and a second key, as in a rotation).
async fn with_keys() -> TestServer {
    TestServer::start_config(
        |c| c.server_api.keys = vec!["old-key-still-valid-42".into(), KEY.into()],
        |b| b,
    )
    .await
}

/// A server API call with `headers` (the key among them, or not).
async fn server_call(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Response {
    server_api(server.addr, method, path, headers, body).await
}

/// A server API call with [`KEY`].
async fn backend(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Response {
    server_call(server, method, path, &[("x-api-key", KEY)], body).await
}

/// The next durable message on `stream`.
async fn message(stream: &mut EventStream) -> Message {
    patient("a message", stream.next_message())
        .await
        .expect("the stream ended")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_takes_keys_and_nothing_else() {
    let server = with_keys().await;
    let (alice, _bob) = alice_and_bob(&server.client()).await;
    let token = alice.token().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let cookie = format!("im_session={token}");
    let wrong_scheme = format!("Bearer {KEY}");
    let near_miss = format!("{KEY}x");
    let refused: [&[(&str, &str)]; 6] = [
        &[],
        &[("x-api-key", "wrong-key-0123456789")],
        &[("x-api-key", &near_miss)],
        &[("authorization", &bearer)],
        &[("cookie", &cookie)],
        &[("authorization", &wrong_scheme)],
    ];
    let routes = [
        (Method::POST, "/messages"),
        (Method::GET, "/online"),
        (Method::GET, "/presence?users=1"),
        (Method::POST, "/users/1/disconnect"),
        (Method::DELETE, "/users/1/sessions"),
        (Method::GET, "/conversations/d1-2/messages"),
    ];
    for (method, path) in &routes {
        for headers in refused {
            let res = server_call(&server, method.clone(), path, headers, None).await;
            assert_eq!(
                res.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert_eq!(res.error_code().as_deref(), Some("unauthorized"));
            assert_eq!(res.headers["www-authenticate"], "ApiKey");
        }
    }
    // Either key, in either form, gets in; the user's session still works where it belongs.
    let ok = server_call(
        &server,
        Method::GET,
        "/online",
        &[("x-api-key", "old-key-still-valid-42")],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let apikey = format!("ApiKey {KEY}");
    let ok = server_call(
        &server,
        Method::GET,
        "/online",
        &[("authorization", &apikey)],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(status_of_me(&alice).await, StatusCode::OK);
    // A wrong method or an unknown route of the server API answers as everywhere else.
    let res = backend(&server, Method::GET, "/messages", None).await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    let res = backend(&server, Method::GET, "/nothing", None).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    // Without keys the API is off.
    let off = TestServer::start().await;
    let res = server_call(&off, Method::GET, "/online", &[("x-api-key", KEY)], None).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(
        res.value()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server_api.keys")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publishes_to_users_and_groups_durably() {
    let server = with_keys().await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    let (alice_id, bob_id) = (UserId(1), UserId(2));
    let mut alices = alice.events(None).await.unwrap();
    ready(&mut alices).await;

    let draft = json!({"to": {"user": alice_id}, "kind": "text", "body": {"text": "your order shipped"}, "client_id": "order-17"});
    let res = backend(&server, Method::POST, "/messages", Some(&draft)).await;
    assert_eq!(res.status, StatusCode::CREATED);
    let sent: Message = serde_json::from_value(res.value()["message"].clone()).unwrap();
    assert_ne!(sent.from, alice_id);
    assert_eq!(sent.to, Target::User(alice_id));
    assert_eq!(message(&mut alices).await, sent, "delivered live");
    // A retry is answered with the first message, and nothing new is delivered.
    let again = backend(&server, Method::POST, "/messages", Some(&draft)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.value()["message"]["id"], sent.id.0);
    // In alice's history and the backend's, and in her conversation list.
    let mine = alice.history(&sent.conversation, None, None).await.unwrap();
    assert_eq!(mine, vec![sent.clone()]);
    let path = format!("/conversations/{}/messages", sent.conversation);
    let theirs = backend(&server, Method::GET, &path, None).await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert_eq!(theirs.value()["messages"][0]["id"], sent.id.0);
    let list = alice
        .call(Method::GET, "/api/v1/conversations", im_client::NO_BODY)
        .await
        .unwrap()
        .value();
    assert!(
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["with"]["user"] == sent.from.0)
    );

    // To a group: every member hears it, though the system sender is no member.
    let group = create_group(&alice, "team", &[bob_id.0]).await;
    let mut bobs = bob.events(None).await.unwrap();
    ready(&mut bobs).await;
    let draft =
        json!({"to": {"group": group}, "kind": "text", "body": {"text": "maintenance at noon"}});
    let res = backend(&server, Method::POST, "/messages", Some(&draft)).await;
    assert_eq!(res.status, StatusCode::CREATED);
    let to_group: Message = serde_json::from_value(res.value()["message"].clone()).unwrap();
    assert_eq!(to_group.from, sent.from, "one system sender");
    assert_eq!(message(&mut alices).await, to_group);
    assert_eq!(message(&mut bobs).await, to_group);

    // Bad input gets a 4xx with a code, and stores nothing.
    for (draft, status, code) in [
        (
            json!({"to": {"user": 99}, "kind": "text", "body": {"text": "x"}}),
            StatusCode::NOT_FOUND,
            "no_such_user",
        ),
        (
            json!({"to": {"group": 99}, "kind": "text", "body": {"text": "x"}}),
            StatusCode::NOT_FOUND,
            "no_such_group",
        ),
        (
            json!({"to": {"user": 1}, "kind": "nope", "body": {}}),
            StatusCode::BAD_REQUEST,
            "unknown_kind",
        ),
        (
            json!({"to": {"user": 1}, "kind": "text", "body": {"text": "x"}, "client_id": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"to": {"user": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let res = backend(&server, Method::POST, "/messages", Some(&draft)).await;
        assert_eq!(
            (res.status, res.error_code().as_deref()),
            (status, Some(code)),
            "{draft}"
        );
    }
    let res = backend(&server, Method::GET, "/conversations/d1-99/messages", None).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let history = alice.history(&sent.conversation, None, None).await.unwrap();
    assert_eq!(history.len(), 1, "refused drafts stored nothing");

    // Nobody logs in as the system sender or befriends it.
    let res = server.client().login(im_users::SYSTEM_USERNAME, "").await;
    assert!(res.is_err());
    let res = alice
        .call(
            Method::POST,
            "/api/v1/friends/requests",
            Some(&json!({"username": im_users::SYSTEM_USERNAME})),
        )
        .await
        .unwrap();
    assert_eq!(res.error_code().as_deref(), Some("no_such_user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sees_presence_disconnects_and_revokes() {
    let server = with_keys().await;
    let (alice, _bob) = alice_and_bob(&server.client()).await;
    let mut first = alice.events(None).await.unwrap();
    ready(&mut first).await;

    let online = backend(&server, Method::GET, "/online", None).await.value();
    assert_eq!(
        online,
        json!({"users": [{"id": 1, "username": "alice"}], "next": null})
    );
    let page = backend(&server, Method::GET, "/online?limit=1", None)
        .await
        .value();
    assert_eq!(page["next"], 1, "a full page points at the next");
    let after = backend(&server, Method::GET, "/online?after=1", None)
        .await
        .value();
    assert_eq!(after["users"], json!([]));
    let presence = backend(&server, Method::GET, "/presence?users=1,2,99", None)
        .await
        .value();
    assert_eq!(
        presence["presence"],
        json!([{"id": 1, "online": true}, {"id": 2, "online": false}, {"id": 99, "online": false}])
    );
    let res = backend(&server, Method::GET, "/presence?users=1,x", None).await;
    assert_eq!(res.error_code().as_deref(), Some("invalid_request"));

    // A disconnect ends every stream of hers; her session stays, so she comes back.
    let mut second = alice.events(None).await.unwrap();
    ready(&mut second).await;
    let res = backend(&server, Method::POST, "/users/1/disconnect", None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    ended("the first stream", &mut first).await;
    ended("the second stream", &mut second).await;
    let mut back = alice.events(None).await.unwrap();
    ready(&mut back).await;
    let res = backend(&server, Method::POST, "/users/99/disconnect", None).await;
    assert_eq!(res.error_code().as_deref(), Some("no_such_user"));

    // A revocation ends her streams and her session.
    let res = backend(&server, Method::DELETE, "/users/1/sessions", None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    ended("the stream after the revocation", &mut back).await;
    assert_eq!(status_of_me(&alice).await, StatusCode::UNAUTHORIZED);
    let res = backend(&server, Method::DELETE, "/users/99/sessions", None).await;
    assert_eq!(res.error_code().as_deref(), Some("no_such_user"));
}

/// The backend script of docs/API.md (`examples/backend/notify.py`) works as written.
/// `python3` is there wherever `cargo xtask ci` runs: the S3 tests need it for moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_example_runs_as_documented() {
    let server = with_keys().await;
    let (alice, _bob) = alice_and_bob(&server.client()).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/backend/notify.py"
    );
    let run = |key: &'static str| {
        let url = format!("http://{}", server.addr);
        async move {
            tokio::process::Command::new("python3")
                .args([script, "1", "the build is green", "build-42"])
                .env("IM_URL", url)
                .env("IM_API_KEY", key)
                .output()
                .await
                .expect("python3 runs the backend example")
        }
    };
    let out = run(KEY).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with("message ") && said.ends_with(" stored; user 1 is offline\n"),
        "{said}"
    );
    // The same client id again: the same message, stored once.
    assert_eq!(String::from_utf8(run(KEY).await.stdout).unwrap(), said);
    let id: u64 = said.split(' ').nth(1).unwrap().parse().unwrap();
    let list = alice
        .call(Method::GET, "/api/v1/conversations", im_client::NO_BODY)
        .await
        .unwrap()
        .value();
    let chat = &list["conversations"][0];
    assert_eq!(chat["last_message"]["id"], id);
    assert_eq!(chat["last_message"]["body"]["text"], "the build is green");
    let history = alice
        .history(chat["conversation"].as_str().unwrap(), None, None)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    // A wrong key fails the script with the server's error code.
    let out = run("not-the-key-0123456789").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
}
