//! What an application's backend may do to users through the server API: publish as the
//! system sender, see who is online, end a user's streams or sessions on every node, and
//! read any conversation.

use super::UserManager;
use crate::{User, UserError};
use im_cluster::{Logged, Signal};
use im_protocol::UserId;

/// The username of the system sender. Registration allows only `a-z 0-9 _ . -`, so no person
/// can hold it, and its password hash is not a hash, so nobody can log in as it.
pub const SYSTEM_USERNAME: &str = "System";

/// Stored as the system sender's password hash: no password verifies against it.
const NO_PASSWORD: &str = "!";

impl UserManager {
    /// The system sender's id, creating the account on first use. Nodes racing to create
    /// it agree: the loser finds the winner's account.
    pub async fn system_sender(&self) -> Result<UserId, UserError> {
        if let Some(id) = self.system.get() {
            return Ok(*id);
        }
        let id = match self.id_by_name(SYSTEM_USERNAME) {
            Ok(id) => id,
            Err(_) => match self.store.create_user(SYSTEM_USERNAME, NO_PASSWORD).await {
                Ok(Logged { value, pos }) => {
                    self.applied(pos).await?;
                    value.id
                }
                Err(crate::UserStoreError::UsernameTaken) => {
                    self.settled(|| self.id_by_name(SYSTEM_USERNAME)).await?
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(*self.system.get_or_init(|| id))
    }

    /// Whether `user` is the system sender (as far as this node has used it).
    pub(crate) fn is_system(&self, user: UserId) -> bool {
        self.system.get() == Some(&user)
    }

    /// Users online on any node, by ascending id: at most `limit` of those above `after`.
    pub fn online_users(&self, after: UserId, limit: usize) -> Vec<User> {
        let mut ids: Vec<UserId> = self
            .presence
            .online()
            .into_iter()
            .filter(|u| *u > after)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        let dir = self.directory.read();
        ids.into_iter()
            .filter_map(|id| {
                let username = dir.names.get(&id)?.clone();
                Some(User { id, username })
            })
            .collect()
    }

    /// Ends every event stream of `user`, on this node and (over the bus, at most once, like
    /// presence) on the others. The clients reconnect unless their sessions are revoked.
    pub fn disconnect(&self, user: UserId) -> Result<(), UserError> {
        if !self.exists(user) {
            return Err(UserError::NoSuchUser);
        }
        self.disconnect_here(&[user]);
        if let Some(link) = self.link.get() {
            link.send(&Signal::Disconnect(vec![user]));
        }
        Ok(())
    }

    /// Another node's disconnect: ends these users' streams on this node.
    pub fn disconnect_here(&self, users: &[UserId]) {
        if let Some(hook) = self.on_revoke.get() {
            users.iter().for_each(|&u| hook(u, None));
        }
    }

    /// Revokes every session of `user` on every node, through the log as a logout does;
    /// returns once this node has applied it.
    pub async fn revoke_all(&self, user: UserId) -> Result<(), UserError> {
        if !self.exists(user) {
            return Err(UserError::NoSuchUser);
        }
        let Logged { pos, .. } = self.store.revoke_sessions(user, None).await?;
        self.applied(pos).await
    }

    /// Whether `conversation` names a conversation that exists (for reads that no party
    /// makes).
    pub fn check_conversation(&self, conversation: &str) -> Result<(), UserError> {
        self.check_access(None, conversation)
    }
}
