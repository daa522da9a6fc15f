use crate::UserManager;
use im_channel::{Handler, Pending};
use im_protocol::{ApiError, ErrorCode, Target};
use serde::Deserialize;
use std::sync::Arc;

/// Who may send a direct message to whom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectMessages {
    /// Any user may message any other.
    #[default]
    Anyone,
    /// Only friends may message each other (friendships arrive with the social features).
    Friends,
}

/// The built-in authorization step of the chat channel: the recipient must exist and the
/// direct-message policy must allow the message.
pub struct Authorize {
    users: Arc<UserManager>,
    policy: DirectMessages,
}

impl Authorize {
    /// The handler for `policy`, consulting `users`' in-memory directory (it must not block).
    pub fn new(users: Arc<UserManager>, policy: DirectMessages) -> Self {
        Self { users, policy }
    }
}

impl Handler for Authorize {
    fn name(&self) -> &str {
        "authorize"
    }

    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError> {
        match msg.to {
            Target::User(to) => {
                if !self.users.exists(to) {
                    return Err(ApiError::new(
                        ErrorCode::NoSuchUser,
                        format!("no user {to}"),
                    ));
                }
                if self.policy == DirectMessages::Friends && to != msg.from {
                    return Err(ApiError::new(
                        ErrorCode::NotFriends,
                        "direct messages are allowed only between friends",
                    ));
                }
                Ok(())
            }
            Target::Group(g) => Err(ApiError::new(
                ErrorCode::NoSuchGroup,
                format!("no group {g}: groups are not available on this server yet"),
            )),
        }
    }
}
