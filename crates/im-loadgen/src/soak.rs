//! `im-loadgen soak`: the traffic of `cargo xtask soak`, which starts the server, runs this,
//! and writes the record. Steady mixed traffic against one server for minutes or hours, to
//! show that its memory and open files stay flat, not just that it is fast.
//!
//! The traffic, all at once: direct chat between friends, group messages, uploads (some
//! downloaded again), users closing their event stream and resuming with `Last-Event-ID`, and
//! slow readers the server has to cut off. Every message must reach every stream of its
//! conversation's users exactly once, across reconnects. Message and upload limits stay at the
//! server's defaults, and each user's traffic stays well under them, so any refusal is a
//! finding.
//!
//! Every interval it samples the server (RSS, open files, threads, CPU) and the traffic
//! (rates, post-to-delivery latency, errors) and prints a line on stderr. At the end it prints
//! the report, with the whole series and the flatness verdict, as one JSON object on stdout.
//! Flatness is judged on the second half of the run (the start of it against its last tenth).
//! The first half is a warm-up: the store's page caches (64 MiB for the SQLite writer, 8 MiB
//! per reader) fill as the database grows, which takes about 26 minutes at the default rate,
//! and memory that reaches a ceiling and stays there is not a leak. A leak keeps growing in
//! the second half too.

use crate::{
    Args, Conn, Result, Tally, accounts, cpu_secs, histogram, latency_json, median, now_us,
    open_stream, own_cpu, parse_stamp, proc_field, source, stamp, verdict,
};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use im_client::Dial;
use im_protocol::sse::Item;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Users per group; group g is users `g * GROUP_SIZE ..`, so every user is in one group.
const GROUP_SIZE: usize = 10;

/// The most messages per second one user may be asked for: sends are spaced at least half
/// the mean apart, so this stays far under the server's default 10/s per user.
const MAX_USER_RATE: f64 = 2.0;

/// Mean seconds between two uploads: a few per minute, as the issue asks.
const UPLOAD_EVERY_SECS: f64 = 15.0;

/// Smallest and largest upload, drawn log-uniformly so small files are as common as big ones.
const UPLOAD_BYTES: (f64, f64) = (16.0 * 1024.0, 1024.0 * 1024.0);

/// One upload in this many is downloaded again through its link.
const DOWNLOAD_ONE_IN: usize = 3;

/// Seconds a user's stream lives before it is closed and resumed: uniform in this range, so
/// about one user in sixty reconnects every second.
const RECONNECT_SECS: (f64, f64) = (30.0, 90.0);

/// Seconds a closed stream stays closed before it resumes, around the server's `retry:` hint
/// (2 s), so what was posted meanwhile is replayed.
const GAP_SECS: (f64, f64) = (0.5, 3.0);

/// Slow reader streams held at once: even ones read nothing, odd ones trickle.
const SLOW_READERS: usize = 4;

/// Accounts the slow readers read as: members of every group who never post, so each of
/// their streams is sent all group traffic, enough to outgrow the kernel's socket buffers.
const LISTENERS: usize = 2;

/// The receive buffer of a slow reader's socket: a small window, so what it does not read
/// piles up in the server, where the server's limits must deal with it.
const SLOW_RECV_BUFFER: u32 = 4096;

/// Message ids behind the latest a slow reader resumes from, so a backlog waits for it at once.
const SLOW_BACKLOG: u64 = 10_000;

/// Seconds a stalled reader is held before we look whether the server cut it off: past the
/// server's default write timeout (60 s) plus the time its buffers take to fill.
const STALLED_LIFE_SECS: f64 = 90.0;

/// Seconds a trickling reader is held: its reads keep the connection moving, so only a
/// per-stream byte limit cuts it off, which takes its backlog longer to reach.
const TRICKLE_LIFE_SECS: f64 = 180.0;

/// Bytes a trickling reader reads per [`TRICKLE_EVERY`].
const TRICKLE_BYTES: usize = 512;

/// How often a trickling reader reads: 256 B/s, far below what its user is sent.
const TRICKLE_EVERY: Duration = Duration::from_secs(2);

/// The part of a run left out of the flatness verdict, as a fraction of it: caches and pools
/// fill in it.
const WARM_UP_FRACTION: f64 = 0.5;

/// Shorter runs are reported but not judged: caches and pools still fill at first.
const MIN_JUDGED_SECS: f64 = 600.0;

/// RSS growth still called flat: this many MiB or [`SLACK_PCT`], whichever is more.
const RSS_SLACK_MIB: f64 = 5.0;

/// Open-file growth still called flat: this many or [`SLACK_PCT`], whichever is more
/// (uploads and slow readers come and go).
const FD_SLACK: f64 = 5.0;

/// Relative growth still called flat, for RSS and open files.
const SLACK_PCT: f64 = 5.0;

/// How long the streams may take to receive everything once the senders stop.
const DRAIN: Duration = Duration::from_secs(30);

/// What one run is asked for: `--seconds`, `--users`, `--rate` and `--interval` (the seconds
/// between samples).
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// How long the traffic runs (setup and drain not counted).
    duration: Duration,
    /// Users chatting; a multiple of [`GROUP_SIZE`].
    users: usize,
    /// Messages per second offered in all.
    rate: f64,
    /// Seconds between samples.
    interval: f64,
}

impl Options {
    /// Reads the options from the command line; an error for a mix the server's defaults
    /// would refuse or the groups cannot hold.
    fn from_args(args: &Args) -> Result<Self> {
        let number = |key: &str| -> Result<f64> {
            args.get(key)
                .ok_or_else(|| format!("--{key} is required"))?
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("--{key} needs a positive number"))
        };
        let users = number("users")?;
        if users.fract() != 0.0 || (users as usize) % GROUP_SIZE != 0 {
            return Err(format!(
                "--users must be a multiple of {GROUP_SIZE} (the group size)"
            ));
        }
        let options = Self {
            duration: Duration::from_secs_f64(number("seconds")?),
            users: users as usize,
            rate: number("rate")?,
            interval: number("interval")?,
        };
        let per_user = options.rate / options.users as f64;
        if per_user > MAX_USER_RATE {
            return Err(format!(
                "--rate {} over {} users is {per_user:.1} messages/s per user; keep it at most \
                 {MAX_USER_RATE} so the server's default limit never refuses one",
                options.rate, options.users
            ));
        }
        Ok(options)
    }

    /// Seconds between samples.
    fn interval(&self) -> f64 {
        self.interval
    }
}

/// The scenario: sets up, drives the traffic against `--addr` while sampling the server
/// process `--pids` and its data dir `--data-dir`, and returns the report.
pub(crate) async fn soak(args: &Args) -> Result<Value> {
    let options = Options::from_args(args)?;
    let pid = *args
        .pids()
        .first()
        .ok_or("--pids needs the server's process id")?;
    let data_dir = PathBuf::from(args.get("data-dir").ok_or("--data-dir is required")?);
    let server = Watched { pid, data_dir };
    let cpu = own_cpu();
    let mut report = drive(&options, args.addr()?, &server).await?;
    report["generator_cpu_secs"] = json!(round2(own_cpu() - cpu));
    Ok(report)
}

// ----- the plan and what the tasks share -----

/// One account of the soak.
struct Member {
    /// Its bearer token.
    token: String,
    /// Its user id.
    id: u64,
}

/// Who talks to whom, fixed before the traffic starts.
struct Plan {
    /// The server.
    addr: SocketAddr,
    /// User i's friend for direct chat is user `i ^ 1`; its group is `i / GROUP_SIZE`.
    users: Vec<Member>,
    /// Members of every group who never post; the slow readers read as them.
    listeners: Vec<Member>,
    /// Group ids, by group index.
    groups: Vec<u64>,
    /// User index by user id, to tell who sent a delivered message.
    by_id: HashMap<u64, usize>,
    /// Messages per second in all.
    rate: f64,
    /// Sequence numbers each channel may use: room for every send of the run.
    capacity: usize,
}

impl Plan {
    /// The channels user `u`'s streams receive: both directions of its direct chat, and what
    /// every member of its group (itself included) posts there.
    fn channels_of(&self, u: usize) -> Vec<usize> {
        let group = u / GROUP_SIZE * GROUP_SIZE;
        let mut channels = vec![channel(u, false), channel(u ^ 1, false)];
        channels.extend((group..group + GROUP_SIZE).map(|m| channel(m, true)));
        channels
    }
}

/// The channel of what user `sender` posts to its friend or to its group: each channel
/// numbers its messages 0, 1, 2…, so a receiver tallies each with a [`Tally`].
fn channel(sender: usize, group: bool) -> usize {
    sender * 2 + usize::from(group)
}

/// The counters the tasks add to and the sampler reads.
#[derive(Debug, Clone, Copy)]
enum Count {
    /// Messages acknowledged.
    Sent,
    /// Messages received on some stream (replays included).
    Delivered,
    /// Deliveries replayed after a reconnect.
    Replayed,
    /// Files uploaded.
    Uploads,
    /// Their bytes.
    UploadBytes,
    /// Files downloaded again and checked.
    Downloads,
    /// Streams closed by their user and resumed.
    Reconnects,
    /// Regular streams the server ended (then resumed).
    StreamEnds,
    /// `resync` events: messages skipped, never expected here.
    Resyncs,
    /// Slow reader streams opened.
    SlowOpened,
    /// Slow readers the server had cut off when we looked.
    SlowCut,
    /// Slow readers still open at the end of their life.
    SlowOutlived,
    /// Failed requests and streams.
    Errors,
}

/// Every counter and its name in the JSON, in [`Count`] order.
const COUNTS: [(Count, &str); 13] = [
    (Count::Sent, "sent"),
    (Count::Delivered, "delivered"),
    (Count::Replayed, "replayed"),
    (Count::Uploads, "uploads"),
    (Count::UploadBytes, "upload_bytes"),
    (Count::Downloads, "downloads"),
    (Count::Reconnects, "reconnects"),
    (Count::StreamEnds, "stream_ends"),
    (Count::Resyncs, "resyncs"),
    (Count::SlowOpened, "slow_opened"),
    (Count::SlowCut, "slow_cut"),
    (Count::SlowOutlived, "slow_outlived"),
    (Count::Errors, "errors"),
];

/// The counters, one atomic each, so no task waits for another to count.
#[derive(Default)]
struct Counts([AtomicU64; COUNTS.len()]);

impl Counts {
    /// Adds `n` to one counter.
    fn add(&self, count: Count, n: u64) {
        self.0[count as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter now, in [`COUNTS`] order.
    fn snapshot(&self) -> [u64; COUNTS.len()] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The counters as a JSON object, by name.
fn counts_json(counts: &[u64; COUNTS.len()]) -> Value {
    let map: serde_json::Map<String, Value> = COUNTS
        .iter()
        .map(|(c, name)| ((*name).to_owned(), json!(counts[*c as usize])))
        .collect();
    Value::Object(map)
}

/// What every task shares.
struct Shared {
    /// The counters.
    counts: Counts,
    /// Post-to-delivery latencies (µs) of the current interval, live deliveries only.
    latency: Mutex<Histogram<u64>>,
    /// Acknowledged messages per channel: the next sequence number to send.
    acked: Vec<AtomicU64>,
    /// Per channel, what receivers are owed: `u64::MAX` until the senders stop.
    owed: Vec<AtomicU64>,
    /// Set at the end of the traffic: senders, uploads and slow readers stop.
    stop: AtomicBool,
    /// Set when the drain time is over: streams stop even if owed something.
    give_up: AtomicBool,
    /// The highest message id acknowledged, where slow readers resume behind.
    latest_id: AtomicU64,
    /// Streams that have had their first `ready`: the traffic starts when all have.
    readers_ready: AtomicUsize,
    /// Each kind of failure and how often it happened.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Counts a failure; its first occurrence is printed at once, so a long run shows it.
    fn error(&self, what: String) {
        self.counts.add(Count::Errors, 1);
        let first = match self.errors.lock() {
            Ok(mut errors) => {
                let n = errors.entry(what.clone()).or_insert(0);
                *n += 1;
                *n == 1
            }
            Err(_) => true,
        };
        if first {
            eprintln!("soak: error (first of its kind): {what}");
        }
    }

    /// Whether the traffic is over.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Sleeps `secs` in short steps; false if the traffic stopped meanwhile, so no task holds
/// the end of the run up by a long pause.
async fn pause(shared: &Shared, secs: f64) -> bool {
    let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    while Instant::now() < until {
        if shared.stopping() {
            return false;
        }
        sleep((until - Instant::now()).min(Duration::from_millis(250))).await;
    }
    !shared.stopping()
}

/// A small generator (SplitMix64): the soak needs varied timings and sizes, not secrets, and
/// xtask has no `rand`.
struct Rng(u64);

impl Rng {
    /// A generator for task `k`, different in every run.
    fn for_task(k: u64) -> Self {
        Self(now_us() ^ k.wrapping_mul(0xA076_1D64_78BD_642F))
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Uniform in `0..n` (0 for n = 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ----- the traffic -----

/// Sets the accounts, friendships and groups up, runs the traffic for the run's duration while
/// sampling, drains, and returns the report without the run's metadata.
async fn drive(options: &Options, addr: SocketAddr, server: &Watched) -> Result<Value> {
    let plan = Arc::new(setup(options, addr).await?);
    let channels = plan.users.len() * 2;
    let shared = Arc::new(Shared {
        counts: Counts::default(),
        latency: Mutex::new(histogram()),
        acked: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        owed: (0..channels).map(|_| AtomicU64::new(u64::MAX)).collect(),
        stop: AtomicBool::new(false),
        give_up: AtomicBool::new(false),
        latest_id: AtomicU64::new(0),
        readers_ready: AtomicUsize::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    let readers: Vec<_> = (0..plan.users.len())
        .map(|u| tokio::spawn(reader(u, plan.clone(), shared.clone())))
        .collect();
    // A fresh stream gets only what is posted after it opened: start once all are open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.readers_ready.load(Ordering::Relaxed) < plan.users.len() {
        if Instant::now() > deadline {
            shared.give_up.store(true, Ordering::Relaxed);
            shared.stop.store(true, Ordering::Relaxed);
            return Err("the users' event streams did not all open within 60 s".into());
        }
        sleep(Duration::from_millis(50)).await;
    }
    let mut workers: Vec<_> = (0..plan.users.len())
        .map(|u| tokio::spawn(sender(u, plan.clone(), shared.clone())))
        .collect();
    workers.push(tokio::spawn(uploader(plan.clone(), shared.clone())));
    for k in 0..SLOW_READERS {
        workers.push(tokio::spawn(slow_reader(k, plan.clone(), shared.clone())));
    }
    let sampled = sample(options, &shared, server).await;
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.map_err(|e| format!("a traffic task failed: {e}"))?;
    }
    for (owed, acked) in shared.owed.iter().zip(&shared.acked) {
        owed.store(acked.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    let sampled = sampled?;
    let give_up = tokio::spawn({
        let shared = shared.clone();
        async move {
            sleep(DRAIN).await;
            shared.give_up.store(true, Ordering::Relaxed);
        }
    });
    let mut tallies = Vec::new();
    for r in readers {
        tallies.extend(r.await.map_err(|e| format!("a stream task failed: {e}"))?);
    }
    give_up.abort();
    let mut report = sampled.report(options);
    report["delivery"] = verdict(&tallies);
    report["totals"] = counts_json(&shared.counts.snapshot());
    report["errors"] = match shared.errors.lock() {
        Ok(errors) => json!(*errors),
        Err(_) => json!({"?": "the error table was poisoned"}),
    };
    Ok(report)
}

/// Registers the users and the listeners, makes each pair `(2i, 2i + 1)` friends and each
/// group's first user friends with the rest of its group and with the listeners (a group's
/// members must be its creator's friends), and creates the groups.
async fn setup(options: &Options, addr: SocketAddr) -> Result<Plan> {
    let n = options.users;
    let member = |(token, id)| Member { token, id };
    let users: Vec<Member> = accounts(addr, "soak", n)
        .await?
        .into_iter()
        .map(member)
        .collect();
    let listeners: Vec<Member> = accounts(addr, "soaklistener", LISTENERS)
        .await?
        .into_iter()
        .map(member)
        .collect();
    // (token, username) of one side, then of the other.
    let side = |u: usize| (users[u].token.as_str(), format!("soak{u}"));
    let listener = |l: usize| (listeners[l].token.as_str(), format!("soaklistener{l}"));
    let mut pairs: Vec<_> = (0..n).step_by(2).map(|u| (side(u), side(u + 1))).collect();
    for owner in (0..n).step_by(GROUP_SIZE) {
        pairs.extend((owner + 2..owner + GROUP_SIZE).map(|m| (side(owner), side(m))));
        pairs.extend((0..LISTENERS).map(|l| (side(owner), listener(l))));
    }
    let mut c = Conn::open(addr, None).await?;
    for (a, b) in &pairs {
        // Crossing requests: the second is accepted at once.
        for ((token, from), (_, to)) in [(a, b), (b, a)] {
            let body = json!({"username": to});
            let (s, v) = c
                .json("/api/v1/friends/requests", Some(token), &body)
                .await?;
            if !s.is_success() {
                return Err(format!("friend request {from} → {to}: {s} {v}"));
            }
        }
    }
    let mut groups = Vec::new();
    for owner in (0..n).step_by(GROUP_SIZE) {
        let members: Vec<u64> = users[owner + 1..owner + GROUP_SIZE]
            .iter()
            .chain(&listeners)
            .map(|m| m.id)
            .collect();
        let body =
            json!({"name": format!("soak group {}", owner / GROUP_SIZE), "members": members});
        let token = Some(users[owner].token.as_str());
        let (s, g) = c.json("/api/v1/groups", token, &body).await?;
        let size = g["group"]["members"].as_array().map(Vec::len);
        if s != StatusCode::CREATED || size != Some(GROUP_SIZE + LISTENERS) {
            return Err(format!("creating group {}: {s} {g}", owner / GROUP_SIZE));
        }
        groups.push(g["group"]["id"].as_u64().unwrap_or(0));
    }
    let secs = options.duration.as_secs_f64();
    // A channel gets half its sender's messages on average; room for all of them is plenty.
    let capacity = (options.rate / n as f64 * secs * 1.6) as usize + 100;
    Ok(Plan {
        addr,
        by_id: users.iter().enumerate().map(|(i, m)| (m.id, i)).collect(),
        users,
        listeners,
        groups,
        rate: options.rate,
        capacity,
    })
}

/// Chat-like text: mostly a short line, one in five a paste of up to 4,000 characters.
fn filler(rng: &mut Rng) -> String {
    const WORDS: &str = "the quick brown fox jumps over the lazy dog ";
    let len = if rng.below(5) == 0 {
        rng.between(200.0, 4000.0)
    } else {
        rng.between(10.0, 200.0)
    } as usize;
    WORDS
        .chars()
        .cycle()
        .skip(rng.below(WORDS.len()))
        .take(len)
        .collect()
}

/// The stamp at the start of a message's text: `filler` follows it after a space.
fn parse_padded(text: &str) -> Option<(u64, u64)> {
    let end = text
        .match_indices(' ')
        .nth(1)
        .map_or(text.len(), |(i, _)| i);
    parse_stamp(&text[..end])
}

/// The error code of an API answer, for grouping failures.
fn error_code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("-")
}

/// User `u`'s messages: about `rate / users` per second, each to its friend or its group at
/// random, over one keep-alive connection.
async fn sender(u: usize, plan: Arc<Plan>, shared: Arc<Shared>) {
    let mut rng = Rng::for_task(u as u64);
    let mean = plan.users.len() as f64 / plan.rate;
    let token = plan.users[u].token.as_str();
    let mut conn = None;
    // Spread the users' first sends over one mean gap, so they do not post in step.
    if !pause(&shared, rng.between(0.0, mean)).await {
        return;
    }
    while pause(&shared, mean * rng.between(0.5, 1.5)).await {
        let group = rng.below(2) == 1;
        let ch = channel(u, group);
        let seq = shared.acked[ch].load(Ordering::Relaxed);
        if seq as usize >= plan.capacity {
            continue;
        }
        let to = match group {
            true => json!({"group": plan.groups[u / GROUP_SIZE]}),
            false => json!({"user": plan.users[u ^ 1].id}),
        };
        let text = format!("{} {}", stamp(seq), filler(&mut rng));
        // The client id makes a retry after a lost answer harmless: the server answers with
        // the message it already has.
        let body = json!({"to": to, "kind": "text", "body": {"text": text},
                          "client_id": format!("soak-{u}-{}-{seq}", u8::from(group))});
        match post(plan.addr, &mut conn, u, token, &body).await {
            Ok((s, answer)) if s == StatusCode::CREATED || s == StatusCode::OK => {
                shared.acked[ch].fetch_add(1, Ordering::Relaxed);
                shared.counts.add(Count::Sent, 1);
                let id = answer["message"]["id"].as_u64().unwrap_or(0);
                shared.latest_id.fetch_max(id, Ordering::Relaxed);
            }
            Ok((s, answer)) => shared.error(format!(
                "POST /api/v1/messages: {s} {}",
                error_code(&answer)
            )),
            Err(e) => shared.error(format!("POST /api/v1/messages: {e}")),
        }
    }
}

/// Posts `body` to `/api/v1/messages` on `conn`, opening it first if needed and once more if
/// the server had closed it (keep-alive connections idle past the header timeout are closed).
async fn post(
    addr: SocketAddr,
    conn: &mut Option<Conn>,
    u: usize,
    token: &str,
    body: &Value,
) -> Result<(StatusCode, Value)> {
    const PATH: &str = "/api/v1/messages";
    if let Some(c) = conn.as_mut() {
        match c.json(PATH, Some(token), body).await {
            Ok(answer) => return Ok(answer),
            Err(_) => *conn = None,
        }
    }
    let c = conn.insert(Conn::open(addr, Some(source(u))).await?);
    c.json(PATH, Some(token), body).await
}

/// What one user's streams received, per channel it is owed.
struct Inbox {
    /// By channel.
    tallies: HashMap<usize, Tally>,
    /// Messages of channels it is not owed (a tally expecting nothing: each is unexpected).
    stray: Tally,
}

impl Inbox {
    /// An inbox owed `channels`, each with room for `capacity` messages.
    fn new(channels: &[usize], capacity: usize) -> Self {
        Self {
            tallies: channels
                .iter()
                .map(|&ch| (ch, Tally::new(capacity)))
                .collect(),
            stray: Tally::new(0),
        }
    }

    /// Tallies one `message` event and, when it is live, its latency.
    fn deliver(&mut self, data: &str, replaying: bool, plan: &Plan, shared: &Shared) {
        shared.counts.add(Count::Delivered, 1);
        let m: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        let Some((sent_us, seq)) = m["body"]["text"].as_str().and_then(parse_padded) else {
            self.stray.record(0);
            return;
        };
        let from = m["from"].as_u64().and_then(|id| plan.by_id.get(&id));
        let group = m["conversation"]
            .as_str()
            .is_some_and(|c| c.starts_with('g'));
        match from.and_then(|&s| self.tallies.get_mut(&channel(s, group))) {
            Some(tally) => tally.record(seq),
            None => self.stray.record(seq),
        }
        if replaying {
            shared.counts.add(Count::Replayed, 1);
        } else if let Ok(mut h) = shared.latency.lock() {
            let _ = h.record(now_us().saturating_sub(sent_us).max(1));
        }
    }

    /// Whether everything owed has arrived (only known once the senders stopped).
    fn caught_up(&self, shared: &Shared) -> bool {
        self.tallies.iter().all(|(&ch, t)| {
            let owed = shared.owed[ch].load(Ordering::Relaxed);
            owed != u64::MAX && t.received() >= owed
        })
    }

    /// The tallies, each expecting only what was acknowledged.
    fn into_tallies(self, shared: &Shared) -> Vec<Tally> {
        let mut out: Vec<Tally> = self
            .tallies
            .into_iter()
            .map(|(ch, mut t)| {
                t.truncate(shared.owed[ch].load(Ordering::Relaxed) as usize);
                t
            })
            .collect();
        out.push(self.stray);
        out
    }
}

/// User `u`'s event stream: held for 30–90 s, then closed and resumed from the last id seen
/// (as a browser tab that lost its connection does); an end from the server is resumed the
/// same way. Returns its tallies once it has everything owed, or the drain time is over.
async fn reader(u: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> Vec<Tally> {
    let mut rng = Rng::for_task(10_000 + u as u64);
    let mut inbox = Inbox::new(&plan.channels_of(u), plan.capacity);
    let auth = format!("Bearer {}", plan.users[u].token);
    let mut last_id: Option<u64> = None;
    let mut first = true;
    loop {
        let mut headers = vec![("authorization", auth.clone())];
        if let Some(id) = last_id {
            headers.push(("last-event-id", id.to_string()));
        }
        let src = Some(source(u));
        let mut body = match open_stream(plan.addr, src, "/api/v1/events", &headers).await {
            Ok(body) => body,
            Err(e) => {
                shared.error(format!("opening an event stream: {e}"));
                if shared.give_up.load(Ordering::Relaxed) {
                    return inbox.into_tallies(&shared);
                }
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let life = Duration::from_secs_f64(rng.between(RECONNECT_SECS.0, RECONNECT_SECS.1));
        let reconnect_at = Instant::now() + life;
        // A resumed stream replays first; its `ready` says the rest is live.
        let mut replaying = last_id.is_some();
        let planned = loop {
            if shared.stopping()
                && (shared.give_up.load(Ordering::Relaxed) || inbox.caught_up(&shared))
            {
                return inbox.into_tallies(&shared);
            }
            if !shared.stopping() && Instant::now() >= reconnect_at {
                break true;
            }
            let item = tokio::select! {
                i = body.next_item() => i,
                _ = sleep(Duration::from_millis(200)) => continue,
            };
            let Some(Ok(item)) = item else { break false };
            let Item::Event(e) = item else { continue };
            if let Some(id) = e.id.as_deref().and_then(|i| i.parse().ok()) {
                last_id = Some(id);
            }
            match e.event.as_str() {
                "message" => inbox.deliver(&e.data, replaying, &plan, &shared),
                "ready" => {
                    replaying = false;
                    if std::mem::take(&mut first) {
                        shared.readers_ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                "resync" => {
                    shared.counts.add(Count::Resyncs, 1);
                    shared.error("a resumed stream got `resync` (messages skipped)".into());
                }
                _ => {}
            }
        };
        drop(body);
        let count = if planned {
            Count::Reconnects
        } else {
            Count::StreamEnds
        };
        shared.counts.add(count, 1);
        if planned {
            pause(&shared, rng.between(GAP_SECS.0, GAP_SECS.1)).await;
        }
    }
}

/// A few uploads a minute by random users, some downloaded again through their link.
async fn uploader(plan: Arc<Plan>, shared: Arc<Shared>) {
    let mut rng = Rng::for_task(20_000);
    while pause(&shared, UPLOAD_EVERY_SECS * rng.between(0.5, 1.5)).await {
        let u = rng.below(plan.users.len());
        let (lo, hi) = (UPLOAD_BYTES.0.ln(), UPLOAD_BYTES.1.ln());
        let size = rng.between(lo, hi).exp() as usize;
        let download = rng.below(DOWNLOAD_ONE_IN) == 0;
        if let Err(e) = upload(&plan, &shared, u, size, download, &mut rng).await {
            shared.error(e);
        }
    }
}

/// One upload of `size` random bytes by user `u`, and with `download` a check that its link
/// gives them back.
async fn upload(
    plan: &Plan,
    shared: &Shared,
    u: usize,
    size: usize,
    download: bool,
    rng: &mut Rng,
) -> Result<()> {
    let data: Vec<u8> = (0..size.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .take(size)
        .collect();
    let boundary = format!("soak-{:016x}", rng.next());
    let body = multipart(&boundary, &format!("soak-{u}.bin"), &data);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    // A connection per upload: they are minutes apart, longer than a keep-alive may idle.
    let mut c = Conn::open(plan.addr, Some(source(u))).await?;
    let token = Some(plan.users[u].token.as_str());
    let (s, answer) = c
        .call(Method::POST, "/api/v1/files", token, &content_type, body)
        .await
        .map_err(|e| format!("POST /api/v1/files: {e}"))?;
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if s != StatusCode::CREATED {
        return Err(format!("POST /api/v1/files: {s} {}", error_code(&answer)));
    }
    shared.counts.add(Count::Uploads, 1);
    shared.counts.add(Count::UploadBytes, size as u64);
    if !download {
        return Ok(());
    }
    let url = answer["file"]["url"]
        .as_str()
        .ok_or("POST /api/v1/files: no url in the answer")?;
    let (s, bytes) = c
        .call(Method::GET, url, None, "", Bytes::new())
        .await
        .map_err(|e| format!("GET a file link: {e}"))?;
    if s != StatusCode::OK || bytes[..] != data[..] {
        return Err(format!(
            "GET a file link: {s}, {} bytes back, not the {size} uploaded",
            bytes.len()
        ));
    }
    shared.counts.add(Count::Downloads, 1);
    Ok(())
}

/// A `multipart/form-data` body with one `file` part holding `data`.
fn multipart(boundary: &str, file_name: &str, data: &[u8]) -> Bytes {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Bytes::from(body)
}

/// Slow reader `k`: one raw stream after another, each resuming a listener's stream
/// [`SLOW_BACKLOG`] ids back and then reading nothing (even `k`) or trickling (odd `k`).
async fn slow_reader(k: usize, plan: Arc<Plan>, shared: Arc<Shared>) {
    let mut rng = Rng::for_task(30_000 + k as u64);
    let trickle = k % 2 == 1;
    // Staggered, so the cut-offs do not come in step.
    if !pause(&shared, rng.between(0.0, 10.0)).await {
        return;
    }
    let listener = &plan.listeners[k % plan.listeners.len()];
    while !shared.stopping() {
        match slow_stream(&plan, &shared, listener, k, trickle).await {
            Ok(Some(true)) => shared.counts.add(Count::SlowCut, 1),
            Ok(Some(false)) => shared.counts.add(Count::SlowOutlived, 1),
            Ok(None) => {}
            Err(e) => {
                shared.error(e);
                pause(&shared, 1.0).await;
            }
        }
    }
}

/// One slow stream of `listener`, held for its life: `Some(true)` if the server had cut it
/// off by then, `Some(false)` if it was still open, `None` if the run ended first.
async fn slow_stream(
    plan: &Plan,
    shared: &Shared,
    listener: &Member,
    k: usize,
    trickle: bool,
) -> Result<Option<bool>> {
    let from = shared
        .latest_id
        .load(Ordering::Relaxed)
        .saturating_sub(SLOW_BACKLOG);
    let src = Some(source(k));
    let dial = Dial {
        source: src,
        recv_buffer: Some(SLOW_RECV_BUFFER),
    };
    let mut sock = dial.connect(plan.addr).await.map_err(crate::err)?;
    let request = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Accept: text/event-stream\r\nLast-Event-ID: {from}\r\n\r\n",
        plan.addr, listener.token
    );
    let slow = |e: std::io::Error| format!("a slow reader's stream: {e}");
    sock.write_all(request.as_bytes()).await.map_err(slow)?;
    let head = read_head(&mut sock).await?;
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("a slow reader's stream: {line}"));
    }
    shared.counts.add(Count::SlowOpened, 1);
    let life = if trickle {
        TRICKLE_LIFE_SECS
    } else {
        STALLED_LIFE_SECS
    };
    let until = Instant::now() + Duration::from_secs_f64(life);
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        if shared.stopping() {
            return Ok(None);
        }
        if trickle {
            let read = timeout(TRICKLE_EVERY, sock.read(&mut buf[..TRICKLE_BYTES])).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return Ok(Some(true));
            }
            sleep(TRICKLE_EVERY).await;
        } else {
            sleep(Duration::from_millis(250)).await;
        }
    }
    // Read all that waits, fast: an end means the server had closed the stream; a silence
    // means it still holds it.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(false));
        }
        match timeout(left.min(Duration::from_secs(2)), sock.read(&mut buf)).await {
            Err(_) => return Ok(Some(false)),
            Ok(Ok(0) | Err(_)) => return Ok(Some(true)),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads a response head (through its blank line), within 10 s.
async fn read_head(sock: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        // Byte by byte: nothing of the body is taken that the slow reader should leave.
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match sock.read(&mut byte).await {
                Ok(0) => return Err("the server closed a slow reader's stream at once".to_owned()),
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(format!("a slow reader's stream: {e}")),
            }
        }
        Ok::<(), String>(())
    };
    timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "a slow reader's stream got no answer within 10 s".to_owned())??;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

// ----- sampling -----

/// The server process the sampler watches.
struct Watched {
    /// Its process id.
    pid: u32,
    /// Its data dir, whose database size is sampled beside its memory: SQLite caches pages,
    /// so RSS may follow the database's growth for a while without leaking.
    data_dir: PathBuf,
}

impl Watched {
    /// KiB of the database: the data dir's top-level files but SQLite's `-wal` and `-shm`
    /// (the WAL quickly reaches its size limit and stays there, hiding the data's growth),
    /// uploads (in `files/`) not counted.
    fn db_kib(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return 0;
        };
        let bytes: u64 = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.ends_with("-wal") && !name.ends_with("-shm")
            })
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        bytes / 1024
    }
}

/// One sample: the server's state at the end of an interval, and the traffic during it.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// Seconds since the traffic started.
    t: f64,
    /// The server's resident memory, KiB (`VmRSS`).
    rss_kib: u64,
    /// The anonymous part of it (the heap, not mapped files), KiB (`RssAnon`).
    rss_anon_kib: u64,
    /// The store's files on disk, KiB.
    db_kib: u64,
    /// Its open file descriptors.
    fds: u64,
    /// Its threads.
    threads: u64,
    /// Cores it kept busy over the interval.
    cores: f64,
    /// What the counters rose by over the interval, in [`COUNTS`] order.
    counts: [u64; COUNTS.len()],
    /// Seconds the interval lasted.
    span: f64,
    /// Post-to-delivery latency over the interval: count, p50, p99 and max (ms).
    latency: Value,
}

impl Sample {
    /// One counter's rise over the interval.
    fn count(&self, count: Count) -> u64 {
        self.counts[count as usize]
    }

    /// The sample as one JSON object of the series.
    fn to_json(&self) -> Value {
        let per_sec = |c: Count| round2(self.count(c) as f64 / self.span.max(1e-9));
        json!({
            "t_secs": round2(self.t),
            "rss_kib": self.rss_kib,
            "rss_anon_kib": self.rss_anon_kib,
            "db_kib": self.db_kib,
            "fds": self.fds,
            "threads": self.threads,
            "server_cores": self.cores,
            "span_secs": round2(self.span),
            "sent_per_sec": per_sec(Count::Sent),
            "delivered_per_sec": per_sec(Count::Delivered),
            "latency": self.latency,
            "interval": counts_json(&self.counts),
        })
    }

    /// The line printed while the run goes on.
    fn line(&self) -> String {
        let per_sec = |c: Count| self.count(c) as f64 / self.span.max(1e-9);
        format!(
            "soak {:>6}  rss {:>6.1} MiB  db {:>6.1} MiB  fds {:>4}  threads {:>3}  cpu {:>4.2}  \
             sent {:>5.1}/s  delivered {:>6.1}/s  p50 {:>6} ms  p99 {:>6} ms  \
             reconnects {:>3}  slow cut {:>2}  uploads {:>2}  errors {}",
            clock(self.t),
            self.rss_kib as f64 / 1024.0,
            self.db_kib as f64 / 1024.0,
            self.fds,
            self.threads,
            self.cores,
            per_sec(Count::Sent),
            per_sec(Count::Delivered),
            self.latency["p50_ms"],
            self.latency["p99_ms"],
            self.count(Count::Reconnects),
            self.count(Count::SlowCut),
            self.count(Count::Uploads),
            self.count(Count::Errors),
        )
    }
}

/// Which samples the verdict compares: after the warm-up, the first tenth of what is left
/// and the last tenth of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Windows {
    /// How many samples there are.
    n: usize,
    /// The first tenth after the warm-up (at least one sample).
    first: Range<usize>,
    /// The last tenth (at least one sample).
    last: Range<usize>,
}

impl Windows {
    /// The windows of a run of `duration` seconds sampled every `interval` seconds (the last
    /// sample at the end of the run, however short its interval).
    fn new(duration: f64, interval: f64) -> Self {
        let n = ((duration / interval).ceil() as usize).max(1);
        let warm = ((warm_up(duration) / interval).floor() as usize).min(n - 1);
        let k = (n - warm).div_ceil(10).max(1);
        Self {
            n,
            first: warm..warm + k,
            last: n - k..n,
        }
    }

    /// When sample `i` (from 0) is taken, seconds into the run.
    fn time(&self, i: usize, duration: f64, interval: f64) -> f64 {
        ((i + 1) as f64 * interval).min(duration)
    }
}

/// The seconds the verdict leaves out at the start: the first half of the run.
fn warm_up(duration: f64) -> f64 {
    duration * WARM_UP_FRACTION
}

/// What the sampler collected.
struct Sampled {
    /// Every sample.
    samples: Vec<Sample>,
    /// Latency over the whole run, the first window and the last window.
    whole: Histogram<u64>,
    /// Latency over the first window.
    first: Histogram<u64>,
    /// Latency over the last window.
    last: Histogram<u64>,
    /// The windows compared.
    windows: Windows,
    /// The interval, seconds.
    interval: f64,
    /// The server's CPU seconds over the run.
    server_cpu: f64,
}

impl Sampled {
    /// The report's traffic, series and verdict.
    fn report(&self, options: &Options) -> Value {
        let duration = options.duration.as_secs_f64();
        let flat = Flatness::judge(&self.samples, &self.windows, duration);
        json!({
            "duration_secs": duration,
            "interval_secs": self.interval,
            "warm_up_secs": warm_up(duration),
            "traffic": traffic(options),
            "server_cpu_secs": round2(self.server_cpu),
            "latency": {
                "whole": latency_json(&self.whole),
                "first": latency_json(&self.first),
                "last": latency_json(&self.last),
            },
            "flatness": flat.to_json(),
            "samples": self.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Samples the server every interval until the run's end; prints a line each time.
async fn sample(options: &Options, shared: &Shared, server: &Watched) -> Result<Sampled> {
    let pid = server.pid;
    let duration = options.duration.as_secs_f64();
    let interval = options.interval();
    let windows = Windows::new(duration, interval);
    let mut out = Sampled {
        samples: Vec::with_capacity(windows.n),
        whole: histogram(),
        first: histogram(),
        last: histogram(),
        windows: windows.clone(),
        interval,
        server_cpu: 0.0,
    };
    let started = Instant::now();
    let cpu_start = cpu_secs(&[pid]);
    let (mut cpu, mut counts, mut at) = (cpu_start, shared.counts.snapshot(), 0.0);
    for i in 0..windows.n {
        let t = windows.time(i, duration, interval);
        tokio::time::sleep_until(started + Duration::from_secs_f64(t)).await;
        let hist = match shared.latency.lock() {
            Ok(mut h) => std::mem::replace(&mut *h, histogram()),
            Err(_) => return Err("the latency histogram was poisoned".into()),
        };
        let status = format!("/proc/{pid}/status");
        let rss_kib = proc_field(&status, "VmRSS:")
            .ok_or_else(|| format!("the server (pid {pid}) is gone at {}", clock(t)))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("cannot list the server's open files: {e}"))?
            .count() as u64;
        let now_cpu = cpu_secs(&[pid]);
        let now_counts = shared.counts.snapshot();
        let span = t - at;
        let sample = Sample {
            t,
            rss_kib,
            rss_anon_kib: proc_field(&status, "RssAnon:").unwrap_or(0),
            db_kib: server.db_kib(),
            fds,
            threads: proc_field(&status, "Threads:").unwrap_or(0),
            cores: round2((now_cpu - cpu) / span.max(1e-9)),
            counts: std::array::from_fn(|c| now_counts[c] - counts[c]),
            span,
            latency: latency_json(&hist),
        };
        eprintln!("{}", sample.line());
        let merge = |into: &mut Histogram<u64>| into.add(&hist).map_err(|e| e.to_string());
        merge(&mut out.whole)?;
        if windows.first.contains(&i) {
            merge(&mut out.first)?;
        }
        if windows.last.contains(&i) {
            merge(&mut out.last)?;
        }
        out.samples.push(sample);
        (cpu, counts, at) = (now_cpu, now_counts, t);
    }
    out.server_cpu = cpu - cpu_start;
    Ok(out)
}

/// The traffic mix, as the report and the record state it.
fn traffic(options: &Options) -> Value {
    json!({
        "users": options.users,
        "friend_pairs": options.users / 2,
        "groups": options.users / GROUP_SIZE,
        "group_size": GROUP_SIZE,
        "messages_per_sec": options.rate,
        "upload_every_secs": UPLOAD_EVERY_SECS,
        "upload_bytes": [UPLOAD_BYTES.0, UPLOAD_BYTES.1],
        "download_one_in": DOWNLOAD_ONE_IN,
        "reconnect_every_secs": [RECONNECT_SECS.0, RECONNECT_SECS.1],
        "reconnect_gap_secs": [GAP_SECS.0, GAP_SECS.1],
        "slow_readers": SLOW_READERS,
        "listeners": LISTENERS,
        "slow_recv_buffer": SLOW_RECV_BUFFER,
        "slow_backlog_ids": SLOW_BACKLOG,
        "stalled_life_secs": STALLED_LIFE_SECS,
        "trickle_life_secs": TRICKLE_LIFE_SECS,
        "trickle_bytes_per_sec": TRICKLE_BYTES as f64 / TRICKLE_EVERY.as_secs_f64(),
    })
}

// ----- the verdict -----

/// Whether memory and open files stayed flat: the medians of the first and last windows.
#[derive(Debug, Clone, PartialEq)]
struct Flatness {
    /// Median RSS of the first window, KiB.
    rss_first: f64,
    /// Median RSS of the last window, KiB.
    rss_last: f64,
    /// Median open files of the first window.
    fds_first: f64,
    /// Median open files of the last window.
    fds_last: f64,
    /// Median threads of the first window.
    threads_first: f64,
    /// Median database size of the first window, KiB.
    db_first: f64,
    /// Median database size of the last window, KiB.
    db_last: f64,
    /// Median threads of the last window.
    threads_last: f64,
    /// The least-squares trend of RSS after the warm-up, MiB per hour.
    rss_trend_mib_per_hour: f64,
    /// Whether the run was long enough to judge.
    judged: bool,
    /// RSS and open files both within their slack.
    flat: bool,
}

impl Flatness {
    /// Judges `samples` (of a run of `duration` seconds) over `windows`.
    fn judge(samples: &[Sample], windows: &Windows, duration: f64) -> Self {
        let median_of = |range: &Range<usize>, f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples
                .get(range.clone())
                .unwrap_or(&[])
                .iter()
                .map(f)
                .collect();
            median(&mut v)
        };
        let (first, last) = (&windows.first, &windows.last);
        let rss = |s: &Sample| s.rss_kib as f64;
        let fds = |s: &Sample| s.fds as f64;
        let threads = |s: &Sample| s.threads as f64;
        let db = |s: &Sample| s.db_kib as f64;
        let after: Vec<(f64, f64)> = samples
            .get(first.start..)
            .unwrap_or(&[])
            .iter()
            .map(|s| (s.t, s.rss_kib as f64 / 1024.0))
            .collect();
        let mut out = Self {
            rss_first: median_of(first, rss),
            rss_last: median_of(last, rss),
            fds_first: median_of(first, fds),
            fds_last: median_of(last, fds),
            threads_first: median_of(first, threads),
            threads_last: median_of(last, threads),
            db_first: median_of(first, db),
            db_last: median_of(last, db),
            rss_trend_mib_per_hour: slope(&after) * 3600.0,
            judged: duration >= MIN_JUDGED_SECS,
            flat: false,
        };
        let rss_ok =
            out.rss_growth_mib() <= RSS_SLACK_MIB.max(out.rss_first / 1024.0 * SLACK_PCT / 100.0);
        let fds_ok =
            out.fds_last - out.fds_first <= FD_SLACK.max(out.fds_first * SLACK_PCT / 100.0);
        out.flat = rss_ok && fds_ok;
        out
    }

    /// RSS growth from the first window to the last, MiB.
    fn rss_growth_mib(&self) -> f64 {
        (self.rss_last - self.rss_first) / 1024.0
    }

    /// `part` as a percentage of `whole` (0 for an empty whole).
    fn pct(part: f64, whole: f64) -> f64 {
        if whole > 0.0 {
            part / whole * 100.0
        } else {
            0.0
        }
    }

    /// The verdict in a word or two: `flat`, `grew`, or why it was not judged.
    fn word(&self) -> String {
        match (self.judged, self.flat) {
            (false, _) => format!("not judged (under {} minutes)", MIN_JUDGED_SECS / 60.0),
            (true, true) => "flat".into(),
            (true, false) => "grew".into(),
        }
    }

    /// How much RSS and open files grew from the first window to the last.
    fn growth(&self) -> String {
        format!(
            "RSS {:+.1} MiB ({:+.1}%), open files {:+} ({:+.1}%)",
            self.rss_growth_mib(),
            Self::pct(self.rss_last - self.rss_first, self.rss_first),
            self.fds_last - self.fds_first,
            Self::pct(self.fds_last - self.fds_first, self.fds_first),
        )
    }

    /// The verdict and why, on one line.
    fn verdict(&self) -> String {
        format!("{}: {}", self.word(), self.growth())
    }

    /// The verdict and its figures, for the report.
    fn to_json(&self) -> Value {
        json!({
            "judged": self.judged,
            "flat": self.flat,
            "verdict": self.verdict(),
            "word": self.word(),
            "growth": self.growth(),
            "rss_first_kib": self.rss_first,
            "rss_last_kib": self.rss_last,
            "rss_growth_mib": round2(self.rss_growth_mib()),
            "rss_growth_pct": round2(Self::pct(self.rss_last - self.rss_first, self.rss_first)),
            "rss_trend_mib_per_hour": round2(self.rss_trend_mib_per_hour),
            "fds_first": self.fds_first,
            "fds_last": self.fds_last,
            "fd_growth": self.fds_last - self.fds_first,
            "fd_growth_pct": round2(Self::pct(self.fds_last - self.fds_first, self.fds_first)),
            "db_first_kib": self.db_first,
            "db_last_kib": self.db_last,
            "threads_first": self.threads_first,
            "threads_last": self.threads_last,
            "slack": format!(
                "RSS {RSS_SLACK_MIB} MiB or {SLACK_PCT}%, open files {FD_SLACK} or \
                 {SLACK_PCT}%, whichever is more"
            ),
        })
    }
}

/// The least-squares slope of `(x, y)` points (0 for fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n.max(1.0);
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n.max(1.0);
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

// ----- formatting -----

/// Rounds to two decimals, as every figure of the report is given.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Seconds as `m:ss`, the printed lines' time.
fn clock(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{}:{:02}", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Command-line arguments as `main` hands them over.
    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_hold_the_groups_and_the_server_limits() {
        let parse = |a: &[&str]| Options::from_args(&Args::parse(&args(a)).unwrap());
        let o = parse(&[
            "--seconds",
            "30",
            "--users",
            "20",
            "--rate",
            "10",
            "--interval",
            "10",
        ])
        .unwrap();
        assert_eq!((o.duration.as_secs(), o.users, o.rate), (30, 20, 10.0));
        assert_eq!(o.interval(), 10.0);
        for bad in [
            &[
                "--seconds",
                "30",
                "--users",
                "15",
                "--rate",
                "10",
                "--interval",
                "10",
            ][..],
            &[
                "--seconds",
                "30",
                "--users",
                "10.5",
                "--rate",
                "10",
                "--interval",
                "10",
            ],
            &[
                "--seconds",
                "30",
                "--users",
                "20",
                "--rate",
                "500",
                "--interval",
                "10",
            ],
            &["--seconds", "30", "--users", "20", "--rate", "10"],
            &[
                "--seconds",
                "-1",
                "--users",
                "20",
                "--rate",
                "10",
                "--interval",
                "10",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn windows_skip_the_warm_up_and_take_a_tenth() {
        // An hour every 30 s: 120 samples, 30 min warm-up (60 samples), windows of 6.
        let w = Windows::new(3600.0, 30.0);
        assert_eq!(
            (w.n, w.first.clone(), w.last.clone()),
            (120, 60..66, 114..120)
        );
        assert_eq!(w.time(0, 3600.0, 30.0), 30.0);
        assert_eq!(w.time(119, 3600.0, 30.0), 3600.0);
        // 30 s every 10 s: one sample each, after the warm-up.
        let w = Windows::new(30.0, 10.0);
        assert_eq!((w.n, w.first, w.last), (3, 1..2, 2..3));
        // A last interval cut short still ends at the run's end.
        let w = Windows::new(25.0, 10.0);
        assert_eq!((w.n, w.time(2, 25.0, 10.0)), (3, 25.0));
    }

    /// A series of `n` samples every 30 s whose RSS and fds follow `rss(i)` and `fds(i)`.
    fn series(n: usize, rss: impl Fn(usize) -> u64, fds: impl Fn(usize) -> u64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                t: (i + 1) as f64 * 30.0,
                rss_kib: rss(i),
                rss_anon_kib: rss(i) - 10_000,
                db_kib: i as u64 * 100,
                fds: fds(i),
                threads: 9,
                cores: 0.2,
                counts: [0; COUNTS.len()],
                span: 30.0,
                latency: json!({"count": 0, "p50_ms": 1.0, "p99_ms": 5.0, "max_ms": 9.0}),
            })
            .collect()
    }

    #[test]
    fn flatness_tolerates_noise_and_warm_up_but_not_a_leak() {
        let w = Windows::new(3600.0, 30.0);
        // Warm-up growth, then noise of ±1 MiB and ±2 files: flat.
        let noisy = series(
            120,
            |i| {
                if i < 5 {
                    20_000 + i as u64 * 4_000
                } else {
                    40_000 + (i as u64 % 3) * 1024
                }
            },
            |i| 110 + (i as u64 % 5),
        );
        let f = Flatness::judge(&noisy, &w, 3600.0);
        assert!(f.judged && f.flat, "{f:?}");
        assert!(
            f.verdict().starts_with("flat: RSS +0.0 MiB"),
            "{}",
            f.verdict()
        );
        // 100 KiB per sample is 12 MiB an hour: a leak.
        let leak = series(120, |i| 40_000 + i as u64 * 100, |_| 110);
        let f = Flatness::judge(&leak, &w, 3600.0);
        assert!(f.judged && !f.flat);
        assert!((f.rss_trend_mib_per_hour - 11.72).abs() < 0.01, "{f:?}");
        assert!(f.verdict().starts_with("grew: RSS +5."), "{}", f.verdict());
        // Descriptors that pile up fail it too.
        let fd_leak = series(120, |_| 40_000, |i| 110 + i as u64 / 4);
        assert!(!Flatness::judge(&fd_leak, &w, 3600.0).flat);
        // A short run is reported, never judged.
        let short = Windows::new(120.0, 10.0);
        let f = Flatness::judge(
            &series(12, |i| 40_000 + i as u64 * 1000, |_| 9),
            &short,
            120.0,
        );
        assert!(!f.judged && f.verdict().starts_with("not judged"));
        assert_eq!(f.to_json()["judged"], json!(false));
    }

    #[test]
    fn small_pieces() {
        assert_eq!(clock(3599.6), "60:00");
        assert_eq!(parse_padded("17 4 the quick"), Some((17, 4)));
        assert_eq!(parse_padded("17 4"), Some((17, 4)));
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        let body = multipart("b", "x.bin", b"data");
        assert_eq!(
            &body[..],
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\
              Content-Type: application/octet-stream\r\n\r\ndata\r\n--b--\r\n"
        );
        let mut rng = Rng(1);
        assert!((0..1000).all(|_| rng.below(3) < 3));
        let text = filler(&mut rng);
        assert!((10..=4000).contains(&text.len()));
    }

    #[test]
    fn channels_cover_the_friend_and_the_whole_group() {
        let plan = Plan {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            users: Vec::new(),
            listeners: Vec::new(),
            groups: Vec::new(),
            by_id: HashMap::new(),
            rate: 1.0,
            capacity: 1,
        };
        let ch = plan.channels_of(13);
        assert_eq!(&ch[..2], &[channel(13, false), channel(12, false)]);
        assert_eq!(
            &ch[2..],
            (10..20).map(|m| channel(m, true)).collect::<Vec<_>>()
        );
    }
}
