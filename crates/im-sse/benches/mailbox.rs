//! The broker's hot path: `Mailboxes::deliver` (one `Mailbox::push` per session) and the
//! body's drain, as the consumer pool and hyper drive them.
//!
//! 1,000 users hold one stream each. One iteration delivers 10 shared frames to every user
//! (10,000 pushes) and, in `deliver_and_drain`, then polls every stream once, which takes its
//! 10 frames as one buffer. `deliver` times the pushes alone and drains outside the clock.
// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::Body;
use im_protocol::delivery::Mailboxes;
use im_protocol::sse::Frame;
use im_protocol::{Message, MessageId, Target, UserId};
use im_sse::{
    BrokerConfig, PageLimit, ReplayError, ReplayPage, ReplaySource, Resume, SessionInfo, SseBroker,
    SseStream,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Users, one stream each.
const USERS: u64 = 1_000;

/// Frames delivered to every user per iteration.
const FRAMES: u64 = 10;

/// An empty store: the streams are fresh, so nothing is replayed.
struct Empty;

#[async_trait]
impl ReplaySource for Empty {
    async fn count(
        &self,
        _: UserId,
        _: MessageId,
        _: MessageId,
        _: usize,
    ) -> Result<usize, ReplayError> {
        Ok(0)
    }
    async fn page(
        &self,
        _: UserId,
        _: MessageId,
        _: MessageId,
        _: PageLimit,
    ) -> Result<ReplayPage, ReplayError> {
        Ok(ReplayPage::default())
    }
    async fn latest_id(&self) -> Result<MessageId, ReplayError> {
        Ok(MessageId(0))
    }
}

fn frame(id: u64) -> Frame {
    Frame::message(&Message {
        id: MessageId(id),
        conversation: "g1".into(),
        from: UserId(1),
        to: Target::Group(im_protocol::GroupId(1)),
        kind: "text".into(),
        body: serde_json::json!({"text": "a message of an ordinary length, say fifty bytes"}),
        client_id: None,
        sent_at: 0,
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        amends: None,
    })
}

/// Polls every stream once, taking what its mailbox holds.
fn drain(streams: &mut [SseStream]) {
    let mut cx = Context::from_waker(Waker::noop());
    for s in streams.iter_mut() {
        match Pin::new(s).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                std::hint::black_box(f);
            }
            other => panic!("a stream had nothing queued: {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let broker = SseBroker::new(
        BrokerConfig {
            keepalive: Duration::from_secs(3600),
            ..BrokerConfig::default()
        },
        Arc::new(Empty),
    );
    let mut streams: Vec<SseStream> = rt.block_on(async {
        let mut v = Vec::new();
        for u in 0..USERS {
            let who = SessionInfo {
                user: UserId(u),
                session: u,
            };
            v.push(broker.open(who, Resume::Live).await.expect("open"));
        }
        v
    });
    // The head (`retry:` and `ready`) goes first.
    drain(&mut streams);
    let frames: Vec<Frame> = (1..=FRAMES).map(frame).collect();
    let mut next = 0u64;
    let mut deliver = |broker: &SseBroker| {
        for f in &frames {
            let mut f = f.clone();
            next += 1;
            f.id = Some(next);
            for u in 0..USERS {
                broker.deliver(UserId(u), &f);
            }
        }
    };

    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(USERS * FRAMES));
    g.bench_function("deliver", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                deliver(&broker);
                spent += start.elapsed();
                drain(&mut streams);
            }
            spent
        })
    });
    g.bench_function("deliver_and_drain", |b| {
        b.iter(|| {
            deliver(&broker);
            drain(&mut streams);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
