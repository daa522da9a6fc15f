//! SSE framing cost per message.
//!
//! Every durable message is encoded once into an SSE frame whose `Bytes` every recipient
//! session shares, so `sse/encode_message` is paid once per message no matter the fan-out.
//! `sse/parse_message` is the client side (`im-client` and the tests) reading that frame
//! back. Throughput is in bytes of the frame.
// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use im_protocol::sse::{self, Item, Parser};
use im_protocol::{Message, MessageId, Target, UserId, conversation_of};
use std::hint::black_box;

/// A typical chat line: a direct text message with a client id, as the store returns it.
fn typical_message() -> Message {
    let (from, to) = (UserId(1_042), Target::User(UserId(2_317)));
    Message {
        id: MessageId(18_446_744),
        conversation: conversation_of(from, to),
        from,
        to,
        kind: "text".into(),
        body: serde_json::json!({"text": "Are we still on for lunch at 12:30? I can book the place."}),
        client_id: Some("c-7f3a9b2e".into()),
        sent_at: 1_767_225_600_000,
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        amends: None,
    }
}

fn sse(c: &mut Criterion) {
    let msg = typical_message();
    let frame = sse::message_frame(&msg);
    // The parse bench is only meaningful if the frame round-trips.
    let parsed = Parser::new().feed(&frame);
    assert!(
        matches!(parsed.as_slice(), [Item::Event(e)] if e.id.as_deref() == Some("18446744")),
        "the frame does not parse back: {parsed:?}"
    );

    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("encode_message", |b| {
        b.iter(|| sse::message_frame(black_box(&msg)))
    });
    group.bench_function("parse_message", |b| {
        b.iter(|| Parser::new().feed(black_box(&frame)))
    });
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
