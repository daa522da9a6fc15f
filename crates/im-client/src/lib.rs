#![doc = include_str!("../README.md")]
//!
//! The client speaks plain HTTP/1.1 over TCP with hyper, one connection per request (plus one
//! per event stream), so a test or a load generator sees exactly what a browser would.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use im_protocol::sse::{Event, Item, Parser};
use im_protocol::{Message, Target};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP or HTTP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The server answered with an unexpected status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The body, as text.
        body: String,
    },
    /// The body was not the JSON we expected.
    #[error("unexpected body: {0}")]
    Body(String),
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// A buffered response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `error.code` of an error body, if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }

    /// Fails unless the status is `want`.
    pub fn expect(self, want: StatusCode) -> Result<Self, ClientError> {
        if self.status == want {
            Ok(self)
        } else {
            Err(ClientError::Status {
                status: self.status,
                body: String::from_utf8_lossy(&self.body).into_owned(),
            })
        }
    }
}

/// A client for one server, optionally holding a session token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `addr`, not logged in.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, token: None }
    }

    /// The same client sending `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same session against another server (another node of a cluster).
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            addr,
            token: self.token.clone(),
        }
    }

    /// The server this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream = TcpStream::connect(self.addr).await.map_err(transport)?;
        stream.set_nodelay(true).map_err(transport)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(transport)
    }

    fn builder(&self, method: Method, path: &str) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    /// Sends a request with raw body bytes and extra headers; the building block of the rest.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut b = self.builder(method, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(transport)?;
        let res = self.send(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(transport)?.to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends JSON (or nothing) with `Content-Type: application/json`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, &[("content-type", "application/json")], bytes)
            .await
    }

    /// `POST /api/v1/auth/register`.
    pub async fn register(&self, username: &str, password: &str) -> Result<Value, ClientError> {
        let body = json!({"username": username, "password": password});
        let res = self
            .call(Method::POST, "/api/v1/auth/register", Some(&body))
            .await?;
        Ok(res.expect(StatusCode::CREATED)?.json()["user"].clone())
    }

    /// `POST /api/v1/auth/login`; returns a client holding the new token.
    pub async fn login(&self, username: &str, password: &str) -> Result<Client, ClientError> {
        let body = json!({"username": username, "password": password});
        let res = self
            .call(Method::POST, "/api/v1/auth/login", Some(&body))
            .await?;
        let token = res.expect(StatusCode::OK)?.json()["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Body("login answer has no token".into()))?;
        Ok(self.clone().with_token(token))
    }

    /// Registers then logs in.
    pub async fn signup(&self, username: &str, password: &str) -> Result<Client, ClientError> {
        self.register(username, password).await?;
        self.login(username, password).await
    }

    /// `POST /api/v1/files` as `multipart/form-data` with one `file` field.
    pub async fn upload(
        &self,
        filename: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<Response, ClientError> {
        let boundary = "im-client-boundary-7d1f0c2a9b";
        let mut body = Vec::with_capacity(data.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        self.raw(
            Method::POST,
            "/api/v1/files",
            &[("content-type", &ct)],
            body,
        )
        .await
    }

    /// `POST /api/v1/friends/requests`: the request's JSON (201).
    pub async fn request_friend(&self, username: &str) -> Result<Value, ClientError> {
        let body = json!({ "username": username });
        let res = self
            .call(Method::POST, "/api/v1/friends/requests", Some(&body))
            .await?;
        Ok(res.expect(StatusCode::CREATED)?.json()["request"].clone())
    }

    /// `POST /api/v1/friends/requests/{id}/accept`.
    pub async fn accept_request(&self, id: u64) -> Result<Value, ClientError> {
        let path = format!("/api/v1/friends/requests/{id}/accept");
        let res = self.call(Method::POST, &path, None).await?;
        Ok(res.expect(StatusCode::OK)?.json()["request"].clone())
    }

    /// Makes this user and `other` (whose name is `other_name`) friends: request, accept.
    pub async fn befriend(&self, other: &Client, other_name: &str) -> Result<(), ClientError> {
        let request = self.request_friend(other_name).await?;
        let id = request["id"]
            .as_u64()
            .ok_or_else(|| ClientError::Body("request without id".into()))?;
        other.accept_request(id).await?;
        Ok(())
    }

    /// `POST /api/v1/messages` with a text body; returns the raw response so callers can
    /// tell 201 from 200.
    pub async fn post_text(
        &self,
        to: Target,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<Response, ClientError> {
        let mut body = json!({"to": to, "kind": "text", "body": {"text": text}});
        if let Some(c) = client_id {
            body["client_id"] = c.into();
        }
        self.call(Method::POST, "/api/v1/messages", Some(&body))
            .await
    }

    /// Sends a text message and returns the stored message (201 or 200).
    pub async fn send_text(
        &self,
        to: Target,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<Message, ClientError> {
        let res = self.post_text(to, text, client_id).await?;
        let res = if res.status == StatusCode::OK {
            res
        } else {
            res.expect(StatusCode::CREATED)?
        };
        serde_json::from_value(res.json()["message"].clone())
            .map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `GET /api/v1/conversations/{c}/messages`.
    pub async fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, ClientError> {
        let mut path = format!("/api/v1/conversations/{conversation}/messages?");
        if let Some(b) = before {
            path.push_str(&format!("before={b}&"));
        }
        if let Some(l) = limit {
            path.push_str(&format!("limit={l}"));
        }
        let res = self
            .call(Method::GET, &path, None)
            .await?
            .expect(StatusCode::OK)?;
        serde_json::from_value(res.json()["messages"].clone())
            .map_err(|e| ClientError::Body(e.to_string()))
    }

    /// Opens `GET /api/v1/events`, resuming after `last_event_id` if given (as the browser
    /// does, in the `Last-Event-ID` header).
    pub async fn events(&self, last_event_id: Option<u64>) -> Result<EventStream, ClientError> {
        match last_event_id {
            Some(id) => self.raw_events(&[("last-event-id", &id.to_string())]).await,
            None => self.raw_events(&[]).await,
        }
    }

    /// Opens `GET /api/v1/events` with extra headers as given (a `Last-Event-ID` that is not
    /// a number, say).
    pub async fn raw_events(&self, headers: &[(&str, &str)]) -> Result<EventStream, ClientError> {
        let mut b = self
            .builder(Method::GET, "/api/v1/events")
            .header(header::ACCEPT, "text/event-stream");
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(transport)?;
        let res = self.send(req).await?;
        if res.status() != StatusCode::OK {
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(transport)?
                .to_bytes();
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let (parts, body) = res.into_parts();
        Ok(EventStream {
            headers: parts.headers,
            body,
            parser: Parser::new(),
            ready: VecDeque::new(),
        })
    }
}

/// A live SSE stream.
#[derive(Debug)]
pub struct EventStream {
    /// The response headers.
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    ready: VecDeque<Item>,
}

impl EventStream {
    /// The next item (event, comment or retry hint); `None` when the server ended the stream.
    pub async fn next_item(&mut self) -> Option<Result<Item, ClientError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        self.ready.extend(self.parser.feed(data));
                    }
                }
                Err(e) => return Some(Err(transport(e))),
            }
        }
    }

    /// The next dispatched event, skipping comments and retry hints.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            match self.next_item().await? {
                Ok(Item::Event(e)) => return Some(Ok(e)),
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next durable `message` event, decoded; ephemeral events are skipped.
    pub async fn next_message(&mut self) -> Option<Result<Message, ClientError>> {
        loop {
            match self.next_event().await? {
                Ok(e) if e.event == "message" => {
                    return Some(
                        serde_json::from_str(&e.data)
                            .map_err(|err| ClientError::Body(err.to_string())),
                    );
                }
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
