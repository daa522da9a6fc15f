use crate::budget::{Budget, charge_for};
use bytes::{Bytes, BytesMut};
use im_protocol::sse::Frame;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

/// What a queued frame costs besides its bytes: its slot in the queue. Counting it keeps a
/// flood of tiny frames bounded by the same byte limit.
pub(crate) const SLOT: usize = std::mem::size_of::<Frame>();

/// A queue that grew past this many slots in a burst gives the memory back once drained.
const KEEP_SLOTS: usize = 64;

/// How much a mailbox may hold before its session is closed for being too slow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Queued bytes (frames plus [`SLOT`] each); an empty mailbox always takes one frame.
    pub(crate) bytes: usize,
    /// Queued frames.
    pub(crate) frames: usize,
}

impl Limits {
    /// Limits where 0 means none.
    pub(crate) fn new(bytes: usize, frames: usize) -> Self {
        let none = |n: usize| if n == 0 { usize::MAX } else { n };
        Self {
            bytes: none(bytes),
            frames: none(frames),
        }
    }
}

/// A session's bounded queue of frames, filled by pool workers and drained by its body.
pub(crate) struct Mailbox {
    pub(crate) session: u64,
    limits: Limits,
    budget: Arc<Budget>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Frame>,
    /// What `queue` costs against this mailbox's limit; the budget holds `charge_for(bytes)`.
    bytes: usize,
    closed: bool,
    waker: Option<Waker>,
    /// Durable frames up to here are in the stream's replay: pushing them is a no-op.
    floor: u64,
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
    pub(crate) fn new(session: u64, limits: Limits, budget: Arc<Budget>) -> Self {
        Self {
            session,
            limits,
            budget,
            state: Mutex::new(State::default()),
        }
    }

    /// Queues a frame. One that would pass this mailbox's limits or the server's budget
    /// closes the mailbox instead and drops what it held, so a slow client never holds
    /// anybody up nor keeps memory: it resumes from the store. Returns false if the mailbox
    /// is (now) closed.
    pub(crate) fn push(&self, frame: &Frame) -> bool {
        let mut s = self.state.lock();
        if s.closed {
            return false;
        }
        if frame.id.is_some_and(|id| id <= s.floor) {
            return true;
        }
        let bytes = s.bytes + frame.bytes.len() + SLOT;
        let fits = s.queue.is_empty()
            || (bytes <= self.limits.bytes && s.queue.len() < self.limits.frames);
        let more = charge_for(bytes) - charge_for(s.bytes);
        if !fits || (more > 0 && !self.budget.charge(more)) {
            self.overflow(s);
            return true;
        }
        s.queue.push_back(frame.clone());
        s.bytes = bytes;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Closes a mailbox that is too full and gives back what it held at once.
    #[cold]
    fn overflow(&self, mut s: MutexGuard<'_, State>) {
        s.closed = true;
        self.budget
            .release(charge_for(std::mem::take(&mut s.bytes)));
        let dropped = std::mem::take(&mut s.queue);
        let waker = s.waker.take();
        drop(s);
        metrics::counter!("im_slow_stream_closes_total").increment(1);
        metrics::counter!("im_mailbox_dropped_frames_total").increment(dropped.len() as u64);
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Skips durable frames up to `id` from now on, and drops those queued: the stream's
    /// replay carries them.
    pub(crate) fn set_floor(&self, id: u64) {
        let mut s = self.state.lock();
        s.floor = s.floor.max(id);
        let before = s.bytes;
        let floor = s.floor;
        let mut bytes = before;
        s.queue.retain(|f| match f.id {
            Some(fid) if fid <= floor => {
                bytes -= f.bytes.len() + SLOT;
                false
            }
            _ => true,
        });
        s.bytes = bytes;
        self.budget.release(charge_for(before) - charge_for(bytes));
    }

    /// Whether the mailbox was closed (slow reader, logout, shutdown, the stream cap).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Closes the mailbox; what is queued is still written, then the stream ends.
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
        self.budget
            .release(charge_for(std::mem::take(&mut s.bytes)));
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
        if s.queue.capacity() > KEEP_SLOTS {
            s.queue.shrink_to(KEEP_SLOTS);
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

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.budget.release(charge_for(self.state.get_mut().bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::STEP;

    /// A frame of one budget step, so every one of them is charged past the first.
    const BIG: usize = STEP;

    fn frame(id: Option<u64>, len: usize) -> Frame {
        Frame {
            id,
            bytes: Bytes::from(vec![b'x'; len]),
        }
    }

    fn mailbox(bytes: usize, frames: usize, budget: &Arc<Budget>) -> Mailbox {
        Mailbox::new(1, Limits::new(bytes, frames), budget.clone())
    }

    #[test]
    fn drained_frames_give_their_bytes_back() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(0, 0, &budget);
        assert!(m.push(&frame(None, 10)));
        assert_eq!(budget.used(), 0, "a mailbox's first step is free");
        assert!(m.push(&frame(Some(1), BIG)));
        assert_eq!(budget.used(), charge_for(BIG + 10 + 2 * SLOT));
        assert!(budget.used() > 0);
        match m.drain(0, Waker::noop()) {
            Drained::Data(bytes, top) => assert_eq!((bytes.len(), top), (BIG + 10, Some(1))),
            _ => panic!("expected data"),
        }
        assert_eq!(budget.used(), 0);
        // Frames already replayed are dropped, and give their bytes back too.
        for _ in 0..3 {
            assert!(m.push(&frame(Some(1), BIG)));
        }
        assert!(budget.used() > 0);
        assert!(matches!(m.drain(1, Waker::noop()), Drained::Skipped));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_slow_mailbox_is_closed_by_bytes_and_lets_go_of_them() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(3 * (BIG + SLOT), 0, &budget);
        for id in 1..=3 {
            assert!(m.push(&frame(Some(id), BIG)));
        }
        assert!(!m.is_closed());
        assert_eq!(budget.used(), charge_for(3 * (BIG + SLOT)));
        // The fourth would pass the limit: closed, and the queue is dropped at once.
        assert!(m.push(&frame(Some(4), 1)));
        assert!(m.is_closed());
        assert_eq!(budget.used(), 0);
        assert!(!m.push(&frame(Some(5), 1)));
        assert!(matches!(m.drain(0, Waker::noop()), Drained::Closed));
    }

    #[test]
    fn an_empty_mailbox_takes_one_frame_of_any_size() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(10, 0, &budget);
        assert!(m.push(&frame(Some(1), 1000)));
        assert!(!m.is_closed());
        m.push(&frame(Some(2), 1));
        assert!(m.is_closed());
    }

    #[test]
    fn the_frame_cap_still_applies() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(0, 2, &budget);
        m.push(&frame(Some(1), BIG));
        m.push(&frame(Some(2), BIG));
        assert!(!m.is_closed());
        m.push(&frame(Some(3), 1));
        assert!(m.is_closed());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_budget_closes_the_mailbox_pushed_to() {
        let two = charge_for(2 * (BIG + SLOT));
        let budget = Arc::new(Budget::new(2 * two));
        let (a, b) = (mailbox(0, 0, &budget), mailbox(0, 0, &budget));
        for id in 1..=2 {
            a.push(&frame(Some(id), BIG));
            b.push(&frame(Some(id), BIG));
        }
        assert_eq!(budget.used(), 2 * two);
        // Full: whoever is pushed to next is closed and gives back what it held.
        a.push(&frame(Some(3), BIG));
        assert!(a.is_closed() && !b.is_closed());
        assert_eq!(budget.used(), two);
        b.push(&frame(Some(3), BIG));
        assert!(!b.is_closed(), "a's bytes were given back");
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped mailbox gives its bytes back");
    }

    #[test]
    fn a_closed_mailbox_still_writes_its_queue_then_ends() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(0, 0, &budget);
        m.push(&frame(Some(1), BIG));
        m.push(&frame(Some(2), BIG));
        m.close();
        assert!(!m.push(&frame(Some(3), 10)));
        assert!(matches!(
            m.drain(0, Waker::noop()),
            Drained::Data(_, Some(2))
        ));
        assert_eq!(budget.used(), 0);
        assert!(matches!(m.drain(2, Waker::noop()), Drained::Closed));
    }

    #[test]
    fn a_burst_gives_its_queue_memory_back() {
        let budget = Arc::new(Budget::new(0));
        let m = mailbox(0, 0, &budget);
        for id in 1..=1000 {
            m.push(&frame(Some(id), 1));
        }
        let _ = m.drain(0, Waker::noop());
        assert!(m.state.lock().queue.capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn the_budget_is_charged_in_steps_past_the_first() {
        assert_eq!(charge_for(0), 0);
        assert_eq!(charge_for(STEP), 0);
        assert_eq!(charge_for(STEP + 1), STEP);
        assert_eq!(charge_for(3 * STEP), 2 * STEP);
    }
}
