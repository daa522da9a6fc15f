//! Routing: turns requests into calls on the composed parts and their answers into JSON.
//!
//! `resolve` maps a path to its [`Endpoint`], the one table of the methods the path takes and
//! the route each one is, which both dispatch and a 405's `Allow` read. The handlers live by
//! area: `accounts`, `messages` (and the event stream), `social` (friends, blocks, groups,
//! typing, read receipts), `files`, `operations` (health, readiness, metrics, the OpenAPI
//! document, the web app's files) and `server` (the server API for backends).

mod accounts;
mod files;
mod messages;
mod operations;
pub(crate) mod server;
mod social;

use crate::assets;
use crate::config::Config;
use crate::http::{Body, ClientAddr, Reply, RequestBody, cookie, error_response};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use im_channel::{ChannelGroup, MessageHistory, RecentClientIds};
use im_classifier::MessageClassifier;
use im_cluster::Progress;
use im_files::FileProxy;
use im_limits::{Key, Limit, RateLimiter};
use im_protocol::{ApiError, ErrorCode, GroupId, MessageId, UserId};
use im_sse::SseBroker;
use im_users::{Authenticator, Credentials, Principal, UserManager};
use std::collections::HashMap;
use std::sync::Arc;

/// The session cookie's name (docs/API.md).
pub(crate) const SESSION_COOKIE: &str = "im_session";

/// The composed server: everything a request may need.
pub(crate) struct App {
    pub config: Config,
    pub classifier: MessageClassifier,
    pub groups: HashMap<String, ChannelGroup>,
    pub users: Arc<UserManager>,
    pub auth: Arc<dyn Authenticator>,
    pub broker: SseBroker,
    pub history: Arc<dyn MessageHistory>,
    /// The log itself, for deletions, which skip the handler chains.
    pub log: Arc<dyn im_channel::MessageLog>,
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

/// Every route of the API, one per path and method.
enum Route {
    Asset(&'static assets::Asset),
    Health,
    Metrics,
    Ready,
    OpenApi,
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
    PostMessage,
    EditMessage(MessageId),
    DeleteMessage(MessageId),
    React(MessageId, String, bool),
    Conversations,
    History(String),
    Read(String),
    Typing,
    Friends,
    Unfriend(UserId),
    FriendRequests,
    RequestFriend,
    AnswerRequest(u64, bool),
    Blocked,
    Block,
    Unblock(UserId),
    Groups,
    CreateGroup,
    Group(GroupId),
    AddMember(GroupId),
    SetRole(GroupId, UserId),
    RemoveMember(GroupId, UserId),
    Upload,
    Download(String, String),
    Server(server::ServerRoute),
}

/// The routes of one path by method: dispatch and the `Allow` header of a 405 read this one
/// table, so a path's methods are written once. `GET` answers `HEAD` too.
pub(crate) struct Endpoint<R>([Option<(Method, R)>; 2]);

impl<R> Endpoint<R> {
    /// A path that takes one method.
    pub(crate) fn one(method: Method, route: R) -> Self {
        Self([Some((method, route)), None])
    }

    /// A path that takes two methods, in the order `Allow` lists them.
    pub(crate) fn two(first: (Method, R), second: (Method, R)) -> Self {
        Self([Some(first), Some(second)])
    }

    /// The same methods with each route wrapped, for the table of a sub-router.
    fn map<S>(self, f: impl Fn(R) -> S) -> Endpoint<S> {
        Endpoint(self.0.map(|e| e.map(|(m, r)| (m, f(r)))))
    }

    /// The route for `method` (`HEAD` as `GET`), or the methods the path takes, as `Allow`
    /// lists them.
    fn pick(self, method: &Method) -> Result<R, String> {
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        // The methods passed over are kept as they are; the `Allow` text is built only for a
        // 405, so a hit on a path's second method allocates nothing.
        let mut passed: [Option<Method>; 2] = [None, None];
        for (slot, (m, route)) in passed.iter_mut().zip(self.0.into_iter().flatten()) {
            if m == *wanted {
                return Ok(route);
            }
            *slot = Some(m);
        }
        let allowed: Vec<String> = passed
            .into_iter()
            .flatten()
            .map(|m| match m {
                Method::GET => "GET, HEAD".to_owned(),
                m => m.to_string(),
            })
            .collect();
        Err(allowed.join(", "))
    }
}

/// A numeric path segment; anything else is an unknown route.
pub(crate) fn num(s: &str) -> Option<u64> {
    s.parse().ok().filter(|_| !s.starts_with('+'))
}

fn resolve(path: &str) -> Option<Endpoint<Route>> {
    use Method as M;
    use Route as R;
    let one = Endpoint::one;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        _ if assets::find(path).is_some() => one(M::GET, R::Asset(assets::find(path)?)),
        ["healthz"] => one(M::GET, R::Health),
        ["metrics"] => one(M::GET, R::Metrics),
        ["readyz"] => one(M::GET, R::Ready),
        ["files", token, name] => one(M::GET, R::Download((*token).into(), (*name).into())),
        ["api", "v1", rest @ ..] => match rest {
            ["openapi.json"] => one(M::GET, R::OpenApi),
            ["server", rest @ ..] => server::resolve(rest)?.map(R::Server),
            ["auth", "register"] => one(M::POST, R::Register),
            ["auth", "login"] => one(M::POST, R::Login),
            ["auth", "logout"] => one(M::POST, R::Logout),
            ["auth", "session"] => one(M::GET, R::Session),
            ["auth", "sessions"] => one(M::GET, R::Sessions),
            ["auth", "sessions", id] => one(M::DELETE, R::EndSession(num(id)?)),
            ["auth", "logout-all"] => one(M::POST, R::LogoutAll),
            ["auth", "password"] => one(M::POST, R::Password),
            ["me"] => one(M::GET, R::Me),
            ["events"] => one(M::GET, R::Events),
            ["messages"] => one(M::POST, R::PostMessage),
            ["messages", id] => {
                let id = MessageId(num(id)?);
                Endpoint::two(
                    (M::PATCH, R::EditMessage(id)),
                    (M::DELETE, R::DeleteMessage(id)),
                )
            }
            ["messages", id, "reactions", emoji] if !emoji.is_empty() => {
                let id = MessageId(num(id)?);
                Endpoint::two(
                    (M::PUT, R::React(id, (*emoji).into(), true)),
                    (M::DELETE, R::React(id, (*emoji).into(), false)),
                )
            }
            ["conversations"] => one(M::GET, R::Conversations),
            ["conversations", c, "messages"] if !c.is_empty() => {
                one(M::GET, R::History((*c).into()))
            }
            ["conversations", c, "read"] if !c.is_empty() => one(M::POST, R::Read((*c).into())),
            ["typing"] => one(M::POST, R::Typing),
            ["files"] => one(M::POST, R::Upload),
            ["friends"] => one(M::GET, R::Friends),
            ["friends", "requests"] => {
                Endpoint::two((M::GET, R::FriendRequests), (M::POST, R::RequestFriend))
            }
            ["friends", "requests", id, "accept"] => one(M::POST, R::AnswerRequest(num(id)?, true)),
            ["friends", "requests", id, "decline"] => {
                one(M::POST, R::AnswerRequest(num(id)?, false))
            }
            ["friends", id] => one(M::DELETE, R::Unfriend(UserId(num(id)?))),
            ["blocks"] => Endpoint::two((M::GET, R::Blocked), (M::POST, R::Block)),
            ["blocks", id] => one(M::DELETE, R::Unblock(UserId(num(id)?))),
            ["groups"] => Endpoint::two((M::GET, R::Groups), (M::POST, R::CreateGroup)),
            ["groups", id] => one(M::GET, R::Group(GroupId(num(id)?))),
            ["groups", id, "members"] => one(M::POST, R::AddMember(GroupId(num(id)?))),
            ["groups", id, "members", user] => {
                let (group, user) = (GroupId(num(id)?), UserId(num(user)?));
                Endpoint::two(
                    (M::PUT, R::SetRole(group, user)),
                    (M::DELETE, R::RemoveMember(group, user)),
                )
            }
            _ => return None,
        },
        _ => return None,
    })
}

impl App {
    pub(crate) async fn handle(self: Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let mut res = match resolve(&path).map(|e| e.pick(&method)) {
            None => error_response(&ApiError::new(
                ErrorCode::NotFound,
                format!("no route {path}"),
            )),
            Some(Err(allowed)) => {
                let msg = format!("{path} accepts {allowed}");
                let mut res = error_response(&ApiError::new(ErrorCode::MethodNotAllowed, msg));
                if let Ok(v) = HeaderValue::from_str(&allowed) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
            Some(Ok(route)) => self
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
        match resolve(req.uri().path()).map(|e| e.pick(req.method())) {
            Some(Ok(Route::Health | Route::Ready)) => self.handle(req).await,
            _ => error_response(
                &ApiError::new(ErrorCode::Overloaded, "the server has too many connections")
                    .retry_after(5),
            ),
        }
    }

    /// Runs a resolved route in its area's handler.
    async fn route(&self, route: Route, req: Request<RequestBody>) -> Reply {
        use Route as R;
        match route {
            R::Asset(asset) => Ok(operations::asset(asset, &req)),
            R::Health | R::Ready | R::Metrics | R::OpenApi => self.operations(route, &req).await,
            R::Register
            | R::Login
            | R::Logout
            | R::Session
            | R::Sessions
            | R::EndSession(_)
            | R::LogoutAll
            | R::Password
            | R::Me => self.accounts(route, req).await,
            R::Events => self.events(req).await,
            R::PostMessage => self.post_message(req).await,
            R::EditMessage(id) => self.edit_message(id, req).await,
            R::DeleteMessage(id) => self.delete_message(id, req).await,
            R::React(id, emoji, add) => self.react(id, &emoji, add, req).await,
            R::Conversations => self.conversations(req).await,
            R::History(conversation) => self.history(&conversation, req).await,
            R::Upload => self.upload(req).await,
            R::Download(token, name) => self.download(&token, &name, req).await,
            R::Server(route) => self.server(route, req).await,
            _ => self.social(route, req).await,
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
