//! Uploads through the file proxy, and the downloads of its links.

use super::App;
use crate::http::{Reply, RequestBody, error_response, json};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyDataStream, Either, Full};
use im_files::{FileProxy, RangeReply};
use im_limits::{Key, Limit};
use im_protocol::{ApiError, ErrorCode, now_millis};
use serde_json::json;

impl App {
    pub(super) async fn upload(&self, req: Request<RequestBody>) -> Reply {
        let who = self.principal(&req).await?;
        self.limit(Limit::UploadsPerUser, Key::User(who.user.0))
            .await?;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let max = self.files.config().max_bytes;
        // Multipart framing adds a little; a declared length far over the cap is refused
        // before a byte is stored.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max.saturating_add(im_files::multipart::SLACK)) {
            return Err(im_files::FileError::TooLarge(max).into());
        }
        // As an `io::Error`, the body timeout reaches `FileProxy` as one (408).
        let body = BodyDataStream::new(http_body_util::BodyExt::map_err(
            req.into_body(),
            std::io::Error::from,
        ));
        let meta = self
            .files
            .upload_multipart(who.user, &content_type, body)
            .await?;
        Ok(json(
            StatusCode::CREATED,
            &json!({ "file": FileProxy::view(&meta) }),
        ))
    }

    /// Serves a file link: raster images inline, everything else as an attachment, with
    /// `Range` support. Unknown, expired and malformed links are all the same 404.
    pub(super) async fn download(
        &self,
        token: &str,
        name: &str,
        req: Request<RequestBody>,
    ) -> Reply {
        let mut meta = self.files.lookup(token, name);
        if meta.is_none() && self.progress.catch_up().await.is_ok() {
            // The upload may have been made on another node a moment ago.
            meta = self.files.lookup(token, name);
        }
        let meta = meta.ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, "no such file, or its link expired")
        })?;
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let (status, start, end) = match im_files::parse_range(range, meta.size) {
            _ if meta.size == 0 => (StatusCode::OK, 0, 0),
            RangeReply::Full => (StatusCode::OK, 0, meta.size - 1),
            RangeReply::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
            RangeReply::Unsatisfiable => {
                let mut res = error_response(&ApiError::new(
                    ErrorCode::RangeNotSatisfiable,
                    format!("the file has {} bytes", meta.size),
                ));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(res);
            }
        };
        let length = if meta.size == 0 { 0 } else { end - start + 1 };
        let inline = im_files::is_inline(&meta.content_type);
        let body = if req.method() == Method::HEAD || length == 0 {
            Either::Left(Full::new(Bytes::new()))
        } else {
            let stream = self.files.open(&meta, start, end).await?;
            Either::Right(Either::Right(im_files::FileBody::new(stream)))
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let remaining = meta.expires_at.saturating_sub(now_millis()) / 1000;
        let h = res.headers_mut();
        let content_type = if inline {
            meta.content_type.as_str()
        } else {
            "application/octet-stream"
        };
        let mut set = |name: header::HeaderName, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        set(header::CONTENT_TYPE, content_type.to_owned());
        set(
            header::CONTENT_DISPOSITION,
            im_files::content_disposition(inline, &meta.name),
        );
        set(
            header::CACHE_CONTROL,
            format!("private, max-age={remaining}"),
        );
        set(header::CONTENT_LENGTH, length.to_string());
        set(header::ACCEPT_RANGES, "bytes".to_owned());
        set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_owned(),
        );
        if status == StatusCode::PARTIAL_CONTENT {
            set(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", meta.size),
            );
        }
        Ok(res)
    }
}
