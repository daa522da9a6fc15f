//! The file proxy over real TCP: uploads, serving rules, expiry, quotas and file messages.

mod common;

use common::JsonValue;
use common::{ServerProcess, TestServer, patient, rss_kib, upload};
use http::{Method, StatusCode};
use im_client::Client;
use im_protocol::Message;
use serde_json::json;
use std::path::Path;

/// A valid 1x1 PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\0\x05\0\x01\xff\x89\x99=\x1d\0\0\0\0IEND\xaeB`\x82";

async fn get(c: &Client, url: &str, headers: &[(&str, &str)]) -> im_client::Response {
    c.raw(Method::GET, url, headers, "").await.unwrap()
}

fn header<'a>(res: &'a im_client::Response, name: &str) -> &'a str {
    res.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Regular files under the store directory (the bytes of live uploads, and any leftovers).
fn stored_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("files"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A server with `alice` signed up, and a client with no session.
async fn alice_and_a_stranger() -> (TestServer, Client, Client) {
    let server = TestServer::start().await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    let anon = server.client();
    (server, alice, anon)
}

/// What the bytes are decides the type, whatever the client claimed; the link is long and random.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_png_comes_back_inline_with_its_real_type() {
    let (server, alice, anon) = alice_and_a_stranger().await;
    let png = upload(&alice, "dot.png", "application/x-whatever", PNG).await;
    assert_eq!(
        (png["content_type"].as_str(), png["size"].as_u64()),
        (Some("image/png"), Some(PNG.len() as u64))
    );
    let url = png["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/files/") && url.ends_with("/dot.png"));
    assert!(
        url.split('/').nth(2).unwrap().len() >= 32,
        "at least 128 random bits"
    );
    let res = get(&anon, &url, &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "image/png");
    assert!(header(&res, "content-disposition").starts_with("inline"));
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert!(header(&res, "cache-control").starts_with("private"));
    assert_eq!(&res.body[..], PNG);

    server.shutdown().await;
}

/// HTML and SVG (and HTML claiming to be a PNG) are downloads, never rendered by the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_and_svg_are_attachments_never_rendered() {
    let (server, alice, anon) = alice_and_a_stranger().await;
    for (name, ct, data, sniffed) in [
        (
            "page.html",
            "text/html",
            &b"<!doctype html><script>alert(1)</script>"[..],
            "text/html",
        ),
        (
            "logo.svg",
            "image/svg+xml",
            &b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"[..],
            "image/svg+xml",
        ),
        (
            "fake.png",
            "image/png",
            &b"<html><script>alert(1)</script>"[..],
            "text/html",
        ),
    ] {
        let f = upload(&alice, name, ct, data).await;
        assert_eq!(f["content_type"], sniffed);
        let res = get(&anon, f["url"].as_str().unwrap(), &[]).await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(
            header(&res, "content-disposition").starts_with("attachment"),
            "{name}"
        );
        assert_eq!(
            header(&res, "content-type"),
            "application/octet-stream",
            "{name}"
        );
        assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    }

    server.shutdown().await;
}

/// Range requests, several times on one link, past the end, and HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_repeat_on_one_link_and_head_has_no_body() {
    let (server, alice, anon) = alice_and_a_stranger().await;
    let big: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let f = upload(&alice, "data.bin", "application/octet-stream", &big).await;
    let url = f["url"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let res = get(&anon, &url, &[("range", "bytes=0-99")]).await;
        assert_eq!(res.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(res.body.len(), 100);
        assert_eq!(&res.body[..], &big[..100]);
        assert_eq!(header(&res, "content-range"), "bytes 0-99/1000");
    }
    let res = get(&anon, &url, &[("range", "bytes=990-")]).await;
    assert_eq!(&res.body[..], &big[990..]);
    let res = get(&anon, &url, &[("range", "bytes=5000-")]).await;
    assert_eq!(res.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&res, "content-range"), "bytes */1000");
    let res = anon.raw(Method::HEAD, &url, &[], "").await.unwrap();
    assert_eq!(
        (res.status, header(&res, "content-length"), res.body.len()),
        (StatusCode::OK, "1000", 0)
    );

    server.shutdown().await;
}

/// Paths that climb out, wrong names and guessed tokens are all the same 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_guessing_get_the_same_404() {
    let (server, alice, anon) = alice_and_a_stranger().await;
    let f = upload(
        &alice,
        "data.bin",
        "application/octet-stream",
        b"0123456789",
    )
    .await;
    let url = f["url"].as_str().unwrap().to_owned();
    let token = url.split('/').nth(2).unwrap().to_owned();
    for bad in [
        "/files/../../etc/passwd".to_owned(),
        "/files/..%2F..%2Fetc/passwd".to_owned(),
        format!("/files/{token}/..%2F..%2Fim.sqlite3"),
        format!("/files/{token}/other-name.bin"),
        format!("/files/{token}%2F..%2F/data.bin"),
        format!("/files/{}/data.bin", "0".repeat(64)),
        "/files/%2e%2e/%2e%2e".to_owned(),
    ] {
        let res = get(&anon, &bad, &[]).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{bad}");
    }

    server.shutdown().await;
}

/// A JSON body, a form without `file`, and no session each get their own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_their_codes() {
    let (server, alice, anon) = alice_and_a_stranger().await;
    let res = alice
        .raw(
            Method::POST,
            "/api/v1/files",
            &[("content-type", "application/json")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let body = "--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n";
    let res = alice
        .raw(
            Method::POST,
            "/api/v1/files",
            &[("content-type", "multipart/form-data; boundary=b")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let res = anon.upload("x.png", "image/png", PNG).await.unwrap();
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_quota_and_expiry() {
    let server = TestServer::start_config(
        |c| {
            c.files.max_bytes = 1000;
            c.files.quota_bytes = 1500;
            c.files.ttl_secs = 2;
            c.files.sweep_secs = 1;
        },
        |b| b,
    )
    .await;
    let dir = server.dir.path().to_owned();
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    let bob = server.client().signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();

    // One byte over the cap: 413, and nothing is left on disk.
    let res = alice
        .upload("big.bin", "application/octet-stream", &[7u8; 1001])
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    assert_eq!(stored_files(&dir), 0, "no partial file");
    let ok = upload(&alice, "fits.bin", "application/octet-stream", &[7u8; 1000]).await;
    assert_eq!(stored_files(&dir), 1);

    // The quota counts live files.
    let res = alice
        .upload("more.bin", "application/octet-stream", &[7u8; 600])
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("quota_exceeded"))
    );
    assert_eq!(stored_files(&dir), 1);

    // Expiry: the link dies, then the sweeper deletes the bytes, and messages refuse the id.
    let url = ok["url"].as_str().unwrap().to_owned();
    assert_eq!(get(&alice, &url, &[]).await.status, StatusCode::OK);
    patient("the link to expire", async {
        while get(&alice, &url, &[]).await.status != StatusCode::NOT_FOUND {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    patient("the bytes to be swept", async {
        while stored_files(&dir) != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let msg = json!({"to": {"user": 2}, "kind": "file", "body": {"file_id": ok["id"]}});
    let res = alice
        .call(Method::POST, "/api/v1/messages", Some(&msg))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("file_expired"))
    );
    // Expired files no longer count against the quota.
    upload(&alice, "again.bin", "application/octet-stream", &[7u8; 900]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_file_messages() {
    let server = TestServer::start().await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    let bob = server.client().signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();
    let mut stream = bob.events(None).await.unwrap();

    let png = upload(&alice, "holiday.png", "image/png", PNG).await;
    let msg = json!({"to": {"user": 2}, "kind": "image", "body": {"file_id": png["id"], "url": "http://evil.example/x"}});
    let res = alice
        .call(Method::POST, "/api/v1/messages", Some(&msg))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    let got: Message = serde_json::from_value(loop {
        let e = patient("message", stream.next_event())
            .await
            .unwrap()
            .unwrap();
        if e.event == "message" {
            break serde_json::from_str(&e.data).unwrap();
        }
    })
    .unwrap();
    assert_eq!(got.kind, "image");
    assert_eq!(
        got.body["url"], png["url"],
        "the server fills the body; the client's url is ignored"
    );
    assert_eq!(got.body["content_type"], "image/png");
    assert_eq!(got.body["name"], "holiday.png");
    let res = get(&bob, got.body["url"].as_str().unwrap(), &[]).await;
    assert_eq!(
        (res.status, &res.body[..]),
        (StatusCode::OK, PNG),
        "bob's link works"
    );

    // A plain file can go as `file` but not as `image`.
    let txt = upload(&alice, "notes.txt", "text/plain", b"hello").await;
    let as_image = json!({"to": {"user": 2}, "kind": "image", "body": {"file_id": txt["id"]}});
    let res = alice
        .call(Method::POST, "/api/v1/messages", Some(&as_image))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let as_file = json!({"to": {"user": 2}, "kind": "file", "body": {"file_id": txt["id"]}});
    let res = alice
        .call(Method::POST, "/api/v1/messages", Some(&as_file))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.value()["message"]["body"]["size"], 5);

    // Someone else's file, or no file at all.
    let theirs = json!({"to": {"user": 1}, "kind": "file", "body": {"file_id": txt["id"]}});
    let res = bob
        .call(Method::POST, "/api/v1/messages", Some(&theirs))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("unknown_file"))
    );
    let bad = json!({"to": {"user": 1}, "kind": "file", "body": {"file_id": "x"}});
    let res = bob
        .call(Method::POST, "/api/v1/messages", Some(&bad))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    server.shutdown().await;
}

/// A 200 MiB upload streams to disk: the server's peak RSS grows by less than 32 MiB.
#[cfg(target_os = "linux")] // reads /proc
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_upload_streams_without_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_env(dir.path(), &[("IM_FILES__MAX_BYTES", "268435456")]);
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    // Warm up the upload path so one-time allocations are not counted.
    upload(
        &alice,
        "warm.bin",
        "application/octet-stream",
        &[1u8; 1 << 20],
    )
    .await;
    let pid = server.child.id();
    let before = rss_kib(pid, "VmRSS:");
    let data: Vec<u8> = (0..200u32 << 20).map(|i| (i % 253) as u8).collect();
    let f = upload(&alice, "big.bin", "application/octet-stream", &data).await;
    assert_eq!(f["size"].as_u64(), Some(200 << 20));
    let peak = rss_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!("server RSS before {before} KiB, peak {peak} KiB, growth {growth_mib} MiB");
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB");
    let res = get(
        &alice,
        f["url"].as_str().unwrap(),
        &[("range", "bytes=209715100-")],
    )
    .await;
    assert_eq!(&res.body[..], &data[209715100..]);
}
