use bytes::{Bytes, BytesMut};
use im_protocol::sse::Frame;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::task::Waker;

/// A session's bounded queue of frames, filled by pool workers and drained by its body.
pub(crate) struct Mailbox {
    pub(crate) session: u64,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Frame>,
    closed: bool,
    waker: Option<Waker>,
}

/// What a poll of the mailbox found.
pub(crate) enum Drained {
    /// Frames to write, already joined into one buffer, and the highest id among them.
    Data(Bytes, Option<u64>),
    /// Nothing yet; the waker is registered.
    Empty,
    /// Closed and empty: the stream ends.
    Closed,
    /// Only frames already replayed were queued; poll again.
    Skipped,
}

impl Mailbox {
    pub(crate) fn new(session: u64, capacity: usize) -> Self {
        Self {
            session,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Queues a frame; a full mailbox is closed instead, so a slow client never holds
    /// anybody up. Returns false if the mailbox is (now) closed.
    pub(crate) fn push(&self, frame: &Frame) -> bool {
        let waker = {
            let mut s = self.state.lock();
            if s.closed {
                return false;
            }
            if s.queue.len() >= self.capacity {
                s.closed = true;
            } else {
                s.queue.push_back(frame.clone());
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Whether the mailbox was closed (slow reader, logout, shutdown, the stream cap).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub(crate) fn close(&self) {
        let waker = {
            let mut s = self.state.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes every ready frame newer than `after` (ephemeral frames always pass) as one
    /// buffer, so the body writes them in one go.
    pub(crate) fn drain(&self, after: u64, waker: &Waker) -> Drained {
        let mut s = self.state.lock();
        if s.queue.is_empty() {
            if s.closed {
                return Drained::Closed;
            }
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                s.waker = Some(waker.clone());
            }
            return Drained::Empty;
        }
        let mut top = None;
        let mut parts: Vec<Bytes> = Vec::with_capacity(s.queue.len());
        for frame in s.queue.drain(..) {
            if let Some(id) = frame.id {
                if id <= after || top.is_some_and(|t| id <= t) {
                    continue;
                }
                top = Some(id);
            }
            parts.push(frame.bytes);
        }
        drop(s);
        match parts.len() {
            0 => Drained::Skipped,
            1 => Drained::Data(parts.swap_remove(0), top),
            _ => {
                let mut buf = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                parts.iter().for_each(|p| buf.extend_from_slice(p));
                Drained::Data(buf.freeze(), top)
            }
        }
    }
}
