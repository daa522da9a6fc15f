use crate::UserManager;
use im_channel::{Handler, Pending};
use im_protocol::ApiError;
use serde::Deserialize;
use std::sync::Arc;

/// Who may send a direct message to whom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectMessages {
    /// Any user may message any other (blocks still apply).
    Anyone,
    /// Only friends may message each other.
    #[default]
    Friends,
}

/// The built-in authorization step of every channel: the recipient must exist, nobody may
/// be blocked, the direct-message policy must allow it, and group senders must be members.
pub struct Authorize {
    users: Arc<UserManager>,
}

impl Authorize {
    /// The handler, consulting `users`' in-memory graph (it must not block).
    pub fn new(users: Arc<UserManager>) -> Self {
        Self { users }
    }
}

impl Handler for Authorize {
    fn name(&self) -> &str {
        "authorize"
    }

    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError> {
        Ok(self.users.may_send(msg.from, msg.to)?)
    }
}
