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
    /// Anything else (I/O, corruption); the store's own error is its source.
    #[error("{0}")]
    Other(#[source] im_protocol::Cause),
}

/// When a session began and was last used (Unix ms): what its expiry is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimes {
    /// Login time.
    pub created_at: u64,
    /// The last recorded use; recorded lazily (about once a minute), so it may lag a little.
    pub last_seen_at: u64,
}

/// A login session as its owner sees it in `GET /auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id.
    pub id: u64,
    /// When it began and was last used.
    pub times: SessionTimes,
    /// The `User-Agent` of the login, so a person can tell their sessions apart.
    pub user_agent: String,
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
    /// Records a session by the SHA-256 of its token, created and last seen now, labelled
    /// with the login's user agent; returns the session id.
    async fn create_session(
        &self,
        user: UserId,
        token_hash: [u8; 32],
        user_agent: &str,
    ) -> Result<u64, UserStoreError>;
    /// The session a token hash belongs to, its times, and a log position the answer is at
    /// least as new as: a revocation at or below it is reflected. A cache may keep the
    /// answer only if no revocation above that position has been applied since.
    async fn session(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<(Principal, SessionTimes, Position)>, UserStoreError>;
    /// Every session of `user`, oldest first, expired ones the sweep has not ended yet
    /// included.
    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, UserStoreError>;
    /// Records uses of sessions, `(session, Unix ms)`; a time never moves back. Batched by
    /// the caller, so the hot path does not write per request.
    async fn touch_sessions(&self, seen: &[(u64, u64)]) -> Result<(), UserStoreError>;
    /// Revokes one session (position 0 if there was none to revoke).
    async fn delete_session(&self, session: u64) -> Result<Logged<()>, UserStoreError>;
    /// Revokes every session of `user` except `keep`, recording one
    /// [`crate::UserChange::SessionsRevoked`]; returns how many (position 0 if none).
    async fn revoke_sessions(
        &self,
        user: UserId,
        keep: Option<u64>,
    ) -> Result<Logged<usize>, UserStoreError>;
    /// Stores a new password hash and, in the same transaction, revokes every other session
    /// of `user` than `keep`; returns how many were revoked.
    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: u64,
    ) -> Result<Logged<usize>, UserStoreError>;
    /// Revokes up to `limit` sessions last seen before `idle_before` or created before
    /// `created_before` (Unix ms; 0 disables either), recording their revocations; returns
    /// how many. Safe to run on several nodes at once: each session is revoked once.
    async fn expire_sessions(
        &self,
        idle_before: u64,
        created_before: u64,
        limit: usize,
    ) -> Result<Logged<usize>, UserStoreError>;
}
