//! `/metrics`: after a scripted scenario the counters say exactly what happened, the main
//! listener's endpoint needs the token, and `metrics.listen` serves it without one.
//!
//! One server in this test binary: the recorder is the process's, so a second server here
//! would add to the same counters.

mod common;

use common::{TestServer, alice_and_bob, patient};
use http::{Method, StatusCode};
use im_protocol::{Target, UserId};

/// The value of the sample `series` (name and labels, exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The sum of every sample of `name`, whatever its labels.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(server: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let client = server.client();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let res = client
        .raw(Method::GET, "/metrics", &headers, "")
        .await
        .unwrap();
    (res.status, String::from_utf8_lossy(&res.body).into_owned())
}

#[tokio::test]
async fn counters_follow_a_scripted_scenario() {
    let side = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let side_addr = side.local_addr().unwrap();
    drop(side);
    let server = TestServer::start_config(
        move |c| {
            c.metrics.token = Some("scrape-secret".into());
            c.metrics.listen = Some(side_addr);
            c.limits.header_timeout_secs = 1;
        },
        |b| b,
    )
    .await;
    assert_eq!(scrape(&server, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        scrape(&server, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );

    let anon = server.client();
    let (alice, bob) = alice_and_bob(&anon).await;
    let carol = anon.signup("carol", "carol-password").await.unwrap();
    assert!(anon.login("alice", "not-her-password").await.is_err());
    let mut stream = bob.events(None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let cid = format!("m{i}");
        ids.push(
            alice
                .send_text(Target::User(UserId(2)), "hi", Some(&cid))
                .await
                .unwrap()
                .id,
        );
    }
    // A retry of the first: answered 200 with the stored message.
    alice
        .send_text(Target::User(UserId(2)), "hi", Some("m0"))
        .await
        .unwrap();
    let refused = carol
        .post_text(Target::User(UserId(2)), "hi", None)
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    patient("bob's three messages", async {
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(stream.next_message().await.unwrap().unwrap().id);
        }
        assert_eq!(got, ids);
    })
    .await;

    let (status, text) = scrape(&server, Some("scrape-secret")).await;
    assert_eq!(status, StatusCode::OK);
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(v(r#"im_messages_total{result="stored"}"#), 3.0);
    assert_eq!(v(r#"im_messages_total{result="duplicate"}"#), 1.0);
    assert_eq!(v(r#"im_messages_rejected_total{code="not_friends"}"#), 1.0);
    assert_eq!(v(r#"im_login_failures_total{code="bad_credentials"}"#), 1.0);
    assert_eq!(total(&text, "im_login_failures_total"), 1.0);
    assert_eq!(v("im_deliveries_total"), 3.0, "one stream, three messages");
    assert_eq!(v("im_streams_open"), 1.0);
    assert!(v(r#"im_connections_open{protocol="http1",tls="false"}"#) >= 1.0);
    assert!(v(r#"im_store_commit_seconds_count{store="sqlite"}"#) >= 3.0);
    assert!(v(r#"im_store_commit_ops_sum{store="sqlite"}"#) >= 4.0);
    assert_eq!(v(r#"im_queue_depth{queue="store_writer"}"#), 0.0);
    assert!(
        text.contains(r#"im_queue_depth{queue="channel",group="#),
        "{text}"
    );
    assert!(text.contains("# HELP im_deliveries_total"), "{text}");

    // The side listener: the same text without a token, nothing else.
    let side = im_client::Client::new(side_addr);
    let res = side.raw(Method::GET, "/metrics", &[], "").await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&res.body).contains("im_messages_total"));
    let res = side.raw(Method::GET, "/api/v1/me", &[], "").await.unwrap();
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    // A client there that sends nothing does not hold its task: the header timeout ends it.
    let mut silent = tokio::net::TcpStream::connect(side_addr).await.unwrap();
    let mut buf = [0u8; 256];
    let read = common::patient("a silent connection to be closed", async {
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf).await
    })
    .await;
    assert!(
        !matches!(read, Ok(n) if n > 0 && !buf.starts_with(b"HTTP/1.1 408")),
        "{read:?}"
    );
    server.shutdown().await;
}
