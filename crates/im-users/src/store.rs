use crate::social::{FriendRequest, SocialSnapshot, SocialWrite};
use crate::{Principal, User};
use async_trait::async_trait;
use im_cluster::{Logged, Position};
use im_protocol::UserId;

/// Failures of a [`UserStore`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserStoreError {
    /// The unique username constraint fired.
    #[error("username taken")]
    UsernameTaken,
    /// Anything else (I/O, corruption).
    #[error("{0}")]
    Other(String),
}

/// The port for account and session persistence; the SQLite adapter is the default.
///
/// Every write that other nodes must see records a [`crate::UserChange`] in the ordered log in
/// the same transaction and returns its position: memory changes only when this node's log
/// follower applies it.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates an account with an already hashed password.
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Logged<User>, UserStoreError>;
    /// The account and its password hash, for login.
    async fn login_record(&self, username: &str) -> Result<Option<(User, String)>, UserStoreError>;
    /// One account.
    async fn user(&self, id: UserId) -> Result<Option<User>, UserStoreError>;
    /// Every account, to warm the in-memory directory the channel handlers consult.
    async fn all_users(&self) -> Result<Vec<User>, UserStoreError>;
    /// The whole social graph, to warm its in-memory copy.
    async fn load_social(&self) -> Result<SocialSnapshot, UserStoreError>;
    /// Makes one graph change durable in a single transaction; returns the new row's id for
    /// changes that create one (request, crossing request, group), else 0.
    async fn apply_social(&self, change: &SocialWrite) -> Result<Logged<u64>, UserStoreError>;
    /// A friend request in any state.
    async fn friend_request(&self, id: u64) -> Result<Option<FriendRequest>, UserStoreError>;
    /// Records a session by the SHA-256 of its token; returns the session id.
    async fn create_session(
        &self,
        user: UserId,
        token_hash: [u8; 32],
    ) -> Result<u64, UserStoreError>;
    /// The session a token hash belongs to, and a log position the answer is at least as new
    /// as: a revocation at or below it is reflected. A cache may keep the answer only if no
    /// revocation above that position has been applied since.
    async fn session(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<(Principal, Position)>, UserStoreError>;
    /// Revokes one session (position 0 if there was none to revoke).
    async fn delete_session(&self, session: u64) -> Result<Logged<()>, UserStoreError>;
}
