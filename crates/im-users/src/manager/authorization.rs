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

    /// Whether `user` may read `conversation`'s history.
    pub fn check_party(&self, user: UserId, conversation: &str) -> Result<(), UserError> {
        self.check_conversation(conversation)?;
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            return if user == a || user == b {
                Ok(())
            } else {
                Err(UserError::NotParticipant)
            };
        }
        let social = self.social.read();
        match im_protocol::group_of(conversation).map(|g| social.group(g)) {
            Some(Ok(g)) if g.role_of(user).is_some() => Ok(()),
            Some(Err(e)) => Err(e),
            _ => Err(UserError::NotMember),
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
