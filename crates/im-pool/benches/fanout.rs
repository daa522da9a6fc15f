//! Fan-out throughput of the [`ConsumerPool`]: mailbox deliveries per second when every
//! message goes to 1,000 users with one session each (a large group).
//!
//! The pool runs with its default sizing (one worker per core, chunks of 256 recipients).
//! The [`Mailboxes`] stand-in does what the SSE broker's push does, minus the waker: lock
//! the user's slot (a `parking_lot::Mutex`), queue a clone of the shared frame, and count
//! the delivery. One iteration dispatches 10 messages (encode once, split into chunks,
//! queue) and waits, yielding, until all 10,000 deliveries are done. The pool is started
//! once; slots are cleared outside the timed part.
// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use im_pool::{ConsumerPool, Mailboxes, PoolConfig, Recipients};
use im_protocol::sse::Frame;
use im_protocol::{GroupId, Message, MessageId, Target, UserId, conversation_of};
use parking_lot::Mutex;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Users (one session each) every message goes to.
const USERS: u64 = 1_000;

/// Messages dispatched per iteration.
const MESSAGES: u64 = 10;

/// One frame queue per user (indexed by user id, drained between iterations) and a
/// delivery counter.
struct Sessions {
    slots: Vec<Mutex<Vec<Frame>>>,
    delivered: AtomicU64,
}

impl Sessions {
    fn new(users: u64) -> Self {
        Self {
            slots: (0..users)
                .map(|_| Mutex::new(Vec::with_capacity(MESSAGES as usize)))
                .collect(),
            delivered: AtomicU64::new(0),
        }
    }

    /// Empties every queue (outside the timed part), as the SSE bodies would have.
    fn drain(&self) {
        for slot in &self.slots {
            slot.lock().clear();
        }
    }
}

impl Mailboxes for Sessions {
    fn deliver(&self, user: UserId, frame: &Frame) {
        if let Some(slot) = self.slots.get(user.0 as usize) {
            slot.lock().push(frame.clone());
        }
        self.delivered.fetch_add(1, Ordering::Release);
    }
}

/// Every user is a member: the group of the bench.
struct Members(u64);

impl Recipients for Members {
    fn recipients(&self, _: &Message, out: &mut Vec<UserId>) {
        out.extend((0..self.0).map(UserId));
    }
}

/// A committed group message with id `id`.
fn message(id: u64) -> Message {
    let (from, to) = (UserId(0), Target::Group(GroupId(7)));
    Message {
        id: MessageId(id),
        conversation: conversation_of(from, to),
        from,
        to,
        kind: "text".into(),
        body: serde_json::json!({"text": "Standup moved to 10:15, same room."}),
        client_id: None,
        sent_at: 1_767_225_600_000 + id,
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        amends: None,
    }
}

fn fanout(c: &mut Criterion) {
    let sessions = Arc::new(Sessions::new(USERS));
    let pool = match ConsumerPool::start(
        PoolConfig::default(),
        sessions.clone(),
        Arc::new(Members(USERS)),
    ) {
        Ok(pool) => pool,
        Err(e) => panic!("cannot start the consumer pool: {e}"),
    };
    let mut next_id = 0u64;

    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(USERS * MESSAGES));
    group.bench_function("fanout_1000_sessions", |b| {
        b.iter_batched(
            || {
                sessions.drain();
                let messages: Vec<Message> = (0..MESSAGES)
                    .map(|_| {
                        next_id += 1;
                        message(next_id)
                    })
                    .collect();
                let target = sessions.delivered.load(Ordering::Acquire) + USERS * MESSAGES;
                (messages, target)
            },
            |(messages, target)| {
                for m in &messages {
                    pool.dispatch(black_box(m));
                }
                while sessions.delivered.load(Ordering::Acquire) < target {
                    std::thread::yield_now();
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // Join the workers, then check the last iteration reached every session (when the
    // bench ran at all: `--list` or a filter skips it).
    pool.shutdown();
    if next_id > 0 {
        let last = sessions
            .slots
            .iter()
            .map(|s| s.lock().last().and_then(|f| f.id))
            .min();
        assert_eq!(
            last,
            Some(Some(next_id)),
            "every session got the last message"
        );
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
