use crate::budget::Budget;
use crate::mailbox::{Limits, Mailbox};
use crate::stream::{Replay, SseStream};
use async_trait::async_trait;
use bytes::BytesMut;
use im_protocol::sse::{self, Frame};
use im_protocol::{ApiError, ErrorCode, Message, MessageId, UserId};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Reading the replay from the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplayError {
    /// The store could not be read.
    #[error("replay: {0}")]
    Store(#[source] im_protocol::Cause),
    /// The broker is shutting down and accepts no new streams.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::ShuttingDown => ApiError::new(ErrorCode::Overloaded, e.to_string()),
            ReplayError::Store(_) => {
                ApiError::new(ErrorCode::Internal, "storage failure").caused_by(e)
            }
        }
    }
}

/// How much one page of a replay may hold, so a resume from far back never sits in memory
/// whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// The most messages in a page.
    pub messages: usize,
    /// The page ends with the message that brings its stored records to this many bytes.
    pub bytes: usize,
}

impl Default for PageLimit {
    fn default() -> Self {
        Self {
            messages: 100,
            bytes: 256 * 1024,
        }
    }
}

/// One page of a replay, as the store gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayPage {
    /// The page's messages, ascending by id.
    pub messages: Vec<Message>,
    /// The page ended at its limit, so more may follow; false means the range is exhausted.
    pub more: bool,
}

/// The store as a resuming stream sees it.
#[async_trait]
pub trait ReplaySource: Send + Sync + 'static {
    /// How many messages with `after < id <= up_to` `user` sent or received, counting no
    /// further than `at_most`, so the broker can choose resync or replay without reading them.
    async fn count(
        &self,
        user: UserId,
        after: MessageId,
        up_to: MessageId,
        at_most: usize,
    ) -> Result<usize, ReplayError>;

    /// The first page of messages with `after < id <= up_to` that `user` sent or received,
    /// ascending by id: at most `limit.messages` of them, ending with the one whose stored
    /// record brings the page to `limit.bytes` (so a page holds at least one message).
    async fn page(
        &self,
        user: UserId,
        after: MessageId,
        up_to: MessageId,
        limit: PageLimit,
    ) -> Result<ReplayPage, ReplayError>;

    /// The highest committed id, to tell a position from the future (another deployment).
    async fn latest_id(&self) -> Result<MessageId, ReplayError>;
}

/// Appends `event: ready` carrying `id: <position>`: the stream is caught up to `position`, and
/// a browser that reconnects resumes from there even if no message came yet.
/// Writes `event: resync` and returns the position live delivery continues after.
///
/// The frame carries `id: <latest>`, so a browser's next automatic reconnect starts from a
/// servable position instead of asking for the unservable one again.
fn resync(head: &mut BytesMut, latest: MessageId) -> u64 {
    metrics::counter!("im_resyncs_total").increment(1);
    let latest = latest.0;
    let data = format!("{{\"latest\":{latest}}}");
    let mut frame = Vec::new();
    sse::write_event(&mut frame, Some(latest), Some("resync"), &data);
    head.extend_from_slice(&frame);
    latest
}

pub(crate) fn ready(head: &mut BytesMut, position: u64) {
    let mut frame = Vec::new();
    let data = format!("{{\"position\":{position}}}");
    sse::write_event(&mut frame, Some(position), Some("ready"), &data);
    head.extend_from_slice(&frame);
}

/// The broker's listener port, defined in `im-protocol` so that its implementer (the user
/// manager's presence) need not depend on the broker.
pub use im_protocol::delivery::SessionListener;

/// Tuning of the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Bytes a session may have queued (frames plus a slot each) before it is closed for being
    /// too slow; an empty mailbox always takes one frame. 0 means no limit.
    pub mailbox_bytes: usize,
    /// Frames a session may have queued, on top of `mailbox_bytes`. 0 means no limit.
    pub mailbox_frames: usize,
    /// Bytes queued in all mailboxes plus replay pages not yet written, server-wide; a push
    /// that would pass it closes that session. 0 means no limit.
    pub buffer_bytes: usize,
    /// How much of a replay is read and encoded at a time.
    pub replay_page: PageLimit,
    /// How often an idle stream gets a comment line; proxies cut idle streams at 60 s.
    pub keepalive: Duration,
    /// The `retry:` hint sent on open, in milliseconds.
    pub retry_ms: u64,
    /// The most messages replayed on resume; more than that gets `event: resync`.
    pub resume_limit: usize,
    /// Registry shards, so sessions of different users never contend.
    pub shards: usize,
    /// Open streams per user; one more closes the user's oldest. 0 means no limit.
    pub max_streams_per_user: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            mailbox_bytes: 1024 * 1024,
            mailbox_frames: 0,
            buffer_bytes: 256 * 1024 * 1024,
            replay_page: PageLimit::default(),
            keepalive: Duration::from_secs(15),
            retry_ms: 2000,
            resume_limit: 10_000,
            shards: 64,
            max_streams_per_user: 16,
        }
    }
}

/// Where a stream starts, from `Last-Event-ID` or `?last_event_id=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A fresh stream: live events only.
    Live,
    /// Replay everything after this id, then live.
    After(MessageId),
    /// The client sent a position we cannot interpret; it gets `resync`.
    Unservable,
}

impl Resume {
    /// Reads the position; the header wins over the query, as browsers set the header on
    /// their own reconnects.
    pub fn from_parts<'a>(header: Option<&'a str>, query: Option<&'a str>) -> Self {
        let nonempty = |v: Option<&'a str>| v.map(str::trim).filter(|v| !v.is_empty());
        match nonempty(header).or(nonempty(query)) {
            None | Some("") => Resume::Live,
            // Only plain digits: `u64::from_str` would also take "+5".
            Some(v) if !v.bytes().all(|b| b.is_ascii_digit()) => Resume::Unservable,
            Some(v) => match v.parse::<u64>() {
                Ok(id) => Resume::After(MessageId(id)),
                Err(_) => Resume::Unservable,
            },
        }
    }
}

/// Who a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The user.
    pub user: UserId,
    /// The login session the stream was opened with, so logout can end it.
    pub session: u64,
}

pub(crate) type Shard = RwLock<HashMap<UserId, Vec<Arc<Mailbox>>>>;

pub(crate) struct Inner {
    pub(crate) shards: Box<[Shard]>,
    pub(crate) config: BrokerConfig,
    shutting_down: AtomicBool,
    pub(crate) streams: AtomicUsize,
    pub(crate) budget: Arc<Budget>,
    pub(crate) replay: Arc<dyn ReplaySource>,
    pub(crate) listener: OnceLock<Arc<dyn SessionListener>>,
    live_head: OnceLock<LiveHead>,
    /// `im_deliveries_total`: frames put in mailboxes. A handle, so the hot path does no
    /// registry lookup.
    deliveries: metrics::Counter,
}

/// A head known without I/O; see [`SseBroker::set_live_head`].
type LiveHead = Box<dyn Fn() -> MessageId + Send + Sync>;

impl Inner {
    pub(crate) fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user.0 as usize) % self.shards.len()]
    }
}

/// The session registry: user -> live streams, sharded, each with a bounded mailbox.
#[derive(Clone)]
pub struct SseBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SseBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBroker")
            .field("streams", &self.streams())
            .finish()
    }
}

impl SseBroker {
    /// A broker that replays from `replay`.
    pub fn new(config: BrokerConfig, replay: Arc<dyn ReplaySource>) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| RwLock::new(HashMap::new()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                shutting_down: AtomicBool::new(false),
                streams: AtomicUsize::new(0),
                budget: Arc::new(Budget::new(config.buffer_bytes)),
                replay,
                listener: OnceLock::new(),
                live_head: OnceLock::new(),
                deliveries: metrics::counter!("im_deliveries_total"),
                config,
            }),
        }
    }

    /// Opens a stream: registers it for live delivery, then replays what `resume` asks for.
    pub async fn open(&self, who: SessionInfo, resume: Resume) -> Result<SseStream, ReplayError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ReplayError::ShuttingDown);
        }
        let cfg = &self.inner.config;
        let limits = Limits::new(cfg.mailbox_bytes, cfg.mailbox_frames);
        let mailbox = Arc::new(Mailbox::new(who.session, limits, self.inner.budget.clone()));
        {
            let mut shard = self.inner.shard(who.user).write();
            let list = shard.entry(who.user).or_default();
            list.push(mailbox.clone());
            // Over the cap, the user's oldest open streams end (their clients may resume);
            // a closed one leaves the registry when its body is dropped.
            let cap = self.inner.config.max_streams_per_user;
            let open = list.iter().filter(|m| !m.is_closed()).count();
            if cap > 0 && open > cap {
                list.iter()
                    .filter(|m| !m.is_closed())
                    .take(open - cap)
                    .for_each(|m| m.close());
            }
        }
        let stream = SseStream::new(self.inner.clone(), who.user, mailbox.clone());
        // A shutdown that walked the registry before we registered would miss us.
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ReplayError::ShuttingDown);
        }
        let mut head = BytesMut::new();
        head.extend_from_slice(&sse::retry_frame(cfg.retry_ms));
        let mut replay = None;
        let after = match resume {
            Resume::Live => {
                // Read after registering: everything up to here is history, everything after
                // arrives live. Telling the client lets its next reconnect resume from here.
                let latest = self.head(MessageId(0)).await?.0;
                ready(&mut head, latest);
                0
            }
            Resume::Unservable => {
                let latest = self.head(MessageId(0)).await?;
                resync(&mut head, latest)
            }
            Resume::After(pos) => {
                let latest = self.head(pos).await?;
                if pos > latest {
                    resync(&mut head, latest)
                } else if pos == latest {
                    // Nothing to replay, and nothing to read: the common reconnect.
                    ready(&mut head, pos.0);
                    pos.0
                } else {
                    // The live head may lag the store (a busy follower): what it has not yet
                    // dispatched was committed before the stream registered, yet would come
                    // through the mailbox and could overflow it while the replay runs. The
                    // replay reads up to the store's head instead, and the mailbox skips
                    // what the replay carries. The store is read here anyway.
                    let latest = latest.max(self.inner.replay.latest_id().await?);
                    mailbox.set_floor(latest.0);
                    // Counting reads no record; the replay itself is read a page at a time
                    // as the body is written (`SseStream`), up to `latest`: everything
                    // after that was committed after registering, so it is in the mailbox.
                    let found = self
                        .inner
                        .replay
                        .count(who.user, pos, latest, cfg.resume_limit.saturating_add(1))
                        .await?;
                    if found > cfg.resume_limit {
                        resync(&mut head, latest)
                    } else if found == 0 {
                        ready(&mut head, pos.0);
                        pos.0
                    } else {
                        metrics::counter!("im_replays_total").increment(1);
                        metrics::histogram!("im_replay_messages").record(found as f64);
                        replay = Some(Replay::new(latest));
                        pos.0
                    }
                }
            }
        };
        Ok(stream.start(head.freeze(), after, replay))
    }

    /// The head a stream registered before this call is served from: every message after it
    /// reaches the stream's mailbox. The live head when it is set and not behind `at_least`
    /// (a position the client saw, perhaps on a node ahead of this one), else the store's.
    async fn head(&self, at_least: MessageId) -> Result<MessageId, ReplayError> {
        if let Some(live) = self.inner.live_head.get() {
            let head = live();
            if head >= at_least {
                return Ok(head);
            }
        }
        self.inner.replay.latest_id().await
    }

    /// Sets the head known in memory: the highest position whose messages have been handed
    /// to delivery, so every later one reaches a stream registered before it is read (on
    /// the server, the log follower's applied position). Opening a stream then needs no
    /// store read unless there is something to replay. Set it once, before serving.
    pub fn set_live_head(&self, head: impl Fn() -> MessageId + Send + Sync + 'static) {
        let _ = self.inner.live_head.set(Box::new(head));
    }

    /// Sets who hears about streams opening and closing; set it before serving.
    pub fn set_listener(&self, listener: Arc<dyn SessionListener>) {
        let _ = self.inner.listener.set(listener);
    }

    /// Ends every stream and refuses new ones, so graceful shutdown can complete.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            for mailboxes in shard.read().values() {
                mailboxes.iter().for_each(|m| m.close());
            }
        }
    }

    /// Ends the streams opened with one login session (on logout).
    pub fn close_session(&self, who: SessionInfo) {
        if let Some(list) = self.inner.shard(who.user).read().get(&who.user) {
            list.iter()
                .filter(|m| m.session == who.session)
                .for_each(|m| m.close());
        }
    }

    /// Ends every stream of `user` on this node (a backend's disconnect). The clients come
    /// back and resume, unless their sessions were revoked as well.
    pub fn close_user(&self, user: UserId) {
        if let Some(list) = self.inner.shard(user).read().get(&user) {
            list.iter().for_each(|m| m.close());
        }
    }

    /// Open streams of `user`, for presence.
    pub fn sessions_of(&self, user: UserId) -> usize {
        self.inner.shard(user).read().get(&user).map_or(0, Vec::len)
    }

    /// Bytes buffered for streams now (queued frames and replay pages not yet written),
    /// against `BrokerConfig::buffer_bytes`; for metrics and tests.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.budget.used()
    }

    /// Open streams in total, for metrics and tests.
    pub fn streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }
}

impl im_protocol::delivery::Mailboxes for SseBroker {
    fn deliver(&self, user: UserId, frame: &Frame) {
        if let Some(list) = self.inner.shard(user).read().get(&user) {
            let pushed = list.iter().filter(|m| m.push(frame)).count();
            self.inner.deliveries.increment(pushed as u64);
        }
    }
}
