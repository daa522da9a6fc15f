//! The manager's rules, decided from memory, checked on a fixed graph: who may write to whom,
//! who is a party to a conversation, who receives a message, and what the lists show. The
//! store only answers the start-up reads; a rule that reached for it would fail here.

use super::{SYSTEM_USERNAME, UserManager, UsersConfig};
use crate::social::{FriendRequest, Group, Role, SocialSnapshot, SocialWrite};
use crate::{
    DirectMessages, HashParams, Principal, SessionRecord, SessionTimes, User, UserError, UserStore,
    UserStoreError,
};
use async_trait::async_trait;
use im_cluster::{Logged, Position};
use im_protocol::delivery::Recipients;
use im_protocol::{GroupId, Message, MessageId, Target, UserId, conversation_of};
use std::sync::Arc;

const ANN: UserId = UserId(1);
const BOB: UserId = UserId(2);
const CAROL: UserId = UserId(3);
const DAN: UserId = UserId(4);
const SYSTEM: UserId = UserId(5);
const TEAM: GroupId = GroupId(10);

/// Ann and Bob are friends, Carol blocked Ann, Dan knows nobody; Ann owns the team, Bob is a
/// member. A `System` account exists, as after the server API's first publish.
struct Snapshot;

fn refuse<T>() -> Result<T, UserStoreError> {
    Err(UserStoreError::Other(
        "the rules must not touch the store".into(),
    ))
}

#[async_trait]
impl UserStore for Snapshot {
    async fn create_user(&self, _: &str, _: &str) -> Result<Logged<User>, UserStoreError> {
        refuse()
    }
    async fn login_record(&self, _: &str) -> Result<Option<(User, String)>, UserStoreError> {
        refuse()
    }
    async fn user(&self, _: UserId) -> Result<Option<User>, UserStoreError> {
        refuse()
    }
    async fn all_users(&self) -> Result<Vec<User>, UserStoreError> {
        let names = [
            (ANN, "ann"),
            (BOB, "bob"),
            (CAROL, "carol"),
            (DAN, "dan"),
            (SYSTEM, SYSTEM_USERNAME),
        ];
        Ok(names
            .into_iter()
            .map(|(id, name)| User {
                id,
                username: name.into(),
            })
            .collect())
    }
    async fn load_social(&self) -> Result<SocialSnapshot, UserStoreError> {
        Ok(SocialSnapshot {
            friendships: vec![(ANN, BOB)],
            blocks: vec![(CAROL, ANN)],
            pending: Vec::<FriendRequest>::new(),
            groups: vec![Group {
                id: TEAM,
                name: "team".into(),
                members: vec![(ANN, Role::Owner), (BOB, Role::Member)],
            }],
        })
    }
    async fn apply_social(&self, _: &SocialWrite) -> Result<Logged<u64>, UserStoreError> {
        refuse()
    }
    async fn friend_request(&self, _: u64) -> Result<Option<FriendRequest>, UserStoreError> {
        refuse()
    }
    async fn create_session(&self, _: UserId, _: [u8; 32], _: &str) -> Result<u64, UserStoreError> {
        refuse()
    }
    async fn session(
        &self,
        _: [u8; 32],
    ) -> Result<Option<(Principal, SessionTimes, Position)>, UserStoreError> {
        refuse()
    }
    async fn sessions_of(&self, _: UserId) -> Result<Vec<SessionRecord>, UserStoreError> {
        refuse()
    }
    async fn touch_sessions(&self, _: &[(u64, u64)]) -> Result<(), UserStoreError> {
        Ok(())
    }
    async fn delete_session(&self, _: u64) -> Result<Logged<()>, UserStoreError> {
        refuse()
    }
    async fn revoke_sessions(
        &self,
        _: UserId,
        _: Option<u64>,
    ) -> Result<Logged<usize>, UserStoreError> {
        refuse()
    }
    async fn set_password(
        &self,
        _: UserId,
        _: &str,
        _: u64,
    ) -> Result<Logged<usize>, UserStoreError> {
        refuse()
    }
    async fn expire_sessions(
        &self,
        _: u64,
        _: u64,
        _: usize,
    ) -> Result<Logged<usize>, UserStoreError> {
        refuse()
    }
}

async fn manager(direct_messages: DirectMessages) -> Arc<UserManager> {
    let config = UsersConfig {
        hash: HashParams {
            memory_kib: 8,
            iterations: 1,
            concurrency: 1,
            ..HashParams::default()
        },
        direct_messages,
        ..UsersConfig::default()
    };
    UserManager::new(Arc::new(Snapshot), config).await.unwrap()
}

#[tokio::test]
async fn friends_may_write_to_each_other_and_strangers_may_not() {
    let users = manager(DirectMessages::Friends).await;
    assert_eq!(users.may_send(ANN, Target::User(BOB)), Ok(()));
    assert_eq!(users.may_send(BOB, Target::User(ANN)), Ok(()));
    assert_eq!(
        users.may_send(ANN, Target::User(ANN)),
        Ok(()),
        "a note to self"
    );
    assert_eq!(
        users.may_send(DAN, Target::User(ANN)),
        Err(UserError::NotFriends)
    );
    assert_eq!(
        users.may_send(ANN, Target::User(UserId(99))),
        Err(UserError::NoSuchUser)
    );
}

#[tokio::test]
async fn a_block_stops_both_directions_whatever_the_policy() {
    for policy in [DirectMessages::Friends, DirectMessages::Anyone] {
        let users = manager(policy).await;
        assert_eq!(
            users.may_send(ANN, Target::User(CAROL)),
            Err(UserError::Blocked)
        );
        assert_eq!(
            users.may_send(CAROL, Target::User(ANN)),
            Err(UserError::Blocked)
        );
    }
    let open = manager(DirectMessages::Anyone).await;
    assert_eq!(open.may_send(DAN, Target::User(ANN)), Ok(()));
}

#[tokio::test]
async fn only_members_write_to_a_group() {
    let users = manager(DirectMessages::Friends).await;
    assert_eq!(users.may_send(BOB, Target::Group(TEAM)), Ok(()));
    assert_eq!(
        users.may_send(DAN, Target::Group(TEAM)),
        Err(UserError::NotMember)
    );
    assert_eq!(
        users.may_send(ANN, Target::Group(GroupId(99))),
        Err(UserError::NoSuchGroup)
    );
}

#[tokio::test]
async fn the_system_sender_writes_to_anyone_and_any_group_that_exists() {
    let users = manager(DirectMessages::Friends).await;
    // Until this node has used it, the System account is an ordinary stranger.
    assert_eq!(
        users.may_send(SYSTEM, Target::User(DAN)),
        Err(UserError::NotFriends)
    );
    assert_eq!(
        users.system_sender().await,
        Ok(SYSTEM),
        "found, not created"
    );
    for to in [ANN, BOB, CAROL, DAN] {
        assert_eq!(users.may_send(SYSTEM, Target::User(to)), Ok(()));
    }
    assert_eq!(users.may_send(SYSTEM, Target::Group(TEAM)), Ok(()));
    assert_eq!(
        users.may_send(SYSTEM, Target::User(UserId(99))),
        Err(UserError::NoSuchUser)
    );
    assert_eq!(
        users.may_send(SYSTEM, Target::Group(GroupId(99))),
        Err(UserError::NoSuchGroup)
    );
}

#[tokio::test]
async fn parties_of_conversations() {
    let users = manager(DirectMessages::Friends).await;
    let direct = conversation_of(ANN, Target::User(BOB));
    let team = conversation_of(ANN, Target::Group(TEAM));
    assert_eq!(users.check_party(BOB, &direct), Ok(()));
    assert_eq!(
        users.check_party(DAN, &direct),
        Err(UserError::NotParticipant)
    );
    assert_eq!(users.check_party(BOB, &team), Ok(()));
    assert_eq!(users.check_party(DAN, &team), Err(UserError::NotMember));
    for missing in ["d1-99", "g99", "x", ""] {
        assert!(users.check_party(ANN, missing).is_err(), "{missing}");
        assert!(users.check_conversation(missing).is_err(), "{missing}");
    }
    assert_eq!(users.check_conversation(&direct), Ok(()));
    assert_eq!(users.check_conversation(&team), Ok(()));
}

#[tokio::test]
async fn a_message_reaches_the_sender_and_every_recipient() {
    let users = manager(DirectMessages::Friends).await;
    let message = |from: UserId, to: Target| Message {
        id: MessageId(1),
        conversation: conversation_of(from, to),
        from,
        to,
        kind: "text".into(),
        body: serde_json::Value::Null,
        client_id: None,
        sent_at: 0,
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        amends: None,
    };
    let mut out = Vec::new();
    users.recipients(&message(ANN, Target::User(BOB)), &mut out);
    assert_eq!(out, [ANN, BOB]);
    out.clear();
    users.recipients(&message(SYSTEM, Target::Group(TEAM)), &mut out);
    assert_eq!(out, [SYSTEM, ANN, BOB]);
}

#[tokio::test]
async fn the_lists_show_the_graph() {
    let users = manager(DirectMessages::Friends).await;
    let names = |list: Vec<User>| list.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(names(users.friends(ANN)), ["bob"]);
    assert_eq!(names(users.blocked(CAROL)), ["ann"]);
    assert!(users.blocked(ANN).is_empty());
    assert_eq!(users.groups(BOB).len(), 1);
    assert!(users.groups(DAN).is_empty());
    assert_eq!(
        users.group(DAN, TEAM).map(|g| g.id),
        Err(UserError::NotMember)
    );
    assert_eq!(users.user(DAN).map(|u| u.username), Ok("dan".into()));
}
