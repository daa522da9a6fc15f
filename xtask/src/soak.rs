//! `cargo xtask soak`: steady mixed traffic against one release `im-server` for minutes or
//! hours, to show that its memory and open files stay flat, not just that it is fast.
//!
//! The server runs on SQLite in a temp dir with its default settings, except the per-address
//! registration and login limits: every account is made from this one machine. Message and
//! upload limits stay at their defaults, and each user's traffic stays well under them, so
//! any refusal is a finding. The traffic, all at once: direct chat between friends, group
//! messages, uploads (some downloaded again), users closing their event stream and resuming
//! with `Last-Event-ID`, and slow readers the server has to cut off. Every message must reach
//! every stream of its conversation's users exactly once, across reconnects.
//!
//! Every interval it samples the server (RSS, open files, threads, CPU) and the traffic
//! (rates, post-to-delivery latency, errors) and prints a line. At the end it writes the whole
//! series to `target/soak/soak-<time>.json`, judges flatness on the second half of the run
//! (the start of it against its last tenth), and with `--record` writes a section of
//! `docs/BENCHMARKS.md`. The first half is a warm-up: the store's page caches (64 MiB for the
//! SQLite writer, 8 MiB per reader) fill as the database grows, which takes about 26 minutes
//! at the default rate, and memory that reaches a ceiling and stays there is not a leak. A
//! leak keeps growing in the second half too.

use crate::bench::{civil_from_days, machine, splice_between, utc_now, write_atomically};
use crate::load::{self, Conn, Tally};
use crate::loadbench;
use crate::util::{Result, banner, display_cargo, run_cargo, workspace_root};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use im_protocol::sse::{Item, Parser};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
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

/// What the soak changes in the server's defaults, and only so that it can run: all accounts
/// register and log in from loopback, which the per-address limits would refuse.
const SERVER_ENV: [(&str, &str); 4] = [
    ("IM_RATE_LIMITS__REGISTER_PER_ADDRESS__PER_SECOND", "100"),
    ("IM_RATE_LIMITS__REGISTER_PER_ADDRESS__BURST_COUNT", "1000"),
    ("IM_RATE_LIMITS__LOGIN_PER_ADDRESS__PER_SECOND", "100"),
    ("IM_RATE_LIMITS__LOGIN_PER_ADDRESS__BURST_COUNT", "1000"),
];

/// Opens the generated section of `docs/BENCHMARKS.md`, as the other sections are marked.
const START: &str = "<!-- soak:start -->";

/// Closes the generated section.
const END: &str = "<!-- soak:end -->";

/// What `cargo xtask soak` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How long the traffic runs (setup and drain not counted).
    pub duration: Duration,
    /// Users chatting; a multiple of [`GROUP_SIZE`].
    pub users: usize,
    /// Messages per second offered in all.
    pub rate: f64,
    /// Write the result into `docs/BENCHMARKS.md`.
    pub record: bool,
}

impl Default for Options {
    /// The run: an hour at a rate two cores sustain next to other work.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(3600),
            users: 50,
            rate: 50.0,
            record: false,
        }
    }
}

impl Options {
    /// Reads `[--minutes N | --seconds N] [--users N] [--rate R] [--record]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |what: &str| {
                args.next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("{arg} needs a positive {what}"))
            };
            match arg.as_str() {
                "--minutes" | "--seconds" => {
                    let n = value("number")?;
                    let secs = if arg == "--minutes" { n * 60.0 } else { n };
                    options.duration = Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| d.as_secs() >= 10 && d.as_secs() <= 7 * 86_400)
                        .ok_or("the run must last from 10 seconds to a week")?;
                }
                "--users" => {
                    let n = value("whole number")?;
                    if n.fract() != 0.0 || (n as usize) % GROUP_SIZE != 0 {
                        return Err(format!(
                            "--users must be a multiple of {GROUP_SIZE} (the group size)"
                        ));
                    }
                    options.users = n as usize;
                }
                "--rate" => options.rate = value("number of messages per second")?,
                "--record" => options.record = true,
                other => return Err(format!("unknown option `{other}` for `soak`")),
            }
        }
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

    /// The command line that repeats this run, for the record.
    fn command(&self) -> String {
        let secs = self.duration.as_secs_f64();
        let mut args = vec!["xtask".to_owned(), "soak".to_owned()];
        if secs % 60.0 == 0.0 {
            args.extend(["--minutes".to_owned(), (secs / 60.0).to_string()]);
        } else {
            args.extend(["--seconds".to_owned(), secs.to_string()]);
        }
        let default = Self::default();
        if self.users != default.users {
            args.extend(["--users".to_owned(), self.users.to_string()]);
        }
        if self.rate != default.rate {
            args.extend(["--rate".to_owned(), self.rate.to_string()]);
        }
        if self.record {
            args.push("--record".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        display_cargo(&args)
    }

    /// Seconds between samples: 10, or 30 from 20 minutes on, so an hour is 120 lines.
    fn interval(&self) -> f64 {
        if self.duration.as_secs() < 20 * 60 {
            10.0
        } else {
            30.0
        }
    }
}

/// Builds and starts the server, drives the traffic, reports; an error if anything was
/// refused, lost or doubled, or a judged run did not stay flat.
pub fn run(options: &Options) -> Result<()> {
    let root = workspace_root();
    run_cargo(&root, &crate::util::RELEASE_BUILD)?;
    let target = loadbench::target_dir(&root);
    let out_dir = target.join("soak");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let name = format!("soak-{}", file_stamp(unix_secs()));
    let log_path = out_dir.join(format!("{name}.server.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let dir = loadbench::temp_dir("soak")?;
    let data_dir = dir.clone();
    let mut cmd = loadbench::server_command(&target.join("release/im-server"), &dir);
    // The log goes to a file without colours, to be counted at the end.
    cmd.envs(SERVER_ENV).env("NO_COLOR", "1").stderr(log);
    let server = loadbench::spawn_server(cmd, dir)?;
    let pid = server.pids[0];
    banner(&format!(
        "soak: {} for {}, {} users, {} messages/s (server pid {pid} on {}, log {})",
        options.command(),
        clock(options.duration.as_secs_f64()),
        options.users,
        options.rate,
        server.addr,
        log_path.display()
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let generator_cpu = load::own_cpu();
    let watched = Watched { pid, data_dir };
    let outcome = runtime.block_on(drive(options, server.addr, &watched));
    let generator_cpu = load::own_cpu() - generator_cpu;
    // Our connections close first, so the server's graceful stop has nothing to wait for;
    // then it stops, before its log is read, so the log is complete.
    drop(runtime);
    drop(server);
    let mut report = outcome?;
    report["when"] = json!(utc_now());
    report["machine"] = json!(machine());
    report["command"] = json!(options.command());
    report["generator_cpu_secs"] = json!(round2(generator_cpu));
    report["server_log"] = log_summary(&log_path);
    let json_path = out_dir.join(format!("{name}.json"));
    report["json"] = json!(json_path.display().to_string());
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let section = render(&report);
    print!("\n{section}");
    banner(&format!(
        "soak: the whole series is in {}",
        json_path.display()
    ));
    if options.record {
        let path = root.join("docs/BENCHMARKS.md");
        let existing = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let updated = splice_between(Some(&existing), START, END, &section)?;
        write_atomically(&path, &updated)?;
        banner("soak: recorded in docs/BENCHMARKS.md");
    }
    match failures(&report) {
        problems if problems.is_empty() => Ok(()),
        problems => Err(format!("soak failed: {}", problems.join("; "))),
    }
}

/// What makes the run fail, each said in a few words; empty for a pass.
fn failures(report: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let errors = report["totals"]["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        problems.push(format!(
            "{errors} requests or streams failed (see `errors`)"
        ));
    }
    if report["delivery"]["ok"] != json!(true) {
        let problem = report["delivery"]["problem"].as_str().unwrap_or("unknown");
        problems.push(format!("deliveries: {problem}"));
    }
    let flat = &report["flatness"];
    if flat["judged"] == json!(true) && flat["flat"] != json!(true) {
        problems.push(format!(
            "not flat: {}",
            flat["verdict"].as_str().unwrap_or("")
        ));
    }
    problems
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
        Self(load::now_us() ^ k.wrapping_mul(0xA076_1D64_78BD_642F))
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
        latency: Mutex::new(load::histogram()),
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
    report["delivery"] = load::verdict(&tallies);
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
    let users: Vec<Member> = load::accounts(addr, "soak", n)
        .await?
        .into_iter()
        .map(member)
        .collect();
    let listeners: Vec<Member> = load::accounts(addr, "soaklistener", LISTENERS)
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
    load::parse_stamp(&text[..end])
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
        let text = format!("{} {}", load::stamp(seq), filler(&mut rng));
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
    let c = conn.insert(Conn::open(addr, Some(load::source(u))).await?);
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
            let _ = h.record(load::now_us().saturating_sub(sent_us).max(1));
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
        let src = Some(load::source(u));
        let mut body = match load::open_stream(plan.addr, src, "/api/v1/events", &headers).await {
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
        let mut parser = Parser::new();
        let planned = loop {
            if shared.stopping()
                && (shared.give_up.load(Ordering::Relaxed) || inbox.caught_up(&shared))
            {
                return inbox.into_tallies(&shared);
            }
            if !shared.stopping() && Instant::now() >= reconnect_at {
                break true;
            }
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = sleep(Duration::from_millis(200)) => continue,
            };
            let Some(Ok(frame)) = frame else { break false };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for item in parser.feed(data) {
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
    let mut c = Conn::open(plan.addr, Some(load::source(u))).await?;
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
    let src = Some(load::source(k));
    let mut sock = load::tcp_with(plan.addr, src, Some(SLOW_RECV_BUFFER)).await?;
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
            "server_env": SERVER_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "server_cpu_secs": round2(self.server_cpu),
            "latency": {
                "whole": load::latency_json(&self.whole),
                "first": load::latency_json(&self.first),
                "last": load::latency_json(&self.last),
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
        whole: load::histogram(),
        first: load::histogram(),
        last: load::histogram(),
        windows: windows.clone(),
        interval,
        server_cpu: 0.0,
    };
    let started = Instant::now();
    let cpu_start = load::cpu_secs(&[pid]);
    let (mut cpu, mut counts, mut at) = (cpu_start, shared.counts.snapshot(), 0.0);
    for i in 0..windows.n {
        let t = windows.time(i, duration, interval);
        tokio::time::sleep_until(started + Duration::from_secs_f64(t)).await;
        let hist = match shared.latency.lock() {
            Ok(mut h) => std::mem::replace(&mut *h, load::histogram()),
            Err(_) => return Err("the latency histogram was poisoned".into()),
        };
        let status = format!("/proc/{pid}/status");
        let rss_kib = load::proc_field(&status, "VmRSS:")
            .ok_or_else(|| format!("the server (pid {pid}) is gone at {}", clock(t)))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("cannot list the server's open files: {e}"))?
            .count() as u64;
        let now_cpu = load::cpu_secs(&[pid]);
        let now_counts = shared.counts.snapshot();
        let span = t - at;
        let sample = Sample {
            t,
            rss_kib,
            rss_anon_kib: load::proc_field(&status, "RssAnon:").unwrap_or(0),
            db_kib: server.db_kib(),
            fds,
            threads: load::proc_field(&status, "Threads:").unwrap_or(0),
            cores: round2((now_cpu - cpu) / span.max(1e-9)),
            counts: std::array::from_fn(|c| now_counts[c] - counts[c]),
            span,
            latency: load::latency_json(&hist),
        };
        println!("{}", sample.line());
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
            load::median(&mut v)
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

// ----- the record -----

/// The `docs/BENCHMARKS.md` section of a report (also the summary printed at the end).
fn render(report: &Value) -> String {
    let t = &report["traffic"];
    let totals = &report["totals"];
    let delivery = &report["delivery"];
    let flat = &report["flatness"];
    let lat = &report["latency"];
    let duration = report["duration_secs"].as_f64().unwrap_or(0.0);
    let n = |v: &Value| thousands(v.as_u64().unwrap_or(0));
    let mut out = String::from("## Soak\n\n");
    let _ = writeln!(
        out,
        "`cargo xtask soak` runs the release server on SQLite with its default settings, except \
         the per-address registration and login limits (`{}`), raised because every account is \
         made from this one machine, and drives steady mixed traffic at it while sampling it. \
         Last run {} on {}. Command: `{}`.\n",
        report["server_env"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
        report["when"].as_str().unwrap_or("?"),
        report["machine"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or("cargo xtask soak"),
    );
    let _ = writeln!(
        out,
        "- **Duration:** {}, a sample every {} s; a warm-up of {} is left out of the \
         verdict.",
        clock_words(duration),
        num(&report["interval_secs"]),
        clock_words(report["warm_up_secs"].as_f64().unwrap_or(0.0)),
    );
    let _ = writeln!(
        out,
        "- **Traffic:** {} users, in {} friend pairs and {} groups of {} (plus {} listeners, members \
         of every group who never post). {} messages/s offered in \
         all, each to the sender's friend or group at random (text of 10 to 4,000 characters, \
         one in five over 200). An upload of 16 KiB to 1 MiB every {} s on average, one in {} \
         downloaded again through its link. Every user's stream is closed every {}–{} s and \
         resumed with `Last-Event-ID` {}–{} s later. {} slow readers, with a {} KiB receive \
         buffer, resume a listener's stream {} messages back; half read nothing and are checked after {} s, \
         half read {} B/s and are checked after {} s; then each is replaced.",
        num(&t["users"]),
        num(&t["friend_pairs"]),
        num(&t["groups"]),
        num(&t["group_size"]),
        num(&t["listeners"]),
        num(&t["messages_per_sec"]),
        num(&t["upload_every_secs"]),
        num(&t["download_one_in"]),
        num(&t["reconnect_every_secs"][0]),
        num(&t["reconnect_every_secs"][1]),
        num(&t["reconnect_gap_secs"][0]),
        num(&t["reconnect_gap_secs"][1]),
        num(&t["slow_readers"]),
        t["slow_recv_buffer"].as_u64().unwrap_or(0) / 1024,
        n(&t["slow_backlog_ids"]),
        num(&t["stalled_life_secs"]),
        num(&t["trickle_bytes_per_sec"]),
        num(&t["trickle_life_secs"]),
    );
    let _ = writeln!(
        out,
        "- **Totals:** {} messages sent, {} deliveries ({} replayed after a reconnect): {} \
         missing, {} duplicated, {} unexpected. Latency from post to delivery over the run: p50 \
         {} ms, p99 {} ms, max {} ms. {} uploads ({:.1} MiB), {} downloads checked. {} planned \
         reconnects, {} streams ended by the server, {} `resync`. Slow readers: {} opened, {} cut \
         off by the server, {} still open when checked. Server CPU {} s, generator CPU {} s.",
        n(&totals["sent"]),
        n(&totals["delivered"]),
        n(&totals["replayed"]),
        n(&delivery["missing"]),
        n(&delivery["duplicates"]),
        n(&delivery["unexpected"]),
        num(&lat["whole"]["p50_ms"]),
        num(&lat["whole"]["p99_ms"]),
        num(&lat["whole"]["max_ms"]),
        n(&totals["uploads"]),
        totals["upload_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
        n(&totals["downloads"]),
        n(&totals["reconnects"]),
        n(&totals["stream_ends"]),
        n(&totals["resyncs"]),
        n(&totals["slow_opened"]),
        n(&totals["slow_cut"]),
        n(&totals["slow_outlived"]),
        num(&report["server_cpu_secs"]),
        num(&report["generator_cpu_secs"]),
    );
    let errors = report["errors"].as_object().filter(|e| !e.is_empty());
    let _ = match errors {
        None => writeln!(out, "- **Errors:** none."),
        Some(errors) => writeln!(
            out,
            "- **Errors:** {}.",
            errors
                .iter()
                .map(|(what, k)| format!("{k} × {what}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    let log = &report["server_log"];
    let _ = writeln!(
        out,
        "- **Server log:** {} warnings, {} errors.",
        n(&log["warnings"]),
        n(&log["errors"])
    );
    let _ = writeln!(
        out,
        "- **Verdict: {}.** From the first tenth after the warm-up to the last tenth: {} \
         (medians: RSS {:.1} → {:.1} MiB, open files {} → {}, threads {} → {}, database on disk \
         {:.1} → {:.1} MiB; RSS trend after the warm-up {:+.1} MiB/h). Latency p50 {} → {} ms, p99 {} → {} ms. Flat means growth of \
         at most {}.",
        flat["word"].as_str().unwrap_or("?"),
        flat["growth"].as_str().unwrap_or("?"),
        flat["rss_first_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["rss_last_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        num(&flat["fds_first"]),
        num(&flat["fds_last"]),
        num(&flat["threads_first"]),
        num(&flat["threads_last"]),
        flat["db_first_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["db_last_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["rss_trend_mib_per_hour"].as_f64().unwrap_or(0.0),
        num(&lat["first"]["p50_ms"]),
        num(&lat["last"]["p50_ms"]),
        num(&lat["first"]["p99_ms"]),
        num(&lat["last"]["p99_ms"]),
        flat["slack"].as_str().unwrap_or("?"),
    );
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let middle = samples
            .iter()
            .min_by(|a, b| {
                let off = |s: &Value| (s["t_secs"].as_f64().unwrap_or(0.0) - duration / 2.0).abs();
                off(a).total_cmp(&off(b))
            })
            .unwrap_or(first);
        let points = [first, middle, last];
        out.push_str("\n| | start | middle | end |\n|---|---:|---:|---:|\n");
        let mut row = |label: &str, f: &dyn Fn(&Value) -> String| {
            let cells: Vec<String> = points.iter().map(|s| f(s)).collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        };
        row("time (min:s)", &|s| {
            clock(s["t_secs"].as_f64().unwrap_or(0.0))
        });
        row("server RSS (MiB)", &|s| mib(&s["rss_kib"]));
        row("… of it anonymous (heap) (MiB)", &|s| {
            mib(&s["rss_anon_kib"])
        });
        row("database on disk (MiB)", &|s| mib(&s["db_kib"]));
        row("open files", &|s| num(&s["fds"]));
        row("threads", &|s| num(&s["threads"]));
        row("latency p50 over the interval (ms)", &|s| {
            num(&s["latency"]["p50_ms"])
        });
        row("latency p99 over the interval (ms)", &|s| {
            num(&s["latency"]["p99_ms"])
        });
    }
    let step = table_step(duration, report["interval_secs"].as_f64().unwrap_or(10.0));
    let _ = writeln!(
        out,
        "\nSamples every {} (the whole series is in `{}`). Rates, server cores and counts are \
         since the row before; latencies are over the row's own sampling interval.\n\n\
         | time | RSS (MiB) | database (MiB) | open files | threads | server cores | sent/s | \
         delivered/s | p50 (ms) | p99 (ms) | reconnects | slow readers cut off | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        clock_words(step),
        report["json"]
            .as_str()
            .and_then(|p| Path::new(p).file_name())
            .map(|f| format!("target/soak/{}", f.to_string_lossy()))
            .unwrap_or_else(|| "target/soak/".into()),
    );
    let t = |s: &Value| s["t_secs"].as_f64().unwrap_or(0.0);
    let mut from = 0;
    for i in pick(&samples, step) {
        let (s, rows) = (&samples[i], &samples[from..=i]);
        let span = (t(s) - from.checked_sub(1).map_or(0.0, |p| t(&samples[p]))).max(1e-9);
        let sum = |key: &str| -> u64 {
            rows.iter()
                .map(|r| r["interval"][key].as_u64().unwrap_or(0))
                .sum()
        };
        let mean = |key: &str| {
            let total: f64 = rows
                .iter()
                .map(|r| r[key].as_f64().unwrap_or(0.0) * r["span_secs"].as_f64().unwrap_or(0.0))
                .sum();
            round2(total / span)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            clock(t(s)),
            mib(&s["rss_kib"]),
            mib(&s["db_kib"]),
            num(&s["fds"]),
            num(&s["threads"]),
            mean("server_cores"),
            sum("sent") as f64 / span,
            sum("delivered") as f64 / span,
            num(&s["latency"]["p50_ms"]),
            num(&s["latency"]["p99_ms"]),
            sum("reconnects"),
            sum("slow_cut"),
            sum("errors"),
        );
        from = i + 1;
    }
    out
}

/// The spacing of the record's sample table: 5 minutes for long runs, about a sixth of
/// shorter ones, in whole sampling intervals.
fn table_step(duration: f64, interval: f64) -> f64 {
    if duration >= 30.0 * 60.0 {
        300.0
    } else {
        ((duration / 6.0 / interval).round() * interval).max(interval)
    }
}

/// The indices of the samples at each multiple of `step` seconds (the first at or after
/// it), and of the last.
fn pick(samples: &[Value], step: f64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut next = step;
    for (i, s) in samples.iter().enumerate() {
        let t = s["t_secs"].as_f64().unwrap_or(0.0);
        if t + 1e-6 >= next {
            out.push(i);
            while next <= t + 1e-6 {
                next += step;
            }
        }
    }
    let last = samples.len().checked_sub(1);
    if let Some(last) = last.filter(|l| out.last() != Some(l)) {
        out.push(last);
    }
    out
}

/// How many warnings and errors the server logged, and the first few of them.
fn log_summary(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let level = |l: &str, word: &str| l.split_whitespace().take(4).any(|w| w.contains(word));
    let warnings: Vec<&str> = text.lines().filter(|l| level(l, "WARN")).collect();
    let errors: Vec<&str> = text.lines().filter(|l| level(l, "ERROR")).collect();
    let first: Vec<&str> = errors.iter().chain(&warnings).take(5).copied().collect();
    json!({
        "path": path.display().to_string(),
        "warnings": warnings.len(),
        "errors": errors.len(),
        "first": first,
    })
}

// ----- formatting -----

/// Rounds to two decimals, as every figure of the report is given.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A JSON number as a person writes it: `30`, not `30.0`; `–` for none.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => x.to_string(),
        None => "–".into(),
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: &Value) -> String {
    format!("{:.1}", kib.as_f64().unwrap_or(0.0) / 1024.0)
}

/// Seconds as `m:ss`, the printed lines' time.
fn clock(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// Seconds in words: `60 min`, `2 min 30 s`, `45 s`.
fn clock_words(secs: f64) -> String {
    let secs = secs.round() as u64;
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// A count with thousands separators, as the rest of `docs/BENCHMARKS.md` writes them.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds since the epoch.
fn unix_secs() -> u64 {
    load::now_us() / 1_000_000
}

/// `YYYYMMDD-HHMMSS` (UTC) for file names, which sort by time.
fn file_stamp(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Command-line arguments as `main` hands them over.
    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_print_back() {
        let o = Options::parse(&args(&["--minutes", "1.5", "--record"])).unwrap();
        assert_eq!(o.duration, Duration::from_secs(90));
        assert!(o.record);
        assert_eq!(o.command(), "cargo xtask soak --seconds 90 --record");
        let o =
            Options::parse(&args(&["--seconds", "30", "--users", "20", "--rate", "10"])).unwrap();
        assert_eq!((o.duration.as_secs(), o.users, o.rate), (30, 20, 10.0));
        assert_eq!(
            o.command(),
            "cargo xtask soak --seconds 30 --users 20 --rate 10"
        );
        assert_eq!(
            Options::parse(&[]).unwrap().command(),
            "cargo xtask soak --minutes 60"
        );
        assert_eq!(Options::parse(&[]).unwrap().interval(), 30.0);
        assert_eq!(o.interval(), 10.0);
        for bad in [
            &["--minutes"][..],
            &["--minutes", "0"],
            &["--minutes", "-1"],
            &["--seconds", "nan"],
            &["--seconds", "5"],
            &["--users", "15"],
            &["--users", "10.5"],
            &["--rate", "500"],
            &["--slow"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
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
        assert!(failures(&json!({"flatness": f.to_json(), "delivery": {"ok": true}})).is_empty());
    }

    #[test]
    fn failures_name_errors_losses_and_growth() {
        let report = json!({
            "totals": {"errors": 2},
            "delivery": {"ok": false, "problem": "1 missing, 0 duplicated, 0 unexpected deliveries"},
            "flatness": {"judged": true, "flat": false, "verdict": "grew: RSS +9 MiB"},
        });
        let problems = failures(&report);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("1 missing"));
    }

    #[test]
    fn record_has_the_figures_and_a_sample_table() {
        let options = Options::default();
        let mut samples = series(120, |_| 41_000, |_| 118);
        for s in &mut samples {
            s.counts[Count::Reconnects as usize] = 1;
            s.counts[Count::Sent as usize] = 1500;
        }
        let w = Windows::new(3600.0, 30.0);
        let mut report = json!({
            "duration_secs": 3600.0,
            "interval_secs": 30.0,
            "warm_up_secs": 1800.0,
            "traffic": traffic(&options),
            "server_env": ["IM_A=1"],
            "server_cpu_secs": 700.5,
            "generator_cpu_secs": 300.25,
            "latency": {"whole": {"p50_ms": 1.5, "p99_ms": 8.0, "max_ms": 40.0},
                        "first": {"p50_ms": 1.4, "p99_ms": 7.0}, "last": {"p50_ms": 1.6, "p99_ms": 9.0}},
            "flatness": Flatness::judge(&samples, &w, 3600.0).to_json(),
            "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
            "totals": {"sent": 180_000, "delivered": 1_100_000, "errors": 0},
            "delivery": {"ok": true, "missing": 0, "duplicates": 0, "unexpected": 0},
            "errors": {},
            "server_log": {"warnings": 3, "errors": 0},
            "when": "2030-01-01 00:00 UTC",
            "machine": "2 cores",
            "command": "cargo xtask soak --minutes 60 --record",
            "json": "/x/target/soak/soak-20300101-000000.json",
        });
        let md = render(&report);
        assert!(md.starts_with("## Soak\n\n"));
        assert!(md.contains("Command: `cargo xtask soak --minutes 60 --record`"));
        assert!(md.contains("**Duration:** 60 min, a sample every 30 s; a warm-up of 30 min is"));
        assert!(md.contains("180,000 messages sent, 1,100,000 deliveries"));
        assert!(md.contains("- **Errors:** none."));
        assert!(md.contains(
            "- **Verdict: flat.** From the first tenth after the warm-up to the \
             last tenth: RSS +0.0 MiB (+0.0%), open files +0 (+0.0%) (medians: RSS 40.0 → 40.0"
        ));
        assert!(md.contains("| server RSS (MiB) | 40.0 | 40.0 | 40.0 |"));
        assert!(md.contains("| time (min:s) | 0:30 | 30:00 | 60:00 |"));
        assert!(md.contains("`target/soak/soak-20300101-000000.json`"));
        // One row every 5 minutes, 12 of them, each counting the 10 samples since the last.
        let rows = md
            .lines()
            .filter(|l| l.ends_with("| 0.2 | 50.0 | 0.0 | 1 | 5 | 10 | 0 | 0 |"));
        assert_eq!(rows.count(), 12, "{md}");
        report["errors"] = json!({"POST /api/v1/messages: 429 rate_limited": 2});
        assert!(render(&report).contains("- **Errors:** 2 × POST /api/v1/messages: 429"));
        // The section goes between its markers, and anything around it stays.
        let doc = format!("# B\n\n{START}\nold\n{END}\n\n## After\n");
        let spliced = splice_between(Some(&doc), START, END, &md).unwrap();
        assert!(spliced.starts_with("# B\n\n<!-- soak:start -->\n## Soak"));
        assert!(spliced.ends_with("<!-- soak:end -->\n\n## After\n") && !spliced.contains("old"));
    }

    #[test]
    fn small_pieces() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(clock(3599.6), "60:00");
        assert_eq!(clock_words(150.0), "2 min 30 s");
        assert_eq!(file_stamp(951_782_400 + 3_723), "20000229-010203");
        assert_eq!(parse_padded("17 4 the quick"), Some((17, 4)));
        assert_eq!(parse_padded("17 4"), Some((17, 4)));
        assert_eq!(table_step(3600.0, 30.0), 300.0);
        assert_eq!(table_step(120.0, 10.0), 20.0);
        assert_eq!(table_step(30.0, 10.0), 10.0);
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
        let values: Vec<Value> = (1..=12)
            .map(|i| json!({"t_secs": i as f64 * 10.0}))
            .collect();
        assert_eq!(pick(&values, 20.0), [1, 3, 5, 7, 9, 11]);
        assert_eq!(pick(&values[..11], 20.0), [1, 3, 5, 7, 9, 10]);
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
