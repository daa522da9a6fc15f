#![doc = include_str!("../README.md")]
//!
//! Both adapters keep one connection per node, reconnect on their own, and report each
//! reconnect to the node ([`im_cluster::Inbound::reconnected`]), whose follower then reads
//! the log head: whatever a bus lost while it was down costs latency, never a message.

#[cfg(feature = "nats")]
mod nats;
#[cfg(any(feature = "redis", feature = "nats"))]
mod outbox;
#[cfg(feature = "redis")]
mod redis_bus;

#[cfg(feature = "nats")]
pub use nats::NatsBus;
#[cfg(feature = "redis")]
pub use redis_bus::RedisBus;

/// A bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL or prefix is not usable.
    #[error("bus configuration: {0}")]
    Config(String),
}
