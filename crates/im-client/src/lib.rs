#![doc = include_str!("../README.md")]
//!
//! The client speaks plain HTTP/1.1 over TCP with hyper, so a test or a load generator sees
//! exactly what a browser would. A [`Client`] opens one connection per request (plus one per
//! event stream); a [`Connection`] keeps one open for many requests in a row.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use im_protocol::sse::{Event, Item, Parser};
use im_protocol::wire::{FriendRequestView, User};
use im_protocol::{Message, MessageId, Target};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// The cause of a transport failure, kept whole.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP or HTTP failed.
    #[error("transport: {0}")]
    Transport(#[source] Cause),
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
    Body(#[source] serde_json::Error),
}

fn transport(e: impl Into<Cause>) -> ClientError {
    ClientError::Transport(e.into())
}

/// `None` as the body of [`Client::call`]: a request with no body, whose type needs naming.
pub const NO_BODY: Option<&()> = None;

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
    /// The body parsed as JSON into `T` (`serde_json::Value` for any JSON).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(ClientError::Body)
    }

    /// The `error.code` of an error body, if any.
    pub fn error_code(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Body {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
        }
        self.json::<Body>().ok().map(|b| b.error.code)
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

    /// The field `key` of a JSON object body, parsed into `T`.
    fn field<T: DeserializeOwned>(&self, key: &str) -> Result<T, ClientError> {
        let mut object: serde_json::Map<String, serde_json::Value> = self.json()?;
        let value = object.remove(key).unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(ClientError::Body)
    }
}

/// How connections are dialled: from which local address, with which receive buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dial {
    /// The local address to connect from; many loopback sources keep a load generator's
    /// ephemeral ports from running out.
    pub source: Option<IpAddr>,
    /// `SO_RCVBUF` in bytes, set before connecting so the window it offers stays that small:
    /// a slow reader's backlog then stays with the server.
    pub recv_buffer: Option<u32>,
}

impl Dial {
    /// A connected socket to `addr` with `TCP_NODELAY`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        let sock = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(transport)?;
        if let Some(bytes) = self.recv_buffer {
            sock.set_recv_buffer_size(bytes).map_err(transport)?;
        }
        if let Some(ip) = self.source {
            sock.bind(SocketAddr::new(ip, 0)).map_err(transport)?;
        }
        let stream = sock.connect(addr).await.map_err(transport)?;
        stream.set_nodelay(true).map_err(transport)?;
        Ok(stream)
    }
}

/// One keep-alive HTTP/1.1 connection, for many requests in a row without a handshake each.
#[derive(Debug)]
pub struct Connection {
    send: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    /// Connects to `addr` as `dial` says and handshakes; the connection lives until this is
    /// dropped.
    pub async fn open(addr: SocketAddr, dial: Dial) -> Result<Self, ClientError> {
        let io = TokioIo::new(dial.connect(addr).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            host: addr.to_string(),
        })
    }

    /// A request to this connection's server, with `Host` set.
    fn builder(&self, method: Method, path: &str, token: Option<&str>) -> http::request::Builder {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        match token {
            Some(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
            None => b,
        }
    }

    /// Sends a request and waits for the response head.
    async fn head(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        self.send.ready().await.map_err(transport)?;
        self.send.send_request(req).await.map_err(transport)
    }

    /// One request: `Authorization: Bearer` if `token` is given, `headers`, and `body`; the
    /// whole response.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let mut b = self.builder(method, path, token);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).map_err(transport)?;
        let (parts, body) = self.head(req).await?.into_parts();
        let body = body.collect().await.map_err(transport)?.to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path` as an event stream (`Accept: text/event-stream`), with `headers`; the
    /// stream once a 200 head arrived, else the status and body as an error. The stream holds
    /// the connection from then on.
    pub async fn event_stream(
        mut self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<EventStream, ClientError> {
        let mut b = self
            .builder(Method::GET, path, token)
            .header(header::ACCEPT, "text/event-stream");
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(transport)?;
        let res = self.head(req).await?;
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

/// A client for one server, optionally holding a session token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
    dial: Dial,
}

impl Client {
    /// A client for the server at `addr`, not logged in.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            dial: Dial::default(),
        }
    }

    /// The same client sending `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same client dialling as `dial` says.
    pub fn with_dial(mut self, dial: Dial) -> Self {
        self.dial = dial;
        self
    }

    /// The same session against another server (another node of a cluster).
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            addr,
            ..self.clone()
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

    /// A new keep-alive connection to this client's server.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        Connection::open(self.addr, self.dial).await
    }

    /// Sends a request with raw body bytes and extra headers on a connection of its own; the
    /// building block of the rest.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        self.connect()
            .await?
            .request(method, path, self.token(), headers, body.into())
            .await
    }

    /// Sends `body` as JSON (or nothing, for [`NO_BODY`]) with
    /// `Content-Type: application/json`.
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(ClientError::Body)?,
            None => Vec::new(),
        };
        self.raw(method, path, &[("content-type", "application/json")], bytes)
            .await
    }

    /// `POST /api/v1/auth/register`: the new user.
    pub async fn register(&self, username: &str, password: &str) -> Result<User, ClientError> {
        let body = Credentials { username, password };
        let res = self
            .call(Method::POST, "/api/v1/auth/register", Some(&body))
            .await?;
        res.expect(StatusCode::CREATED)?.field("user")
    }

    /// `POST /api/v1/auth/login`; returns a client holding the new token.
    pub async fn login(&self, username: &str, password: &str) -> Result<Client, ClientError> {
        let body = Credentials { username, password };
        let res = self
            .call(Method::POST, "/api/v1/auth/login", Some(&body))
            .await?;
        let token: String = res.expect(StatusCode::OK)?.field("token")?;
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

    /// `POST /api/v1/friends/requests`: the request (201).
    pub async fn request_friend(&self, username: &str) -> Result<FriendRequestView, ClientError> {
        #[derive(Serialize)]
        struct Ask<'a> {
            username: &'a str,
        }
        let res = self
            .call(
                Method::POST,
                "/api/v1/friends/requests",
                Some(&Ask { username }),
            )
            .await?;
        res.expect(StatusCode::CREATED)?.field("request")
    }

    /// `POST /api/v1/friends/requests/{id}/accept`.
    pub async fn accept_request(&self, id: u64) -> Result<FriendRequestView, ClientError> {
        let path = format!("/api/v1/friends/requests/{id}/accept");
        let res = self.call(Method::POST, &path, NO_BODY).await?;
        res.expect(StatusCode::OK)?.field("request")
    }

    /// Makes this user and `other` (whose name is `other_name`) friends: request, accept.
    pub async fn befriend(&self, other: &Client, other_name: &str) -> Result<(), ClientError> {
        let request = self.request_friend(other_name).await?;
        other.accept_request(request.id).await?;
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
        self.post_draft(&TextDraft {
            to,
            kind: "text",
            body: Text { text },
            client_id,
            reply_to: None,
        })
        .await
    }

    async fn post_draft(&self, draft: &TextDraft<'_>) -> Result<Response, ClientError> {
        self.call(Method::POST, "/api/v1/messages", Some(draft))
            .await
    }

    /// Sends a text message that replies to message `reply_to`; returns it, with its quote.
    pub async fn reply_text(
        &self,
        to: Target,
        text: &str,
        reply_to: MessageId,
    ) -> Result<Message, ClientError> {
        let draft = TextDraft {
            to,
            kind: "text",
            body: Text { text },
            client_id: None,
            reply_to: Some(reply_to),
        };
        let res = self.post_draft(&draft).await?;
        res.expect(StatusCode::CREATED)?.field("message")
    }

    /// `PATCH /api/v1/messages/{id}`: replaces the text of one's own text message; returns
    /// the message as it now is.
    pub async fn edit_text(&self, id: MessageId, text: &str) -> Result<Message, ClientError> {
        #[derive(Serialize)]
        struct Edit<'a> {
            body: Text<'a>,
        }
        let path = format!("/api/v1/messages/{}", id.0);
        let body = Edit {
            body: Text { text },
        };
        let res = self.call(Method::PATCH, &path, Some(&body)).await?;
        res.expect(StatusCode::OK)?.field("message")
    }

    /// `PUT` (`add`) or `DELETE /api/v1/messages/{id}/reactions/{emoji}`: the caller's
    /// reaction; returns the reaction as it now stands (`{message, emoji, user, added,
    /// count, ...}`).
    pub async fn react(
        &self,
        id: MessageId,
        emoji: &str,
        add: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let encoded: String = emoji.bytes().map(|b| format!("%{b:02X}")).collect();
        let path = format!("/api/v1/messages/{}/reactions/{encoded}", id.0);
        let method = if add { Method::PUT } else { Method::DELETE };
        let res = self.call(method, &path, NO_BODY).await?;
        res.expect(StatusCode::OK)?.field("reaction")
    }

    /// `DELETE /api/v1/messages/{id}`: deletes a message; returns its tombstone.
    pub async fn delete_message(&self, id: MessageId) -> Result<Message, ClientError> {
        let path = format!("/api/v1/messages/{}", id.0);
        let res = self.call(Method::DELETE, &path, NO_BODY).await?;
        res.expect(StatusCode::OK)?.field("message")
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
        res.field("message")
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
            .call(Method::GET, &path, NO_BODY)
            .await?
            .expect(StatusCode::OK)?;
        res.field("messages")
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
        self.event_stream("/api/v1/events", headers).await
    }

    /// Opens any event stream of this server (`GET path`) on a connection of its own.
    pub async fn event_stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<EventStream, ClientError> {
        self.connect()
            .await?
            .event_stream(path, self.token(), headers)
            .await
    }
}

/// The body of register and login.
#[derive(Serialize)]
struct Credentials<'a> {
    username: &'a str,
    password: &'a str,
}

/// The body of a text message's `POST /api/v1/messages`.
#[derive(Serialize)]
struct TextDraft<'a> {
    to: Target,
    kind: &'static str,
    body: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<MessageId>,
}

/// A text message's body.
#[derive(Serialize)]
struct Text<'a> {
    text: &'a str,
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

/// One entry of the log as a stream delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    /// Its position: the `id:` a stream resumes after.
    pub id: u64,
    /// `message`, `message_edited`, `message_deleted` or `reaction`.
    pub event: String,
    /// The event's data: a message (as it was after this entry), or a reaction's change.
    pub data: serde_json::Value,
}

impl Logged {
    /// The message a `message`, `message_edited` or `message_deleted` event carries.
    pub fn message(&self) -> Result<Message, ClientError> {
        Message::deserialize(&self.data).map_err(ClientError::Body)
    }
}

impl EventStream {
    /// The next item (event, comment or retry hint); `None` when the server ended the stream.
    /// Cancel-safe: an item read but not returned stays queued for the next call.
    pub async fn next_item(&mut self) -> Option<Result<Item, ClientError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            match self.fill().await {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Waits for the next bytes of the body and queues the items they complete; false when
    /// the stream ended. A stream's first bytes prove it live, whole items or not.
    pub async fn fill(&mut self) -> Result<bool, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(false),
                Some(Err(e)) => return Err(transport(e)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.ready.extend(self.parser.feed(data));
                        return Ok(true);
                    }
                }
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

    /// The next entry of the log for this user: a `message`, `message_edited`,
    /// `message_deleted` or `reaction` event with its position (`id:`) and its data.
    /// Ephemeral events and `ready` are skipped.
    pub async fn next_logged(&mut self) -> Option<Result<Logged, ClientError>> {
        const LOGGED: [&str; 4] = ["message", "message_edited", "message_deleted", "reaction"];
        loop {
            match self.next_event().await? {
                Ok(e) if LOGGED.contains(&e.event.as_str()) => {
                    let id = e.id.as_deref().and_then(|i| i.parse().ok()).unwrap_or(0);
                    let data = match serde_json::from_str(&e.data) {
                        Ok(d) => d,
                        Err(err) => return Some(Err(ClientError::Body(err))),
                    };
                    return Some(Ok(Logged {
                        id,
                        event: e.event,
                        data,
                    }));
                }
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
                    return Some(serde_json::from_str(&e.data).map_err(ClientError::Body));
                }
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
