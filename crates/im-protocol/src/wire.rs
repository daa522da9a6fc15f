//! The JSON that browsers get besides messages, as typed structs: users, the answers about friend
//! requests, groups and sessions, and the payloads of ephemeral events. Fields are declared in
//! alphabetical order, the order the server has always written them in.

use crate::{GroupId, MessageId, Target, UserId};
use serde::{Deserialize, Serialize};

/// State of a friend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for the addressee.
    Pending,
    /// Accepted: the two are friends.
    Accepted,
    /// Declined, or cancelled by a block.
    Declined,
}

impl RequestState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Accepted => "accepted",
            RequestState::Declined => "declined",
        }
    }
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the group or inherited it; exactly one per group.
    Owner,
    /// May add and remove members.
    Admin,
    /// May post and read.
    Member,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Owners and admins manage membership.
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The account id.
    pub id: UserId,
    /// The unique login name.
    pub username: String,
}

/// An uploaded file as the API shows it (`POST /api/v1/files` answers `{"file": F}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    /// The type sniffed from its bytes.
    pub content_type: String,
    /// When its link stops working (Unix ms).
    pub expires_at: u64,
    /// The id a message names it by.
    pub id: u64,
    /// Its sanitized name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its link: `/files/<token>/<name>`.
    pub url: String,
}

/// The body of an `image` or `file` message once the server filled it from the file's
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The type sniffed from its bytes.
    pub content_type: String,
    /// The file's id.
    pub file_id: u64,
    /// Its sanitized name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its link.
    pub url: String,
}

/// A friend request as the API shows it (`R` in docs/API.md), with both usernames for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequestView {
    /// Who asked.
    pub from: UserId,
    /// Their username.
    pub from_username: String,
    /// Request id.
    pub id: u64,
    /// Where it stands.
    pub state: RequestState,
    /// Who is asked.
    pub to: UserId,
    /// Their username.
    pub to_username: String,
}

/// A member of a group, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member.
    pub id: UserId,
    /// Their role.
    pub role: Role,
    /// Their username.
    pub username: String,
}

/// A group as the API shows it (`G` in docs/API.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// Group id.
    pub id: GroupId,
    /// Members, longest-standing first.
    pub members: Vec<MemberView>,
    /// Display name.
    pub name: String,
    /// The owner (none only for a group being deleted).
    pub owner: Option<UserId>,
}

/// One of the caller's login sessions (`GET /auth/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Login time, Unix ms.
    pub created_at: u64,
    /// Whether it is the session of the request that asked.
    pub current: bool,
    /// When it expires unless used, Unix ms; none when sessions never expire.
    pub expires_at: Option<u64>,
    /// Session id, for `DELETE /auth/sessions/{id}`.
    pub id: u64,
    /// The last recorded use, Unix ms (recorded about once a minute).
    pub last_seen_at: u64,
    /// The client's `User-Agent` at login, shortened.
    pub user_agent: String,
}

/// `event: presence`: a friend came online or went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// Online on some node now.
    pub online: bool,
    /// The friend.
    pub user: UserId,
}

/// `event: typing`: someone is typing in a conversation the recipient is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingEvent {
    /// The conversation key.
    pub conversation: String,
    /// Who is typing.
    pub from: UserId,
    /// Where to.
    pub to: Target,
}

/// `event: read`: a party read a conversation up to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadEvent {
    /// The conversation key.
    pub conversation: String,
    /// Read up to and including this message.
    pub up_to: MessageId,
    /// Who read.
    pub user: UserId,
}

/// `event: friend_request`: a request to or from the recipient was made or answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequestEvent {
    /// The request as it stands now.
    pub request: FriendRequestView,
}

/// What happened to a group, in `event: group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    /// The group was made.
    Created,
    /// A member was added (`user`).
    MemberAdded,
    /// A member left or was removed (`user`).
    MemberRemoved,
    /// A member's role changed (`user`).
    RoleChanged,
    /// The group is gone.
    Deleted,
}

/// `event: group`: a group the recipient is (or was) in changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEvent {
    /// What happened.
    pub change: GroupChange,
    /// The group after it.
    pub group: GroupView,
    /// Who it happened to (or who did it, for `created` and `deleted`).
    pub user: UserId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn payloads_are_written_as_clients_have_always_read_them() {
        let presence = PresenceEvent {
            online: true,
            user: UserId(2),
        };
        assert_eq!(
            serde_json::to_string(&presence).unwrap(),
            r#"{"online":true,"user":2}"#
        );
        let group = GroupEvent {
            change: GroupChange::MemberAdded,
            group: GroupView {
                id: GroupId(7),
                members: vec![MemberView {
                    id: UserId(1),
                    role: Role::Owner,
                    username: "ann".into(),
                }],
                name: "team".into(),
                owner: Some(UserId(1)),
            },
            user: UserId(3),
        };
        assert_eq!(
            serde_json::to_string(&group).unwrap(),
            r#"{"change":"member_added","group":{"id":7,"members":[{"id":1,"role":"owner","username":"ann"}],"name":"team","owner":1},"user":3}"#
        );
        let typing = TypingEvent {
            conversation: "d1-2".into(),
            from: UserId(1),
            to: Target::User(UserId(2)),
        };
        assert_eq!(
            serde_json::to_string(&typing).unwrap(),
            r#"{"conversation":"d1-2","from":1,"to":{"user":2}}"#
        );
    }

    proptest! {
        #[test]
        fn requests_and_sessions_roundtrip(
            id in any::<u64>(),
            from in any::<u64>(),
            name in "[a-z0-9_.-]{3,32}",
            agent in ".{0,40}",
            expires in proptest::option::of(any::<u64>()),
        ) {
            let request = FriendRequestEvent { request: FriendRequestView {
                from: UserId(from),
                from_username: name.clone(),
                id,
                state: RequestState::Declined,
                to: UserId(id),
                to_username: name,
            }};
            let text = serde_json::to_string(&request).unwrap();
            prop_assert_eq!(serde_json::from_str::<FriendRequestEvent>(&text).unwrap(), request);
            let session = SessionView {
                created_at: id,
                current: from % 2 == 0,
                expires_at: expires,
                id,
                last_seen_at: from,
                user_agent: agent,
            };
            let text = serde_json::to_string(&session).unwrap();
            prop_assert_eq!(serde_json::from_str::<SessionView>(&text).unwrap(), session);
        }
    }
}
