use crate::{Channel, MessageLog, Outcome, Pending, Reply};
use im_protocol::{ApiError, ErrorCode};
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Sizing of a [`ChannelGroup`].
#[derive(Debug, Clone, Copy)]
pub struct ChannelGroupConfig {
    /// Dispatcher threads; each owns the conversations that hash to it.
    pub shards: usize,
    /// Bounded queue length per shard; a full queue answers 503.
    pub queue: usize,
}

impl Default for ChannelGroupConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            shards: cores,
            queue: 4096,
        }
    }
}

struct Job {
    msg: Pending,
    reply: Reply,
}

/// A receipt for a submitted message: await it for the outcome.
pub type Submitted = oneshot::Receiver<Outcome>;

/// One channel run on N shards, one long-lived dispatcher thread per shard.
///
/// A message goes to the shard of its conversation, so messages of one conversation keep
/// their order, and conversations spread over cores.
pub struct ChannelGroup {
    name: String,
    shards: Vec<flume::Sender<Job>>,
}

impl std::fmt::Debug for ChannelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelGroup")
            .field("name", &self.name)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl ChannelGroup {
    /// Messages waiting in each shard's queue, for metrics.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.shards.iter().map(flume::Sender::len).collect()
    }

    /// Starts the shard threads. They end when the group is dropped and their queues drain.
    pub fn start(
        name: impl Into<String>,
        channel: Channel,
        config: ChannelGroupConfig,
        log: Arc<dyn MessageLog>,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let channel = Arc::new(channel);
        let mut shards = Vec::with_capacity(config.shards.max(1));
        for i in 0..config.shards.max(1) {
            let (tx, rx) = flume::bounded::<Job>(config.queue.max(1));
            let channel = channel.clone();
            let log = log.clone();
            std::thread::Builder::new()
                .name(format!("im-{name}-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        run_job(&channel, log.as_ref(), job);
                    }
                })?;
            shards.push(tx);
        }
        Ok(Self { name, shards })
    }

    /// The group's name, as kinds refer to it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a message on its conversation's shard without waiting.
    ///
    /// A full queue is refused at once with `overloaded` (503), never dropped in silence.
    pub fn submit(&self, msg: Pending) -> Result<Submitted, ApiError> {
        let (reply, rx) = Reply::channel();
        let shard = &self.shards[shard_of(&msg.conversation, self.shards.len())];
        shard.try_send(Job { msg, reply }).map_err(|e| match e {
            flume::TrySendError::Full(_) => {
                ApiError::new(ErrorCode::Overloaded, "the server is busy; retry shortly")
            }
            flume::TrySendError::Disconnected(_) => {
                ApiError::new(ErrorCode::Overloaded, "the server is shutting down")
            }
        })?;
        Ok(rx)
    }
}

fn shard_of(conversation: &str, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    conversation.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

fn run_job(channel: &Channel, log: &dyn MessageLog, job: Job) {
    let Job { mut msg, reply } = job;
    // A panicking handler (or log) must not kill the shard. The reply answers `Failed` by
    // itself when it is dropped during the unwind, so the sender never waits forever.
    let conversation = msg.conversation.clone();
    let ran = catch_unwind(AssertUnwindSafe(move || match channel.run(&mut msg) {
        Ok(()) => log.append(msg, reply),
        Err(rejection) => reply.send(Outcome::Rejected(rejection)),
    }));
    if ran.is_err() {
        tracing::error!(%conversation, "a message handler panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::{Target, UserId};

    fn pending(text: &str, conv: &str) -> Pending {
        Pending {
            from: UserId(1),
            to: Target::User(UserId(2)),
            kind: "text".into(),
            body: serde_json::json!({"text": text}),
            client_id: None,
            conversation: conv.into(),
            sent_at: 0,
            reply_to: None,
            amend: None,
        }
    }

    #[tokio::test]
    async fn chain_rewrites_rejects_and_survives_panics() {
        let channel = Channel::new().with(|m: &mut Pending| match m.body["text"].as_str() {
            Some("boom") => panic!("handler bug"),
            Some("bad") => Err(ApiError::custom(422, "profanity", "no")),
            Some(t) => {
                m.body["text"] = t.to_uppercase().into();
                Ok(())
            }
            None => Ok(()),
        });
        let cfg = ChannelGroupConfig {
            shards: 2,
            queue: 16,
        };
        let group =
            ChannelGroup::start("t", channel, cfg, Arc::new(crate::MemoryLog::default())).unwrap();
        let Outcome::Stored(m) = group.submit(pending("hi", "a")).unwrap().await.unwrap() else {
            panic!("not stored")
        };
        assert_eq!(m.body["text"], "HI");
        let out = group.submit(pending("bad", "a")).unwrap().await.unwrap();
        assert!(matches!(out, Outcome::Rejected(e) if e.code == "profanity"));
        let out = group.submit(pending("boom", "a")).unwrap().await.unwrap();
        assert!(matches!(out, Outcome::Failed(_)));
        // The shard survived the panic.
        let out = group.submit(pending("ok", "a")).unwrap().await.unwrap();
        assert!(matches!(out, Outcome::Stored(_)));
    }

    #[tokio::test]
    async fn order_holds_per_conversation() {
        let cfg = ChannelGroupConfig {
            shards: 4,
            queue: 1024,
        };
        let group = ChannelGroup::start(
            "t",
            Channel::new(),
            cfg,
            Arc::new(crate::MemoryLog::default()),
        )
        .unwrap();
        let mut receipts = Vec::new();
        for i in 0..200 {
            receipts.push(group.submit(pending(&i.to_string(), "same")).unwrap());
        }
        let mut last = 0;
        for r in receipts {
            let Outcome::Stored(m) = r.await.unwrap() else {
                panic!()
            };
            assert!(m.id.0 > last);
            last = m.id.0;
        }
    }

    #[test]
    fn full_queue_is_overloaded_not_dropped() {
        struct Stuck(std::sync::Mutex<()>);
        impl MessageLog for Stuck {
            fn append(&self, _: Pending, reply: Reply) {
                let _g = self.0.lock();
                reply.send(Outcome::Failed("x".into()));
            }
        }
        let stuck = Arc::new(Stuck(std::sync::Mutex::new(())));
        let guard = stuck.0.lock().unwrap();
        let cfg = ChannelGroupConfig {
            shards: 1,
            queue: 2,
        };
        let group = ChannelGroup::start("t", Channel::new(), cfg, stuck.clone()).unwrap();
        let mut refused = 0;
        let mut accepted = Vec::new();
        for _ in 0..10 {
            match group.submit(pending("x", "c")) {
                Ok(r) => accepted.push(r),
                Err(e) => {
                    assert_eq!(e.code, "overloaded");
                    refused += 1
                }
            }
        }
        assert!(refused > 0);
        drop(guard);
        // Every accepted message still gets its one outcome.
        for r in accepted {
            assert!(r.blocking_recv().is_ok());
        }
    }
}
