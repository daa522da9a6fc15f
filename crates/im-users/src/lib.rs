#![doc = include_str!("../README.md")]
//!
//! Passwords are hashed with argon2id on a few dedicated threads that reuse their memory,
//! behind a bounded queue. Session tokens are 256 random bits; only their SHA-256 is stored,
//! so a leaked database holds no usable token.

mod change;
mod hashing;
mod manager;
mod policy;
mod presence;
pub mod social;
mod store;

pub use change::UserChange;
pub use manager::{
    HashParams, LoginOutcome, RevokeHook, SYSTEM_USERNAME, SessionPolicy, UserManager, UsersConfig,
};
pub use policy::{Authorize, DirectMessages};
pub use social::{FriendRequest, Group, RequestState, Role, SocialSnapshot, SocialWrite};
pub use store::{SessionRecord, SessionTimes, UserStore, UserStoreError};

use async_trait::async_trait;
use im_protocol::{ApiError, ErrorCode, UserId};

/// A user as the API shows it (the wire type of `im-protocol`).
pub use im_protocol::wire::User;

/// An authenticated caller: the user and the login session they used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: UserId,
    /// The login session, so logout can revoke exactly it.
    pub session: u64,
}

/// What a request presented to prove who it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The token from `Authorization: Bearer`.
    pub bearer: Option<&'a str>,
    /// The `im_session` cookie.
    pub cookie: Option<&'a str>,
}

/// The original Go Web-IM's onConnection: decides who a request (or an event stream) belongs to.
///
/// The default is [`UserManager`]'s session tokens; applications may plug in their own, e.g.
/// to accept tokens issued by another system.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or `None` if the credentials are missing or invalid.
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Option<Principal>, UserError>;
}

/// Errors of account operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Username outside 3–32 chars of `a-z 0-9 _ . -`.
    #[error("usernames are 3–32 characters of a-z, 0-9, _, . and -")]
    InvalidUsername,
    /// Password too short.
    #[error("passwords need at least 8 characters")]
    WeakPassword,
    /// Password absurdly long (hashing it would be a denial of service).
    #[error("passwords are at most 1024 bytes")]
    PasswordTooLong,
    /// The username is taken.
    #[error("that username is taken")]
    UsernameTaken,
    /// Wrong username or password (the same answer either way).
    #[error("wrong username or password")]
    BadCredentials,
    /// No such user.
    #[error("no such user")]
    NoSuchUser,
    /// A user cannot befriend or block themselves.
    #[error("that would be a relation with yourself")]
    SelfRelation,
    /// The two are friends already.
    #[error("you are friends already")]
    AlreadyFriends,
    /// One side blocked the other.
    #[error("one of you has blocked the other")]
    Blocked,
    /// The policy needs friendship.
    #[error("you and that user are not friends")]
    NotFriends,
    /// Only the addressee answers a friend request.
    #[error("only the addressee may answer this request")]
    NotAddressee,
    /// The request was answered already.
    #[error("this request was already answered")]
    RequestAnswered,
    /// No such session among the caller's (someone else's is just as unknown).
    #[error("no such session")]
    NoSuchSession,
    /// No such friend request (or not yours to see).
    #[error("no such friend request")]
    NoSuchRequest,
    /// The caller is not a member of the group.
    #[error("you are not a member of this group")]
    NotMember,
    /// Only owners and admins manage membership; only the owner assigns roles.
    #[error("your role in this group does not allow that")]
    NotAdmin,
    /// Group names are 1–64 characters, not blank.
    #[error("group names are 1–64 characters and not blank")]
    InvalidGroupName,
    /// The caller is not a party to the conversation.
    #[error("you are not a party to this conversation")]
    NotParticipant,
    /// The conversation key names a group that does not exist.
    #[error("no such group")]
    NoSuchGroup,
    /// The conversation key is not one this server issues.
    #[error("no such conversation")]
    NoSuchConversation,
    /// The store failed.
    #[error("user store: {0}")]
    Store(#[source] im_protocol::Cause),
    /// Password hashing failed (its threads, or argon2 itself).
    #[error("password hashing: {0}")]
    Hashing(#[source] im_protocol::Cause),
    /// The operating system's random source failed (a token or salt could not be made).
    #[error("the random source failed: {0}")]
    Randomness(#[source] im_protocol::Cause),
    /// This node has not applied the log far enough to answer (the store is unreachable, or
    /// the node is overloaded); retrying later or on another node helps.
    #[error("this node is catching up; try again")]
    Lagging,
    /// Too many passwords are waiting to be checked (a login flood); retrying soon helps.
    #[error("the server is busy checking passwords; try again")]
    Busy,
}

impl UserError {
    /// Whether memory that is behind the log could explain this refusal, so it is worth
    /// catching up and checking again before answering.
    pub fn may_be_stale(&self) -> bool {
        matches!(
            self,
            UserError::NoSuchUser
                | UserError::Blocked
                | UserError::NotFriends
                | UserError::NoSuchRequest
                | UserError::NotMember
                | UserError::NotAdmin
                | UserError::NoSuchGroup
                | UserError::NotParticipant
                | UserError::NoSuchConversation
                | UserError::AlreadyFriends
        )
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let code = match &e {
            UserError::InvalidUsername => ErrorCode::InvalidUsername,
            UserError::WeakPassword => ErrorCode::WeakPassword,
            UserError::PasswordTooLong => ErrorCode::InvalidRequest,
            UserError::UsernameTaken => ErrorCode::UsernameTaken,
            UserError::BadCredentials => ErrorCode::BadCredentials,
            UserError::NoSuchUser => ErrorCode::NoSuchUser,
            UserError::NotParticipant => ErrorCode::NotParticipant,
            UserError::SelfRelation | UserError::InvalidGroupName => ErrorCode::InvalidRequest,
            UserError::AlreadyFriends => ErrorCode::AlreadyFriends,
            UserError::Blocked => ErrorCode::Blocked,
            UserError::NotFriends => ErrorCode::NotFriends,
            UserError::NotAddressee | UserError::NotAdmin => ErrorCode::Forbidden,
            UserError::RequestAnswered => ErrorCode::RequestAnswered,
            UserError::NoSuchRequest => ErrorCode::NoSuchRequest,
            UserError::NotMember => ErrorCode::NotMember,
            UserError::NoSuchGroup => ErrorCode::NoSuchGroup,
            UserError::NoSuchConversation | UserError::NoSuchSession => ErrorCode::NotFound,
            UserError::Store(_) => {
                return ApiError::new(ErrorCode::Internal, "storage failure").caused_by(e);
            }
            UserError::Hashing(_) | UserError::Randomness(_) => {
                return ApiError::new(ErrorCode::Internal, "the server could not check that")
                    .caused_by(e);
            }
            UserError::Lagging => ErrorCode::Overloaded,
            UserError::Busy => {
                return ApiError::new(ErrorCode::Overloaded, e.to_string()).retry_after(1);
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<UserStoreError> for UserError {
    fn from(e: UserStoreError) -> Self {
        match e {
            UserStoreError::UsernameTaken => UserError::UsernameTaken,
            UserStoreError::Other(s) => UserError::Store(s),
        }
    }
}

/// Checks the username rule of docs/API.md.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}
