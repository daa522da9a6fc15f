//! The load generator: `im-loadgen <scenario> --addr A [--key value ...]`, run by
//! `cargo xtask bench` (and `cargo xtask soak`) as a separate release-mode process. It speaks
//! plain HTTP/1.1 and SSE through `im-client` to Web-IM or to nchan, and prints one JSON object
//! with the results on stdout.
//!
//! Every scenario counts what arrived: a message that did not arrive, or arrived twice, makes
//! the run fail instead of making it look fast.
//!
//! It is a crate of its own (`publish = false`) so that `cargo xtask` does not build it for
//! every command; `xtask` builds it in release mode when a benchmark or a soak needs it.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use im_client::{Connection, Dial, EventStream};
use im_protocol::sse::Item;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

mod login;
mod soak;

/// A failure of the generator or of the system under test.
pub type Error = String;
type Result<T> = std::result::Result<T, Error>;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

/// Which server the scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Web-IM.
    Ours,
    /// nchan (one channel, `/sub` and `/pub`).
    Nchan,
}

impl Target {
    /// Its `--target` value.
    fn arg(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Nchan => "nchan",
        }
    }
}

/// Parsed `loadgen` arguments: `--name value` pairs.
#[derive(Debug, Default)]
pub struct Args(Vec<(String, String)>);

impl Args {
    /// Parses `--key value` pairs.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got `{k}`"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            out.push((key.to_owned(), v.clone()));
        }
        Ok(Self(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str, default: u64) -> Result<u64> {
        self.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("--{key}: not a number: {v}"))
        })
    }

    fn addr(&self) -> Result<SocketAddr> {
        match self.addrs()?.as_slice() {
            [one] => Ok(*one),
            _ => Err("this scenario takes one --addr".into()),
        }
    }

    /// `--addr` as a comma-separated list: the nodes of one deployment.
    fn addrs(&self) -> Result<Vec<SocketAddr>> {
        self.get("addr")
            .ok_or("--addr is required")?
            .split(',')
            .map(|a| a.parse().map_err(err))
            .collect()
    }

    fn target(&self) -> Result<Target> {
        match self.get("target").unwrap_or("ours") {
            "ours" => Ok(Target::Ours),
            "nchan" => Ok(Target::Nchan),
            other => Err(format!("unknown --target {other}")),
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.pid_list("pids")
    }

    /// A comma-separated list of process ids.
    fn pid_list(&self, key: &str) -> Vec<u32> {
        self.get(key)
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("im-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the scenario `args[0]` with the `--key value` pairs after it.
fn run(args: &[String]) -> Result<()> {
    let (scenario, rest) = args
        .split_first()
        .ok_or("usage: im-loadgen SCENARIO --addr A [--key value ...]")?;
    let args = Args::parse(rest)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    let result = runtime.block_on(async {
        match scenario.as_str() {
            "idle" => idle(&args).await,
            "idle-part" => idle_part(&args).await.map(|()| Value::Null),
            "fanout" => fanout(&args).await,
            "direct" => direct(&args).await,
            "login" => login::login(&args).await,
            "soak" => soak::soak(&args).await,
            "resume" => resume(&args).await,
            "failover" => failover(&args).await,
            other => Err(format!("unknown scenario `{other}`")),
        }
    })?;
    if !result.is_null() {
        println!("{result}");
    }
    // Correctness is judged here too, so a lost message can never pass as a result.
    match result.get("ok") {
        Some(Value::Bool(false)) => Err(format!(
            "{scenario}: {}",
            result["problem"].as_str().unwrap_or("failed")
        )),
        _ => Ok(()),
    }
}

// ----- time and process stats -----

/// Microseconds since the epoch: stamps travel between tasks and must compare across them.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Memory of the given processes together, in KiB: the proportional set size, so pages that
/// several processes share (nginx's workers and its shared memory) are counted once.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            proc_field(&format!("/proc/{p}/smaps_rollup"), "Pss:")
                .or_else(|| proc_field(&format!("/proc/{p}/status"), "VmRSS:"))
        })
        .sum()
}

/// The number after `name` in a `/proc` file of `Name: value [kB]` lines (`VmRSS:`,
/// `Threads:`), so every reader of process figures parses them one way.
pub(crate) fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// PostgreSQL's processes working for database `db`, by their process titles: the backends
/// connected to it, and the WAL writer, checkpointer and background writer every database
/// shares. Backends that start later are missed; pools have grown by the time this is read.
fn postgres_pids(db: &str) -> Vec<u32> {
    const SHARED: [&str; 3] = ["walwriter", "checkpointer", "background writer"];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let title = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title);
            title.starts_with("postgres: ")
                && (title.split_whitespace().any(|w| w == db)
                    || SHARED.iter().any(|s| title.contains(s)))
        })
        .collect()
}

/// User plus system CPU seconds of each of the given processes.
fn cpu_by_pid(pids: &[u32]) -> std::collections::HashMap<u32, f64> {
    pids.iter().map(|&p| (p, cpu_secs(&[p]))).collect()
}

/// CPU seconds spent between two [`cpu_by_pid`] samples by the processes alive at the second
/// (a process that started in between counts whole).
fn cpu_since(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(p, t)| t - before.get(p).copied().unwrap_or(0.0))
        .sum()
}

/// Average cores busy: CPU seconds over a wall-clock span, to two decimals.
fn cores(cpu: f64, span: Duration) -> f64 {
    (cpu / span.as_secs_f64().max(1e-9) * 100.0).round() / 100.0
}

/// User plus system CPU seconds of the given processes.
pub(crate) fn cpu_secs(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name, which may contain spaces, in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// An empty latency histogram with the bounds every generator records in.
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// A histogram's count and percentiles in milliseconds, as every result reports them.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

// ----- HTTP -----

/// The source addresses connections are spread over, so ephemeral ports do not run out.
pub(crate) fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8))
}

/// How a connection from `src` (if given) is dialled.
pub(crate) fn dial(src: Option<IpAddr>) -> Dial {
    Dial {
        source: src,
        recv_buffer: None,
    }
}

/// One keep-alive HTTP/1.1 connection (`im-client`'s), with the generator's shortcuts.
pub(crate) struct Conn(Connection);

impl Conn {
    /// Connects from `src` and handshakes; the connection lives until the `Conn` is dropped.
    pub(crate) async fn open(addr: SocketAddr, src: Option<IpAddr>) -> Result<Self> {
        Connection::open(addr, dial(src))
            .await
            .map(Self)
            .map_err(err)
    }

    /// One request (`content_type` only with a body); the status and the whole body, or a
    /// transport error.
    pub(crate) async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", content_type)]
        };
        let res = self
            .0
            .request(method, path, token, headers, body)
            .await
            .map_err(err)?;
        Ok((res.status, res.body))
    }

    /// Posts an already encoded message body; the status alone (the generators time the
    /// delivery, not the answer's body).
    async fn post_message(&mut self, token: &str, body: Bytes) -> Result<StatusCode> {
        let (status, _) = self
            .call(
                Method::POST,
                "/api/v1/messages",
                Some(token),
                "application/json",
                body,
            )
            .await?;
        Ok(status)
    }

    /// POSTs `body` as JSON; the status and the answer parsed (`Null` if it is not JSON).
    pub(crate) async fn json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        let (status, bytes) = self
            .call(
                Method::POST,
                path,
                token,
                "application/json",
                Bytes::from(body.to_string()),
            )
            .await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// Opens an event stream from `src` and returns it once its 200 head arrived.
pub(crate) async fn open_stream(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path: &str,
    headers: &[(&str, String)],
) -> Result<EventStream> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Connection::open(addr, dial(src))
        .await
        .map_err(err)?
        .event_stream(path, None, &headers)
        .await
        .map_err(|e| format!("GET {path}: {e}"))
}

/// Runs `f(i, conn)` for every i in 0..n with at most `parallel` in flight, over `parallel`
/// keep-alive connections; `f` hands the connection back with its result.
async fn for_each_conn<F, Fut, T>(
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    f: F,
) -> Result<Vec<T>>
where
    F: Fn(usize, Conn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(T, Conn)>> + Send,
    T: Send + 'static + Default + Clone,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(parking(vec![T::default(); n]));
    let mut tasks = Vec::new();
    for w in 0..parallel.min(n.max(1)) {
        let (f, next, out) = (f.clone(), next.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, Some(source(w))).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), Error>(());
                }
                let (v, back) = f(i, conn).await?;
                conn = back;
                out.lock().map_err(err)?[i] = v;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    let v = out.lock().map_err(err)?.clone();
    Ok(v)
}

fn parking<T>(v: T) -> std::sync::Mutex<T> {
    std::sync::Mutex::new(v)
}

/// Registers and logs in `names`; returns their tokens and ids.
pub(crate) async fn accounts(
    addr: SocketAddr,
    prefix: &str,
    n: usize,
) -> Result<Vec<(String, u64)>> {
    let prefix = prefix.to_owned();
    for_each_conn(addr, n, 32, move |i, mut conn| {
        let name = format!("{prefix}{i}");
        async move {
            let creds = json!({"username": name, "password": "bench-password"});
            let (s, _) = conn.json("/api/v1/auth/register", None, &creds).await?;
            if s != StatusCode::CREATED && s != StatusCode::CONFLICT {
                return Err(format!("register {name}: {s}"));
            }
            let (s, v) = conn.json("/api/v1/auth/login", None, &creds).await?;
            if s != StatusCode::OK {
                return Err(format!("login {name}: {s}"));
            }
            let token = v["token"].as_str().ok_or("login without token")?.to_owned();
            Ok(((token, v["user"]["id"].as_u64().unwrap_or(0)), conn))
        }
    })
    .await
}

/// Makes the first of `users` (the hub) a friend of each of the others and creates a group
/// named `name`, owned by the hub, with all of them; the group's id. `users` are what
/// [`accounts`] registered with `prefix`: user i is `{prefix}{i}`.
async fn hub_and_group(
    addr: SocketAddr,
    users: &[(String, u64)],
    prefix: &str,
    name: &str,
) -> Result<u64> {
    let k = users.len();
    let hub = &users[0].0;
    // The hub asks everyone; everyone asks back: crossing requests are accepted at once.
    let asks = (1..k).map(|i| (hub.clone(), format!("{prefix}{i}")));
    friend_requests(addr, asks.collect(), "pending").await?;
    let answers = users[1..]
        .iter()
        .map(|u| (u.0.clone(), format!("{prefix}0")));
    friend_requests(addr, answers.collect(), "accepted").await?;
    let ids: Vec<u64> = users[1..].iter().map(|u| u.1).collect();
    let mut c = Conn::open(addr, None).await?;
    let (s, g) = c
        .json(
            "/api/v1/groups",
            Some(hub),
            &json!({"name": name, "members": ids}),
        )
        .await?;
    if s != StatusCode::CREATED || g["group"]["members"].as_array().map(Vec::len) != Some(k) {
        return Err(format!("creating the group failed: {s} {g}"));
    }
    Ok(g["group"]["id"].as_u64().unwrap_or(0))
}

/// Sends friend requests, each (the asker's token, the asked user's name), over 4
/// connections; each must be answered 201 with a request in `state`, or 409
/// `already_friends` (the accounts of an earlier run on the same server, as fanout's
/// saturating run finds them).
async fn friend_requests(
    addr: SocketAddr,
    asks: Vec<(String, String)>,
    state: &'static str,
) -> Result<()> {
    let asks = Arc::new(asks);
    for_each_conn(addr, asks.len(), 4, move |i, mut c| {
        let (token, name) = asks[i].clone();
        async move {
            let body = json!({"username": name});
            let (s, v) = c
                .json("/api/v1/friends/requests", Some(&token), &body)
                .await?;
            let friends_already =
                s == StatusCode::CONFLICT && v["error"]["code"] == "already_friends";
            if !friends_already && (s != StatusCode::CREATED || v["request"]["state"] != state) {
                return Err(format!("friend request to {name}: {s} {v}"));
            }
            Ok(((), c))
        }
    })
    .await?;
    Ok(())
}

// ----- counting what arrived -----

/// What one receiver got: each expected sequence number exactly once is the only pass.
#[derive(Debug, Clone)]
pub struct Tally {
    seen: Vec<u8>,
    /// Deliveries of a sequence number already seen.
    pub duplicates: u64,
    /// Deliveries of sequence numbers nobody sent.
    pub unexpected: u64,
}

impl Tally {
    /// A tally expecting sequence numbers `0..expected`.
    pub fn new(expected: usize) -> Self {
        Self {
            seen: vec![0; expected],
            duplicates: 0,
            unexpected: 0,
        }
    }

    /// Records one delivery.
    pub fn record(&mut self, seq: u64) {
        match self.seen.get_mut(seq as usize) {
            Some(0) => self.seen[seq as usize] = 1,
            Some(_) => self.duplicates += 1,
            None => self.unexpected += 1,
        }
    }

    /// Distinct expected sequence numbers received.
    pub fn received(&self) -> u64 {
        self.seen.iter().filter(|s| **s > 0).count() as u64
    }

    /// Expected sequence numbers never received.
    pub fn missing(&self) -> u64 {
        self.seen.len() as u64 - self.received()
    }

    /// Everything arrived once and nothing else came.
    pub fn complete(&self) -> bool {
        self.missing() == 0 && self.duplicates == 0 && self.unexpected == 0
    }

    /// Expects only `0..owed`: a sender's count is known at the end, and only what it had
    /// acknowledged was owed.
    pub fn truncate(&mut self, owed: usize) {
        self.seen.truncate(owed);
    }
}

/// Sums tallies into the JSON verdict every scenario carries.
pub fn verdict(tallies: &[Tally]) -> Value {
    let missing: u64 = tallies.iter().map(Tally::missing).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();
    let unexpected: u64 = tallies.iter().map(|t| t.unexpected).sum();
    let ok = tallies.iter().all(Tally::complete);
    let mut v =
        json!({"ok": ok, "missing": missing, "duplicates": duplicates, "unexpected": unexpected});
    if !ok {
        v["problem"] = json!(format!(
            "{missing} missing, {duplicates} duplicated, {unexpected} unexpected deliveries"
        ));
    }
    v
}

/// The payload text: send time and sequence number, so receivers measure latency.
pub(crate) fn stamp(seq: u64) -> String {
    format!("{} {seq}", now_us())
}

/// The send time and sequence number of a [`stamp`], if `text` is one.
pub(crate) fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let (ts, seq) = text.trim().split_once(' ')?;
    Some((ts.parse().ok()?, seq.parse().ok()?))
}

/// Reads a stream until `done(tally)` or the deadline; records latency of every delivery.
async fn receive(
    mut stream: EventStream,
    target: Target,
    expected: usize,
    quit: Arc<AtomicU64>,
    last_delivery: Arc<AtomicU64>,
    skip_before: u64,
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::new(expected);
    let mut hist = histogram();
    loop {
        if tally.received() as usize == expected && quit.load(Ordering::Relaxed) > 0 {
            break;
        }
        let item = tokio::select! {
            i = stream.next_item() => i,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if quit.load(Ordering::Relaxed) > 1 { break } else { continue }
            }
        };
        let Some(Ok(item)) = item else { break };
        let Item::Event(e) = item else { continue };
        let text = match target {
            Target::Nchan => e.data,
            Target::Ours if e.event == "message" => {
                let id: u64 = e.id.as_deref().and_then(|i| i.parse().ok()).unwrap_or(0);
                if id <= skip_before {
                    continue;
                }
                let m: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                m["body"]["text"].as_str().unwrap_or("").to_owned()
            }
            Target::Ours => continue,
        };
        if let Some((ts, seq)) = parse_stamp(&text) {
            let now = now_us();
            let _ = hist.record(now.saturating_sub(ts).max(1));
            last_delivery.fetch_max(now, Ordering::Relaxed);
            tally.record(seq);
        }
    }
    (tally, hist)
}

/// The middle value (the upper one of an even count), 0 for none: robust against one odd run.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        0.0
    } else {
        values[values.len() / 2]
    }
}

/// Runs `once` `runs` times and adds the median of every numeric field of `metrics`.
async fn repeat<F, Fut>(runs: u64, mut once: F) -> Result<Value>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let mut all = Vec::new();
    for run in 0..runs.max(1) {
        let v = once(run).await?;
        eprintln!("loadgen: run {}: {v}", run + 1);
        let failed = v["ok"] == json!(false);
        all.push(v);
        if failed {
            break;
        }
    }
    let ok = all.iter().all(|v| v["ok"] != json!(false));
    let mut medians = serde_json::Map::new();
    if let Some(Value::Object(first)) = all.first().map(|v| v["metrics"].clone()) {
        for key in first.keys() {
            let mut xs: Vec<f64> = all
                .iter()
                .filter_map(|v| v["metrics"][key].as_f64())
                .collect();
            medians.insert(
                key.clone(),
                json!((median(&mut xs) * 1000.0).round() / 1000.0),
            );
        }
    }
    let mut out = json!({"ok": ok, "runs": all, "median": medians});
    if !ok {
        out["problem"] = all
            .iter()
            .find_map(|v| v.get("problem").cloned())
            .unwrap_or(json!("failed"));
    }
    Ok(out)
}

// ----- idle: the connect burst -----

/// Streams one `idle-part` child process holds at most (each process may hold 20,000 files).
const STREAMS_PER_PART: usize = 8_000;

/// How long the streams of one burst may take to open before the run fails.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// How long the server may take to close its side of every stream once they closed.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The connect burst (issue 12): many streams opened at once on a fresh server, closed, and
/// opened again, twice.
///
/// Ours: `--users` members (5,000) who are all friends of one more user, the hub, and in the
/// hub's group, made as `fanout` makes its group ([`hub_and_group`]). Stream i belongs to
/// member i mod users, so the `--n` = 15,000 streams are three per member. nchan: `--n`
/// subscribers on `/sub`.
///
/// After the setup and 2 s of quiet, the server's memory is the idle baseline. Then come
/// `--bursts` bursts (3). A burst opens all the streams as fast as this machine's client can:
/// up to `--parallel` (2,000) connecting at once, spread over child processes (`idle-part`,
/// at most [`STREAMS_PER_PART`] each) that start together on a word from this one. Every
/// stream must answer 200 and send its first bytes, or the run fails. After 2 s the memory is
/// read at N streams. Then every stream closes at once (the children exit). The generator
/// waits until the server has closed them all (its open sockets back to the count before
/// the burst, for at most 30 s), waits 3 s more, and reads the memory again. A thread counts
/// the server's threads (all its processes') every 5 ms from the first burst to the last
/// reading.
///
/// One run is the whole sequence on one server, and the generator does one run per call
/// (`--runs` other than 1 is refused). The bursts are not repeats of one measurement: burst
/// 2 starts from what burst 1 left behind, and only the first has a fresh server's baseline.
/// A median over the bursts would mix the first burst's figures with the later ones'. So
/// each burst's figures are reported on their own (`burst<b>_…`), and `cargo xtask bench`
/// starts a fresh server for each of its runs and takes the medians over those.
///
/// The figures: `rss_idle_kib`, the baseline. `rss_streams_kib` (and `_mib`), the total at N
/// streams in burst 1. `per_stream_kib` = (that − baseline) / N. `rss_closed_kib`, the total
/// once burst 1's streams closed. `closed_vs_idle_pct` = (that − baseline) / baseline × 100.
/// `burst<b>_growth_pct`, for the later bursts: what is left after burst b closed over what
/// was left after burst b − 1, (closed_b − closed_(b−1)) / closed_(b−1) × 100. This is the
/// issue's reading ("a second burst adds another 70 MiB, and a third 24 MiB"): memory kept
/// after each burst. `later_growth_pct` is the largest of those. `peak_threads` is the most
/// over all bursts, `connect_all_secs` is burst 1's. Each burst also reports how long the
/// server took to close its streams (`drained_secs`), how many it still held then
/// (`held_after_close`), and, while they opened, the connections the kernel dropped from a
/// full listen queue (`listen_overflows`) and its SYN and SYN-ACK retransmissions
/// (`syn_retransmits`), both machine-wide: each costs a connection a second or more.
async fn idle(args: &Args) -> Result<Value> {
    if args.num("runs", 1)? != 1 {
        return Err("idle runs once per fresh server: start a server for each run".into());
    }
    let n = (args.num("n", 15_000)? as usize).max(1);
    let members = (args.num("users", 5_000)? as usize).max(1);
    let plan = Burst {
        exe: std::env::current_exe().map_err(err)?,
        addr: args.addr()?,
        target: args.target()?,
        n,
        parallel: (args.num("parallel", 2_000)? as usize).max(1),
        pids: args.pids(),
        users: 0,
        tokens: None,
    };
    let tokens_file =
        std::env::temp_dir().join(format!("web-im-idle-{}.tokens", std::process::id()));
    let plan = if plan.target == Target::Ours {
        let users = accounts(plan.addr, "idle", members + 1).await?;
        hub_and_group(plan.addr, &users, "idle", "idle").await?;
        let text: String = (0..n)
            .map(|i| format!("{}\n", users[1 + i % members].0))
            .collect();
        std::fs::write(&tokens_file, text).map_err(err)?;
        Burst {
            users: members,
            tokens: Some(tokens_file.clone()),
            ..plan
        }
    } else {
        plan
    };
    let bursts = args.num("bursts", 3)?.max(1) as usize;
    let out = repeat(1, |_| bursts_on(&plan, bursts)).await;
    let _ = std::fs::remove_file(&tokens_file);
    out
}

/// What every burst of `idle` opens, and against what.
struct Burst {
    /// This program, run again as the `idle-part` children.
    exe: std::path::PathBuf,
    addr: SocketAddr,
    target: Target,
    /// Streams per burst.
    n: usize,
    /// Streams connecting at once, over all children.
    parallel: usize,
    /// The server's processes.
    pids: Vec<u32>,
    /// The members whose streams they are (ours; 0 for nchan).
    users: usize,
    /// The file with stream i's token on line i (ours).
    tokens: Option<std::path::PathBuf>,
}

/// One burst's readings.
struct BurstFigures {
    connect_secs: f64,
    /// Total server memory at N streams.
    streams_kib: u64,
    /// Total server memory once the streams closed and the server let them go.
    closed_kib: u64,
    /// From the streams closing until the server had closed them all.
    drained_secs: f64,
    /// Streams the server still held when [`DRAIN_DEADLINE`] ran out (0: none).
    held_after_close: u64,
    /// Threads at most, all the server's processes together.
    peak_threads: u64,
    /// Connections the kernel dropped because a listen queue was full, machine-wide.
    listen_overflows: u64,
    /// SYN and SYN-ACK retransmissions, machine-wide.
    syn_retransmits: u64,
}

/// The baseline and then `bursts` bursts on one server: one run of `idle`.
async fn bursts_on(plan: &Burst, bursts: usize) -> Result<Value> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = rss_kib(&plan.pids);
    let threads_idle = threads(&plan.pids);
    let sampler = ThreadPeak::start(plan.pids.clone());
    let mut figures: Vec<BurstFigures> = Vec::new();
    let mut problem = None;
    for b in 1..=bursts {
        match burst(plan, &sampler).await? {
            Ok(f) => {
                eprintln!(
                    "loadgen: burst {b}: {} streams in {:.2} s ({} SYN retransmits), {} KiB \
                     open, {} KiB closed (drained in {:.1} s), {} threads at most",
                    plan.n,
                    f.connect_secs,
                    f.syn_retransmits,
                    f.streams_kib,
                    f.closed_kib,
                    f.drained_secs,
                    f.peak_threads
                );
                figures.push(f);
            }
            Err(e) => {
                problem = Some(format!("burst {b}: {e}"));
                break;
            }
        }
    }
    drop(sampler);
    let pct = |now: u64, before: u64| {
        ((now as f64 - before as f64) / before.max(1) as f64 * 100.0 * 100.0).round() / 100.0
    };
    let mut m = serde_json::Map::new();
    m.insert("streams".into(), json!(plan.n));
    if plan.users > 0 {
        m.insert("users".into(), json!(plan.users));
    }
    m.insert("rss_idle_kib".into(), json!(idle_kib));
    m.insert("threads_idle".into(), json!(threads_idle));
    if let Some(first) = figures.first() {
        let per_stream = (first.streams_kib as f64 - idle_kib as f64) / plan.n as f64;
        let mib = first.streams_kib as f64 / 1024.0;
        let peak = figures.iter().map(|f| f.peak_threads).max().unwrap_or(0);
        let entries = [
            ("rss_streams_kib", json!(first.streams_kib)),
            ("rss_streams_mib", json!((mib * 10.0).round() / 10.0)),
            (
                "per_stream_kib",
                json!((per_stream * 100.0).round() / 100.0),
            ),
            ("rss_closed_kib", json!(first.closed_kib)),
            ("closed_vs_idle_pct", json!(pct(first.closed_kib, idle_kib))),
            ("peak_threads", json!(peak)),
            (
                "connect_all_secs",
                json!((first.connect_secs * 1000.0).round() / 1000.0),
            ),
        ];
        m.extend(entries.into_iter().map(|(k, v)| (k.to_owned(), v)));
    }
    let mut later = Vec::new();
    for (i, f) in figures.iter().enumerate() {
        let key = |name: &str| format!("burst{}_{name}", i + 1);
        m.insert(
            key("connect_secs"),
            json!((f.connect_secs * 1000.0).round() / 1000.0),
        );
        m.insert(key("rss_streams_kib"), json!(f.streams_kib));
        m.insert(key("rss_closed_kib"), json!(f.closed_kib));
        m.insert(
            key("drained_secs"),
            json!((f.drained_secs * 10.0).round() / 10.0),
        );
        m.insert(key("held_after_close"), json!(f.held_after_close));
        m.insert(key("peak_threads"), json!(f.peak_threads));
        m.insert(key("listen_overflows"), json!(f.listen_overflows));
        m.insert(key("syn_retransmits"), json!(f.syn_retransmits));
        if i > 0 {
            let growth = pct(f.closed_kib, figures[i - 1].closed_kib);
            m.insert(key("growth_pct"), json!(growth));
            later.push(growth);
        }
    }
    if let Some(worst) = later.into_iter().reduce(f64::max) {
        m.insert("later_growth_pct".into(), json!(worst));
    }
    let mut v = json!({"ok": problem.is_none(), "metrics": m});
    if let Some(p) = problem {
        v["problem"] = json!(p);
    }
    Ok(v)
}

/// One burst: opens `plan.n` streams, reads the memory, closes them and reads it again. The
/// inner error is the run's problem (a stream that did not open).
async fn burst(
    plan: &Burst,
    sampler: &ThreadPeak,
) -> Result<std::result::Result<BurstFigures, String>> {
    let sockets_before = open_sockets(&plan.pids);
    let overflows_before = listen_overflows();
    let retransmits_before = syn_retransmits();
    let parts = plan.n.div_ceil(STREAMS_PER_PART);
    let share = plan.n.div_ceil(parts);
    let mut children = Vec::with_capacity(parts);
    for from in (0..plan.n).step_by(share) {
        let mut cmd = tokio::process::Command::new(&plan.exe);
        cmd.args(["idle-part", "--target", plan.target.arg()])
            .args(["--addr", &plan.addr.to_string()])
            .args(["--from", &from.to_string()])
            .args(["--to", &(from + share).min(plan.n).to_string()])
            .args(["--parallel", &plan.parallel.div_ceil(parts).to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(tokens) = &plan.tokens {
            cmd.arg("--tokens").arg(tokens);
        }
        let mut child = cmd.spawn().map_err(err)?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        children.push((child, tokio::io::BufReader::new(stdout).lines()));
    }
    // Every part has read its tokens and waits for the word, so the clock runs from the
    // first connection.
    for (_, lines) in &mut children {
        let line = lines.next_line().await.map_err(err)?;
        if line.as_deref() != Some("set") {
            return Err(format!("an idle part said {line:?} instead of `set`"));
        }
    }
    let started = Instant::now();
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"go\n").await.map_err(err)?;
        stdin.flush().await.map_err(err)?;
    }
    let (mut opened, mut failure) = (0usize, None);
    for (_, lines) in &mut children {
        let line = lines
            .next_line()
            .await
            .map_err(err)?
            .ok_or("an idle part died while connecting")?;
        let (count, why) = line
            .strip_prefix("opened ")
            .map(|rest| rest.split_once(' ').unwrap_or((rest, "")))
            .ok_or_else(|| format!("an idle part said {line}"))?;
        opened += count.parse::<usize>().map_err(err)?;
        if failure.is_none() && !why.is_empty() {
            failure = Some(why.to_owned());
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let listen_overflows = listen_overflows().saturating_sub(overflows_before);
    let syn_retransmits = syn_retransmits().saturating_sub(retransmits_before);
    if opened != plan.n {
        return Ok(Err(format!(
            "only {opened} of {} streams opened ({})",
            plan.n,
            failure.as_deref().unwrap_or("no reason given")
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let streams_kib = rss_kib(&plan.pids);
    // All at once: each part exits when its stdin closes, and its streams close with it.
    for (child, _) in &mut children {
        drop(child.stdin.take());
    }
    for (mut child, _) in children {
        let _ = child.wait().await;
    }
    let closed = Instant::now();
    let mut held = open_sockets(&plan.pids).saturating_sub(sockets_before);
    while held > 0 && closed.elapsed() < DRAIN_DEADLINE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = open_sockets(&plan.pids).saturating_sub(sockets_before);
    }
    let drained_secs = closed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Ok(BurstFigures {
        connect_secs,
        streams_kib,
        closed_kib: rss_kib(&plan.pids),
        drained_secs,
        held_after_close: held,
        peak_threads: sampler.take(),
        listen_overflows,
        syn_retransmits,
    }))
}

/// One process's share of a burst's streams (`--from` to `--to`): says `set` once ready,
/// opens them on the word `go` (a line on stdin), up to `--parallel` connecting at once, and
/// says `opened <count>`, followed by the first failure if any stream did not open (200 and
/// its first bytes) within [`CONNECT_DEADLINE`]. Holds them until stdin closes.
async fn idle_part(args: &Args) -> Result<()> {
    let addr = args.addr()?;
    let target = args.target()?;
    let (from, to) = (args.num("from", 0)? as usize, args.num("to", 0)? as usize);
    let parallel = (args.num("parallel", 1_000)? as usize).max(1);
    let tokens: Vec<String> = match args.get("tokens") {
        Some(f) => std::fs::read_to_string(f)
            .map_err(err)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    println!("set");
    if stdin.read_line(&mut line).await.map_err(err)? == 0 {
        return Ok(());
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Each task holds its stream until this process exits.
    for i in from..to {
        let (gate, tx) = (gate.clone(), tx.clone());
        let (path, headers) = match target {
            Target::Ours => (
                "/api/v1/events",
                vec![(
                    "authorization",
                    format!("Bearer {}", tokens.get(i).cloned().unwrap_or_default()),
                )],
            ),
            Target::Nchan => ("/sub", vec![]),
        };
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = live_stream(addr, source(i), path, &headers).await;
            drop(permit);
            match opened {
                Ok(mut stream) => {
                    let _ = tx.send(Ok(()));
                    while let Some(Ok(_)) = stream.next_item().await {}
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("stream {i}: {e}")));
                }
            }
        });
    }
    drop(tx);
    let total = to.saturating_sub(from);
    let (mut opened, mut answered, mut failure) = (0usize, 0usize, None);
    let deadline = tokio::time::sleep(CONNECT_DEADLINE);
    tokio::pin!(deadline);
    while answered < total {
        tokio::select! {
            r = rx.recv() => match r {
                Some(Ok(())) => opened += 1,
                Some(Err(e)) => { failure.get_or_insert(e); }
                None => break,
            },
            _ = &mut deadline => {
                failure.get_or_insert(format!(
                    "{} streams not open after {} s",
                    total - answered,
                    CONNECT_DEADLINE.as_secs()
                ));
                break;
            }
        }
        answered += 1;
    }
    match failure {
        Some(e) => println!("opened {opened} {e}"),
        None => println!("opened {opened}"),
    }
    line.clear();
    let _ = stdin.read_line(&mut line).await;
    Ok(())
}

/// An event stream that answered 200 and sent its first bytes (our `retry:` hint, nchan's
/// opening), which prove it live.
async fn live_stream(
    addr: SocketAddr,
    src: IpAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<EventStream> {
    let mut stream = open_stream(addr, Some(src), path, headers).await?;
    match stream.fill().await {
        Ok(true) => Ok(stream),
        Ok(false) => Err("the stream ended before its first bytes".into()),
        Err(e) => Err(format!("the stream broke before its first bytes: {e}")),
    }
}

/// Threads of the given processes together (`Threads:` in `/proc/<pid>/status`).
fn threads(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| proc_field(&format!("/proc/{p}/status"), "Threads:"))
        .sum()
}

/// Open sockets of the given processes together (entries of `/proc/<pid>/fd` that link to
/// `socket:[…]`; a process this one may not read counts 0).
fn open_sockets(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count() as u64
}

/// The most [`threads`] seen, sampled every 5 ms on a thread of its own (the runtime's are
/// busy with the burst) until dropped.
struct ThreadPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl ThreadPeak {
    fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(threads(&pids), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            peak,
            stop,
            sampler: Some(sampler),
        }
    }

    /// The peak since the last `take` (or the start), and starts over.
    fn take(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for ThreadPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

// ----- fanout -----

/// One group (or nchan channel) with K online members, M messages posted at a steady rate.
///
/// `--addr` may list the nodes of one deployment: the accounts and the group are made on the
/// first, member i's stream listens on node i mod n, and poster p posts to node p mod n, so
/// most deliveries cross nodes. All K streams are held by this one process (each may hold
/// 20,000 files; `idle` spreads larger counts over processes).
async fn fanout(args: &Args) -> Result<Value> {
    let addrs = Arc::new(args.addrs()?);
    let addr = addrs[0];
    let target = args.target()?;
    let k = args.num("k", 5_000)? as usize;
    let m = args.num("m", 200)?;
    let rate = args.num("rate", 100)?.max(1);
    let pids = Arc::new(args.pids());
    let (tokens, group) = match target {
        Target::Ours => {
            let users = accounts(addr, "fan", k).await?;
            let group = hub_and_group(addr, &users, "fan", "fanout").await?;
            (users.into_iter().map(|u| u.0).collect::<Vec<_>>(), group)
        }
        Target::Nchan => (Vec::new(), 0),
    };
    let tokens = Arc::new(tokens);
    repeat(args.num("runs", 3)?, |_| {
        let (tokens, addrs, pids) = (tokens.clone(), addrs.clone(), pids.clone());
        async move {
            let quit = Arc::new(AtomicU64::new(0));
            let last = Arc::new(AtomicU64::new(0));
            let mut streams = Vec::with_capacity(k);
            for i in 0..k {
                let addr = addrs[i % addrs.len()];
                let (path, headers) = match target {
                    Target::Ours => ("/api/v1/events", vec![("authorization", format!("Bearer {}", tokens[i]))]),
                    Target::Nchan => ("/sub", vec![]),
                };
                streams.push(tokio::spawn(async move { open_stream(addr, Some(source(i)), path, &headers).await }));
            }
            let mut receivers = Vec::with_capacity(k);
            for s in streams {
                let mut stream = s.await.map_err(err)??;
                let _ = stream.fill().await; // live
                receivers.push(tokio::spawn(receive(stream, target, m as usize, quit.clone(), last.clone(), 0)));
            }
            // Post at a steady rate from a few keep-alive connections.
            let first_post = now_us();
            let (cpu_before, own_before, machine_before) = (cpu_secs(&pids), own_cpu(), machine_ticks());
            let posters = 4usize;
            let mut conns = Vec::new();
            for p in 0..posters {
                conns.push(Conn::open(addrs[p % addrs.len()], Some(source(p))).await?);
            }
            let conns: Vec<_> = conns.into_iter().map(|c| Arc::new(tokio::sync::Mutex::new(c))).collect();
            let owner = tokens.first().cloned();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut posts = Vec::new();
            for seq in 0..m {
                tick.tick().await;
                let conn = conns[seq as usize % posters].clone();
                let owner = owner.clone();
                posts.push(tokio::spawn(async move {
                    let mut c = conn.lock().await;
                    let (status, _) = match target {
                        Target::Ours => {
                            let body = json!({"to": {"group": group}, "kind": "text", "body": {"text": stamp(seq)}});
                            c.call(Method::POST, "/api/v1/messages", owner.as_deref(), "application/json", Bytes::from(body.to_string())).await?
                        }
                        Target::Nchan => c.call(Method::POST, "/pub", None, "text/plain", Bytes::from(stamp(seq))).await?,
                    };
                    if status.is_success() { Ok(()) } else { Err(format!("post {seq}: {status}")) }
                }));
            }
            for p in posts {
                p.await.map_err(err)??;
            }
            quit.store(1, Ordering::Relaxed);
            let grace = tokio::spawn({
                let quit = quit.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    quit.store(2, Ordering::Relaxed);
                }
            });
            let mut tallies = Vec::new();
            let mut hist = histogram();
            for r in receivers {
                let (t, h) = r.await.map_err(err)?;
                tallies.push(t);
                hist.add(&h).map_err(err)?;
            }
            grace.abort();
            let deliveries: u64 = tallies.iter().map(Tally::received).sum();
            let (cpu, own) = (cpu_secs(&pids) - cpu_before, own_cpu() - own_before);
            let busy = busy_cores(machine_before);
            let span = last.load(Ordering::Relaxed).saturating_sub(first_post).max(1) as f64 / 1e6;
            let mut v = verdict(&tallies);
            v["metrics"] = json!({
                "deliveries": deliveries,
                "deliveries_per_sec": (deliveries as f64 / span).round(),
                "latency_p50_ms": latency_json(&hist)["p50_ms"],
                "latency_p99_ms": latency_json(&hist)["p99_ms"],
                "latency_max_ms": latency_json(&hist)["max_ms"],
                "generator_cpu_secs_per_1000": per_1000(own, deliveries),
                "busy_cores": busy,
            });
            if !pids.is_empty() {
                v["metrics"]["cpu_secs_per_1000"] = json!(per_1000(cpu, deliveries));
            }
            Ok(v)
        }
    })
    .await
}

// ----- direct -----

/// P pairs chatting over keep-alive connections: first as fast as each sender can (open
/// rate), then at half that rate.
///
/// `--addr` may list the nodes of one deployment: pair i's sender posts to node i mod n and
/// its receiver listens on node i + 1 mod n. With `--db NAME`, PostgreSQL's CPU for that
/// database is reported too, and with `--bus-pids`, the CPU of those processes (the bus's
/// server).
async fn direct(args: &Args) -> Result<Value> {
    let addrs = Arc::new(args.addrs()?);
    let pairs = args.num("pairs", 500)? as usize;
    let secs = args.num("secs", 10)?;
    let pids = args.pids();
    let bus = args.pid_list("bus-pids");
    let db = args.get("db").map(str::to_owned);
    let users = Arc::new(accounts(addrs[0], "pair", pairs * 2).await?);
    repeat(args.num("runs", 3)?, |_| {
        let (addrs, users, db) = (addrs.clone(), users.clone(), db.clone());
        let (pids, bus) = (pids.clone(), bus.clone());
        async move {
            let watch = Watch {
                server: pids,
                db,
                bus,
            };
            let open = phase(&addrs, &users, pairs, secs, None, &watch).await?;
            let rate = (open["metrics"]["msgs_per_sec"].as_f64().unwrap_or(1.0) / 2.0).max(1.0);
            let fixed = phase(&addrs, &users, pairs, secs, Some(rate), &watch).await?;
            let ok = open["ok"] == json!(true) && fixed["ok"] == json!(true);
            let mut v = json!({"ok": ok, "metrics": {
                "open_msgs_per_sec": open["metrics"]["msgs_per_sec"],
                "open_p50_ms": open["metrics"]["p50_ms"],
                "open_p99_ms": open["metrics"]["p99_ms"],
                "cpu_secs_per_1000": open["metrics"]["cpu_secs_per_1000"],
                "fixed_rate": (rate * 10.0).round() / 10.0,
                "fixed_msgs_per_sec": fixed["metrics"]["msgs_per_sec"],
                "fixed_p50_ms": fixed["metrics"]["p50_ms"],
                "fixed_p99_ms": fixed["metrics"]["p99_ms"],
            }});
            for key in [
                "db_cpu_secs_per_1000",
                "bus_cpu_secs_per_1000",
                "busy_cores",
                "generator_cpu_secs_per_1000",
            ] {
                if let Some(x) = open["metrics"].get(key) {
                    v["metrics"][key] = x.clone();
                }
            }
            if !ok {
                v["problem"] = open
                    .get("problem")
                    .or(fixed.get("problem"))
                    .cloned()
                    .unwrap_or(json!("failed"));
            }
            Ok(v)
        }
    })
    .await
}

/// Whose CPU a direct phase measures.
struct Watch {
    /// The server's processes (every node's).
    server: Vec<u32>,
    /// The PostgreSQL database the nodes use, if they do.
    db: Option<String>,
    /// The bus's server processes (Redis), if any.
    bus: Vec<u32>,
}

/// This process's own CPU seconds (the generator's).
pub(crate) fn own_cpu() -> f64 {
    cpu_secs(&[std::process::id()])
}

/// Average cores busy machine-wide since `before` (a [`machine_ticks`] reading).
fn busy_cores(before: (u64, u64)) -> f64 {
    let now = machine_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = (now.0 - before.0) as f64 / (now.1 - before.1).max(1) as f64;
    (busy * cores * 100.0).round() / 100.0
}

/// Busy and total CPU time of the whole machine so far, in ticks (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// CPU seconds per 1,000 messages, to three decimals.
fn per_1000(cpu: f64, messages: u64) -> f64 {
    ((cpu / messages.max(1) as f64 * 1000.0) * 1000.0).round() / 1000.0
}

/// One phase of `direct`: every pair sends for `secs`, as fast as acknowledged or at `rate`
/// messages per second in all.
async fn phase(
    addrs: &[SocketAddr],
    users: &Arc<Vec<(String, u64)>>,
    pairs: usize,
    secs: u64,
    rate: Option<f64>,
    watch: &Watch,
) -> Result<Value> {
    // Generous room per sender; the tally only expects what was acknowledged.
    let capacity = 2_000_000 / pairs.max(1) + 1000;
    let quit = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    // What each receiver is owed, known once its sender has stopped.
    let owed: Arc<Vec<AtomicU64>> =
        Arc::new((0..pairs).map(|_| AtomicU64::new(u64::MAX)).collect());
    let mut receivers = Vec::new();
    for p in 0..pairs {
        let token = users[2 * p + 1].0.clone();
        let mut stream = open_stream(
            addrs[(p + 1) % addrs.len()],
            Some(source(p)),
            "/api/v1/events",
            &[("authorization", format!("Bearer {token}"))],
        )
        .await?;
        let _ = stream.fill().await;
        receivers.push(tokio::spawn(receive_any(
            stream,
            capacity,
            quit.clone(),
            last.clone(),
            (owed.clone(), p),
        )));
    }
    let db_pids = watch.db.as_deref().map(postgres_pids).unwrap_or_default();
    let cpu_before = cpu_secs(&watch.server);
    let db_cpu_before = cpu_secs(&db_pids);
    let bus_cpu_before = cpu_secs(&watch.bus);
    let (own_before, machine_before) = (own_cpu(), machine_ticks());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut senders = Vec::new();
    for p in 0..pairs {
        let (token, to) = (users[2 * p].0.clone(), users[2 * p + 1].1);
        let addr = addrs[p % addrs.len()];
        senders.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, Some(source(p + 3))).await?;
            let mut tick = rate.map(|r| {
                let per_sender = (r / pairs as f64).max(0.01);
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut acked = 0u64;
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let body =
                    json!({"to": {"user": to}, "kind": "text", "body": {"text": stamp(acked)}});
                let s = c
                    .post_message(&token, Bytes::from(body.to_string()))
                    .await?;
                if s == StatusCode::CREATED {
                    acked += 1;
                } else if s != StatusCode::SERVICE_UNAVAILABLE {
                    return Err(format!("post: {s}"));
                }
            }
            Ok::<u64, Error>(acked)
        }));
    }
    let mut acked = Vec::new();
    for (p, s) in senders.into_iter().enumerate() {
        let n = s.await.map_err(err)??;
        owed[p].store(n, Ordering::Relaxed);
        acked.push(n);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(&watch.server) - cpu_before;
    let db_cpu = cpu_secs(&db_pids) - db_cpu_before;
    let bus_cpu = cpu_secs(&watch.bus) - bus_cpu_before;
    let own = own_cpu() - own_before;
    let busy = busy_cores(machine_before);
    quit.store(1, Ordering::Relaxed);
    let mut tallies = Vec::new();
    let mut hist = histogram();
    for (r, n) in receivers.into_iter().zip(&acked) {
        let (mut t, h) = r.await.map_err(err)?;
        // Only acknowledged messages were owed.
        t.truncate(*n as usize);
        hist.add(&h).map_err(err)?;
        tallies.push(t);
    }
    let total: u64 = acked.iter().sum();
    let mut v = verdict(&tallies);
    v["metrics"] = json!({
        "messages": total,
        "msgs_per_sec": (total as f64 / elapsed).round(),
        "p50_ms": latency_json(&hist)["p50_ms"],
        "p99_ms": latency_json(&hist)["p99_ms"],
        "cpu_secs_per_1000": per_1000(cpu, total),
    });
    v["metrics"]["busy_cores"] = json!(busy);
    v["metrics"]["generator_cpu_secs_per_1000"] = json!(per_1000(own, total));
    if watch.db.is_some() {
        v["metrics"]["db_cpu_secs_per_1000"] = json!(per_1000(db_cpu, total));
    }
    if !watch.bus.is_empty() {
        v["metrics"]["bus_cpu_secs_per_1000"] = json!(per_1000(bus_cpu, total));
    }
    Ok(v)
}

/// Like [`receive`], for a sender whose count is known only at the end (`owed`, this
/// receiver's entry in a table, `u64::MAX` until then): stops once quit is set and nothing
/// arrived for 250 ms after everything owed did, or for 2 s if something is still missing.
async fn receive_any(
    mut stream: EventStream,
    capacity: usize,
    quit: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    (owed, me): (Arc<Vec<AtomicU64>>, usize),
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::new(capacity);
    let mut hist = histogram();
    let mut idle_rounds = 0;
    loop {
        let item = tokio::select! {
            i = stream.next_item() => i,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if quit.load(Ordering::Relaxed) > 0 {
                    idle_rounds += 1;
                    let all_here = tally.received() >= owed[me].load(Ordering::Relaxed);
                    if idle_rounds >= 8 || all_here { break }
                }
                continue;
            }
        };
        idle_rounds = 0;
        let Some(Ok(item)) = item else { break };
        let Item::Event(e) = item else { continue };
        if e.event != "message" {
            continue;
        }
        let m: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        if let Some((ts, seq)) = m["body"]["text"].as_str().and_then(parse_stamp) {
            let now = now_us();
            let _ = hist.record(now.saturating_sub(ts).max(1));
            last.fetch_max(now, Ordering::Relaxed);
            tally.record(seq);
        }
    }
    (tally, hist)
}

// ----- resume -----

/// R clients reconnect at once with `Last-Event-ID`, each owed 20 messages.
async fn resume(args: &Args) -> Result<Value> {
    let addr = args.addr()?;
    let r = args.num("r", 5_000)? as usize;
    let owed = args.num("owed", 20)?;
    let users = accounts(addr, "res", r + 1).await?;
    let sender = users[0].0.clone();
    // The position every client resumes from: the id of a marker message.
    let mut c = Conn::open(addr, None).await?;
    let (s, v) = c
        .json(
            "/api/v1/messages",
            Some(&sender),
            &json!({"to": {"user": users[0].1}, "kind": "text", "body": {"text": "marker"}}),
        )
        .await?;
    if s != StatusCode::CREATED {
        return Err(format!("marker: {s} {v}"));
    }
    let baseline = v["message"]["id"].as_u64().unwrap_or(0);
    let ids: Arc<Vec<u64>> = Arc::new(users[1..].iter().map(|u| u.1).collect());
    let s2 = sender.clone();
    let ids2 = ids.clone();
    for_each_conn(addr, r * owed as usize, 32, move |i, mut c| {
        let (token, to) = (s2.clone(), ids2[i / owed as usize]);
        let seq = (i as u64) % owed;
        async move {
            let body = json!({"to": {"user": to}, "kind": "text", "body": {"text": stamp(seq)}});
            let (s, _) = c.json("/api/v1/messages", Some(&token), &body).await?;
            if s == StatusCode::CREATED {
                Ok(((), c))
            } else {
                Err(format!("post: {s}"))
            }
        }
    })
    .await?;
    let tokens: Arc<Vec<String>> = Arc::new(users[1..].iter().map(|u| u.0.clone()).collect());
    repeat(args.num("runs", 3)?, |_| {
        let tokens = tokens.clone();
        async move {
            let quit = Arc::new(AtomicU64::new(1));
            let last = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let gate = Arc::new(tokio::sync::Semaphore::new(1024));
            let mut tasks = Vec::new();
            for i in 0..r {
                let (token, quit, last, gate) =
                    (tokens[i].clone(), quit.clone(), last.clone(), gate.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.map_err(err)?;
                    let headers = [
                        ("authorization", format!("Bearer {token}")),
                        ("last-event-id", baseline.to_string()),
                    ];
                    let body =
                        open_stream(addr, Some(source(i)), "/api/v1/events", &headers).await?;
                    Ok::<_, Error>(
                        receive(body, Target::Ours, owed as usize, quit, last, baseline).await,
                    )
                }));
            }
            let stopper = tokio::spawn({
                let quit = quit.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    quit.store(2, Ordering::Relaxed);
                }
            });
            let mut tallies = Vec::new();
            for t in tasks {
                tallies.push(t.await.map_err(err)??.0);
            }
            stopper.abort();
            let caught_up = started.elapsed().as_secs_f64();
            let mut v = verdict(&tallies);
            v["metrics"] = json!({
                "clients": r,
                "messages_replayed": tallies.iter().map(Tally::received).sum::<u64>(),
                "all_caught_up_secs": (caught_up * 1000.0).round() / 1000.0,
            });
            Ok(v)
        }
    })
    .await
}

// ----- failover -----

/// R clients hold their streams on one node while messages to them keep flowing; the node is
/// killed (`kill -9`), and each client reconnects to a surviving node with `Last-Event-ID`
/// after the `retry:` hint, as a browser's `EventSource` does.
///
/// `--addr` lists the nodes; the last is the one killed and `--kill` is its process id.
/// Client i reconnects to surviving node i mod (n - 1). `--senders` users post to the
/// surviving nodes (sender j to node j mod (n - 1)), `--rate` messages per second in all,
/// each to its next client in turn (client i hears only from sender i mod S), with a
/// `client_id`, retried after a 503. Traffic runs `--before` seconds before the kill and
/// `--after` seconds after it. Reported, from the kill: when every client's new stream had
/// opened, when every client had every message acknowledged before the kill, when every
/// client had every message acknowledged before its new stream opened (the backlog of the
/// outage too), and when every client had received a message sent after its new stream
/// opened (live delivery again).
/// Every acknowledged message must arrive exactly once over the two streams.
async fn failover(args: &Args) -> Result<Value> {
    let addrs = args.addrs()?;
    let (&victim, survivors) = addrs.split_last().ok_or("--addr is required")?;
    if survivors.is_empty() {
        return Err("failover needs two nodes or more in --addr (the last is killed)".into());
    }
    let pid = args.num("kill", 0)?;
    if pid == 0 {
        return Err("failover needs --kill PID, the process of the last --addr".into());
    }
    let r = (args.num("r", 5_000)? as usize).max(1);
    let plan = Failover {
        victim,
        survivors: survivors.to_vec(),
        pid,
        r,
        senders: (args.num("senders", 250)? as usize).clamp(1, r),
        rate: args.num("rate", 5_000)?.max(1) as f64,
        before: Duration::from_secs(args.num("before", 5)?),
        after: Duration::from_secs(args.num("after", 15)?),
        drain: Duration::from_secs(args.num("drain", 30)?),
        db: args.get("db").map(str::to_owned),
    };
    let users = accounts(survivors[0], "fo", r + plan.senders).await?;
    // One run: a node dies only once. `cargo xtask bench` repeats it on fresh nodes.
    repeat(1, |_| failover_run(&plan, &users)).await
}

/// The parameters of one `failover` run.
struct Failover {
    victim: SocketAddr,
    survivors: Vec<SocketAddr>,
    pid: u64,
    r: usize,
    senders: usize,
    rate: f64,
    before: Duration,
    after: Duration,
    /// How long the clients may take to receive everything once the senders stop.
    drain: Duration,
    /// The PostgreSQL database the nodes use, whose CPU is reported before and after the kill.
    db: Option<String>,
}

/// What every client task of `failover` shares.
struct Clients {
    /// When the node was killed (µs since the epoch; 0 before).
    killed_at: AtomicU64,
    /// What each client is owed: `u64::MAX` until the senders stop, then the count of its
    /// acknowledged messages.
    owed: Vec<AtomicU64>,
    /// Set when the drain time is over: every client stops where it is.
    give_up: std::sync::atomic::AtomicBool,
}

impl Clients {
    fn done(&self, i: usize, log: &ClientLog) -> bool {
        if self.give_up.load(Ordering::Relaxed) {
            return true;
        }
        let owed = self.owed[i].load(Ordering::Relaxed);
        owed != u64::MAX && log.received.iter().take(owed as usize).all(|&t| t > 0)
    }
}

/// What one client saw, per sequence number: when the message was sent (its stamp) and when
/// it was first received, in µs since the epoch (0: never).
struct ClientLog {
    tally: Tally,
    sent: Vec<u64>,
    received: Vec<u64>,
    /// When its stream on a surviving node opened (0: it never reconnected).
    reconnected: u64,
    /// The last `retry:` hint the server gave.
    retry_ms: u64,
    /// Latency of the deliveries before the kill.
    hist: Histogram<u64>,
}

/// One client of `failover`: a stream on the victim, then on `survivor`, resuming from the
/// last id it saw. Reports on `opened` once its first stream is open (or could not open).
async fn failover_client(
    i: usize,
    token: String,
    (victim, survivor): (SocketAddr, SocketAddr),
    capacity: usize,
    shared: Arc<Clients>,
    opened: tokio::sync::mpsc::Sender<Result<()>>,
    gate: Arc<tokio::sync::Semaphore>,
) -> ClientLog {
    let mut log = ClientLog {
        tally: Tally::new(capacity),
        sent: vec![0; capacity],
        received: vec![0; capacity],
        reconnected: 0,
        retry_ms: 0,
        hist: histogram(),
    };
    let mut last_id: Option<u64> = None;
    let mut addr = victim;
    let mut opened = Some(opened);
    loop {
        let mut headers = vec![("authorization", format!("Bearer {token}"))];
        if let Some(id) = last_id {
            headers.push(("last-event-id", id.to_string()));
        }
        // Only the first opens are paced; the reconnects come all at once, as they would.
        let permit = match opened {
            Some(_) => gate.clone().acquire_owned().await.ok(),
            None => None,
        };
        let body = open_stream(addr, Some(source(i)), "/api/v1/events", &headers).await;
        drop(permit);
        let mut stream = match (body, opened.take()) {
            (Ok(stream), Some(tx)) => {
                let _ = tx.send(Ok(())).await;
                stream
            }
            (Ok(stream), None) => {
                if log.reconnected == 0 {
                    log.reconnected = now_us();
                }
                stream
            }
            (Err(e), Some(tx)) => {
                let _ = tx.send(Err(e)).await;
                return log;
            }
            (Err(_), None) => {
                if shared.done(i, &log) {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(log.retry_ms.max(100))).await;
                continue;
            }
        };
        loop {
            if shared.done(i, &log) {
                return log;
            }
            let item = tokio::select! {
                i = stream.next_item() => i,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let Some(Ok(item)) = item else { break };
            let e = match item {
                Item::Retry(ms) => {
                    log.retry_ms = ms;
                    continue;
                }
                Item::Event(e) => e,
                Item::Comment(_) => continue,
            };
            if let Some(id) = e.id.as_deref().and_then(|i| i.parse().ok()) {
                last_id = Some(id);
            }
            if e.event != "message" {
                continue;
            }
            let m: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            let Some((ts, seq)) = m["body"]["text"].as_str().and_then(parse_stamp) else {
                continue;
            };
            let now = now_us();
            log.tally.record(seq);
            if let Some(got) = log.received.get_mut(seq as usize).filter(|t| **t == 0) {
                *got = now;
                log.sent[seq as usize] = ts;
            }
            let killed_at = shared.killed_at.load(Ordering::Relaxed);
            if killed_at == 0 || now < killed_at {
                let _ = log.hist.record(now.saturating_sub(ts).max(1));
            }
        }
        // The stream ended (its node died): wait the retry hint, then resume elsewhere.
        if shared.done(i, &log) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(log.retry_ms)).await;
        addr = survivor;
    }
}

/// One sender of `failover`: posts to its clients (`(client index, user id)`) in turn every
/// `interval` until `stop`; returns the acknowledgement times of each client's messages, in
/// sequence order.
async fn failover_sender(
    j: usize,
    token: String,
    addr: SocketAddr,
    mine: Vec<(usize, u64)>,
    interval: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<(usize, Vec<u64>)>> {
    let mut c = Conn::open(addr, Some(source(j + 3))).await?;
    let mut acks: Vec<Vec<u64>> = vec![Vec::new(); mine.len()];
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let slot = turn % mine.len();
        turn += 1;
        let (client, to) = mine[slot];
        let seq = acks[slot].len();
        let body = json!({"to": {"user": to}, "kind": "text", "body": {"text": stamp(seq as u64)},
                          "client_id": format!("fo-{client}-{seq}")});
        let body = Bytes::from(body.to_string());
        loop {
            match c.post_message(&token, body.clone()).await? {
                StatusCode::CREATED | StatusCode::OK => break,
                StatusCode::SERVICE_UNAVAILABLE => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return Err(format!("post: {other}")),
            }
        }
        acks[slot].push(now_us());
    }
    Ok(mine.into_iter().map(|(c, _)| c).zip(acks).collect())
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`, machine-wide).
fn listen_overflows() -> u64 {
    tcp_ext("ListenOverflows")
}

/// The kernel's count of SYN and SYN-ACK retransmissions (`TcpExt: TCPSynRetrans`,
/// machine-wide): each costs a connection at least a second.
fn syn_retransmits() -> u64 {
    tcp_ext("TCPSynRetrans")
}

/// A `TcpExt:` counter of `/proc/net/netstat` (machine-wide; 0 if absent).
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Seconds from `from` to `to` (µs), to three decimals.
fn secs_between(from: u64, to: u64) -> f64 {
    (to.saturating_sub(from) as f64 / 1e3).round() / 1e3
}

/// One `failover` run: the clients' streams open on the victim, traffic starts, the victim is
/// killed, traffic goes on, and the clients' logs are judged.
async fn failover_run(plan: &Failover, users: &[(String, u64)]) -> Result<Value> {
    let r = plan.r;
    let total = plan.before + plan.after + Duration::from_secs(10);
    let capacity = (plan.rate / r as f64 * total.as_secs_f64() * 2.0) as usize + 100;
    let shared = Arc::new(Clients {
        killed_at: AtomicU64::new(0),
        owed: (0..r).map(|_| AtomicU64::new(u64::MAX)).collect(),
        give_up: Default::default(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(r);
    let gate = Arc::new(tokio::sync::Semaphore::new(1024));
    let mut clients = Vec::with_capacity(r);
    for (i, (token, _)) in users[..r].iter().enumerate() {
        let survivor = plan.survivors[i % plan.survivors.len()];
        clients.push(tokio::spawn(failover_client(
            i,
            token.clone(),
            (plan.victim, survivor),
            capacity,
            shared.clone(),
            tx.clone(),
            gate.clone(),
        )));
    }
    drop(tx);
    for _ in 0..r {
        rx.recv().await.ok_or("a client ended before opening")??;
    }
    eprintln!("loadgen: {r} streams open on {}", plan.victim);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let interval = Duration::from_secs_f64(plan.senders as f64 / plan.rate);
    let mut senders = Vec::with_capacity(plan.senders);
    for j in 0..plan.senders {
        let mine: Vec<(usize, u64)> = (j..r)
            .step_by(plan.senders)
            .map(|c| (c, users[c].1))
            .collect();
        senders.push(tokio::spawn(failover_sender(
            j,
            users[r + j].0.clone(),
            plan.survivors[j % plan.survivors.len()],
            mine,
            interval,
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let db_cpu = || cpu_by_pid(&plan.db.as_deref().map(postgres_pids).unwrap_or_default());
    let db_cpu_start = db_cpu();
    tokio::time::sleep(plan.before).await;
    let db_cpu_kill = db_cpu();
    let overflows_before = listen_overflows();
    let killed_at = now_us();
    shared.killed_at.store(killed_at, Ordering::Relaxed);
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &plan.pid.to_string()])
        .status()
        .await
        .map_err(err)?;
    if !status.success() {
        return Err(format!("kill -KILL {} failed: {status}", plan.pid));
    }
    eprintln!("loadgen: killed {} ({})", plan.victim, plan.pid);
    tokio::time::sleep(plan.after).await;
    let overflows = listen_overflows().saturating_sub(overflows_before);
    let db_cpu_end = db_cpu();
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<Vec<u64>> = vec![Vec::new(); r];
    for s in senders {
        for (c, times) in s.await.map_err(err)?? {
            acks[c] = times;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (owed, times) in shared.owed.iter().zip(&acks) {
        owed.store(times.len() as u64, Ordering::Relaxed);
    }
    let deadline = tokio::spawn({
        let (shared, drain) = (shared.clone(), plan.drain);
        async move {
            tokio::time::sleep(drain).await;
            shared.give_up.store(true, Ordering::Relaxed);
        }
    });
    let mut logs = Vec::with_capacity(r);
    for c in clients {
        logs.push(c.await.map_err(err)?);
    }
    deadline.abort();

    let mut hist = histogram();
    let (mut owed_at_kill, mut clients_owed, mut replayed) = (0u64, 0u64, 0u64);
    let (mut caught, mut live, mut reconnected) = (Vec::new(), Vec::new(), Vec::new());
    let mut caught_up = Vec::new();
    let (mut never_reconnected, mut never_live) = (0u64, 0u64);
    let mut tallies = Vec::with_capacity(r);
    for (log, times) in logs.iter_mut().zip(&acks) {
        hist.add(&log.hist).map_err(err)?;
        let n = times.len().min(capacity);
        // Acknowledged before the kill: owed however the node died.
        let before = times.partition_point(|&t| t < killed_at).min(n);
        let late: Vec<u64> = log.received[..before]
            .iter()
            .copied()
            .filter(|&t| t >= killed_at)
            .collect();
        owed_at_kill += late.len() as u64;
        clients_owed += u64::from(!late.is_empty());
        caught.push(secs_between(
            killed_at,
            late.into_iter().max().unwrap_or(killed_at),
        ));
        if log.reconnected == 0 {
            never_reconnected += 1;
        } else {
            reconnected.push(secs_between(killed_at, log.reconnected));
            let back = log.reconnected;
            // Caught up: everything acknowledged before the new stream opened has arrived.
            let owed = times.partition_point(|&t| t < back).min(n);
            let done = log.received[..owed].iter().copied().max().unwrap_or(back);
            caught_up.push(secs_between(killed_at, done.max(back)));
            let first_live = (0..n)
                .filter(|&s| log.sent[s] > back && log.received[s] > 0)
                .map(|s| log.received[s])
                .min();
            match first_live {
                Some(t) => live.push(secs_between(killed_at, t)),
                None => never_live += 1,
            }
            replayed += (0..n)
                .filter(|&s| log.sent[s] != 0 && log.sent[s] < back && log.received[s] >= back)
                .count() as u64;
        }
        // Only acknowledged messages were owed.
        let mut tally = log.tally.clone();
        tally.truncate(n);
        tallies.push(tally);
    }
    let total: u64 = acks.iter().map(|a| a.len() as u64).sum();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let retry_ms = logs.iter().map(|l| l.retry_ms).max().unwrap_or(0);
    let mut v = verdict(&tallies);
    if v["ok"] == json!(true) && (never_reconnected > 0 || never_live > 0) {
        v["ok"] = json!(false);
        v["problem"] = json!(format!(
            "{never_reconnected} clients never reconnected, {never_live} never got a live \
             message after reconnecting"
        ));
    }
    let msgs_per_sec = total as f64 / elapsed;
    v["metrics"] = json!({
        "clients": r,
        "messages": total,
        "msgs_per_sec": msgs_per_sec.round(),
        "secs_between_messages_per_client": (r as f64 / msgs_per_sec.max(1e-9) * 100.0).round() / 100.0,
        "retry_ms": retry_ms,
        "listen_overflows_after_kill": overflows,
        "db_cores_before_kill": cores(cpu_since(&db_cpu_start, &db_cpu_kill), plan.before),
        "db_cores_after_kill": cores(cpu_since(&db_cpu_kill, &db_cpu_end), plan.after),
        "latency_p99_before_kill_ms": latency_json(&hist)["p99_ms"],
        "owed_at_kill": owed_at_kill,
        "clients_owed_at_kill": clients_owed,
        "replayed": replayed,
        "reconnected_p50_secs": median(&mut reconnected.clone()),
        "reconnected_secs": max(&reconnected),
        "acked_caught_up_secs": max(&caught),
        "caught_up_p50_secs": median(&mut caught_up.clone()),
        "caught_up_secs": max(&caught_up),
        "live_p50_secs": median(&mut live.clone()),
        "live_secs": max(&live),
    });
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_doubled_message_is_a_failure() {
        let mut t = Tally::new(3);
        t.record(0);
        t.record(2);
        assert!(!t.complete());
        let v = verdict(&[t.clone()]);
        assert_eq!(
            (v["ok"].clone(), v["missing"].clone()),
            (json!(false), json!(1))
        );
        t.record(1);
        assert!(t.complete());
        t.record(1);
        assert_eq!(verdict(&[t.clone()])["duplicates"], 1);
        t.record(9);
        assert_eq!(verdict(&[t])["unexpected"], 1);
        let all_good = {
            let mut t = Tally::new(2);
            t.record(0);
            t.record(1);
            t
        };
        assert_eq!(verdict(&[all_good])["ok"], true);
    }

    #[test]
    fn stamps_roundtrip() {
        let (ts, seq) = parse_stamp(&stamp(42)).unwrap();
        assert_eq!(seq, 42);
        assert!(ts > 0);
        assert_eq!(parse_stamp("garbage"), None);
    }

    #[tokio::test]
    async fn repeat_stops_at_the_first_failed_run() {
        let out = repeat(3, |run| async move {
            Ok(if run == 1 {
                json!({"ok": false, "problem": "1 missing", "metrics": {"x": 1.0}})
            } else {
                json!({"ok": true, "metrics": {"x": 2.0}})
            })
        })
        .await
        .unwrap();
        assert_eq!(out["ok"], false);
        assert_eq!(out["runs"].as_array().unwrap().len(), 2);
        assert_eq!(out["problem"], "1 missing");
    }
}
