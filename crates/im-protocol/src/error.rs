use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// Every error code the HTTP API can answer with, so clients can match on a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not valid JSON.
    MalformedJson,
    /// 400: the JSON has the wrong shape or types.
    InvalidRequest,
    /// 400: the message kind is not registered.
    UnknownKind,
    /// 400: the body does not fit its kind.
    InvalidBody,
    /// 400: username outside 3–32 chars of `a-z 0-9 _ . -`.
    InvalidUsername,
    /// 400: password shorter than 8 chars.
    WeakPassword,
    /// 400: a query parameter is malformed.
    InvalidQuery,
    /// 400: the message points at a file the sender did not upload.
    UnknownFile,
    /// 400: the message points at a file whose link has expired.
    FileExpired,
    /// 403: the upload would exceed the user's storage quota.
    QuotaExceeded,
    /// 401: no valid session.
    Unauthorized,
    /// 401: wrong username or password.
    BadCredentials,
    /// 403: a cookie-authenticated write from a foreign origin.
    ForeignOrigin,
    /// 403: the default policy allows direct messages only between friends.
    NotFriends,
    /// 403: one side blocked the other.
    Blocked,
    /// 403: the caller is not a member of the group.
    NotMember,
    /// 403: the caller is not a party to the conversation.
    NotParticipant,
    /// 403: a handler refused the message.
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 404: no such user.
    NoSuchUser,
    /// 404: no such group.
    NoSuchGroup,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the username is taken.
    UsernameTaken,
    /// 409: the two users are friends already.
    AlreadyFriends,
    /// 409: the friend request was already answered.
    RequestAnswered,
    /// 404: no such friend request.
    NoSuchRequest,
    /// 404: no such message, or one in a conversation the caller cannot read.
    NoSuchMessage,
    /// 403: only the message's sender may edit it (or, outside a group's owner and admins,
    /// delete it).
    NotAuthor,
    /// 400: only text messages can be edited.
    NotEditable,
    /// 403: the message is older than the server's edit window.
    EditWindowPassed,
    /// 409: the message was deleted.
    MessageDeleted,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: wrong content type.
    UnsupportedMediaType,
    /// 416: the `Range` lies outside the file.
    RangeNotSatisfiable,
    /// 408: the request (its headers or its body) did not arrive in time.
    RequestTimeout,
    /// 429: too many requests of this kind; retry after the `Retry-After` header.
    RateLimited,
    /// 422: a handler rejected the message's content.
    Rejected,
    /// 503: queues are full; retry after the `Retry-After` header.
    Overloaded,
    /// 500: a bug or an I/O failure; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// The snake_case code clients match on.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            InvalidRequest => "invalid_request",
            UnknownKind => "unknown_kind",
            InvalidBody => "invalid_body",
            InvalidUsername => "invalid_username",
            WeakPassword => "weak_password",
            InvalidQuery => "invalid_query",
            UnknownFile => "unknown_file",
            FileExpired => "file_expired",
            QuotaExceeded => "quota_exceeded",
            Unauthorized => "unauthorized",
            BadCredentials => "bad_credentials",
            ForeignOrigin => "foreign_origin",
            NotFriends => "not_friends",
            Blocked => "blocked",
            NotMember => "not_member",
            NotParticipant => "not_participant",
            Forbidden => "forbidden",
            NotFound => "not_found",
            NoSuchUser => "no_such_user",
            NoSuchGroup => "no_such_group",
            MethodNotAllowed => "method_not_allowed",
            UsernameTaken => "username_taken",
            AlreadyFriends => "already_friends",
            RequestAnswered => "request_answered",
            NoSuchRequest => "no_such_request",
            NoSuchMessage => "no_such_message",
            NotAuthor => "not_author",
            NotEditable => "not_editable",
            EditWindowPassed => "edit_window_passed",
            MessageDeleted => "message_deleted",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RangeNotSatisfiable => "range_not_satisfiable",
            RequestTimeout => "request_timeout",
            RateLimited => "rate_limited",
            Rejected => "rejected",
            Overloaded => "overloaded",
            Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code, kept here so every crate agrees on it.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidRequest | UnknownKind | InvalidBody | InvalidUsername
            | WeakPassword | InvalidQuery | UnknownFile | FileExpired | NotEditable => 400,
            Unauthorized | BadCredentials => 401,
            ForeignOrigin | NotFriends | Blocked | NotMember | NotParticipant | Forbidden
            | QuotaExceeded | NotAuthor | EditWindowPassed => 403,
            NotFound | NoSuchUser | NoSuchGroup | NoSuchRequest | NoSuchMessage => 404,
            MethodNotAllowed => 405,
            UsernameTaken | AlreadyFriends | RequestAnswered | MessageDeleted => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RangeNotSatisfiable => 416,
            RequestTimeout => 408,
            RateLimited => 429,
            Rejected => 422,
            Internal => 500,
            Overloaded => 503,
        }
    }
}

/// What a failure behind a port came from (a store's error, an I/O error), kept whole so that
/// [`std::error::Error::source`] chains reach it. A domain crate cannot name an adapter's error
/// type; this carries it anyway. Shared, so the error holding it stays `Clone`.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Keeps `cause`: an error, or a `String` saying what failed.
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(Arc::from(cause.into()))
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Self {
        Self::new(what)
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Self {
        Self::new(what)
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Equal when they say the same: few errors implement `PartialEq`, and what a test can tell
/// apart is the text.
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// An API error: a status, a stable code and a human message.
///
/// `code` is a string rather than [`ErrorCode`] so application handlers can reject with
/// codes of their own (for example `profanity`). A server fault keeps what caused it
/// ([`ApiError::caused_by`], [`std::error::Error::source`]) for the one log line written where
/// the error becomes a response; the client sees only the code and message.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable snake_case code.
    pub code: Cow<'static, str>,
    /// Text for a human.
    pub message: Cow<'static, str>,
    /// Seconds the client should wait before trying again (`Retry-After`); 429 and 503 set it.
    pub retry_after: Option<u32>,
    /// What caused it, for the server's log only.
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Equal when a client could not tell them apart: the cause is not compared.
impl PartialEq for ApiError {
    fn eq(&self, other: &Self) -> bool {
        (self.status, &self.code, &self.message, self.retry_after)
            == (other.status, &other.code, &other.message, other.retry_after)
    }
}

impl Eq for ApiError {}

impl ApiError {
    /// An error with a built-in code and its usual status.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status: code.status(),
            code: Cow::Borrowed(code.as_str()),
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// An application-defined error; `status` should be a 4xx.
    pub fn custom(
        status: u16,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// The same error, keeping `cause` (an error, or a `String` saying what failed) for the
    /// log.
    pub fn caused_by(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.cause = Some(Arc::from(cause.into()));
        self
    }

    /// The cause and its own sources, `: `-separated, for a log line; empty without one. A
    /// source whose text its error already ends with (`message log: disk full` over
    /// `disk full`) is not repeated.
    pub fn cause_chain(&self) -> String {
        let mut chain: Vec<String> = Vec::new();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            if !chain.last().is_some_and(|prev| prev.ends_with(&text)) {
                chain.push(text);
            }
            next = e.source();
        }
        chain.join(": ")
    }

    /// The same error, telling the client to wait `secs` seconds before trying again.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body `{"error":{"code","message"}}` of docs/API.md.
    pub fn to_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.to_string(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"error encoding failed"}}"#.to_owned()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The wire shape of an error body, for clients that parse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inner object of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// Text for a human.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_kept_for_the_log_and_never_sent() {
        let io = std::io::Error::other("disk full");
        let e = ApiError::new(ErrorCode::Internal, "storage failure").caused_by(io);
        assert_eq!(e.cause_chain(), "disk full");
        assert!(!e.to_json().contains("disk full"));
        assert_eq!(e, ApiError::new(ErrorCode::Internal, "storage failure"));
        let said =
            ApiError::new(ErrorCode::Internal, "x").caused_by("a handler panicked".to_owned());
        assert_eq!(
            std::error::Error::source(&said).map(|s| s.to_string()),
            Some("a handler panicked".to_owned())
        );
        assert_eq!(ApiError::new(ErrorCode::NotFound, "x").cause_chain(), "");
    }

    /// A port's error that says its cause (`message log: disk full`) and keeps it as its source.
    #[derive(Debug)]
    struct Port(Cause);

    impl std::fmt::Display for Port {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "message log: {}", self.0)
        }
    }

    impl std::error::Error for Port {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_crosses_a_port_whole_and_is_logged_once() {
        let cause = Cause::new(Port(Cause::new("fsync failed")));
        assert_eq!(cause.to_string(), "message log: fsync failed");
        // The cause's own sources stay reachable through it.
        let below = std::error::Error::source(&cause).map(|s| s.to_string());
        assert_eq!(below.as_deref(), Some("fsync failed"));
        let e = ApiError::new(ErrorCode::Internal, "storage failure")
            .caused_by(Port(Cause::new("disk full")));
        assert_eq!(e.cause_chain(), "message log: disk full");
        assert_eq!(Cause::from("a"), Cause::new("a".to_owned()));
        assert_ne!(Cause::from("a"), Cause::from("b"));
    }

    #[test]
    fn body_shape() {
        let e = ApiError::new(ErrorCode::UnknownKind, "no kind `x`");
        assert_eq!(e.status, 400);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "unknown_kind");
        assert_eq!(v["error"]["message"], "no kind `x`");
    }
}
