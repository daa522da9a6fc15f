//! HTTPS on the main listener: HTTP/2 by ALPN with many event streams on one connection (a
//! browser's tabs), HTTP/1.1 over TLS with the hand-written event stream, the `Secure`
//! cookie, and a renewed certificate served to new connections while old streams go on.

mod common;

use bytes::Bytes;
use common::{TestServer, patient};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use im_protocol::sse::{Item, Parser};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate for localhost, and the server's config pointing at copies of its files
/// (the copies are what a reload test replaces).
struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (made_cert, made_key) = im_server::self_signed(&dir.path().join("first")).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::copy(made_cert, &cert).unwrap();
        std::fs::copy(made_key, &key).unwrap();
        Self { dir, cert, key }
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    async fn server(&self) -> TestServer {
        let (cert, key) = (self.cert.clone(), self.key.clone());
        TestServer::start_config(
            move |c| {
                c.tls.cert = Some(cert);
                c.tls.key = Some(key);
                c.tls.reload_secs = 1;
            },
            |b| b,
        )
        .await
    }
}

/// Connects with TLS, trusting only `trusted`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// An HTTP/2 connection to the server.
struct H2 {
    send: http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    async fn open(addr: SocketAddr, trusted: &[CertificateDer<'static>]) -> Self {
        let tls = connect(addr, trusted, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { send }
    }

    async fn start(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        self.send.ready().await.unwrap();
        self.send
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap()
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let res = self.start(method, path, token, body).await;
        assert_eq!(res.version(), Version::HTTP_2);
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }

    /// Sends `text` from `token`'s user to user 2 (Bob); returns the stored message.
    async fn send_to_bob(&mut self, token: &str, text: &str) -> Value {
        let body = json!({"to": {"user": 2}, "kind": "text", "body": {"text": text}});
        let (status, _, sent) = self
            .call(Method::POST, "/api/v1/messages", Some(token), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
        sent["message"].clone()
    }

    /// Registers and logs in `name`; returns the token and the `Set-Cookie` of the login.
    async fn signup(&mut self, name: &str) -> (String, String) {
        let creds = json!({"username": name, "password": format!("{name}-password")});
        let (status, _, _) = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(creds.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, headers, body) = self
            .call(Method::POST, "/api/v1/auth/login", None, Some(creds))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
        (body["token"].as_str().unwrap().to_owned(), cookie)
    }
}

/// Alice (user 1) and Bob (user 2), registered and friends; their tokens.
async fn alice_and_bob(h2: &mut H2) -> (String, String) {
    let (alice, _) = h2.signup("alice").await;
    let (bob, _) = h2.signup("bob").await;
    let (status, _, req) = h2
        .call(
            Method::POST,
            "/api/v1/friends/requests",
            Some(&alice),
            Some(json!({"username": "bob"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{req}");
    let accept = format!("/api/v1/friends/requests/{}/accept", req["request"]["id"]);
    let (status, _, _) = h2.call(Method::POST, &accept, Some(&bob), None).await;
    assert!(status.is_success(), "{status}");
    (alice, bob)
}

/// Reads an event stream's body until a `message` event arrives; returns its data.
async fn next_message(body: &mut hyper::body::Incoming, parser: &mut Parser) -> Value {
    patient("a message on the stream", async {
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for item in parser.feed(&data) {
                match item {
                    Item::Event(e) if e.event == "message" => {
                        return serde_json::from_str(&e.data).unwrap();
                    }
                    _ => {}
                }
            }
        }
    })
    .await
}

/// A TLS server on fresh certificates, the certificate to trust, and an HTTP/2 connection.
async fn tls_server() -> (Certs, [CertificateDer<'static>; 1], TestServer, H2) {
    let certs = Certs::new();
    let trusted = [Certs::der(&certs.cert)];
    let server = certs.server().await;
    let h2 = H2::open(server.addr, &trusted).await;
    (certs, trusted, server, h2)
}

#[tokio::test]
async fn seven_streams_of_one_user_share_one_http2_connection() {
    let (_certs, _, server, mut h2) = tls_server().await;
    let (status, _, _) = h2.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (alice, bob) = alice_and_bob(&mut h2).await;
    let (_, cookie) = h2.signup("carol").await;
    assert!(
        cookie.contains("Secure"),
        "with TLS the cookie is Secure: {cookie}"
    );

    // Seven "tabs": over HTTP/1.1 a browser would stop at six connections.
    let mut tabs = Vec::new();
    for _ in 0..7 {
        let res = h2
            .start(Method::GET, "/api/v1/events", Some(&bob), None)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        tabs.push((res.into_body(), Parser::new()));
    }
    let sent = h2.send_to_bob(&alice, "to every tab").await;
    for (body, parser) in &mut tabs {
        let got = next_message(body, parser).await;
        assert_eq!(got["id"], sent["id"]);
        assert_eq!(got["body"]["text"], "to every tab");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http1_over_tls_serves_the_event_stream() {
    let (_certs, trusted, server, mut h2) = tls_server().await;
    let (alice, bob) = alice_and_bob(&mut h2).await;

    let mut tls = connect(server.addr, &trusted, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = format!(
        "GET /api/v1/events HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {bob}\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    h2.send_to_bob(&alice, "over tls").await;
    let mut got = Vec::new();
    patient("the message over HTTP/1.1 and TLS", async {
        while !String::from_utf8_lossy(&got).contains("over tls") {
            let mut chunk = [0u8; 4096];
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the stream");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_while_old_streams_go_on() {
    let certs = Certs::new();
    let first = Certs::der(&certs.cert);
    let server = certs.server().await;
    let mut h2 = H2::open(server.addr, std::slice::from_ref(&first)).await;
    let (alice, bob) = alice_and_bob(&mut h2).await;
    let res = h2
        .start(Method::GET, "/api/v1/events", Some(&bob), None)
        .await;
    let (mut stream, mut parser) = (res.into_body(), Parser::new());

    // Renew: a new pair, written over the old files (key first, as a renewal tool might
    // not do atomically; the server keeps the old pair until both match).
    let (cert, key) = im_server::self_signed(&certs.dir.path().join("second")).unwrap();
    let second = Certs::der(&cert);
    assert_ne!(first, second);
    std::fs::copy(&key, &certs.key).unwrap();
    std::fs::copy(&cert, &certs.cert).unwrap();
    patient("the new certificate on new connections", async {
        loop {
            let tls = connect(server.addr, &[first.clone(), second.clone()], &[b"h2"]).await;
            let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            if served == second {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;

    // The stream opened before the renewal still delivers.
    let sent = h2.send_to_bob(&alice, "after renewal").await;
    let got = next_message(&mut stream, &mut parser).await;
    assert_eq!(got["id"], sent["id"]);
    server.shutdown().await;
}
