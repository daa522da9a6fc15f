//! Throughput of a [`ChannelGroup`]: how many messages per second the sharded handler
//! chains get through, from `submit` to the sender holding its outcome.
//!
//! Setup as in a server, minus the disk: 2 shards, a 2-handler chain (a validator and a
//! rewriting filter), and `im_channel::MemoryLog`, which assigns ids from an atomic counter and
//! answers `Outcome::Stored` at once, so the number is the channel layer's own cost
//! (queueing, hashing to a shard, the chain, the reply) and not SQLite's. One iteration
//! submits 1,000 messages spread over 100 conversations and waits for all 1,000 receipts;
//! building the messages is excluded from the time.
// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use im_channel::{Channel, ChannelGroup, ChannelGroupConfig, MemoryLog, Outcome, Pending};
use im_protocol::{ApiError, ErrorCode, Target, UserId, conversation_of};
use std::hint::black_box;
use std::sync::Arc;

/// Messages per iteration.
const BATCH: u64 = 1_000;

/// Conversations the batch is spread over.
const CONVERSATIONS: u64 = 100;

/// A built-in-style check: the text must be a non-empty string.
fn validate(m: &mut Pending) -> Result<(), ApiError> {
    match m.body["text"].as_str() {
        Some(t) if !t.trim().is_empty() => Ok(()),
        _ => Err(ApiError::new(ErrorCode::InvalidBody, "empty text")),
    }
}

/// An application filter: masks one word, rewriting the body only when it occurs.
fn mask(m: &mut Pending) -> Result<(), ApiError> {
    if let Some(t) = m.body["text"].as_str().filter(|t| t.contains("darn")) {
        m.body["text"] = t.replace("darn", "****").into();
    }
    Ok(())
}

/// The batch: message `i` goes from user `i % 100` to user `i % 100 + 1000`, so 100
/// direct conversations; one in ten contains the masked word.
fn batch() -> Vec<Pending> {
    (0..BATCH)
        .map(|i| {
            let from = UserId(i % CONVERSATIONS);
            let to = Target::User(UserId(i % CONVERSATIONS + 1_000));
            let text = if i % 10 == 0 {
                "well darn, see you at 12:30"
            } else {
                "see you at 12:30"
            };
            Pending {
                from,
                to,
                kind: "text".into(),
                body: serde_json::json!({ "text": text }),
                client_id: Some(format!("c-{i}")),
                conversation: conversation_of(from, to),
                sent_at: 1_767_225_600_000 + i,
                reply_to: None,
                amend: None,
            }
        })
        .collect()
}

fn channel_group(c: &mut Criterion) {
    let channel = Channel::new().with(validate).with(mask);
    // Each shard queue holds a whole batch, so no submit is refused as overloaded.
    let config = ChannelGroupConfig {
        shards: 2,
        queue: BATCH as usize,
    };
    let group = match ChannelGroup::start("bench", channel, config, Arc::new(MemoryLog::default()))
    {
        Ok(group) => group,
        Err(e) => panic!("cannot start the channel group: {e}"),
    };
    let template = batch();

    let mut bench = c.benchmark_group("channel_group");
    bench.throughput(Throughput::Elements(BATCH));
    bench.bench_function("1000_messages", |b| {
        b.iter_batched(
            || template.clone(),
            |messages| {
                let receipts: Vec<_> = messages
                    .into_iter()
                    .map(|m| group.submit(m).expect("queue sized for the whole batch"))
                    .collect();
                let mut stored = 0u64;
                for receipt in receipts {
                    // A plain thread, not a runtime: block on each oneshot in turn.
                    if let Ok(Outcome::Stored(m)) = receipt.blocking_recv() {
                        black_box(&m);
                        stored += 1;
                    }
                }
                assert_eq!(stored, BATCH, "every message must be stored");
            },
            BatchSize::LargeInput,
        )
    });
    bench.finish();
}

criterion_group!(benches, channel_group);
criterion_main!(benches);
