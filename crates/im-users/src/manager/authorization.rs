//! Authorization from memory, without I/O: who may write to whom (the `Authorize` handler's
//! rule) and who is a party to a conversation.

use super::UserManager;
use crate::{DirectMessages, UserError};
use im_protocol::{Target, UserId};

impl UserManager {
    /// Whether `from` may send to (or type at) `to` under the policy, blocks and membership.
    /// The system sender may send to any user or group that exists.
    pub fn may_send(&self, from: UserId, to: Target) -> Result<(), UserError> {
        let social = self.social.read();
        if self.is_system(from) {
            return match to {
                Target::User(to) if self.exists(to) => Ok(()),
                Target::User(_) => Err(UserError::NoSuchUser),
                Target::Group(g) => social.group(g).map(|_| ()),
            };
        }
        match to {
            Target::User(to) => {
                if !self.exists(to) {
                    return Err(UserError::NoSuchUser);
                }
                if to == from {
                    return Ok(());
                }
                if social.blocked_between(from, to) {
                    return Err(UserError::Blocked);
                }
                if self.config.direct_messages == DirectMessages::Friends
                    && !social.are_friends(from, to)
                {
                    return Err(UserError::NotFriends);
                }
                Ok(())
            }
            Target::Group(g) => match social.group(g)?.role_of(from) {
                Some(_) => Ok(()),
                None => Err(UserError::NotMember),
            },
        }
    }

    /// Whether `user` moderates `conversation`: an owner or admin of its group, who may
    /// delete other members' messages. Nobody moderates a direct chat.
    pub fn moderates(&self, user: UserId, conversation: &str) -> bool {
        let Some(group) = im_protocol::group_of(conversation) else {
            return false;
        };
        let social = self.social.read();
        let role = social.group(group).ok().and_then(|g| g.role_of(user));
        matches!(role, Some(crate::Role::Owner | crate::Role::Admin))
    }

    /// Whether `user` may read `conversation`'s history.
    pub fn check_party(&self, user: UserId, conversation: &str) -> Result<(), UserError> {
        self.check_access(Some(user), conversation)
    }

    /// Whether `conversation` exists and, with a `party`, whether they take part in it: the
    /// key is parsed and the graph read once for both answers.
    pub(super) fn check_access(
        &self,
        party: Option<UserId>,
        conversation: &str,
    ) -> Result<(), UserError> {
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            if !self.exists(a) || !self.exists(b) {
                return Err(UserError::NoSuchConversation);
            }
            return match party {
                Some(user) if user != a && user != b => Err(UserError::NotParticipant),
                _ => Ok(()),
            };
        }
        let group = im_protocol::group_of(conversation).ok_or(UserError::NoSuchConversation)?;
        let social = self.social.read();
        let group = social.group(group)?;
        match party {
            Some(user) if group.role_of(user).is_none() => Err(UserError::NotMember),
            _ => Ok(()),
        }
    }

    /// Everyone who takes part in `conversation` (both users, or the group's members).
    pub(super) fn parties(&self, conversation: &str) -> Vec<UserId> {
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            return if a == b { vec![a] } else { vec![a, b] };
        }
        let social = self.social.read();
        im_protocol::group_of(conversation)
            .and_then(|g| social.group(g).ok())
            .map(|g| g.member_ids().collect())
            .unwrap_or_default()
    }
}
