//! The follower against a log in memory, fed shuffled, duplicated and dropped signals.

use super::*;
use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// A log whose head moves as the test "commits"; some positions are holes (never existed).
struct MemLog {
    entries: Vec<LogEntry>,
    head: AtomicU64,
}

#[async_trait]
impl LogReader for MemLog {
    async fn head(&self) -> Result<Position, crate::LogReadError> {
        Ok(self.head.load(Ordering::Acquire))
    }

    async fn read(
        &self,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<LogEntry>, crate::LogReadError> {
        let head = self.head.load(Ordering::Acquire);
        Ok(self
            .entries
            .iter()
            .filter(|e| e.pos > after && e.pos <= up_to.min(head))
            .take(limit)
            .cloned()
            .collect())
    }
}

fn entry(pos: Position) -> LogEntry {
    LogEntry {
        pos,
        entry: Entry::Change {
            topic: Topic::Users,
            record: Bytes::from(pos.to_string()),
        },
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Commit up to this many more positions, then offer them (or not).
    Commit { more: u64, offer: bool, twice: bool },
    /// A wake-up for some position, maybe stale, maybe ahead of what was applied.
    Wake(u64),
    /// An offer of an old slice again (a duplicate).
    Replay { from: u64, len: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1..20u64, any::<bool>(), any::<bool>()).prop_map(|(more, offer, twice)| Step::Commit {
            more,
            offer,
            twice
        }),
        (0..400u64).prop_map(Step::Wake),
        (0..300u64, 1..10u64).prop_map(|(from, len)| Step::Replay { from, len }),
    ]
}

fn run(holes: Vec<u64>, mut steps: Vec<Step>, shuffle: u64) -> Result<(), TestCaseError> {
    const N: u64 = 300;
    let entries: Vec<LogEntry> = (1..=N).filter(|p| !holes.contains(p)).map(entry).collect();
    let log = Arc::new(MemLog {
        entries: entries.clone(),
        head: AtomicU64::new(0),
    });
    let seen = Arc::new(Mutex::new(Vec::<Position>::new()));
    let rec = seen.clone();
    let applier = Arc::new(move |pos: Position, _: &Entry| rec.lock().push(pos));
    let follower = Follower::start(
        log.clone(),
        Appliers::new().topic(Topic::Users, applier),
        0,
        FollowerConfig {
            poll: Duration::from_millis(5),
            read_batch: 7,
            queue: 64,
            ..FollowerConfig::default()
        },
    )
    .unwrap();
    // Shuffle neighbouring steps, as a bus reorders.
    let len = steps.len();
    if len > 1 {
        for i in 0..len {
            let j = (i as u64 * 31 + shuffle) as usize % len;
            steps.swap(i, j);
        }
    }
    let mut head = 0u64;
    let slice = |from: u64, to: u64| -> Vec<LogEntry> {
        entries
            .iter()
            .filter(|e| e.pos > from && e.pos <= to)
            .cloned()
            .collect()
    };
    for s in steps {
        match s {
            Step::Commit { more, offer, twice } => {
                let from = head;
                head = (head + more).min(N);
                log.head.store(head, Ordering::Release);
                if offer {
                    follower.offer(slice(from, head));
                    if twice {
                        follower.offer(slice(from, head));
                    }
                }
            }
            Step::Wake(p) => follower.wake(p.min(head)),
            Step::Replay { from, len } => {
                let from = from.min(head);
                follower.offer(slice(from, (from + len).min(head)));
            }
        }
    }
    log.head.store(N, Ordering::Release);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(follower.wait_applied(N))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want: Vec<Position> = entries.iter().map(|e| e.pos).collect();
    prop_assert_eq!(&*seen.lock(), &want, "every position once, in order");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn applies_every_position_once_in_order(
        holes in proptest::collection::vec(1..300u64, 0..10),
        steps in proptest::collection::vec(step(), 0..60),
        shuffle in any::<u64>(),
    ) {
        run(holes, steps, shuffle)?;
    }
}

#[test]
fn a_gap_in_offers_is_filled_from_the_store() {
    let entries: Vec<LogEntry> = (1..=10).map(entry).collect();
    let log = Arc::new(MemLog {
        entries: entries.clone(),
        head: AtomicU64::new(10),
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let follower = Follower::start(
        log,
        Appliers::new().topic(
            Topic::Users,
            Arc::new(move |pos: Position, _: &Entry| rec.lock().push(pos)),
        ),
        0,
        FollowerConfig {
            // No poll during the test: only the offer's gap-filling can bring 1..=7.
            poll: Duration::from_secs(3600),
            ..FollowerConfig::default()
        },
    )
    .unwrap();
    follower.offer(entries[7..].to_vec());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(follower.wait_applied(10)).unwrap();
    assert_eq!(*seen.lock(), (1..=10).collect::<Vec<_>>());
}
