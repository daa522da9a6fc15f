//! The server API, `/api/v1/server/…`: what an application's backend does with API keys
//! (`[server_api] keys`): publish as the system sender, see who is online, disconnect users,
//! revoke their sessions and read any conversation. No user session ever reaches it.

use super::{App, Endpoint};
use crate::http::{
    Body, Reply, RequestBody, empty, error_response, json, query_param, query_u64, read_json,
};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use im_protocol::{ApiError, Draft, ErrorCode, UserId};
use serde_json::json;

/// The header a backend sends its key in (`Authorization: ApiKey <key>` works too).
pub(crate) const API_KEY_HEADER: &str = "x-api-key";
/// Users listed by one `GET /server/online` page unless `limit` says otherwise, and at most.
const ONLINE_PAGE: (u64, u64) = (1000, 10_000);
/// Users one `GET /server/presence` may ask about.
const PRESENCE_MAX: usize = 1000;

/// A route of the server API.
#[derive(Debug)]
pub(crate) enum ServerRoute {
    Publish,
    Online,
    Presence,
    Disconnect(UserId),
    Sessions(UserId),
    History(String),
}

/// The route and its methods for the path after `/api/v1/server/`.
pub(super) fn resolve(rest: &[&str]) -> Option<Endpoint<ServerRoute>> {
    use Method as M;
    use ServerRoute as S;
    let one = Endpoint::one;
    let user = |s: &str| super::num(s).map(UserId);
    Some(match rest {
        ["messages"] => one(M::POST, S::Publish),
        ["online"] => one(M::GET, S::Online),
        ["presence"] => one(M::GET, S::Presence),
        ["users", id, "disconnect"] => one(M::POST, S::Disconnect(user(id)?)),
        ["users", id, "sessions"] => one(M::DELETE, S::Sessions(user(id)?)),
        ["conversations", c, "messages"] if !c.is_empty() => {
            one(M::GET, S::History((*c).to_owned()))
        }
        _ => return None,
    })
}

/// The key a request presents: `X-Api-Key`, or `Authorization: ApiKey <key>`. A session
/// token (`Bearer`) or cookie is not a key, so it never counts.
fn presented_key(req: &Request<RequestBody>) -> Option<&str> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    header(API_KEY_HEADER).map(str::trim).or_else(|| {
        let auth = header(header::AUTHORIZATION.as_str())?;
        let (scheme, key) = auth.split_once(' ')?;
        scheme.eq_ignore_ascii_case("apikey").then(|| key.trim())
    })
}

impl App {
    /// Answers a server API request: the key first, then the route.
    pub(super) async fn server(&self, route: ServerRoute, req: Request<RequestBody>) -> Reply {
        if self.server_keys.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "the server API is off: set server_api.keys (IM_SERVER_API__KEYS)",
            ));
        }
        if !self.server_keys.allows(presented_key(&req)) {
            return Ok(refused());
        }
        let users = &self.users;
        match route {
            ServerRoute::Publish => {
                let answer = self.publish_as_system(req).await;
                crate::metrics::message_answered(&answer);
                answer
            }
            ServerRoute::Online => {
                let query = req.uri().query();
                let after = UserId(query_u64(query, "after")?.unwrap_or(0));
                let (default, max) = ONLINE_PAGE;
                let limit = query_u64(query, "limit")?.unwrap_or(default).clamp(1, max);
                let page = users.online_users(after, limit as usize);
                let next = (page.len() as u64 == limit).then(|| page.last().map(|u| u.id));
                Ok(json(
                    StatusCode::OK,
                    &json!({ "users": page, "next": next.flatten() }),
                ))
            }
            ServerRoute::Presence => {
                let ids = presence_query(query_param(req.uri().query(), "users"))?;
                let presence: Vec<_> = ids
                    .into_iter()
                    .map(|id| json!({"id": id, "online": users.is_online(id)}))
                    .collect();
                Ok(json(StatusCode::OK, &json!({ "presence": presence })))
            }
            ServerRoute::Disconnect(id) => {
                users.settled(|| users.disconnect(id)).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            ServerRoute::Sessions(id) => {
                users.settled(|| users.user(id)).await?;
                users.revoke_all(id).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            ServerRoute::History(conversation) => {
                users
                    .settled(|| users.check_conversation(&conversation))
                    .await?;
                // No user reads here: no reaction is the reader's own (`me` is false).
                let nobody = im_protocol::UserId(0);
                self.history_page(&conversation, req.uri().query(), nobody)
                    .await
            }
        }
    }

    /// `POST /server/messages`: a message from the system sender, through the same
    /// classifier, handlers and log as any other.
    async fn publish_as_system(&self, req: Request<RequestBody>) -> Reply {
        let draft: Draft = read_json(req, self.config.max_message_bytes).await?;
        let system = self.users.system_sender().await?;
        self.publish(system, draft).await
    }
}

/// 401 with the scheme a backend should use, not the `Bearer` of user routes.
fn refused() -> Response<Body> {
    let mut res = error_response(&ApiError::new(
        ErrorCode::Unauthorized,
        "the server API needs a key: `X-Api-Key: <key>` (a user's session is not one)",
    ));
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
    res
}

/// `users=1,2,3`: between 1 and [`PRESENCE_MAX`] user ids.
fn presence_query(raw: Option<&str>) -> Result<Vec<UserId>, ApiError> {
    let bad = |msg: String| ApiError::new(ErrorCode::InvalidRequest, msg);
    let raw = raw.filter(|r| !r.is_empty()).ok_or_else(|| {
        bad("`users` lists the user ids to check, e.g. `?users=1,2,3`".to_owned())
    })?;
    let ids = raw
        .split(',')
        .map(|s| super::num(s).map(UserId))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            bad(format!(
                "`users` must be user ids separated by commas: {raw}"
            ))
        })?;
    if ids.len() > PRESENCE_MAX {
        return Err(bad(format!(
            "at most {PRESENCE_MAX} users per request, not {}",
            ids.len()
        )));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn presence_asks_for_one_to_a_thousand_ids() {
        assert_eq!(
            presence_query(Some("1,2,3")).unwrap(),
            [UserId(1), UserId(2), UserId(3)]
        );
        for bad in [
            None,
            Some(""),
            Some("1,,2"),
            Some("x"),
            Some("+1"),
            Some("1;2"),
            Some("1, 2"),
        ] {
            assert!(presence_query(bad).is_err(), "{bad:?}");
        }
        let many = (1..=1001).map(|i| i.to_string()).collect::<Vec<_>>();
        assert!(presence_query(Some(&many[..1000].join(","))).is_ok());
        assert!(presence_query(Some(&many.join(","))).is_err());
    }

    proptest! {
        #[test]
        fn presence_query_never_panics(raw in ".{0,64}") {
            let _ = presence_query(Some(&raw));
        }

        #[test]
        fn presence_query_reads_what_it_is_given(ids in proptest::collection::vec(any::<u64>(), 1..50)) {
            let raw = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let got = presence_query(Some(&raw)).unwrap();
            prop_assert_eq!(got, ids.into_iter().map(UserId).collect::<Vec<_>>());
        }
    }
}
