//! Bad input gets the status and error code of docs/API.md, never a 500 or a dropped
//! connection, and nothing is half-written.

mod common;

use common::JsonValue;
use common::TestServer;
use http::{Method, StatusCode};
use im_client::Client;
use im_protocol::{Target, UserId};

async fn expect(res: im_client::Response, status: StatusCode, code: &str) {
    assert_eq!(
        res.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.error_code().as_deref(), Some(code));
    assert!(
        res.value()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_code() {
    let server = TestServer::start().await;
    let anon = server.client();
    let alice = anon.signup("alice", "alice-password").await.unwrap();
    let bob = anon.signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();
    let mut bob_stream = bob.events(None).await.unwrap();
    // The position everything so far is committed up to (accounts and the friendship take
    // positions too on a cluster store).
    let ready = common::patient("ready", bob_stream.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.event, "ready");
    let before: u64 = ready.id.unwrap().parse().unwrap();
    let post = |body: &'static str| {
        let alice = alice.clone();
        async move {
            alice
                .raw(Method::POST, "/api/v1/messages", &[JSON], body)
                .await
                .unwrap()
        }
    };

    expect(
        post(r#"{"to":{"user":2},"kind":"text","#).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    expect(post("").await, StatusCode::BAD_REQUEST, "malformed_json").await;
    expect(
        post(r#"{"to":{"user":"two"},"kind":"text","body":{"text":"x"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect(
        post(r#"{"to":{"user":2},"kind":7,"body":{"text":"x"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect(
        post(r#"{"to":{"user":2},"kind":"text","body":{"text":"x"},"extra":1}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect(
        post(r#"{"to":{"user":2},"kind":"text","body":{"text":5}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    expect(
        post(r#"{"to":{"user":2},"kind":"telepathy","body":{}}"#).await,
        StatusCode::BAD_REQUEST,
        "unknown_kind",
    )
    .await;
    expect(
        post(r#"{"to":{"user":999},"kind":"text","body":{"text":"x"}}"#).await,
        StatusCode::NOT_FOUND,
        "no_such_user",
    )
    .await;
    expect(
        post(r#"{"to":{"group":1},"kind":"text","body":{"text":"x"}}"#).await,
        StatusCode::NOT_FOUND,
        "no_such_group",
    )
    .await;

    // 65 KiB: over the 64 KiB cap.
    let big = format!(
        r#"{{"to":{{"user":2}},"kind":"text","body":{{"text":"{}"}}}}"#,
        "a".repeat(65 * 1024)
    );
    let res = alice
        .raw(Method::POST, "/api/v1/messages", &[JSON], big)
        .await
        .unwrap();
    expect(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let res = alice
        .raw(
            Method::POST,
            "/api/v1/messages",
            &[("content-type", "text/plain")],
            "hi",
        )
        .await
        .unwrap();
    expect(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // No token, a bad token, a malformed header.
    let body = r#"{"to":{"user":2},"kind":"text","body":{"text":"x"}}"#;
    let res = anon
        .raw(Method::POST, "/api/v1/messages", &[JSON], body)
        .await
        .unwrap();
    assert_eq!(res.headers["www-authenticate"], "Bearer");
    expect(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let forged = Client::new(server.addr).with_token("f".repeat(64));
    let res = forged
        .raw(Method::POST, "/api/v1/messages", &[JSON], body)
        .await
        .unwrap();
    expect(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = anon
        .raw(
            Method::GET,
            "/api/v1/events",
            &[("authorization", "Basic abc")],
            "",
        )
        .await
        .unwrap();
    expect(res, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Wrong method, with Allow; unknown route.
    let res = alice
        .call(Method::GET, "/api/v1/messages", im_client::NO_BODY)
        .await
        .unwrap();
    assert_eq!(res.headers["allow"], "POST");
    expect(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let res = alice
        .call(Method::DELETE, "/api/v1/events", im_client::NO_BODY)
        .await
        .unwrap();
    expect(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    expect(
        alice
            .call(Method::GET, "/api/v1/nope", im_client::NO_BODY)
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect(
        alice
            .call(Method::GET, "/nope/../etc", im_client::NO_BODY)
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // History query errors and unknown conversations.
    let res = alice
        .call(
            Method::GET,
            "/api/v1/conversations/d1-2/messages?limit=x",
            im_client::NO_BODY,
        )
        .await
        .unwrap();
    expect(res, StatusCode::BAD_REQUEST, "invalid_query").await;
    let res = alice
        .call(
            Method::GET,
            "/api/v1/conversations/zzz/messages",
            im_client::NO_BODY,
        )
        .await
        .unwrap();
    expect(res, StatusCode::NOT_FOUND, "not_found").await;

    // Nothing above was stored or delivered: the first thing bob sees is this message.
    let ok = alice
        .send_text(Target::User(UserId(2)), "the only one", None)
        .await
        .unwrap();
    assert_eq!(ok.id.0, before + 1, "no id was used by a rejected message");
    let got = common::patient("message", bob_stream.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ok);
    assert_eq!(
        alice.history(&ok.conversation, None, None).await.unwrap(),
        vec![ok]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_errors() {
    let server = TestServer::start().await;
    let anon = server.client();
    let reg = |u: &str, p: &str| {
        let body = serde_json::json!({"username": u, "password": p});
        let anon = anon.clone();
        async move {
            anon.call(Method::POST, "/api/v1/auth/register", Some(&body))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        reg("alice", "alice-password").await.status,
        StatusCode::CREATED
    );
    expect(
        reg("alice", "another-password").await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;
    for bad in ["al", "Alice", "al ice", "a/b", &"x".repeat(33)] {
        expect(
            reg(bad, "good-password").await,
            StatusCode::BAD_REQUEST,
            "invalid_username",
        )
        .await;
    }
    expect(
        reg("carol", "short").await,
        StatusCode::BAD_REQUEST,
        "weak_password",
    )
    .await;
    let res = anon
        .raw(
            Method::POST,
            "/api/v1/auth/register",
            &[JSON],
            r#"{"username":"x"}"#,
        )
        .await
        .unwrap();
    expect(res, StatusCode::BAD_REQUEST, "invalid_request").await;

    let login = |u: &str, p: &str| {
        let body = serde_json::json!({"username": u, "password": p});
        let anon = anon.clone();
        async move {
            anon.call(Method::POST, "/api/v1/auth/login", Some(&body))
                .await
                .unwrap()
        }
    };
    let wrong_password = login("alice", "wrong-password").await;
    let no_user = login("nobody", "wrong-password").await;
    assert_eq!(
        wrong_password.body, no_user.body,
        "the same answer whether the user exists or not"
    );
    expect(wrong_password, StatusCode::UNAUTHORIZED, "bad_credentials").await;
    server.shutdown().await;
}
