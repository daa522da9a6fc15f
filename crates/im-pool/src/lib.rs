#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
//!
//! The pool never waits on a session: it hands frames to the [`Mailboxes`] port, whose
//! `deliver` must not block. Recipients are partitioned over workers by user, and every
//! committed message reaches the pool in id order, so each session sees its frames in id
//! order, which is what resume by `Last-Event-ID` relies on.

use im_protocol::sse::Frame;
use im_protocol::{Message, UserId};
use std::sync::Arc;

/// Live sessions, as the pool sees them: implemented by the SSE broker.
pub trait Mailboxes: Send + Sync + 'static {
    /// Queues `frame` on every live session of `user`. Must not block: a session whose
    /// mailbox is full is closed, and its client resumes from the store.
    fn deliver(&self, user: UserId, frame: &Frame);
}

/// Who receives a message: implemented by the user manager, which knows group members.
pub trait Recipients: Send + Sync + 'static {
    /// Appends every user who must receive `msg`, the sender included (their other sessions).
    fn recipients(&self, msg: &Message, out: &mut Vec<UserId>);
}

/// Sizing of a [`ConsumerPool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Dispatcher threads.
    pub workers: usize,
    /// Bounded queue length per worker, in deliveries (chunks).
    pub queue: usize,
    /// Recipients per delivery chunk, so a huge group does not monopolise a queue slot.
    pub chunk: usize,
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
        }
    }
}

struct Delivery {
    frame: Frame,
    users: Vec<UserId>,
}

/// A fixed set of dispatcher threads that turn committed messages into mailbox frames.
///
/// Each message is encoded once; its `Bytes` are shared by every recipient session.
pub struct ConsumerPool {
    workers: Vec<flume::Sender<Delivery>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    recipients: Arc<dyn Recipients>,
    chunk: usize,
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
            let mailboxes = mailboxes.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("im-pool-{i}"))
                    .spawn(move || {
                        for d in rx.iter() {
                            for user in d.users {
                                mailboxes.deliver(user, &d.frame);
                            }
                        }
                    })?,
            );
            workers.push(tx);
        }
        Ok(Self {
            workers,
            threads,
            recipients,
            chunk: config.chunk.max(1),
        })
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
    /// Call it in id order (the store's writer does). It blocks only while a worker queue is
    /// full, which slows the writer rather than losing a frame.
    pub fn dispatch(&self, msg: &Message) {
        let mut users = Vec::new();
        self.recipients.recipients(msg, &mut users);
        users.sort_unstable();
        users.dedup();
        let frame = Frame::message(msg);
        let n = self.workers.len();
        let mut per_worker: Vec<Vec<UserId>> = vec![Vec::new(); n];
        for u in users {
            per_worker[worker_of(u, n)].push(u);
        }
        for (worker, mut users) in self.workers.iter().zip(per_worker) {
            // Peel chunks off the end, so each recipient id is moved once.
            while !users.is_empty() {
                let chunk = users.split_off(users.len().saturating_sub(self.chunk));
                if worker
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

    #[test]
    fn every_recipient_gets_every_message_in_order() {
        let rec = Arc::new(Recorder::default());
        let cfg = PoolConfig {
            workers: 3,
            queue: 4,
            chunk: 7,
        };
        let pool = ConsumerPool::start(cfg, rec.clone(), Arc::new(Everyone(50))).unwrap();
        for id in 1..=100 {
            pool.dispatch(&Message {
                id: MessageId(id),
                conversation: "g1".into(),
                from: UserId(1),
                to: Target::User(UserId(2)),
                kind: "text".into(),
                body: serde_json::json!({"text": "x"}),
                client_id: None,
                sent_at: 0,
            });
        }
        pool.shutdown();
        let got = rec.0.lock();
        assert_eq!(got.len(), 50);
        for ids in got.values() {
            assert_eq!(ids, &(1..=100).collect::<Vec<_>>());
        }
    }
}
