//! Request and response plumbing: the one place API errors become HTTP responses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use im_files::FileBody;
use im_protocol::{ApiError, ErrorCode};
use im_sse::SseStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every response body: a buffered one, an event stream or a file.
pub type Body = Either<Full<Bytes>, Either<SseStream, FileBody>>;

/// What a route handler returns.
pub type Reply = Result<Response<Body>, ApiError>;

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
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
pub fn bytes_response(
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
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::new())));
    *res.status_mut() = status;
    res
}

/// The error body of api-v1.md, with `Retry-After` on 503 and `Allow` on 405.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = bytes_response(status, "application/json", Bytes::from(err.to_json()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Reads a JSON body of at most `limit` bytes, with the status codes api-v1.md promises:
/// 415 for another content type, 413 over the limit, 400 for bad JSON or a wrong shape.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
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
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A numeric query parameter; a present but malformed one is a 400.
pub fn query_u64(query: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
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
pub fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
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
