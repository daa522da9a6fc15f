//! Ephemeral events a user makes: typing, read receipts, and whether a user is online.

use super::UserManager;
use crate::UserError;
use im_protocol::wire::{ReadEvent, TypingEvent};
use im_protocol::{MessageId, Target, UserId, conversation_of};

impl UserManager {
    /// Tells the other parties (not the typist's own sessions) that `from` is typing.
    pub fn typing(&self, from: UserId, to: Target) -> Result<(), UserError> {
        self.may_send(from, to)?;
        let conversation = conversation_of(from, to);
        let others: Vec<UserId> = self
            .parties(&conversation)
            .into_iter()
            .filter(|u| *u != from)
            .collect();
        self.emit(
            others,
            "typing",
            &TypingEvent {
                conversation,
                from,
                to,
            },
        );
        Ok(())
    }

    /// Announces a read position to every party, the reader's other sessions included.
    ///
    /// In a direct chat the other side hears it only if the chat has a message and `user`
    /// may write to them (a block either way, or the policy, stops it), as for typing: a read
    /// receipt must not reach strangers or cross a block.
    pub fn announce_read(&self, user: UserId, conversation: &str, up_to: MessageId) {
        let data = ReadEvent {
            conversation: conversation.to_owned(),
            up_to,
            user,
        };
        let mut parties = self.parties(conversation);
        if im_protocol::direct_parties(conversation).is_some() {
            parties.retain(|p| {
                *p == user || (up_to.0 > 0 && self.may_send(user, Target::User(*p)).is_ok())
            });
        }
        self.emit(parties, "read", &data);
    }

    /// Whether the user has an open event stream (or had one within the grace period).
    pub fn is_online(&self, user: UserId) -> bool {
        self.presence.is_online(user)
    }
}
