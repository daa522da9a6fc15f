//! `/metrics` in Prometheus text format, for operators who cannot read logs all day.
//!
//! The crates record through the `metrics` facade (free while no recorder is installed); the
//! server installs `metrics-exporter-prometheus`'s recorder once per process when
//! `[metrics]` is configured, and renders it on `GET /metrics` (main listener, behind
//! `metrics.token`) or on `metrics.listen` (a listener of its own, no token). Queue depths,
//! open streams and buffered bytes are read when scraped, so the hot path pays nothing for
//! them. The list, with what each means, is in docs/API.md ("Metrics").

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A figure read at scrape time: its gauge's name and labels, and how to read it.
pub(crate) struct Probe {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl Probe {
    /// A gauge `name{labels}` whose value `read` gives.
    pub(crate) fn new(
        name: &'static str,
        labels: Vec<(&'static str, String)>,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            labels,
            read: Box::new(read),
        }
    }
}

/// The server's metrics endpoint.
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    probes: Vec<Probe>,
    token: crate::keys::Keys,
}

impl Metrics {
    /// The endpoint, if `[metrics]` asks for one and this process's recorder is ours.
    /// Call it before the components whose metric handles it should see are built.
    pub(crate) fn start(config: &crate::config::MetricsConfig) -> Option<Self> {
        if config.token.is_none() && config.listen.is_none() {
            return None;
        }
        let handle = recorder()?;
        Some(Self {
            handle,
            probes: Vec::new(),
            token: crate::keys::Keys::new(config.token.as_deref()),
        })
    }

    /// Adds figures read at scrape time.
    pub(crate) fn probe(&mut self, probes: impl IntoIterator<Item = Probe>) {
        self.probes.extend(probes);
    }

    /// Whether `presented` (a bearer token) may read the metrics on the main listener.
    pub(crate) fn allows(&self, presented: Option<&str>) -> bool {
        self.token.allows(presented)
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        for p in &self.probes {
            let labels: Vec<metrics::Label> = p
                .labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .collect();
            metrics::gauge!(p.name, labels).set((p.read)());
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The process's Prometheus recorder, installed on first use; `None` when the embedding
/// application installed a recorder of its own (its exporter then has our figures).
fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("im_store_commit_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("im_store_commit_ops".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("im_replay_messages".into()),
                        &[1.0, 10.0, 100.0, 1000.0, 10000.0],
                    )
                })
                .and_then(PrometheusBuilder::install_recorder);
            match built {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// Help texts, as Prometheus shows them.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("im_streams_open", "event streams open on this node");
    describe_gauge!(
        "im_connections_open",
        "connections open, by protocol (http1, h2) and tls"
    );
    describe_counter!(
        "im_connections_total",
        "connections accepted and served, by protocol and tls"
    );
    describe_counter!(
        "im_messages_total",
        "messages posted and answered 2xx, by result (stored, duplicate)"
    );
    describe_counter!(
        "im_messages_rejected_total",
        "messages posted and refused, by error code"
    );
    describe_counter!(
        "im_deliveries_total",
        "frames put in event stream mailboxes"
    );
    describe_counter!(
        "im_slow_stream_closes_total",
        "event streams closed because their reader fell too far behind"
    );
    describe_counter!(
        "im_mailbox_dropped_frames_total",
        "frames dropped with those streams (their clients resume from the store)"
    );
    describe_gauge!(
        "im_stream_buffered_bytes",
        "bytes queued for event streams, against sse.buffer_bytes"
    );
    describe_gauge!(
        "im_queue_depth",
        "items waiting: channel shards, consumer pool workers, the store writer"
    );
    describe_histogram!(
        "im_store_commit_seconds",
        metrics::Unit::Seconds,
        "time of one store commit (a batch of writes)"
    );
    describe_histogram!("im_store_commit_ops", "writes in one store commit");
    describe_counter!(
        "im_store_commit_failures_total",
        "store commits that failed"
    );
    describe_counter!(
        "im_replays_total",
        "event streams that replayed missed messages"
    );
    describe_histogram!(
        "im_replay_messages",
        "messages owed to a stream when it opened"
    );
    describe_counter!("im_replayed_messages_total", "messages written by replays");
    describe_counter!(
        "im_resyncs_total",
        "streams told to resync (too far behind, or an unknown position)"
    );
    describe_counter!("im_login_failures_total", "logins refused, by error code");
    describe_counter!(
        "im_rate_limited_total",
        "requests refused by a rate limit, by limit"
    );
}

/// Records a posted message's answer.
pub(crate) fn message_answered(answer: &crate::http::Reply) {
    match answer {
        Ok(res) if res.status() == http::StatusCode::CREATED => {
            metrics::counter!("im_messages_total", "result" => "stored").increment(1)
        }
        Ok(_) => metrics::counter!("im_messages_total", "result" => "duplicate").increment(1),
        Err(e) => metrics::counter!("im_messages_rejected_total", "code" => e.code.to_string())
            .increment(1),
    }
}

/// An open connection as `im_connections_open` counts it, until dropped.
pub(crate) struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    /// Counts a connection speaking `protocol` (`http1`, `h2`).
    pub(crate) fn new(protocol: &'static str, tls: bool) -> Self {
        let tls = if tls { "true" } else { "false" };
        metrics::counter!("im_connections_total", "protocol" => protocol, "tls" => tls)
            .increment(1);
        let gauge = metrics::gauge!("im_connections_open", "protocol" => protocol, "tls" => tls);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Metrics shared by the routes and the listener.
pub(crate) type Shared = Option<Arc<Metrics>>;

/// Serves `GET /metrics` on `metrics.listen`, for a scraper on a private interface; any other
/// path is 404.
/// The longest a connection to the `metrics.listen` listener may stay open.
const SIDE_CONNECTION_MAX: Duration = Duration::from_secs(60);

pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Arc<crate::routes::App>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        let limit = app.config.limits.header_timeout_secs;
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let res = match (&app.metrics, req.uri().path()) {
                        (Some(metrics), "/metrics") => app.metrics_text(metrics),
                        _ => crate::http::error_response(&im_protocol::ApiError::new(
                            im_protocol::ErrorCode::NotFound,
                            "only /metrics here",
                        )),
                    };
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            // A scraper sends its request at once and reads the answer in well under a
            // minute; anything slower only holds a task, so it is cut off.
            let headers = Duration::from_secs(limit.max(1));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(headers)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SIDE_CONNECTION_MAX, connection).await;
        });
    }
}
