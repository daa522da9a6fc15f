//! What operators and browsers fetch without a session: health, readiness, metrics, the
//! OpenAPI document and the web app's files.

use super::{App, Route};
use crate::assets;
use crate::http::{Body, Reply, RequestBody, bytes_response, empty, json};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use im_protocol::{ApiError, ErrorCode};

/// The OpenAPI 3.1 description of every route, served at `GET /api/v1/openapi.json` so
/// clients and contract checkers read the same document the binary was built with.
const OPENAPI: &str = include_str!("../../openapi.json");

/// One of the web app's files, revalidated by its `ETag`.
pub(super) fn asset(asset: &'static assets::Asset, req: &Request<RequestBody>) -> Response<Body> {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag().as_bytes());
    let mut res = if fresh {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        bytes_response(
            StatusCode::OK,
            asset.content_type,
            Bytes::from_static(asset.body),
        )
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(asset.etag()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(assets::CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

impl App {
    /// `/healthz`, `/readyz`, `/metrics` and `/api/v1/openapi.json`.
    pub(super) async fn operations(&self, route: Route, req: &Request<RequestBody>) -> Reply {
        match route {
            Route::Metrics => {
                let Some(metrics) = &self.metrics else {
                    return Err(ApiError::new(ErrorCode::NotFound, "no route /metrics"));
                };
                if !metrics.allows(self.credentials(req).bearer) {
                    return Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "/metrics needs `Authorization: Bearer <metrics.token>`",
                    ));
                }
                Ok(self.metrics_text(metrics))
            }
            Route::OpenApi => Ok(bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(OPENAPI.as_bytes()),
            )),
            Route::Health => Ok(bytes_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"ok"),
            )),
            Route::Ready => {
                let report = self.readiness.check().await;
                let status = if report.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Ok(json(status, &report))
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }

    /// The exposition text, with the channel shards' queues read now.
    pub(crate) fn metrics_text(&self, metrics: &crate::metrics::Metrics) -> Response<Body> {
        for (name, group) in &self.groups {
            for (shard, depth) in group.queue_depths().into_iter().enumerate() {
                metrics::gauge!(
                    "im_queue_depth",
                    "queue" => "channel",
                    "group" => name.clone(),
                    "shard" => shard.to_string()
                )
                .set(depth as f64);
            }
        }
        bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(metrics.render()),
        )
    }
}
