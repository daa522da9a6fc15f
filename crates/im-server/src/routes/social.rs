//! The social graph and the small events around it: friends, friend requests, blocks,
//! groups and their members, typing and read receipts.

use super::{App, Route};
use crate::http::{Reply, RequestBody, empty, json, read_json};
use http::{Method, Request, StatusCode};
use im_protocol::{ApiError, ErrorCode, MessageId, Target, UserId};
use im_users::Role;
use serde::Deserialize;
use serde_json::json;

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

impl App {
    /// Friends, blocks, groups, typing and read receipts.
    pub(super) async fn social(&self, route: Route, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?.user;
        let users = &self.users;
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
            Route::Unfriend(other) => {
                users.unfriend(who, other).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::FriendRequests => {
                let (incoming, outgoing) = users.requests(who);
                let list = |v: Vec<_>| v.iter().map(|r| users.request_view(r)).collect::<Vec<_>>();
                Ok(json(
                    StatusCode::OK,
                    &json!({"incoming": list(incoming), "outgoing": list(outgoing)}),
                ))
            }
            Route::RequestFriend => {
                let body: FriendRequestBody = read_json(req, limit).await?;
                let r = users.request_friend(who, &body.username).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &json!({ "request": users.request_view(&r) }),
                ))
            }
            Route::AnswerRequest(id, accept) => {
                let r = users.answer_request(who, id, accept).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "request": users.request_view(&r) }),
                ))
            }
            Route::Blocked => Ok(json(
                StatusCode::OK,
                &json!({ "blocked": users.blocked(who) }),
            )),
            Route::Block => {
                let body: UserIdBody = read_json(req, limit).await?;
                users.block(who, body.user_id).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Unblock(other) => {
                users.unblock(who, other).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Groups => {
                let groups: Vec<_> = users
                    .groups(who)
                    .iter()
                    .map(|g| users.group_view(g))
                    .collect();
                Ok(json(StatusCode::OK, &json!({ "groups": groups })))
            }
            Route::CreateGroup => {
                let body: NewGroupBody = read_json(req, limit).await?;
                let g = users.create_group(who, &body.name, &body.members).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &json!({ "group": users.group_view(&g) }),
                ))
            }
            Route::Group(id) => {
                let g = users.settled(|| users.group(who, id)).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_view(&g) }),
                ))
            }
            Route::AddMember(id) => {
                let body: UserIdBody = read_json(req, limit).await?;
                let g = users.add_member(who, id, body.user_id).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_view(&g) }),
                ))
            }
            Route::SetRole(id, user) => {
                let body: RoleBody = read_json(req, limit).await?;
                let g = users.set_role(who, id, user, body.role).await?;
                Ok(json(
                    StatusCode::OK,
                    &json!({ "group": users.group_view(&g) }),
                ))
            }
            Route::RemoveMember(id, user) => {
                users.remove_member(who, id, user).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }
}
