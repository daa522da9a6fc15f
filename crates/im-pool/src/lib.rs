#![doc = include_str!("../README.md")]
//!
//! The pool never waits on a session: it hands frames to the [`Mailboxes`] port, whose
//! `deliver` must not block. Recipients are partitioned over workers by user, and every
//! committed message reaches the pool in id order, so each session sees its frames in id
//! order, which is what resume by `Last-Event-ID` relies on.

use im_protocol::sse::Frame;
use im_protocol::{Message, UserId};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pool's ports, defined in `im-protocol` so that their implementers (the SSE broker, the
/// user manager) need not depend on the pool.
pub use im_protocol::delivery::{Mailboxes, Recipients};

/// Sizing of a [`ConsumerPool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Dispatcher threads.
    pub workers: usize,
    /// Bounded queue length per worker, in deliveries (chunks).
    pub queue: usize,
    /// Recipients per delivery chunk, so a huge group does not monopolise a queue slot.
    pub chunk: usize,
    /// Recipients up to which a message is delivered by the calling thread itself when their
    /// workers have nothing in hand: a direct message then wakes no dispatcher thread. 0
    /// sends everything through the workers.
    pub inline: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            workers: cores,
            queue: 8192,
            chunk: 256,
            inline: 4,
        }
    }
}

struct Delivery {
    frame: Frame,
    users: Vec<UserId>,
}

/// One dispatcher thread's queue, and how many deliveries it has been given and not yet
/// finished: at 0, everything sent to it is in its mailboxes.
struct Worker {
    queue: flume::Sender<Delivery>,
    in_hand: Arc<AtomicUsize>,
}

/// A fixed set of dispatcher threads that turn committed messages into mailbox frames.
///
/// Each message is encoded once; its `Bytes` are shared by every recipient session.
pub struct ConsumerPool {
    workers: Vec<Worker>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mailboxes: Arc<dyn Mailboxes>,
    recipients: Arc<dyn Recipients>,
    chunk: usize,
    inline: usize,
}

impl std::fmt::Debug for ConsumerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerPool")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl ConsumerPool {
    /// Starts the worker threads; they stop when the pool is dropped and their queues drain.
    pub fn start(
        config: PoolConfig,
        mailboxes: Arc<dyn Mailboxes>,
        recipients: Arc<dyn Recipients>,
    ) -> std::io::Result<Self> {
        let n = config.workers.max(1);
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = flume::bounded::<Delivery>(config.queue.max(1));
            let in_hand = Arc::new(AtomicUsize::new(0));
            let (mailboxes, done) = (mailboxes.clone(), in_hand.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("im-pool-{i}"))
                    .spawn(move || {
                        for d in rx.iter() {
                            for user in d.users {
                                mailboxes.deliver(user, &d.frame);
                            }
                            done.fetch_sub(1, Ordering::Release);
                        }
                    })?,
            );
            workers.push(Worker { queue: tx, in_hand });
        }
        Ok(Self {
            workers,
            threads,
            mailboxes,
            recipients,
            chunk: config.chunk.max(1),
            inline: config.inline,
        })
    }

    /// Deliveries waiting in each worker's queue, for metrics.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.queue.len()).collect()
    }

    /// Stops accepting work and waits until every queued frame is in its mailbox.
    pub fn shutdown(mut self) {
        self.workers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Delivers a committed message to every recipient's sessions.
    ///
    /// Call it in id order, from one thread at a time (the log follower does). It blocks only
    /// while a worker queue is full, which slows the follower rather than losing a frame.
    pub fn dispatch(&self, msg: &Message) {
        let mut users = Vec::new();
        self.recipients.recipients(msg, &mut users);
        users.sort_unstable();
        users.dedup();
        let frame = Frame::message(msg);
        let n = self.workers.len();
        // A worker with nothing in hand has put every earlier frame of its users in their
        // mailboxes, and only this caller gives it more: delivering here keeps each
        // session's frames in id order and saves waking a thread.
        if users.len() <= self.inline
            && users.iter().all(|&u| {
                self.workers[worker_of(u, n)]
                    .in_hand
                    .load(Ordering::Acquire)
                    == 0
            })
        {
            for user in users {
                self.mailboxes.deliver(user, &frame);
            }
            return;
        }
        let mut per_worker: Vec<Vec<UserId>> = vec![Vec::new(); n];
        for u in users {
            per_worker[worker_of(u, n)].push(u);
        }
        for (worker, mut users) in self.workers.iter().zip(per_worker) {
            // Peel chunks off the end, so each recipient id is moved once.
            while !users.is_empty() {
                let chunk = users.split_off(users.len().saturating_sub(self.chunk));
                worker.in_hand.fetch_add(1, Ordering::Relaxed);
                if worker
                    .queue
                    .send(Delivery {
                        frame: frame.clone(),
                        users: chunk,
                    })
                    .is_err()
                {
                    tracing::warn!("consumer pool stopped; live delivery skipped");
                    return;
                }
            }
        }
    }
}

/// The worker that owns `user`: fixed per user so one session's frames stay in order.
fn worker_of(user: UserId, workers: usize) -> usize {
    // Multiplicative hash spreads sequential ids evenly.
    (user.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % workers
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::{MessageId, Target};
    use parking_lot::Mutex;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder(Mutex<HashMap<UserId, Vec<u64>>>);
    impl Mailboxes for Recorder {
        fn deliver(&self, user: UserId, frame: &Frame) {
            self.0
                .lock()
                .entry(user)
                .or_default()
                .push(frame.id.unwrap_or(0));
        }
    }
    struct Everyone(u64);
    impl Recipients for Everyone {
        fn recipients(&self, _: &Message, out: &mut Vec<UserId>) {
            out.extend((1..=self.0).map(UserId));
        }
    }

    /// Odd ids go to users 1 and 2 only (small enough to deliver inline), even ids to all.
    struct Alternating(u64);
    impl Recipients for Alternating {
        fn recipients(&self, msg: &Message, out: &mut Vec<UserId>) {
            let last = if msg.id.0 % 2 == 1 { 2 } else { self.0 };
            out.extend((1..=last).map(UserId));
        }
    }

    /// Slow for users over 2, so the workers still hold large deliveries when the next
    /// small message comes.
    #[derive(Default)]
    struct SlowRecorder(Recorder);
    impl Mailboxes for SlowRecorder {
        fn deliver(&self, user: UserId, frame: &Frame) {
            if user.0 > 2 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            self.0.deliver(user, frame);
        }
    }

    fn text(id: u64) -> Message {
        Message {
            id: MessageId(id),
            conversation: "g1".into(),
            from: UserId(1),
            to: Target::User(UserId(2)),
            kind: "text".into(),
            body: serde_json::json!({"text": "x"}),
            client_id: None,
            sent_at: 0,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            amends: None,
        }
    }

    /// Dispatches messages 1..=n through a pool and waits until every frame is delivered.
    fn run(
        cfg: PoolConfig,
        mailboxes: Arc<dyn Mailboxes>,
        recipients: Arc<dyn Recipients>,
        n: u64,
    ) {
        let pool = ConsumerPool::start(cfg, mailboxes, recipients).unwrap();
        for id in 1..=n {
            pool.dispatch(&text(id));
        }
        pool.shutdown();
    }

    #[test]
    fn inline_and_queued_deliveries_keep_id_order() {
        let rec = Arc::new(SlowRecorder::default());
        let cfg = PoolConfig {
            workers: 2,
            queue: 4,
            chunk: 3,
            inline: 4,
        };
        run(cfg, rec.clone(), Arc::new(Alternating(9)), 400);
        let got = rec.0.0.lock();
        for user in 1..=9 {
            let want: Vec<u64> = (1..=400).filter(|id| user <= 2 || id % 2 == 0).collect();
            assert_eq!(got[&UserId(user)], want, "user {user}");
        }
    }

    #[test]
    fn every_recipient_gets_every_message_in_order() {
        let rec = Arc::new(Recorder::default());
        let cfg = PoolConfig {
            workers: 3,
            queue: 4,
            chunk: 7,
            inline: 4,
        };
        run(cfg, rec.clone(), Arc::new(Everyone(50)), 100);
        let got = rec.0.lock();
        assert_eq!(got.len(), 50);
        for ids in got.values() {
            assert_eq!(ids, &(1..=100).collect::<Vec<_>>());
        }
    }
}
