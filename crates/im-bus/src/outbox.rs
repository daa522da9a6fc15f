//! What both adapters share: the queue of frames waiting to go out, and their limits.

use std::time::Duration;

/// Frames queued for sending; when full, new ones are dropped (the bus is best effort and
/// the follower's poll fills in).
pub(crate) const QUEUE: usize = 4096;
/// Frames sent in one round trip.
pub(crate) const BATCH: usize = 64;
/// The largest frame either adapter sends: far under both servers' limits, so one large
/// commit cannot stall the connection; larger commits go as their head alone.
pub(crate) const MAX_FRAME: usize = 512 * 1024;

/// What both adapters keep besides their connection: the frames waiting to go out and
/// whether the connection is up.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    out: flume::Sender<bytes::Bytes>,
    pub(crate) queued: flume::Receiver<bytes::Bytes>,
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        let (out, queued) = flume::bounded(QUEUE);
        Self {
            out,
            queued,
            connected: Default::default(),
        }
    }

    /// Queues a frame; a full queue drops it rather than block the caller.
    pub(crate) fn send(&self, frame: bytes::Bytes) {
        let _ = self.out.try_send(frame);
    }

    /// Up to [`BATCH`] queued frames after `first`, to send in one go.
    pub(crate) fn more(&self) -> impl Iterator<Item = bytes::Bytes> + '_ {
        self.queued.try_iter().take(BATCH - 1)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Waits before the next connection attempt: quickly at first, at most a few seconds.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << failures.min(4))).min(Duration::from_secs(4))
}
