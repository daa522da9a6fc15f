//! Wire types shared by every Web-IM crate: ids, [`Message`], [`Target`], API error codes,
//! JSON for browsers, versioned postcard records for storage and the bus, and SSE framing.
//!
//! This crate does no I/O and has no async runtime, so clients, servers and tools can all
//! depend on it.
#![doc = include_str!("../README.md")]

pub mod delivery;
mod error;
mod ids;
mod message;
pub mod record;
pub mod sse;
pub mod wire;

pub use error::{ApiError, Cause, ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{GroupId, MessageId, UserId};
pub use message::{
    Amend, Draft, Message, Quote, Reaction, Target, conversation_of, direct_parties, group_of,
    now_millis,
};
