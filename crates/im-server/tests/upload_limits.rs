//! Uploads against a real server: the multipart caps (part headers, part count, non-file parts,
//! total bytes) hold on chunked bodies with memory bounded, and the quota is on by default.
//! Each attack here was accepted, or buffered whole, by the code before the caps.

mod common;

use bytes::Bytes;
use common::{TestServer, rss_kib, upload};
use http::StatusCode;
use im_client::Client;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOUNDARY: &str = "upload-limits-5c1e";

/// The tests of this file run one at a time, so the memory one measures only its own upload.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the server answered to a raw upload, and how many body bytes had gone out by then.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    code: Option<String>,
    sent: u64,
}

/// Sends `POST /api/v1/files` with `Transfer-Encoding: chunked` (so no `Content-Length` can be
/// refused up front), one HTTP chunk per item of `body`, made lazily so the test itself holds
/// no more than one chunk. The answer is read while the body is still being sent.
async fn chunked_upload(
    addr: SocketAddr,
    token: &str,
    body: impl Iterator<Item = Bytes> + Send + 'static,
) -> Answer {
    send_upload(addr, token, body, false).await
}

/// [`chunked_upload`], but with `stall` the body never ends: the connection stays open and
/// silent after the last chunk.
async fn send_upload(
    addr: SocketAddr,
    token: &str,
    body: impl Iterator<Item = Bytes> + Send + 'static,
    stall: bool,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /api/v1/files HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: multipart/form-data; boundary={BOUNDARY}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for chunk in body {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if stall {
            std::future::pending::<()>().await;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let answer = common::patient("the upload's answer", read_answer(&mut rd)).await;
    let sent = sent.load(Ordering::Relaxed);
    writer.abort();
    let (status, body) = answer;
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    Answer { status, code, sent }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_answer(rd: &mut tokio::net::tcp::OwnedReadHalf) -> (StatusCode, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = rd.read(&mut chunk).await.expect("the answer");
        assert!(n > 0, "connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = rd.read(&mut chunk).await.expect("the answer's body");
        assert!(n > 0, "connection closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        buf[head_end..head_end + length].to_vec(),
    )
}

/// One part: its headers and its bytes, then the CRLF that starts the next delimiter.
fn part(name: &str, filename: Option<&str>, data: &[u8]) -> Bytes {
    let filename = filename
        .map(|f| format!("; filename=\"{f}\""))
        .unwrap_or_default();
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

fn closing() -> Bytes {
    Bytes::from(format!("--{BOUNDARY}--\r\n"))
}

/// Files under the store directory: live uploads and any leftovers.
fn stored_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("files"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn token(c: &Client) -> String {
    c.token().expect("a logged-in client").to_owned()
}

fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!((a.status, a.code.as_deref()), (status, Some(code)), "{a:?}");
}

/// A part whose headers never end, sent chunked: refused once the header block passes its cap,
/// and the server (in this process) does not grow by anything near the 64 MiB sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_part_headers_are_refused_with_memory_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
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
    let pid = std::process::id();
    let before = rss_kib(pid, "VmRSS:");

    let head = Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\nX-Junk: "
    ));
    let junk = Bytes::from(vec![b'a'; 64 * 1024]);
    let total = 64u64 << 20;
    let body = std::iter::once(head).chain(std::iter::repeat_n(junk, (total >> 16) as usize));
    let answer = chunked_upload(server.addr, &token(&alice), body).await;

    let peak = rss_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "sent {} of {total} bytes before the answer; RSS before {before} KiB, peak {peak} KiB",
        answer.sent
    );
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB");
    assert_refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(stored_files(server.dir.path()), 1, "only the warm-up file");
    server.shutdown().await;
}

/// Parts not named `file` are dropped, but counted: one over 64 KiB is refused, and so are
/// many small ones that together pass the request's cap (`max_bytes` + 64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_non_file_parts_are_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_config(|c| c.files.max_bytes = 256 * 1024, |b| b).await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();

    // One non-file part of 100 KiB.
    let body = vec![
        part("note", None, &vec![b'n'; 100 * 1024]),
        part("file", Some("a.txt"), b"hello"),
        closing(),
    ];
    let answer = chunked_upload(server.addr, &token(&alice), body.into_iter()).await;
    assert_refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Fifteen of 60 KiB each (900 KiB), each under its own cap, then a small file.
    let note = part("note", None, &vec![b'n'; 60 * 1024]);
    let body =
        std::iter::repeat_n(note, 15).chain([part("file", Some("a.txt"), b"hello"), closing()]);
    let answer = chunked_upload(server.addr, &token(&alice), body).await;
    assert_refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Small non-file parts next to the file are fine, before it or after it.
    let body = vec![
        part("note", None, b"a caption"),
        part("file", Some("a.txt"), b"hello"),
        part("note", None, b"more"),
        closing(),
    ];
    let answer = chunked_upload(server.addr, &token(&alice), body.into_iter()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(
        stored_files(server.dir.path()),
        1,
        "nothing from the refusals"
    );
    server.shutdown().await;
}

/// At most 16 parts per request; the 17th is refused before its headers are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_parts_or_headers_are_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();

    let parts = |n| {
        std::iter::repeat_n(part("note", None, b"x"), n)
            .chain([part("file", Some("a.txt"), b"hello"), closing()])
    };
    let answer = chunked_upload(server.addr, &token(&alice), parts(16)).await;
    assert_refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Sixteen in all is the cap, not over it.
    let answer = chunked_upload(server.addr, &token(&alice), parts(15)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");

    // At most 16 header lines in a part.
    let mut headers = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
    );
    for i in 0..16 {
        headers.push_str(&format!("X-Extra-{i}: y\r\n"));
    }
    headers.push_str("\r\nhello\r\n");
    let body = vec![Bytes::from(headers), closing()];
    let answer = chunked_upload(server.addr, &token(&alice), body.into_iter()).await;
    assert_refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(
        stored_files(server.dir.path()),
        1,
        "only the accepted upload"
    );
    server.shutdown().await;
}

/// A body that is not valid multipart is 400, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_multipart_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    let cases: [&[u8]; 4] = [
        // The file part never ends.
        b"--upload-limits-5c1e\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello",
        // Bytes after a boundary that are neither padding nor CRLF.
        b"--upload-limits-5c1ex\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhi\r\n--upload-limits-5c1e--",
        // A header line without a colon.
        b"--upload-limits-5c1e\r\nContent-Disposition form-data\r\n\r\nhi\r\n--upload-limits-5c1e--",
        // No boundary at all.
        b"just some bytes",
    ];
    for case in cases {
        let answer = chunked_upload(
            server.addr,
            &token(&alice),
            std::iter::once(Bytes::from_static(case)),
        )
        .await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(stored_files(server.dir.path()), 0);
    server.shutdown().await;
}

/// An upload that stops halfway through the file gets 408 once no byte came for the body
/// timeout, and its partial file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_off_with_408() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_config(|c| c.limits.body_timeout_secs = 1, |b| b).await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    let mut half = part("file", Some("a.bin"), &[b'z'; 10_000]).to_vec();
    half.truncate(half.len() - 100);
    let body = std::iter::once(Bytes::from(half));
    let answer = send_upload(server.addr, &token(&alice), body, true).await;
    assert_refused(&answer, StatusCode::REQUEST_TIMEOUT, "request_timeout");
    assert_eq!(stored_files(server.dir.path()), 0, "no partial file");
    server.shutdown().await;
}

/// The quota is on by default (1 GiB), and a configured one refuses what would pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_applies_by_default() {
    let _one = ONE_AT_A_TIME.lock().await;
    assert_eq!(im_server::Config::default().files.quota_bytes, 1 << 30);
    assert_eq!(im_files::FilesConfig::default().quota, Some(1 << 30));

    let server = TestServer::start_config(
        |c| {
            c.files.max_bytes = 1000;
            c.files.quota_bytes = 1500;
        },
        |b| b,
    )
    .await;
    let alice = server
        .client()
        .signup("alice", "alice-password")
        .await
        .unwrap();
    upload(&alice, "a.bin", "application/octet-stream", &[7u8; 1000]).await;
    let res = alice
        .upload("b.bin", "application/octet-stream", &[7u8; 600])
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("quota_exceeded"))
    );
    assert_eq!(
        stored_files(server.dir.path()),
        1,
        "nothing of the refused upload"
    );
    server.shutdown().await;
}
