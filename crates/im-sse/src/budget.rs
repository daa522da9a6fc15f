//! The server-wide count of bytes buffered for streams.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The step a mailbox is charged to the budget in, past its first step, which is free: a
/// mailbox holding a few small frames, as most do between two drains, never touches the
/// shared counter, whose cache line would otherwise be hit by every push on every core.
pub(crate) const STEP: usize = 4096;

/// What the budget is charged for a mailbox holding `bytes`: the whole steps past the first,
/// so the count is at most one step per mailbox below the truth.
pub(crate) fn charge_for(bytes: usize) -> usize {
    bytes.saturating_sub(1) / STEP * STEP
}

/// Bytes buffered for all streams (queued frames, replay pages not yet written) against
/// `BrokerConfig::buffer_bytes`. One atomic counter, so a push charges it without a lock.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    cap: usize,
}

impl Budget {
    /// A budget of `cap` bytes; 0 means no cap (the count is still kept, for metrics).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            cap: if cap == 0 { usize::MAX } else { cap },
        }
    }

    /// Takes `n` bytes, or nothing (false) if that would pass the cap.
    pub(crate) fn charge(&self, n: usize) -> bool {
        // Relaxed: the counter publishes no other memory. Two pushes racing at the cap may
        // both be refused, never both admitted past it.
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.cap {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back `n` bytes charged before.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A buffer that stays charged until whoever holds it last (hyper, once it has written it)
/// drops it, so the budget also sees replay pages waiting in a connection's write buffer.
struct Charged {
    buf: BytesMut,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.budget.release(self.buf.len());
    }
}

/// Charges `buf` to `budget` until the returned bytes are dropped; `None` if it does not fit.
pub(crate) fn charged(buf: BytesMut, budget: &Arc<Budget>) -> Option<Bytes> {
    budget.charge(buf.len()).then(|| {
        Bytes::from_owner(Charged {
            buf,
            budget: budget.clone(),
        })
    })
}
