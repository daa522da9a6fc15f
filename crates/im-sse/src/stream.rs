use crate::broker::{Inner, ReplayError, ReplayPage, ready};
use crate::budget::charged;
use crate::mailbox::{Drained, Mailbox};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use im_protocol::{MessageId, UserId};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use tokio::time::{Instant, Sleep};

type PageRead = Pin<Box<dyn Future<Output = Result<ReplayPage, ReplayError>> + Send>>;

/// A replay still being written: the store is read one page at a time, and the next page
/// only once hyper asks for more, so a stream nobody reads holds about one page.
pub(crate) struct Replay {
    /// The last committed id when the stream opened; later messages are in the mailbox.
    up_to: MessageId,
    reading: Option<PageRead>,
}

impl Replay {
    pub(crate) fn new(up_to: MessageId) -> Self {
        Self {
            up_to,
            reading: None,
        }
    }
}

/// The body of one `text/event-stream` response.
///
/// It writes the `retry:` hint, then the replay page by page and `event: ready`, then every
/// ready live frame in one write, with a comment line when idle. Dropping it unregisters
/// the session.
pub struct SseStream {
    inner: Arc<Inner>,
    user: UserId,
    mailbox: Arc<Mailbox>,
    head: Option<Bytes>,
    replay: Option<Replay>,
    after: u64,
    keepalive: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("user", &self.user)
            .field("after", &self.after)
            .field("replaying", &self.replay.is_some())
            .finish()
    }
}

impl SseStream {
    pub(crate) fn new(inner: Arc<Inner>, user: UserId, mailbox: Arc<Mailbox>) -> Self {
        inner.streams.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = inner.listener.get() {
            l.opened(user);
        }
        let keepalive = Box::pin(tokio::time::sleep(inner.config.keepalive));
        Self {
            inner,
            user,
            mailbox,
            head: None,
            replay: None,
            after: 0,
            keepalive,
        }
    }

    pub(crate) fn start(mut self, head: Bytes, after: u64, replay: Option<Replay>) -> Self {
        self.head = Some(head);
        self.after = after;
        self.replay = replay;
        self
    }

    /// The next page of the replay, the last one ending with `event: ready`; `None` ends the
    /// stream, without the live frames, which would leave a gap before them. An ended replay
    /// leaves the mailbox closed and `replay` set, so a stray poll after the end ends again.
    fn poll_replay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(replay) = self.replay.as_mut() else {
            return Poll::Ready(None);
        };
        let reading = match &mut replay.reading {
            Some(r) => r,
            None => {
                // Logout, shutdown or a slow reader: stop at a page boundary.
                if self.mailbox.is_closed() {
                    return Poll::Ready(None);
                }
                let (source, user, after) =
                    (self.inner.replay.clone(), self.user, MessageId(self.after));
                let (up_to, limit) = (replay.up_to, self.inner.config.replay_page);
                replay.reading.insert(Box::pin(async move {
                    source.page(user, after, up_to, limit).await
                }))
            }
        };
        let page = ready!(reading.as_mut().poll(cx));
        replay.reading = None;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(user = self.user.0, error = %e, "replay page failed; stream ends");
                self.mailbox.close();
                return Poll::Ready(None);
            }
        };
        let mut buf = BytesMut::new();
        metrics::counter!("im_replayed_messages_total").increment(page.messages.len() as u64);
        for m in &page.messages {
            buf.extend_from_slice(&im_protocol::sse::message_frame(m));
        }
        if let Some(last) = page.messages.last() {
            self.after = last.id.0;
        }
        if !page.more || page.messages.is_empty() {
            self.replay = None;
            ready(&mut buf, self.after);
        }
        match charged(buf, &self.inner.budget) {
            Some(bytes) => Poll::Ready(Some(bytes)),
            None => {
                // Over the server's buffer cap: end like a full mailbox; the client resumes.
                self.mailbox.close();
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.inner.streams.fetch_sub(1, Ordering::Relaxed);
        {
            let mut shard = self.inner.shard(self.user).write();
            if let Some(list) = shard.get_mut(&self.user) {
                list.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
                if list.is_empty() {
                    shard.remove(&self.user);
                }
            }
        }
        if let Some(l) = self.inner.listener.get() {
            l.closed(self.user);
        }
    }
}

impl Body for SseStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if this.replay.is_some() {
            return this
                .poll_replay(cx)
                .map(|page| page.map(|p| Ok(Frame::data(p))));
        }
        loop {
            match this.mailbox.drain(this.after, cx.waker()) {
                Drained::Data(bytes, top) => {
                    if let Some(top) = top {
                        this.after = top;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Drained::Skipped => continue,
                Drained::Closed => return Poll::Ready(None),
                Drained::Empty => break,
            }
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.inner.config.keepalive;
            this.keepalive.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                im_protocol::sse::KEEPALIVE,
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
