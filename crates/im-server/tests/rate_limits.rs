//! Rate limits (429 `rate_limited` with `Retry-After`) and the password-hashing pool under a
//! login flood. Each test failed on the code before its fix.

mod common;

use common::{ServerProcess, TestServer, alice_and_bob, patient, rss_kib};
use http::{Method, StatusCode};
use im_client::{Client, Response};
use im_protocol::{Target, UserId};
use im_server::Config;
use im_server::config::RateSetting;
use serde_json::json;
use std::time::Duration;

/// Every limit off but the ones a test names, and the loopback proxy trusted so that a test
/// can speak from several addresses with `X-Forwarded-For`.
fn only(
    configure: impl FnOnce(&mut im_server::config::RateLimitsSection),
) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        let off = RateSetting {
            per_second: 0.0,
            burst_count: 0,
        };
        let r = &mut c.rate_limits;
        r.enabled = true;
        r.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        r.login_per_address = off;
        r.login_per_account = off;
        r.register_per_address = off;
        r.messages_per_user = off;
        r.uploads_per_user = off;
        configure(r);
    }
}

fn rate(per_second: f64, burst_count: u32) -> RateSetting {
    RateSetting {
        per_second,
        burst_count,
    }
}

/// `POST path` with a JSON body, as if from `from` behind the trusted proxy.
async fn post_from(c: &Client, from: &str, path: &str, body: &serde_json::Value) -> Response {
    let headers = [
        ("content-type", "application/json"),
        ("x-forwarded-for", from),
    ];
    c.raw(Method::POST, path, &headers, body.to_string())
        .await
        .unwrap()
}

async fn login_from(c: &Client, from: &str, username: &str, password: &str) -> Response {
    let body = json!({ "username": username, "password": password });
    post_from(c, from, "/api/v1/auth/login", &body).await
}

/// The seconds of `Retry-After` on a 429 `rate_limited`; fails the test on anything else.
fn limited(res: &Response) -> u64 {
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    let secs: u64 = res
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(secs >= 1, "Retry-After: {secs}");
    secs
}

/// Waits as long as the server said, then a little more.
async fn wait_out(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_one_address_is_refused_but_others_still_log_in() {
    let server =
        TestServer::start_config(only(|r| r.login_per_address = rate(0.5, 3)), |b| b).await;
    let anon = server.client();
    anon.register("alice", "alice-password").await.unwrap();
    for _ in 0..3 {
        let res = login_from(&anon, "198.51.100.7", "alice", "wrong-password").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    let res = login_from(&anon, "198.51.100.7", "alice", "wrong-password").await;
    limited(&res);
    // The right password does not get through from the flooding address either...
    let res = login_from(&anon, "198.51.100.7", "alice", "alice-password").await;
    let secs = limited(&res);
    // ...but it does from another one, and from the same one once the wait is over.
    let res = login_from(&anon, "198.51.100.8", "alice", "alice-password").await;
    assert_eq!(res.status, StatusCode::OK);
    wait_out(secs).await;
    let res = login_from(&anon, "198.51.100.7", "alice", "alice-password").await;
    assert_eq!(res.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let server = TestServer::start_config(
        only(|r| {
            r.login_per_address = rate(0.5, 2);
            r.trusted_proxies = vec!["192.0.2.1".parse().unwrap()];
        }),
        |b| b,
    )
    .await;
    let anon = server.client();
    anon.register("alice", "alice-password").await.unwrap();
    // A header from an untrusted peer is ignored: new addresses in it do not buy attempts.
    for i in 0..2 {
        let from = format!("203.0.113.{i}");
        let res = login_from(&anon, &from, "alice", "wrong-password").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    limited(&login_from(&anon, "203.0.113.9", "alice", "alice-password").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_one_accounts_password_from_many_addresses_is_refused() {
    let server =
        TestServer::start_config(only(|r| r.login_per_account = rate(0.5, 3)), |b| b).await;
    let anon = server.client();
    anon.register("alice", "alice-password").await.unwrap();
    anon.register("bob", "bob-password").await.unwrap();
    for i in 0..3 {
        let from = format!("198.51.100.{i}");
        let res = login_from(&anon, &from, "alice", "wrong-password").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    // The account's budget is spent, whoever asks and with whatever password.
    let res = login_from(&anon, "198.51.100.50", "alice", "alice-password").await;
    let secs = limited(&res);
    // Other accounts are not affected.
    let res = login_from(&anon, "198.51.100.0", "bob", "bob-password").await;
    assert_eq!(res.status, StatusCode::OK);
    wait_out(secs).await;
    let res = login_from(&anon, "198.51.100.50", "alice", "alice-password").await;
    assert_eq!(res.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_from_one_address_are_limited() {
    let server =
        TestServer::start_config(only(|r| r.register_per_address = rate(0.1, 2)), |b| b).await;
    let anon = server.client();
    let register = |from: &'static str, name: &'static str| {
        let anon = anon.clone();
        async move {
            let body = json!({ "username": name, "password": "a-password" });
            post_from(&anon, from, "/api/v1/auth/register", &body).await
        }
    };
    for name in ["user1", "user2"] {
        assert_eq!(
            register("198.51.100.1", name).await.status,
            StatusCode::CREATED
        );
    }
    limited(&register("198.51.100.1", "user3").await);
    assert_eq!(
        register("198.51.100.2", "user3").await.status,
        StatusCode::CREATED
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flood_is_refused_per_user() {
    let server =
        TestServer::start_config(only(|r| r.messages_per_user = rate(1.0, 5)), |b| b).await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    let to_bob = Target::User(UserId(2));
    for i in 0..5 {
        let res = alice
            .post_text(to_bob, &format!("m{i}"), None)
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED);
    }
    let secs = limited(&alice.post_text(to_bob, "one too many", None).await.unwrap());
    // Bob's budget is his own.
    let res = bob
        .post_text(Target::User(UserId(1)), "hi", None)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    wait_out(secs).await;
    let res = alice.post_text(to_bob, "later", None).await.unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_flood_is_refused_per_user() {
    let server = TestServer::start_config(only(|r| r.uploads_per_user = rate(0.2, 2)), |b| b).await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    for i in 0..2 {
        let res = alice
            .upload(&format!("f{i}.txt"), "text/plain", b"hello")
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED);
    }
    limited(
        &alice
            .upload("f3.txt", "text/plain", b"hello")
            .await
            .unwrap(),
    );
    let res = bob.upload("b.txt", "text/plain", b"hello").await.unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    server.shutdown().await;
}

/// 64 wrong logins at once, three times over, at the real argon2 cost and with no rate
/// limit: the server's memory afterwards is not much above where it was (argon2 runs on a few
/// threads that reuse their memory), and a real login made during the flood is answered.
#[cfg(target_os = "linux")] // reads /proc
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_login_flood_leaves_memory_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_env(
        dir.path(),
        &[
            ("IM_ARGON2__MEMORY_KIB", "19456"),
            ("IM_ARGON2__ITERATIONS", "2"),
            ("IM_ARGON2__QUEUE", "256"),
        ],
    );
    let anon = server.client();
    anon.register("alice", "alice-password").await.unwrap();
    // Warm up: the hashing threads have their memory, the connection path its buffers.
    for _ in 0..4 {
        anon.login("alice", "alice-password").await.unwrap();
    }
    let pid = server.child.id();
    let before = rss_kib(pid, "VmRSS:");
    for round in 0..3 {
        let mut flood = Vec::new();
        for i in 0..64 {
            let anon = anon.clone();
            flood.push(tokio::spawn(async move {
                let body = json!({ "username": "alice", "password": format!("wrong-{i}") });
                anon.call(Method::POST, "/api/v1/auth/login", Some(&body))
                    .await
                    .unwrap()
                    .status
            }));
        }
        let real = patient(
            "a real login during the flood",
            anon.login("alice", "alice-password"),
        );
        real.await.unwrap();
        for f in flood {
            let status = patient("a flooding login", f).await.unwrap();
            assert!(
                [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
                "round {round}: {status}"
            );
        }
    }
    let after = rss_kib(pid, "VmRSS:");
    let growth_mib = after.saturating_sub(before) / 1024;
    println!("server RSS before {before} KiB, after {after} KiB, growth {growth_mib} MiB");
    // The old code (argon2 on the blocking pool) grew by 3,156 MiB here.
    assert!(growth_mib < 48, "RSS grew by {growth_mib} MiB and stayed");
}
