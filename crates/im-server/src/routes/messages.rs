//! Messages: posting (and publishing for the server API), the conversation list, history,
//! and the event stream that delivers them.

use super::App;
use crate::http::{Body, Reply, RequestBody, json, query_param, query_u64, read_json};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use im_channel::{Amendment, Change, Outcome, Pending};
use im_limits::{Key, Limit};
use im_protocol::{
    Amend, ApiError, Draft, ErrorCode, Message, MessageId, Reaction, UserId, conversation_of,
    now_millis,
};
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
        self.history_page(conversation, req.uri().query(), who.user)
            .await
    }

    /// A page of a conversation's messages: the newest `limit` (50, at most 200) before
    /// `before`, ascending.
    /// Each message comes as it now is, with its reactions as `reader` sees them.
    pub(super) async fn history_page(
        &self,
        conversation: &str,
        query: Option<&str>,
        reader: UserId,
    ) -> Reply {
        let limit = query_u64(query, "limit")?.unwrap_or(50).clamp(1, 200) as usize;
        let before = query_u64(query, "before")?.map(MessageId);
        let mut messages = self.history.history(conversation, before, limit).await?;
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let mut reactions = self.history.reactions(&ids, reader).await?.into_iter();
        let mut next = reactions.next();
        // Both are in id order: one walk attaches each message's reactions.
        for m in &mut messages {
            while let Some((id, r)) = next.take() {
                if id == m.id {
                    m.reactions.push(r);
                    next = reactions.next();
                } else {
                    next = Some((id, r));
                    break;
                }
            }
        }
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
        let pending = Pending {
            from,
            to: draft.to,
            conversation: conversation_of(from, draft.to),
            kind: route.kind.to_owned(),
            body: draft.body,
            client_id: draft.client_id,
            sent_at: now_millis(),
            reply_to: draft.reply_to,
            amend: None,
        };
        self.run_chain(route.group, pending).await
    }

    /// Runs a pending message (or edit) through channel group `group` to the log, and
    /// answers with its one outcome.
    async fn run_chain(&self, group: &str, pending: Pending) -> Reply {
        let group = self.groups.get(group).ok_or_else(|| {
            ApiError::new(ErrorCode::Internal, format!("no channel group `{group}`"))
        })?;
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
                Outcome::Rejected(e) if may_be_stale(&e) && second.is_some() => {
                    if self.progress.catch_up().await.is_err() {
                        return Err(e);
                    }
                    pending = second.take().ok_or(e)?;
                    continue;
                }
                outcome => answer(outcome),
            };
        }
    }

    /// The message `id` if `user` may read its conversation now; else 404, whether or not
    /// it exists, so ids of other people's chats tell nothing.
    async fn readable_message(&self, user: UserId, id: MessageId) -> Result<Message, ApiError> {
        let missing = || ApiError::new(ErrorCode::NoSuchMessage, "no such message");
        let message = self.history.message(id).await?.ok_or_else(missing)?;
        let users = &self.users;
        users
            .settled(|| users.check_party(user, &message.conversation))
            .await
            .map_err(|_| missing())?;
        Ok(message)
    }

    /// `PATCH /messages/{id}`: the sender replaces the body of a text message. The new body
    /// goes through the message's channel chain like a new message, so the application's
    /// filters see edits too; the log checks the rest against the message as stored.
    pub(super) async fn edit_message(&self, id: MessageId, req: Request<RequestBody>) -> Reply {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Edit {
            body: serde_json::Value,
        }
        let who = self.principal(&req).await?;
        self.limit(Limit::MessagesPerUser, Key::User(who.user.0))
            .await?;
        let edit: Edit = read_json(req, self.config.max_message_bytes).await?;
        let target = self.readable_message(who.user, id).await?;
        if target.kind != "text" {
            return Err(ApiError::new(
                ErrorCode::NotEditable,
                "only text messages can be edited",
            ));
        }
        let route = self.classifier.classify(&target.kind, &edit.body)?;
        let window = self.config.edit_window_secs;
        let pending = amendment(
            who.user,
            target,
            edit.body,
            Amendment {
                edit_window_ms: (window > 0).then(|| window.saturating_mul(1000)),
                ..Amendment::new(id, Change::Edit)
            },
        );
        self.run_chain(route.group, pending).await
    }

    /// `DELETE /messages/{id}`: the sender, or an owner or admin of the message's group,
    /// deletes it. No handler runs (there is no content to judge), and a user may delete
    /// their own message even where they may no longer write, e.g. after a block.
    pub(super) async fn delete_message(&self, id: MessageId, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        self.limit(Limit::MessagesPerUser, Key::User(who.user.0))
            .await?;
        let target = self.readable_message(who.user, id).await?;
        let moderator = self.users.moderates(who.user, &target.conversation);
        let pending = amendment(
            who.user,
            target,
            serde_json::Value::Null,
            Amendment {
                moderator,
                ..Amendment::new(id, Change::Delete)
            },
        );
        let outcome = self.append_directly(pending).await?;
        answer(outcome)
    }

    /// `PUT` (`add`) or `DELETE /messages/{id}/reactions/{emoji}`: the caller's reaction
    /// with `emoji`, one per emoji per user, on a message they can read. No handler runs.
    pub(super) async fn react(
        &self,
        id: MessageId,
        emoji: &str,
        add: bool,
        req: Request<RequestBody>,
    ) -> Reply {
        let who = self.principal(&req).await?;
        self.limit(Limit::MessagesPerUser, Key::User(who.user.0))
            .await?;
        let emoji = percent_encoding::percent_decode_str(emoji)
            .decode_utf8()
            .ok()
            .filter(|e| Reaction::valid_emoji(e))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a reaction is one emoji: 1–{} bytes, no letters, digits or spaces",
                        Reaction::MAX_BYTES
                    ),
                )
            })?
            .into_owned();
        let target = self.readable_message(who.user, id).await?;
        let pending = amendment(
            who.user,
            target,
            serde_json::Value::Null,
            Amendment::new(id, Change::React { emoji, add }),
        );
        let outcome = self.append_directly(pending).await?;
        answer(outcome)
    }

    /// Hands a pending amendment to the log without a handler chain. The log's append may
    /// block while its writer is saturated (its backpressure), so it runs where blocking is
    /// allowed.
    async fn append_directly(&self, pending: Pending) -> Result<Outcome, ApiError> {
        let (reply, outcome) = im_channel::Reply::channel();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.append(pending, reply));
        outcome
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the change was not stored"))
    }
}

/// The answer to a write's one outcome: a new message is 201 `{"message": M}`; a repeat, and
/// an edit or deletion (`{"message": M}` with M as it now is), are 200, and so is a reaction
/// (`{"reaction": {...}}`, the `reaction` event's data).
fn answer(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Stored(m) | Outcome::Duplicate(m) if m.amends.is_some() => {
            // An edit or deletion answers the message as it now is; a reaction, itself.
            let key = if m.kind == Amend::Reaction.kind() {
                "reaction"
            } else {
                "message"
            };
            Ok(json(StatusCode::OK, &json!({ key: m.body })))
        }
        Outcome::Stored(m) => Ok(message_reply(StatusCode::CREATED, &m)),
        Outcome::Duplicate(m) => Ok(message_reply(StatusCode::OK, &m)),
        Outcome::Rejected(e) => Err(e),
        Outcome::Failed(reason) => {
            Err(ApiError::new(ErrorCode::Internal, "the message was not stored").caused_by(reason))
        }
    }
}

/// The pending amendment by `by` of `target` (the message as just read), with `body` (an
/// edit's new body; nothing for the others).
fn amendment(by: UserId, target: Message, body: serde_json::Value, how: Amendment) -> Pending {
    Pending {
        from: by,
        to: target.to,
        conversation: target.conversation,
        kind: target.kind,
        body,
        client_id: None,
        sent_at: now_millis(),
        reply_to: None,
        amend: Some(Box::new(how)),
    }
}
