use crate::broker::Inner;
use crate::mailbox::{Drained, Mailbox};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use im_protocol::UserId;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// The body of one `text/event-stream` response.
///
/// It writes the `retry:` hint and the replay first, then every ready live frame in one write,
/// with a comment line when idle. Dropping it unregisters the session.
pub struct SseStream {
    inner: Arc<Inner>,
    user: UserId,
    mailbox: Arc<Mailbox>,
    head: Option<Bytes>,
    after: u64,
    keepalive: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("user", &self.user)
            .field("after", &self.after)
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
            after: 0,
            keepalive,
        }
    }

    pub(crate) fn start(mut self, head: Bytes, after: u64) -> Self {
        self.head = Some(head);
        self.after = after;
        self
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
