//! Routing: turns requests into calls on the composed parts and their answers into JSON.

use crate::assets;
use crate::config::Config;
use crate::http::ClientAddr;
use crate::http::{
    Body, Reply, RequestBody, bytes_response, cookie, empty, error_response, json, query_param,
    query_u64, read_json,
};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyDataStream, Either, Full};
use im_channel::{ChannelGroup, MessageHistory, Outcome, Pending, RecentClientIds};
use im_classifier::MessageClassifier;
use im_cluster::Progress;
use im_files::{FileProxy, RangeReply};
use im_limits::{Key, Limit, RateLimiter};
use im_protocol::{
    ApiError, Draft, ErrorCode, GroupId, MessageId, Target, UserId, conversation_of, now_millis,
};
use im_sse::{Resume, SessionInfo, SseBroker};
use im_users::{Authenticator, Credentials, Principal, Role, UserManager};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The session cookie's name (docs/API.md).
pub(crate) const SESSION_COOKIE: &str = "im_session";

/// The OpenAPI 3.1 description of every route, served at `GET /api/v1/openapi.json` so
/// clients and contract checkers read the same document the binary was built with.
const OPENAPI: &str = include_str!("../openapi.json");

/// The composed server: everything a request may need.
pub(crate) struct App {
    pub config: Config,
    pub classifier: MessageClassifier,
    pub groups: HashMap<String, ChannelGroup>,
    pub users: Arc<UserManager>,
    pub auth: Arc<dyn Authenticator>,
    pub broker: SseBroker,
    pub history: Arc<dyn MessageHistory>,
    pub files: Arc<FileProxy>,
    /// This node's log follower: a refusal that stale memory could explain waits for it.
    pub progress: Arc<dyn Progress>,
    /// Whether this node should be sent work (`GET /readyz`).
    pub readiness: Arc<crate::ready::Readiness>,
    /// Login, registration, message and upload budgets (`[rate_limits]`).
    pub limiter: Arc<dyn RateLimiter>,
    /// The client ids stored lately, which spare a new one the store read.
    pub recent: Arc<RecentClientIds>,
    /// `/metrics`, when `[metrics]` is configured.
    pub metrics: crate::metrics::Shared,
    /// The keys of the server API (`[server_api]`); none turns it off.
    pub server_keys: crate::keys::Keys,
}

/// `{"message": M}`, serialized straight from the message: building a `serde_json::Value`
/// first cost an allocation per field on every post.
fn message_reply(status: StatusCode, message: &im_protocol::Message) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        message: &'a im_protocol::Message,
    }
    json(status, &Reply { message })
}

/// Refusals that memory behind the log could explain (a friendship, membership or upload
/// made a moment ago on another node): worth catching up and trying once more.
fn may_be_stale(e: &ApiError) -> bool {
    use ErrorCode::*;
    [
        NotFriends,
        Blocked,
        NotMember,
        NoSuchUser,
        NoSuchGroup,
        UnknownFile,
        NotParticipant,
    ]
    .iter()
    .any(|c| e.code == c.as_str())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    up_to: MessageId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingBody {
    to: Target,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FriendRequestBody {
    username: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserIdBody {
    user_id: UserId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroupBody {
    name: String,
    #[serde(default)]
    members: Vec<UserId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// 204 that also clears the session cookie: the caller's own session has ended.
fn logged_out() -> Response<Body> {
    let mut res = empty(StatusCode::NO_CONTENT);
    let gone = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Every route, resolved from the path alone so a wrong method can answer 405 with `Allow`.
enum Route {
    Asset(&'static assets::Asset),
    Health,
    Metrics,
    Ready,
    Register,
    Login,
    Logout,
    Session,
    Sessions,
    EndSession(u64),
    LogoutAll,
    Password,
    Me,
    Events,
    Messages,
    Conversations,
    History(String),
    Read(String),
    Typing,
    Friends,
    Friend(UserId),
    FriendRequests,
    AnswerRequest(u64, bool),
    Blocks,
    Block(UserId),
    Groups,
    Group(GroupId),
    GroupMembers(GroupId),
    GroupMember(GroupId, UserId),
    Upload,
    Download(String, String),
    OpenApi,
    Server(crate::server_api::ServerRoute),
}

const GET: &[Method] = &[Method::GET, Method::HEAD];
const POST: &[Method] = &[Method::POST];
const GET_POST: &[Method] = &[Method::GET, Method::HEAD, Method::POST];
const DELETE: &[Method] = &[Method::DELETE];
const PUT_DELETE: &[Method] = &[Method::PUT, Method::DELETE];

/// A numeric path segment; anything else is an unknown route.
pub(crate) fn num(s: &str) -> Option<u64> {
    s.parse().ok().filter(|_| !s.starts_with('+'))
}

fn resolve(path: &str) -> Option<(Route, &'static [Method])> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        _ if assets::find(path).is_some() => (Route::Asset(assets::find(path)?), GET),
        ["healthz"] => (Route::Health, GET),
        ["metrics"] => (Route::Metrics, GET),
        ["readyz"] => (Route::Ready, GET),
        ["files", token, name] => (
            Route::Download((*token).to_owned(), (*name).to_owned()),
            GET,
        ),
        ["api", "v1", rest @ ..] => match rest {
            ["openapi.json"] => (Route::OpenApi, GET),
            ["server", rest @ ..] => {
                let (route, methods) = crate::server_api::resolve(rest)?;
                (Route::Server(route), methods)
            }
            ["auth", "register"] => (Route::Register, POST),
            ["auth", "login"] => (Route::Login, POST),
            ["auth", "logout"] => (Route::Logout, POST),
            ["auth", "session"] => (Route::Session, GET),
            ["auth", "sessions"] => (Route::Sessions, GET),
            ["auth", "sessions", id] => (Route::EndSession(num(id)?), DELETE),
            ["auth", "logout-all"] => (Route::LogoutAll, POST),
            ["auth", "password"] => (Route::Password, POST),
            ["me"] => (Route::Me, GET),
            ["events"] => (Route::Events, GET),
            ["messages"] => (Route::Messages, POST),
            ["conversations"] => (Route::Conversations, GET),
            ["conversations", c, "messages"] if !c.is_empty() => {
                (Route::History((*c).to_owned()), GET)
            }
            ["conversations", c, "read"] if !c.is_empty() => (Route::Read((*c).to_owned()), POST),
            ["typing"] => (Route::Typing, POST),
            ["files"] => (Route::Upload, POST),
            ["friends"] => (Route::Friends, GET),
            ["friends", "requests"] => (Route::FriendRequests, GET_POST),
            ["friends", "requests", id, "accept"] => (Route::AnswerRequest(num(id)?, true), POST),
            ["friends", "requests", id, "decline"] => (Route::AnswerRequest(num(id)?, false), POST),
            ["friends", id] => (Route::Friend(UserId(num(id)?)), DELETE),
            ["blocks"] => (Route::Blocks, GET_POST),
            ["blocks", id] => (Route::Block(UserId(num(id)?)), DELETE),
            ["groups"] => (Route::Groups, GET_POST),
            ["groups", id] => (Route::Group(GroupId(num(id)?)), GET),
            ["groups", id, "members"] => (Route::GroupMembers(GroupId(num(id)?)), POST),
            ["groups", id, "members", user] => (
                Route::GroupMember(GroupId(num(id)?), UserId(num(user)?)),
                PUT_DELETE,
            ),
            _ => return None,
        },
        _ => return None,
    })
}

impl App {
    pub(crate) async fn handle(self: Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let mut res = match resolve(&path) {
            None => error_response(&ApiError::new(
                ErrorCode::NotFound,
                format!("no route {path}"),
            )),
            Some((_, allowed)) if !allowed.contains(&method) => {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let list = list.join(", ");
                let msg = format!("{path} accepts {list}");
                let mut res = error_response(&ApiError::new(ErrorCode::MethodNotAllowed, msg));
                if let Ok(v) = HeaderValue::from_str(&list) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
            Some((route, _)) => self
                .route(route, req)
                .await
                .unwrap_or_else(|e| error_response(&e)),
        };
        let headers = res.headers_mut();
        headers
            .entry(header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(HeaderValue::from_static("nosniff"));
        if path.starts_with("/api/") {
            // Tokens and private messages must not sit in shared or browser caches.
            headers
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
        }
        tracing::debug!(%method, %path, status = res.status().as_u16(), "request");
        res
    }

    /// Answers a connection over `limits.max_connections`: health probes as usual, so a
    /// load balancer can still tell the node is alive, and everything else 503.
    pub(crate) async fn handle_over_capacity(
        self: Arc<Self>,
        req: Request<RequestBody>,
    ) -> Response<Body> {
        match resolve(req.uri().path()) {
            Some((Route::Health | Route::Ready, _)) => self.handle(req).await,
            _ => error_response(
                &ApiError::new(ErrorCode::Overloaded, "the server has too many connections")
                    .retry_after(5),
            ),
        }
    }

    async fn route(&self, route: Route, req: Request<RequestBody>) -> Reply {
        match route {
            Route::Asset(asset) => {
                let fresh = req
                    .headers()
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == asset.etag().as_bytes());
                let mut res = if fresh {
                    empty(StatusCode::NOT_MODIFIED)
                } else {
                    bytes_response(
                        StatusCode::OK,
                        asset.content_type,
                        Bytes::from_static(asset.body),
                    )
                };
                let h = res.headers_mut();
                h.insert(header::ETAG, HeaderValue::from_static(asset.etag()));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(assets::CSP),
                );
                h.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("same-origin"),
                );
                Ok(res)
            }
            Route::Metrics => {
                let Some(metrics) = &self.metrics else {
                    return Err(ApiError::new(ErrorCode::NotFound, "no route /metrics"));
                };
                if !metrics.allows(self.credentials(&req).bearer) {
                    return Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "/metrics needs `Authorization: Bearer <metrics.token>`",
                    ));
                }
                Ok(self.metrics_text(metrics))
            }
            Route::OpenApi => Ok(bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(OPENAPI.as_bytes()),
            )),
            Route::Health => Ok(bytes_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"ok"),
            )),
            Route::Ready => {
                let report = self.readiness.check().await;
                let status = if report.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Ok(json(status, &report))
            }
            Route::Register => {
                self.limit_address(Limit::RegisterPerAddress, &req).await?;
                let body: Login = read_json(req, self.config.max_json_bytes).await?;
                let user = self.users.register(&body.username, &body.password).await?;
                Ok(json(StatusCode::CREATED, &json!({ "user": user })))
            }
            Route::Login => {
                // Both budgets are spent before any hashing, so a refused guess costs nothing.
                self.limit_address(Limit::LoginPerAddress, &req).await?;
                let agent = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body: Login = read_json(req, self.config.max_json_bytes).await?;
                self.limit(Limit::LoginPerAccount, Key::Name(&body.username))
                    .await?;
                let out = self
                    .users
                    .login(&body.username, &body.password, &agent)
                    .await
                    .map_err(|e| {
                        let e = ApiError::from(e);
                        metrics::counter!("im_login_failures_total", "code" => e.code.to_string())
                            .increment(1);
                        e
                    })?;
                let mut res = json(
                    StatusCode::OK,
                    &json!({ "token": out.token, "user": out.user }),
                );
                let secure = if self.config.cookie_is_secure() {
                    "; Secure"
                } else {
                    ""
                };
                // The cookie lives as long as the session may (its absolute expiry).
                let max_age = self
                    .users
                    .session_lifetime()
                    .map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
                let cookie = format!(
                    "{SESSION_COOKIE}={}; HttpOnly; SameSite=Lax; Path=/{max_age}{secure}",
                    out.token
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    res.headers_mut().insert(header::SET_COOKIE, v);
                }
                Ok(res)
            }
            Route::Logout => {
                let who = self.principal(&req).await?;
                // Revoked through the log: every node, this one included, drops the session
                // from its cache and ends its streams as its follower applies it.
                self.users.logout(who).await?;
                Ok(logged_out())
            }
            Route::Sessions => {
                let who = self.principal(&req).await?;
                let sessions = self.users.sessions_json(who).await?;
                Ok(json(StatusCode::OK, &json!({ "sessions": sessions })))
            }
            Route::EndSession(id) => {
                let who = self.principal(&req).await?;
                self.users.end_session(who, id).await?;
                Ok(if id == who.session {
                    logged_out()
                } else {
                    empty(StatusCode::NO_CONTENT)
                })
            }
            Route::LogoutAll => {
                let who = self.principal(&req).await?;
                self.users.logout_all(who).await?;
                Ok(logged_out())
            }
            Route::Password => {
                let who = self.principal(&req).await?;
                // Guessing the current password with a stolen token spends the account's
                // login budget, as a login would.
                let name = self.users.user(who.user)?.username;
                self.limit(Limit::LoginPerAccount, Key::Name(&name)).await?;
                let body: PasswordChange = read_json(req, self.config.max_json_bytes).await?;
                self.users
                    .change_password(who, &body.current_password, &body.new_password)
                    .await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Session => {
                // Like /me, but "not logged in" is an answer rather than an error, so a page
                // can ask without a failed request in its console.
                let creds = self.credentials(&req);
                let user = match self.auth.authenticate(creds).await? {
                    Some(p) => self.users.settled(|| self.users.user(p.user)).await.ok(),
                    None => None,
                };
                Ok(json(StatusCode::OK, &json!({ "user": user })))
            }
            Route::Me => {
                let who = self.principal(&req).await?;
                let user = self.users.settled(|| self.users.user(who.user)).await?;
                Ok(json(StatusCode::OK, &json!({ "user": user })))
            }
            Route::Events => self.events(req).await,
            Route::Upload => self.upload(req).await,
            Route::Download(token, name) => self.download(&token, &name, req).await,
            Route::Messages => self.post_message(req).await,
            Route::Server(route) => self.server(route, req).await,
            Route::Conversations => {
                let who = self.principal(&req).await?;
                let list = self.history.conversations(who.user).await?;
                let list: Vec<_> = list
                    .into_iter()
                    .map(|c| {
                        json!({
                            "conversation": c.conversation,
                            "with": c.with,
                            "last_message": c.last_message,
                            "unread": c.unread,
                        })
                    })
                    .collect();
                Ok(json(StatusCode::OK, &json!({ "conversations": list })))
            }
            Route::History(conversation) => {
                let who = self.principal(&req).await?;
                let users = &self.users;
                users
                    .settled(|| users.check_party(who.user, &conversation))
                    .await?;
                self.history_page(&conversation, req.uri().query()).await
            }
            other => self.social(other, req).await,
        }
    }

    /// A page of a conversation's messages: the newest `limit` (50, at most 200) before
    /// `before`, ascending.
    pub(crate) async fn history_page(&self, conversation: &str, query: Option<&str>) -> Reply {
        let limit = query_u64(query, "limit")?.unwrap_or(50).clamp(1, 200) as usize;
        let before = query_u64(query, "before")?.map(MessageId);
        let messages = self.history.history(conversation, before, limit).await?;
        Ok(json(StatusCode::OK, &json!({ "messages": messages })))
    }

    /// Friends, blocks, groups, typing and read receipts.
    async fn social(&self, route: Route, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?.user;
        let users = &self.users;
        let is_get = req.method() != Method::POST;
        let limit = self.config.max_json_bytes;
        if req.method() == Method::GET {
            // A page reloads its lists when an event says something changed, and that change
            // may have been made on another node: answer from memory that includes it.
            self.progress
                .catch_up()
                .await
                .map_err(|_| ApiError::new(ErrorCode::Overloaded, "this node is catching up"))?;
        }
        match route {
            Route::Read(conversation) => {
                users
                    .settled(|| users.check_party(who, &conversation))
                    .await?;
                let body: ReadBody = read_json(req, limit).await?;
                let stored = self
                    .history
                    .mark_read(who, &conversation, body.up_to)
                    .await?;
                users.announce_read(who, &conversation, stored);
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Typing => {
                let body: TypingBody = read_json(req, limit).await?;
                users.settled(|| users.typing(who, body.to)).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Friends => {
                let friends: Vec<_> = users
                    .friends(who)
                    .into_iter()
                    .map(|f| json!({"id": f.id, "username": f.username, "online": users.is_online(f.id)}))
                    .collect();
                Ok(json(StatusCode::OK, &json!({ "friends": friends })))
            }
            Route::Friend(other) => {
                users.unfriend(who, other).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::FriendRequests if is_get => {
                let (incoming, outgoing) = users.requests(who);
                let list = |v: Vec<_>| v.iter().map(|r| users.request_json(r)).collect::<Vec<_>>();
                Ok(json(
                    StatusCode::OK,
                    &json!({"incoming": list(incoming), "outgoing": list(outgoing)}),
                ))
            }
            Route::FriendRequests => {
                let body: FriendRequestBody = read_json(req, limit).await?;
                let r = users.request_friend(who, &body.username).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &json!({ "request": users.request_json(&r) }),
                ))
            }
            Route::AnswerRequest(id, accept) => {
                let r = users.answer_request(who, id, accept).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "request": users.request_json(&r) }),
                ))
            }
            Route::Blocks if is_get => Ok(json(
                StatusCode::OK,
                &json!({ "blocked": users.blocked(who) }),
            )),
            Route::Blocks => {
                let body: UserIdBody = read_json(req, limit).await?;
                users.block(who, body.user_id).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Block(other) => {
                users.unblock(who, other).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Groups if is_get => {
                let groups: Vec<_> = users
                    .groups(who)
                    .iter()
                    .map(|g| users.group_json(g))
                    .collect();
                Ok(json(StatusCode::OK, &json!({ "groups": groups })))
            }
            Route::Groups => {
                let body: NewGroupBody = read_json(req, limit).await?;
                let g = users.create_group(who, &body.name, &body.members).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &json!({ "group": users.group_json(&g) }),
                ))
            }
            Route::Group(id) => {
                let g = users.settled(|| users.group(who, id)).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_json(&g) }),
                ))
            }
            Route::GroupMembers(id) => {
                let body: UserIdBody = read_json(req, limit).await?;
                let g = users.add_member(who, id, body.user_id).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_json(&g) }),
                ))
            }
            Route::GroupMember(id, user) if req.method() == Method::PUT => {
                let body: RoleBody = read_json(req, limit).await?;
                let g = users.set_role(who, id, user, body.role).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_json(&g) }),
                ))
            }
            Route::GroupMember(id, user) => {
                users.remove_member(who, id, user).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }

    async fn events(&self, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        let header = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok());
        let resume = Resume::from_parts(header, query_param(req.uri().query(), "last_event_id"));
        let stream = self
            .broker
            .open(
                SessionInfo {
                    user: who.user,
                    session: who.session,
                },
                resume,
            )
            .await?;
        let mut res = Response::new(Either::Right(Either::Left(stream)));
        for (k, v) in im_sse::SSE_HEADERS {
            res.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        Ok(res)
    }

    async fn upload(&self, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        self.limit(Limit::UploadsPerUser, Key::User(who.user.0))
            .await?;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let max = self.files.config().max_bytes;
        // Multipart framing adds a little; a declared length far over the cap is refused
        // before a byte is stored.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max.saturating_add(im_files::multipart::SLACK)) {
            return Err(im_files::FileError::TooLarge(max).into());
        }
        // As an `io::Error`, the body timeout reaches `FileProxy` as one (408).
        let body = BodyDataStream::new(http_body_util::BodyExt::map_err(
            req.into_body(),
            std::io::Error::from,
        ));
        let meta = self
            .files
            .upload_multipart(who.user, &content_type, body)
            .await?;
        Ok(json(
            StatusCode::CREATED,
            &json!({ "file": FileProxy::json(&meta) }),
        ))
    }

    /// Serves a file link: raster images inline, everything else as an attachment, with
    /// `Range` support. Unknown, expired and malformed links are all the same 404.
    async fn download(&self, token: &str, name: &str, req: Request<RequestBody>) -> Reply {
        let mut meta = self.files.lookup(token, name);
        if meta.is_none() && self.progress.catch_up().await.is_ok() {
            // The upload may have been made on another node a moment ago.
            meta = self.files.lookup(token, name);
        }
        let meta = meta.ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, "no such file, or its link expired")
        })?;
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let (status, start, end) = match im_files::parse_range(range, meta.size) {
            _ if meta.size == 0 => (StatusCode::OK, 0, 0),
            RangeReply::Full => (StatusCode::OK, 0, meta.size - 1),
            RangeReply::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
            RangeReply::Unsatisfiable => {
                let mut res = error_response(&ApiError::new(
                    ErrorCode::RangeNotSatisfiable,
                    format!("the file has {} bytes", meta.size),
                ));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(res);
            }
        };
        let length = if meta.size == 0 { 0 } else { end - start + 1 };
        let inline = im_files::is_inline(&meta.content_type);
        let body = if req.method() == Method::HEAD || length == 0 {
            Either::Left(Full::new(Bytes::new()))
        } else {
            let stream = self.files.open(&meta, start, end).await?;
            Either::Right(Either::Right(im_files::FileBody::new(stream)))
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let remaining = meta.expires_at.saturating_sub(now_millis()) / 1000;
        let h = res.headers_mut();
        let content_type = if inline {
            meta.content_type.as_str()
        } else {
            "application/octet-stream"
        };
        let mut set = |name: header::HeaderName, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        set(header::CONTENT_TYPE, content_type.to_owned());
        set(
            header::CONTENT_DISPOSITION,
            im_files::content_disposition(inline, &meta.name),
        );
        set(
            header::CACHE_CONTROL,
            format!("private, max-age={remaining}"),
        );
        set(header::CONTENT_LENGTH, length.to_string());
        set(header::ACCEPT_RANGES, "bytes".to_owned());
        set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_owned(),
        );
        if status == StatusCode::PARTIAL_CONTENT {
            set(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", meta.size),
            );
        }
        Ok(res)
    }

    async fn post_message(&self, req: Request<RequestBody>) -> Reply {
        let answer = self.post_message_counted(req).await;
        crate::metrics::message_answered(&answer);
        answer
    }

    async fn post_message_counted(&self, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        self.limit(Limit::MessagesPerUser, Key::User(who.user.0))
            .await?;
        let draft: Draft = read_json(req, self.config.max_message_bytes).await?;
        self.publish(who.user, draft).await
    }

    /// Stores `from`'s message through its channel group, or answers a repeated
    /// `client_id` with the first message.
    pub(crate) async fn publish(&self, from: UserId, draft: Draft) -> Reply {
        if draft
            .client_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 128)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "`client_id` must be 1–128 bytes",
            ));
        }
        // A retry of a stored message gets the first answer, whatever the handlers would say now
        // (a file that expired, a friendship that ended). A `client_id` used lately is looked
        // up before anything runs; any other is new but for a rare old retry, which the writer
        // answers as a duplicate, or, if refused on the way, the lookup after the refusal.
        let cid = draft.client_id.clone();
        let known = cid
            .as_deref()
            .is_some_and(|c| self.recent.may_contain(from, c));
        if known && let Some(first) = self.first_of(from, cid.as_deref()).await? {
            return Ok(first);
        }
        match self.submit(from, draft).await {
            // Only a refusal (4xx) may hide a repeat; an overloaded server (503) is not made
            // busier by a lookup for every post it turns away.
            Err(e) if !known && (400..500).contains(&e.status) => {
                match self.first_of(from, cid.as_deref()).await? {
                    Some(first) => Ok(first),
                    None => Err(e),
                }
            }
            answer => answer,
        }
    }

    /// The exposition text, with the channel shards' queues read now.
    pub(crate) fn metrics_text(&self, metrics: &crate::metrics::Metrics) -> Response<Body> {
        for (name, group) in &self.groups {
            for (shard, depth) in group.queue_depths().into_iter().enumerate() {
                metrics::gauge!(
                    "im_queue_depth",
                    "queue" => "channel",
                    "group" => name.clone(),
                    "shard" => shard.to_string()
                )
                .set(depth as f64);
            }
        }
        bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(metrics.render()),
        )
    }

    /// The 200 answer for a repeated `client_id`, if `from` stored a message with it.
    async fn first_of(
        &self,
        from: UserId,
        cid: Option<&str>,
    ) -> Result<Option<Response<Body>>, ApiError> {
        let Some(cid) = cid else { return Ok(None) };
        Ok(self
            .history
            .by_client_id(from, cid)
            .await?
            .map(|first| message_reply(StatusCode::OK, &first)))
    }

    /// Classifies a draft and runs it through its channel group to the log.
    async fn submit(&self, from: UserId, draft: Draft) -> Reply {
        let route = self.classifier.classify(&draft.kind, &draft.body)?;
        let group = self.groups.get(route.group).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                format!("no channel group `{}`", route.group),
            )
        })?;
        let pending = Pending {
            from,
            to: draft.to,
            conversation: conversation_of(from, draft.to),
            kind: route.kind.to_owned(),
            body: draft.body,
            client_id: draft.client_id,
            sent_at: now_millis(),
        };
        // The chain decides from memory. A refusal that memory behind the log could explain
        // (the client saw an accept or an upload succeed on another node) is tried once more
        // after this node has caught up; the copy is the price of that second chance.
        let mut second = Some(pending.clone());
        let mut pending = pending;
        loop {
            let outcome = group
                .submit(pending)?
                .await
                .map_err(|_| ApiError::new(ErrorCode::Internal, "the message was not stored"))?;
            return match outcome {
                Outcome::Stored(m) => Ok(message_reply(StatusCode::CREATED, &m)),
                Outcome::Duplicate(m) => Ok(message_reply(StatusCode::OK, &m)),
                Outcome::Rejected(e) if may_be_stale(&e) && second.is_some() => {
                    if self.progress.catch_up().await.is_err() {
                        return Err(e);
                    }
                    pending = second.take().ok_or(e)?;
                    continue;
                }
                Outcome::Rejected(e) => Err(e),
                Outcome::Failed(reason) => {
                    tracing::error!(%reason, "message not stored");
                    Err(ApiError::new(
                        ErrorCode::Internal,
                        "the message was not stored",
                    ))
                }
            };
        }
    }

    /// Spends one request of `key`'s budget under `limit`, or answers 429 `rate_limited`
    /// with `Retry-After`.
    async fn limit(&self, limit: Limit, key: Key<'_>) -> Result<(), ApiError> {
        self.limiter.check(limit, key).await.map_err(|wait| {
            metrics::counter!("im_rate_limited_total", "limit" => limit.name()).increment(1);
            let secs = wait.secs();
            ApiError::new(
                ErrorCode::RateLimited,
                format!("too many requests ({}); retry in {secs} s", limit.name()),
            )
            .retry_after(u32::try_from(secs).unwrap_or(u32::MAX))
        })
    }

    /// [`App::limit`] keyed on the client's address.
    async fn limit_address(
        &self,
        limit: Limit,
        req: &Request<RequestBody>,
    ) -> Result<(), ApiError> {
        match self.client_ip(req) {
            Some(ip) => self.limit(limit, Key::Addr(ip)).await,
            None => Ok(()),
        }
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy itself, as nginx's
    /// `real_ip_recursive on` picks it (the left part of the header is the client's to forge).
    fn client_ip(&self, req: &Request<RequestBody>) -> Option<std::net::IpAddr> {
        let peer = req.extensions().get::<ClientAddr>()?.0.ip().to_canonical();
        let trusted = &self.config.rate_limits.trusted_proxies;
        if !trusted.contains(&peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !trusted.contains(&client) {
                break;
            }
        }
        Some(client)
    }

    /// The bearer token and session cookie a request carries.
    fn credentials<'r>(&self, req: &'r Request<RequestBody>) -> Credentials<'r> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        Credentials {
            bearer,
            cookie: cookie(req, SESSION_COOKIE),
        }
    }

    /// Authenticates the caller and refuses cookie-authenticated writes from other origins.
    async fn principal(&self, req: &Request<RequestBody>) -> Result<Principal, ApiError> {
        let creds = self.credentials(req);
        let bearer = creds.bearer;
        let who = self.auth.authenticate(creds).await?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "log in first: send a Bearer token or the session cookie",
            )
        })?;
        let writes = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        );
        if bearer.is_none() && writes && !self.origin_allowed(req) {
            return Err(ApiError::new(
                ErrorCode::ForeignOrigin,
                "cross-origin writes with the session cookie are refused",
            ));
        }
        Ok(who)
    }

    /// A request without `Origin` is not from a browser page; one with it must match `Host`
    /// or be listed in `allowed_origins`.
    fn origin_allowed(&self, req: &Request<RequestBody>) -> bool {
        let Some(origin) = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        else {
            return true;
        };
        if self.config.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}
