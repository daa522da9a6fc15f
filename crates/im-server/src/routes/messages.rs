//! Messages: posting (and publishing for the server API), the conversation list, history,
//! and the event stream that delivers them.

use super::App;
use crate::http::{Body, Reply, RequestBody, json, query_param, query_u64, read_json};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use im_channel::{Outcome, Pending};
use im_limits::{Key, Limit};
use im_protocol::{ApiError, Draft, ErrorCode, MessageId, UserId, conversation_of, now_millis};
use im_sse::{Resume, SessionInfo};
use serde_json::json;

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

impl App {
    /// `GET /conversations`: the caller's conversations, newest first, with unread counts.
    pub(super) async fn conversations(&self, req: Request<RequestBody>) -> Reply {
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

    /// `GET /conversations/{c}/messages`, for a party to the conversation.
    pub(super) async fn history(&self, conversation: &str, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        let users = &self.users;
        users
            .settled(|| users.check_party(who.user, conversation))
            .await?;
        self.history_page(conversation, req.uri().query()).await
    }

    /// A page of a conversation's messages: the newest `limit` (50, at most 200) before
    /// `before`, ascending.
    pub(super) async fn history_page(&self, conversation: &str, query: Option<&str>) -> Reply {
        let limit = query_u64(query, "limit")?.unwrap_or(50).clamp(1, 200) as usize;
        let before = query_u64(query, "before")?.map(MessageId);
        let messages = self.history.history(conversation, before, limit).await?;
        Ok(json(StatusCode::OK, &json!({ "messages": messages })))
    }

    pub(super) async fn events(&self, req: Request<RequestBody>) -> Reply {
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

    pub(super) async fn post_message(&self, req: Request<RequestBody>) -> Reply {
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
    pub(super) async fn publish(&self, from: UserId, draft: Draft) -> Reply {
        draft.check()?;
        // A retry of a stored message gets the first answer, whatever the handlers would say now
        // (a file that expired, a friendship that ended). A `client_id` used lately is looked
        // up before anything runs; any other is new but for a rare old retry, which the writer
        // answers as a duplicate, or, if refused on the way, the lookup after the refusal.
        let cid = draft.client_id.clone();
        let known = cid
            .as_deref()
            .is_some_and(|c| self.recent.may_contain(from, c));
        if known {
            if let Some(first) = self.first_of(from, cid.as_deref()).await? {
                return Ok(first);
            }
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
                Outcome::Failed(reason) => Err(ApiError::new(
                    ErrorCode::Internal,
                    "the message was not stored",
                )
                .caused_by(reason)),
            };
        }
    }
}
