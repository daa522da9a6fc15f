//! Request and response plumbing: the one place API errors become HTTP responses.

use crate::conn::Deadline;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use im_files::FileBody;
use im_protocol::{ApiError, ErrorCode};
use im_sse::SseStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

/// The peer address of the connection a request came on (a request extension), for limits
/// that key on the client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Every request body, as the routes see it: the connection's body with an idle timeout.
pub(crate) type RequestBody = TimedBody<ConnBody>;

/// A request's body as it came off the connection: hyper's, or none for a request whose
/// head was read without hyper (an event stream's `GET`, see `events_h1`).
pub(crate) enum ConnBody {
    /// A body that hyper reads from the connection.
    Hyper(Incoming),
    /// No body.
    Empty,
}

impl HttpBody for ConnBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ConnBody::Hyper(body) => Pin::new(body).poll_frame(cx),
            ConnBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ConnBody::Hyper(body) => body.is_end_stream(),
            ConnBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ConnBody::Hyper(body) => body.size_hint(),
            ConnBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed or the client sent a malformed body.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The body stalled or trickled (`limits.body_timeout_secs`, `limits.body_min_rate`).
    #[error("the request body arrived too slowly (idle timeout {0:?})")]
    Idle(Duration),
}

impl From<BodyError> for std::io::Error {
    fn from(e: BodyError) -> Self {
        let kind = match e {
            BodyError::Idle(_) => std::io::ErrorKind::TimedOut,
            BodyError::Hyper(_) => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// The pace a request body must keep (`[limits]`), applied to every request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// The longest wait for the next byte, and the grace before `min_rate` applies.
    pub idle: Duration,
    /// Bytes per second the body must average after the grace; 0 for no minimum.
    pub min_rate: u64,
}

impl BodyLimits {
    /// The limits of a configuration.
    pub(crate) fn of(config: &crate::Config) -> Self {
        Self {
            idle: Duration::from_secs(config.limits.body_timeout_secs.max(1)),
            min_rate: config.limits.body_min_rate,
        }
    }

    /// Puts a body under these limits.
    pub(crate) fn wrap<B>(self, inner: B) -> TimedBody<B> {
        TimedBody {
            inner,
            limits: self,
            started: None,
            received: 0,
            timer: Deadline::default(),
        }
    }
}

/// A request body that fails when no byte has arrived for the idle timeout, or when it
/// arrives slower than the minimum rate (each byte buys `1/min_rate` s beyond the first idle
/// period, as Apache's `mod_reqtimeout` does), so a client that trickles a body, or stops
/// halfway, cannot hold a connection and a handler forever. The clocks run only while the
/// body is waited on.
pub(crate) struct TimedBody<B> {
    inner: B,
    limits: BodyLimits,
    /// When the body was first waited on.
    started: Option<Instant>,
    received: u64,
    /// Counting while the body is waited on.
    timer: Deadline,
}

impl BodyLimits {
    /// When a body first waited on at `started`, with `received` bytes so far, fails if
    /// nothing more arrives from `now` on.
    fn deadline(self, started: Option<Instant>, received: u64, now: Instant) -> Instant {
        let idle = now + self.idle;
        match (started, self.min_rate) {
            (Some(started), rate) if rate > 0 => {
                let earned = Duration::from_secs_f64(received as f64 / rate as f64);
                idle.min(started + self.idle + earned)
            }
            _ => idle,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.started.get_or_insert_with(Instant::now);
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer.disarm();
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                this.received += data.map_or(0, |d| d.len() as u64);
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let (limits, started, received) = (this.limits, this.started, this.received);
        ready!(
            this.timer
                .poll(cx, || limits.deadline(started, received, Instant::now()))
        );
        Poll::Ready(Some(Err(BodyError::Idle(this.limits.idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every response body: a buffered one, an event stream or a file.
pub(crate) type Body = Either<Full<Bytes>, Either<SseStream, FileBody>>;

/// What a route handler returns.
pub(crate) type Reply = Result<Response<Body>, ApiError>;

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes_response(status, "application/json", Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "response encoding failed");
            error_response(&ApiError::new(
                ErrorCode::Internal,
                "response encoding failed",
            ))
        }
    }
}

/// A response with a fixed body and content type.
pub(crate) fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut res = Response::new(Either::Left(Full::new(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// An empty response.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::new())));
    *res.status_mut() = status;
    res
}

/// The error body of docs/API.md, with `Retry-After` on 429 and 503 and `Allow` on 405.
pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The one place a server fault is logged: the crates keep its cause rather than log it.
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(code = %err.code, message = %err.message, cause = %err.cause_chain(), "answered 500");
    }
    let mut res = bytes_response(status, "application/json", Bytes::from(err.to_json()));
    let retry = match (err.retry_after, status) {
        (Some(secs), _) => Some(secs.max(1)),
        (None, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) => Some(1),
        (None, _) => None,
    };
    if let Some(secs) = retry {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Reads a JSON body of at most `limit` bytes, with the status codes docs/API.md promises:
/// 415 for another content type, 413 over the limit, 400 for bad JSON or a wrong shape.
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<RequestBody>,
    limit: usize,
) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is over {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else if let Some(BodyError::Idle(idle)) = e.downcast_ref::<BodyError>() {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the body arrived too slowly (nothing for {} s, or under the minimum rate)",
                        idle.as_secs()
                    ),
                )
            } else {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "the request body could not be read",
                )
            }
        })?
        .to_bytes();
    parse_json(&bytes)
}

/// Parses JSON, telling malformed JSON (`malformed_json`) from a wrong shape
/// (`invalid_request`).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
            }
            Category::Data => {
                ApiError::new(ErrorCode::InvalidRequest, format!("invalid request: {e}"))
            }
        }
    })
}

/// One query parameter, percent-decoding not needed for the numeric ones we take.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A numeric query parameter; a present but malformed one is a 400.
pub(crate) fn query_u64(query: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    query_param(query, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("`{name}` must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

/// A cookie's value from the `Cookie` header.
pub(crate) fn cookie<'a>(req: &'a Request<RequestBody>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|pair| {
                let (k, val) = pair.trim().split_once('=')?;
                (k == name).then_some(val)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified() {
        let e = parse_json::<serde_json::Value>(b"{nope").unwrap_err();
        assert_eq!(e.code, "malformed_json");
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        assert_eq!(
            parse_json::<T>(br#"{"a":"x"}"#).unwrap_err().code,
            "invalid_request"
        );
        assert_eq!(parse_json::<T>(b"").unwrap_err().code, "malformed_json");
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_param(Some("a=1&b=2"), "b"), Some("2"));
        assert_eq!(query_u64(Some("limit=x"), "limit").unwrap_err().status, 400);
        assert_eq!(query_u64(None, "limit").unwrap(), None);
    }
}
