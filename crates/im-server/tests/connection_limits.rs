//! What one connection may cost: slow bodies, stalled readers, half-sent prefaces and the
//! connection cap. Each test failed on the code before its fix.

mod common;

use common::{TestServer, alice_and_bob, patient, upload};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A raw request, as plain bytes.
async fn raw(addr: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

/// Sends a GET on a fresh connection and returns the whole answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    read_to_close(&mut s).await
}

fn login_head(length: usize) -> String {
    format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_with_408() {
    let server = TestServer::start_config(
        |c| {
            c.limits.body_timeout_secs = 1;
            c.limits.body_min_rate = 100;
        },
        |b| b,
    )
    .await;
    let mut s = raw(server.addr, &login_head(10_000)).await;
    // One byte every 100 ms keeps the body alive by the idle rule alone, but stays far
    // under 100 bytes per second.
    let answer = patient("the server to give up on a trickled body", async {
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                read = s.read(&mut buf) => {
                    let n = read.unwrap_or(0);
                    let mut rest = Vec::from(&buf[..n]);
                    if n > 0 {
                        let tail = read_to_close(&mut s).await;
                        rest.extend_from_slice(tail.as_bytes());
                    }
                    return String::from_utf8_lossy(&rest).into_owned();
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if s.write_all(b" ").await.is_err() {
                        return read_to_close(&mut s).await;
                    }
                }
            }
        }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_halfway_is_cut_off_with_408() {
    let server = TestServer::start_config(|c| c.limits.body_timeout_secs = 1, |b| b).await;
    let mut s = raw(server.addr, &format!("{}{{\"username\":", login_head(60))).await;
    let answer = patient(
        "the server to give up on a stalled body",
        read_to_close(&mut s),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The server still serves everyone else.
    assert!(
        get(server.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_h2_preface_is_closed_after_the_header_timeout() {
    let server = TestServer::start_config(|c| c.limits.header_timeout_secs = 1, |b| b).await;
    let mut s = raw(server.addr, "PRI * HTTP/2.0\r\n").await;
    let answer = patient("the server to close a half preface", read_to_close(&mut s)).await;
    assert_eq!(answer, "");
    // A whole preface still gets HTTP/2 (h2c with prior knowledge): the server's SETTINGS.
    let mut s = raw(server.addr, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut head = [0u8; 9];
    patient("the server's SETTINGS frame", s.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head[3], 0x4, "frame type SETTINGS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_requests_get_503_and_health_still_answers() {
    let server = TestServer::start_config(|c| c.limits.max_connections = 8, |b| b).await;
    // Eight connections that never finish their request hold every slot.
    let mut hogs = Vec::new();
    for _ in 0..8 {
        hogs.push(raw(server.addr, "GET /api/v1/auth/session HTTP/1.1\r\n").await);
    }
    // Wait until the server has taken all eight (a ninth is refused).
    let refused = patient("the cap to be reached", async {
        loop {
            let answer = get(server.addr, "/api/v1/auth/session").await;
            if answer.starts_with("HTTP/1.1 503") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.contains("overloaded"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    assert!(
        get(server.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get(server.addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    drop(hogs);
    patient("a slot to come back", async {
        while !get(server.addr, "/api/v1/auth/session")
            .await
            .starts_with("HTTP/1.1 200")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_disconnected() {
    const SIZE: usize = 24 << 20;
    let server = TestServer::start_config(
        |c| {
            c.limits.write_timeout_secs = 1;
            c.files.max_bytes = 32 << 20;
        },
        |b| b,
    )
    .await;
    let (alice, _bob) = alice_and_bob(&server.client()).await;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let file = upload(&alice, "big.bin", "application/octet-stream", &data).await;
    let url = file["url"].as_str().unwrap().to_owned();
    // A small receive window, so the server's writes block long before 24 MiB.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for a while: the server's write stalls past its timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    patient("the cut-off download to end", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        got < SIZE,
        "the whole file arrived: the stalled write was never cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_on_http2_ends_its_stream_while_pings_keep_the_connection() {
    use http_body_util::BodyExt;
    let server = TestServer::start_config(|c| c.limits.body_timeout_secs = 1, |b| b).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Half a JSON body, then nothing: the stream stays unfinished.
    let body = HalfBody(Some(bytes::Bytes::from_static(b"{\"username\":")), true);
    let req = http::Request::post(format!("http://{}/api/v1/auth/login", server.addr))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let res = patient("the stalled stream's answer", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
    // The connection itself still serves other streams.
    let req = http::Request::get(format!("http://{}/healthz", server.addr))
        .body(HalfBody(None, false))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert!(
        !res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

/// A request body that sends its bytes and then never ends (or, without bytes, is empty).
struct HalfBody(Option<bytes::Bytes>, bool);

impl http_body::Body for HalfBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        match self.0.take() {
            Some(bytes) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
            None if self.1 => std::task::Poll::Pending,
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none() && !self.1
    }
}

/// CPU seconds this process (the in-process server and the idle client) has used so far.
#[cfg(target_os = "linux")]
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[cfg(target_os = "linux")] // reads /proc
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_rest_of_an_h2_preface_costs_no_cpu() {
    let server = TestServer::start().await;
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(raw(server.addr, "PRI * HTTP/2.0\r\n").await);
    }
    // Let the server reach every connection's wait, then measure a quiet stretch. The old
    // server peeked every 5 ms per connection (here 60,000 peeks a second).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_secs();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_secs() - before;
    assert!(
        used < 0.3,
        "{used:.2} CPU seconds spent waiting on 300 half prefaces"
    );
    drop(held);
}
