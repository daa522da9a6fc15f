//! Friends and blocks: requests, answers, friendships and blocks, each a change through the
//! log, with the events both sides hear.

use super::{SYSTEM_USERNAME, UserManager};
use crate::social::{FriendRequest, RequestState, SocialWrite};
use crate::{User, UserError};
use im_cluster::Logged;
use im_protocol::UserId;
use im_protocol::wire::{FriendRequestEvent, FriendRequestView, PresenceEvent};

impl UserManager {
    /// A friend request as the API shows it, with both usernames for display.
    pub fn request_view(&self, r: &FriendRequest) -> FriendRequestView {
        FriendRequestView {
            from: r.from,
            from_username: self.name_of(r.from),
            id: r.id,
            state: r.state,
            to: r.to,
            to_username: self.name_of(r.to),
        }
    }

    /// The `friend_request` event about `r`.
    fn request_event(&self, r: &FriendRequest) -> FriendRequestEvent {
        FriendRequestEvent {
            request: self.request_view(r),
        }
    }

    /// Makes a graph change durable and waits until this node's follower has applied it.
    pub(super) async fn write(&self, w: &SocialWrite) -> Result<u64, UserError> {
        let Logged { value: id, pos } = self.store.apply_social(w).await?;
        self.applied(pos).await?;
        Ok(id)
    }

    /// Asks `username` to be friends. A crossing request is accepted at once; asking again
    /// returns the pending request.
    pub async fn request_friend(
        &self,
        from: UserId,
        username: &str,
    ) -> Result<FriendRequest, UserError> {
        let to = self.settled(|| self.id_by_name(username)).await?;
        if username == SYSTEM_USERNAME {
            // The system sender is nobody's friend.
            return Err(UserError::NoSuchUser);
        }
        if to == from {
            return Err(UserError::SelfRelation);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let (existing, crossing) = {
            let social = self.social.read();
            if social.blocked_between(from, to) {
                return Err(UserError::Blocked);
            }
            if social.are_friends(from, to) {
                return Err(UserError::AlreadyFriends);
            }
            let mine = social
                .pending
                .values()
                .find(|r| r.from == from && r.to == to)
                .copied();
            let theirs: Vec<u64> = social
                .pending
                .values()
                .filter(|r| r.from == to && r.to == from)
                .map(|r| r.id)
                .collect();
            (mine, theirs)
        };
        if let Some(r) = existing {
            return Ok(r);
        }
        if crossing.is_empty() {
            let id = self.write(&SocialWrite::Request { from, to }).await?;
            let r = FriendRequest {
                id,
                from,
                to,
                state: RequestState::Pending,
            };
            self.emit([to], "friend_request", &self.request_event(&r));
            return Ok(r);
        }
        let w = SocialWrite::Answer {
            requests: crossing,
            state: RequestState::Accepted,
            friends: Some((from, to)),
            new_request: Some((from, to)),
        };
        let id = self.write(&w).await?;
        let r = FriendRequest {
            id,
            from,
            to,
            state: RequestState::Accepted,
        };
        self.befriended(&r);
        Ok(r)
    }

    /// Both sides learn of a new friendship, and each other's presence.
    pub(super) fn befriended(&self, r: &FriendRequest) {
        self.emit([r.from, r.to], "friend_request", &self.request_event(r));
        for (a, b) in [(r.from, r.to), (r.to, r.from)] {
            self.emit(
                [b],
                "presence",
                &PresenceEvent {
                    online: self.is_online(a),
                    user: a,
                },
            );
        }
    }

    /// Accepts or declines a request; only its addressee may.
    pub async fn answer_request(
        &self,
        user: UserId,
        id: u64,
        accept: bool,
    ) -> Result<FriendRequest, UserError> {
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let pending = self.social.read().pending.get(&id).copied();
        let Some(mut r) = pending else {
            return match self.store.friend_request(id).await? {
                Some(r) if r.to == user => Err(UserError::RequestAnswered),
                Some(r) if r.from == user => Err(UserError::NotAddressee),
                _ => Err(UserError::NoSuchRequest),
            };
        };
        if r.to != user {
            return Err(if r.from == user {
                UserError::NotAddressee
            } else {
                UserError::NoSuchRequest
            });
        }
        r.state = if accept {
            RequestState::Accepted
        } else {
            RequestState::Declined
        };
        let w = SocialWrite::Answer {
            requests: vec![id],
            state: r.state,
            friends: accept.then_some((r.from, r.to)),
            new_request: None,
        };
        self.write(&w).await?;
        if accept {
            self.befriended(&r);
        } else {
            self.emit([r.from], "friend_request", &self.request_event(&r));
        }
        Ok(r)
    }

    /// Pending requests to and from `user`.
    pub fn requests(&self, user: UserId) -> (Vec<FriendRequest>, Vec<FriendRequest>) {
        let social = self.social.read();
        let incoming = social
            .pending
            .values()
            .filter(|r| r.to == user)
            .copied()
            .collect();
        let outgoing = social
            .pending
            .values()
            .filter(|r| r.from == user)
            .copied()
            .collect();
        (incoming, outgoing)
    }

    /// Friends with their usernames, by id.
    pub fn friends(&self, user: UserId) -> Vec<User> {
        let ids = self.social.read().friends_of(user);
        ids.into_iter()
            .map(|id| User {
                id,
                username: self.name_of(id),
            })
            .collect()
    }

    /// Ends a friendship (a no-op if there is none).
    pub async fn unfriend(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        if self.social.read().are_friends(user, other) {
            self.write(&SocialWrite::Unfriend(user, other)).await?;
        }
        Ok(())
    }

    /// Blocks `other`: no messages or requests either way; ends a friendship.
    pub async fn block(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        if user == other {
            return Err(UserError::SelfRelation);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let requests = {
            let social = self.social.read();
            if social.has_blocked(user, other) {
                return Ok(());
            }
            social.pending_between(user, other)
        };
        self.write(&SocialWrite::Block {
            blocker: user,
            blocked: other,
            requests,
        })
        .await?;
        Ok(())
    }

    /// Lifts a block (a no-op if there is none).
    pub async fn unblock(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        if self.social.read().has_blocked(user, other) {
            self.write(&SocialWrite::Unblock {
                blocker: user,
                blocked: other,
            })
            .await?;
        }
        Ok(())
    }

    /// The users `user` has blocked.
    pub fn blocked(&self, user: UserId) -> Vec<User> {
        let ids = self.social.read().blocked_by(user);
        ids.into_iter()
            .map(|id| User {
                id,
                username: self.name_of(id),
            })
            .collect()
    }
}
