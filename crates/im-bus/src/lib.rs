#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
//!
//! Both adapters keep one connection per node, reconnect on their own, and report each
//! reconnect to the node ([`im_cluster::Inbound::reconnected`]), whose follower then reads
//! the log head: whatever a bus lost while it was down costs latency, never a message.

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis_bus;

#[cfg(feature = "nats")]
pub use nats::NatsBus;
#[cfg(feature = "redis")]
pub use redis_bus::RedisBus;

use std::time::Duration;

/// Frames queued for sending; when full, new ones are dropped (the bus is best effort and
/// the follower's poll fills in).
const QUEUE: usize = 4096;
/// Frames sent in one round trip.
const BATCH: usize = 64;
/// The largest frame either adapter sends: far under both servers' limits, so one large
/// commit cannot stall the connection; larger commits go as their head alone.
const MAX_FRAME: usize = 512 * 1024;

/// A bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL or prefix is not usable.
    #[error("bus configuration: {0}")]
    Config(String),
}

/// Waits before the next connection attempt: quickly at first, at most a few seconds.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << failures.min(4))).min(Duration::from_secs(4))
}
