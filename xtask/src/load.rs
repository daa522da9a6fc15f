//! The load generator: `xtask loadgen <scenario> ...`, run by `cargo xtask bench` as a
//! separate release-mode process. It speaks plain HTTP/1.1 and SSE on raw hyper connections
//! to Web-IM or to nchan, and prints one JSON object with the results on stdout.
//!
//! Every scenario counts what arrived: a message that did not arrive, or arrived twice, makes
//! the run fail instead of making it look fast.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use im_protocol::sse::{Item, Parser};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};

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
        self.get("pids")
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// Entry point of `xtask loadgen`.
pub fn main(args: &[String]) -> Result<()> {
    let (scenario, rest) = args.split_first().ok_or("loadgen needs a scenario")?;
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
            "resume" => resume(&args).await,
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

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Memory of the given processes together, in KiB: the proportional set size, so pages that
/// several processes share (nginx's workers and its shared memory) are counted once.
fn rss_kib(pids: &[u32]) -> u64 {
    let field = |path: String, name: &str| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    pids.iter()
        .filter_map(|p| {
            field(format!("/proc/{p}/smaps_rollup"), "Pss:")
                .or_else(|| field(format!("/proc/{p}/status"), "VmRSS:"))
        })
        .sum()
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

/// User plus system CPU seconds of the given processes.
fn cpu_secs(pids: &[u32]) -> f64 {
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

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

fn latency_json(h: &Histogram<u64>) -> Value {
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
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8))
}

async fn tcp(addr: SocketAddr, src: Option<IpAddr>) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4().map_err(err)?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0)).map_err(err)?;
    }
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(err)?;
    Ok(stream)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr, src: Option<IpAddr>) -> Result<Self> {
        let io = TokioIo::new(tcp(addr, src).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(err)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            host: addr.to_string(),
        })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        ct: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.send.ready().await.map_err(err)?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if !body.is_empty() {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body)).map_err(err)?;
        let res = self.send.send_request(req).await.map_err(err)?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(err)?.to_bytes();
        Ok((status, body))
    }

    async fn json(
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

/// Opens an SSE stream and returns its body once the response head arrived.
async fn open_stream(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Incoming> {
    let io = TokioIo::new(tcp(addr, src).await?);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .uri(path)
        .header("host", addr.to_string())
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = send
        .send_request(req.body(Full::new(Bytes::new())).map_err(err)?)
        .await
        .map_err(err)?;
    if res.status() != StatusCode::OK {
        return Err(format!("GET {path}: {}", res.status()));
    }
    Ok(res.into_body())
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
async fn accounts(addr: SocketAddr, prefix: &str, n: usize) -> Result<Vec<(String, u64)>> {
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
fn stamp(seq: u64) -> String {
    format!("{} {seq}", now_us())
}

fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let (ts, seq) = text.trim().split_once(' ')?;
    Some((ts.parse().ok()?, seq.parse().ok()?))
}

/// Reads a stream until `done(tally)` or the deadline; records latency of every delivery.
async fn receive(
    mut body: Incoming,
    target: Target,
    expected: usize,
    quit: Arc<AtomicU64>,
    last_delivery: Arc<AtomicU64>,
    skip_before: u64,
) -> (Tally, Histogram<u64>) {
    let mut parser = Parser::new();
    let mut tally = Tally::new(expected);
    let mut hist = histogram();
    loop {
        if tally.received() as usize == expected && quit.load(Ordering::Relaxed) > 0 {
            break;
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if quit.load(Ordering::Relaxed) > 1 { break } else { continue }
            }
        };
        let Some(Ok(frame)) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for item in parser.feed(data) {
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
        if tally.received() as usize == expected && quit.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    (tally, hist)
}

fn median(values: &mut [f64]) -> f64 {
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

// ----- idle -----

/// N idle streams held open, spread over child processes of at most 8,000 connections each
/// (each process may hold 20,000 files).
async fn idle(args: &Args) -> Result<Value> {
    let addr = args.addr()?;
    let target = args.target()?;
    let n = args.num("n", 15_000)? as usize;
    let pids = args.pids();
    let tokens_file =
        std::env::temp_dir().join(format!("web-im-idle-{}.tokens", std::process::id()));
    if target == Target::Ours {
        let users = accounts(addr, "idle", n).await?;
        let text: String = users.iter().map(|(t, _)| format!("{t}\n")).collect();
        std::fs::write(&tokens_file, text).map_err(err)?;
    }
    let exe = std::env::current_exe().map_err(err)?;
    let per = 8_000usize;
    let out = repeat(args.num("runs", 3)?, |_| {
        let (exe, pids, tokens_file) = (exe.clone(), pids.clone(), tokens_file.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = rss_kib(&pids);
            let started = Instant::now();
            let mut children = Vec::new();
            for (i, from) in (0..n).step_by(per).enumerate() {
                let to = (from + per).min(n);
                let mut cmd = tokio::process::Command::new(&exe);
                cmd.args([
                    "loadgen",
                    "idle-part",
                    "--addr",
                    &addr.to_string(),
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                ])
                .args([
                    "--part",
                    &i.to_string(),
                    "--target",
                    if target == Target::Ours {
                        "ours"
                    } else {
                        "nchan"
                    },
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true);
                if target == Target::Ours {
                    cmd.args(["--tokens", &tokens_file.display().to_string()]);
                }
                children.push(cmd.spawn().map_err(err)?);
            }
            let mut connected = 0u64;
            for child in &mut children {
                let stdout = child.stdout.take().ok_or("no stdout")?;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let line = lines
                    .next_line()
                    .await
                    .map_err(err)?
                    .ok_or("an idle part died before connecting")?;
                connected += line
                    .strip_prefix("ready ")
                    .and_then(|c| c.parse::<u64>().ok())
                    .ok_or_else(|| format!("idle part said {line}"))?;
            }
            let connect_secs = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kib(&pids);
            for mut child in children {
                drop(child.stdin.take());
                let _ = child.wait().await;
            }
            let ok = connected as usize == n;
            let per_conn = (after.saturating_sub(before)) as f64 / n.max(1) as f64;
            let mut v = json!({
                "ok": ok,
                "metrics": {
                    "connections": connected,
                    "rss_before_kib": before, "rss_after_kib": after,
                    "rss_per_connection_kib": (per_conn * 100.0).round() / 100.0,
                    "connect_all_secs": (connect_secs * 1000.0).round() / 1000.0,
                }
            });
            if !ok {
                v["problem"] = json!(format!("only {connected} of {n} streams opened"));
            }
            Ok(v)
        }
    })
    .await;
    let _ = std::fs::remove_file(&tokens_file);
    out
}

/// One process's share of the idle streams: opens them, says `ready <count>`, and holds them
/// until stdin closes.
async fn idle_part(args: &Args) -> Result<()> {
    let addr = args.addr()?;
    let target = args.target()?;
    let (from, to) = (args.num("from", 0)? as usize, args.num("to", 0)? as usize);
    let part = args.num("part", 0)? as usize;
    let tokens: Vec<String> = match args.get("tokens") {
        Some(f) => std::fs::read_to_string(f)
            .map_err(err)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let opened = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in from..to {
        let (opened, gate) = (opened.clone(), gate.clone());
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
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.map_err(err)?;
            let mut body =
                open_stream(addr, Some(source(part * 8 + i % 8)), path, &headers).await?;
            // The first bytes (our retry hint, nchan's stream opening) prove the stream is live.
            let _ = body.frame().await;
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(_)) = body.frame().await {}
            Ok::<(), Error>(())
        }));
    }
    let total = to - from;
    while (opened.load(Ordering::Relaxed) as usize) < total {
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready {}", opened.load(Ordering::Relaxed));
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    Ok(())
}

// ----- fanout -----

/// One group (or nchan channel) with K online members, M messages posted at a steady rate.
async fn fanout(args: &Args) -> Result<Value> {
    let addr = args.addr()?;
    let target = args.target()?;
    let k = args.num("k", 5_000)? as usize;
    let m = args.num("m", 200)?;
    let rate = args.num("rate", 100)?.max(1);
    let (tokens, group) = match target {
        Target::Ours => {
            let users = accounts(addr, "fan", k).await?;
            let owner = users[0].0.clone();
            let names: Vec<String> = (1..k).map(|i| format!("fan{i}")).collect();
            // Owner asks everyone; everyone asks back: crossing requests are accepted at once.
            let o = owner.clone();
            let names2 = names.clone();
            for_each_conn(addr, names.len(), 4, move |i, mut c| {
                let (o, n) = (o.clone(), names2[i].clone());
                async move {
                    c.json(
                        "/api/v1/friends/requests",
                        Some(&o),
                        &json!({"username": n}),
                    )
                    .await?;
                    Ok(((), c))
                }
            })
            .await?;
            let u2 = users.clone();
            for_each_conn(addr, k - 1, 4, move |i, mut c| {
                let t = u2[i + 1].0.clone();
                async move {
                    c.json(
                        "/api/v1/friends/requests",
                        Some(&t),
                        &json!({"username": "fan0"}),
                    )
                    .await?;
                    Ok(((), c))
                }
            })
            .await?;
            let ids: Vec<u64> = users[1..].iter().map(|u| u.1).collect();
            let mut c = Conn::open(addr, None).await?;
            let (s, g) = c
                .json(
                    "/api/v1/groups",
                    Some(&owner),
                    &json!({"name": "fanout", "members": ids}),
                )
                .await?;
            if s != StatusCode::CREATED || g["group"]["members"].as_array().map(Vec::len) != Some(k)
            {
                return Err(format!("creating the group failed: {s} {g}"));
            }
            (
                users.into_iter().map(|u| u.0).collect::<Vec<_>>(),
                g["group"]["id"].as_u64().unwrap_or(0),
            )
        }
        Target::Nchan => (Vec::new(), 0),
    };
    let tokens = Arc::new(tokens);
    repeat(args.num("runs", 3)?, |_| {
        let tokens = tokens.clone();
        async move {
            let quit = Arc::new(AtomicU64::new(0));
            let last = Arc::new(AtomicU64::new(0));
            let mut streams = Vec::with_capacity(k);
            for i in 0..k {
                let (path, headers) = match target {
                    Target::Ours => ("/api/v1/events", vec![("authorization", format!("Bearer {}", tokens[i]))]),
                    Target::Nchan => ("/sub", vec![]),
                };
                streams.push(tokio::spawn(async move { open_stream(addr, Some(source(i)), path, &headers).await }));
            }
            let mut receivers = Vec::with_capacity(k);
            for s in streams {
                let mut body = s.await.map_err(err)??;
                let _ = body.frame().await; // live
                receivers.push(tokio::spawn(receive(body, target, m as usize, quit.clone(), last.clone(), 0)));
            }
            // Post at a steady rate from a few keep-alive connections.
            let first_post = now_us();
            let posters = 4usize;
            let mut conns = Vec::new();
            for p in 0..posters {
                conns.push(Conn::open(addr, Some(source(p))).await?);
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
            let span = last.load(Ordering::Relaxed).saturating_sub(first_post).max(1) as f64 / 1e6;
            let mut v = verdict(&tallies);
            v["metrics"] = json!({
                "deliveries": deliveries,
                "deliveries_per_sec": (deliveries as f64 / span).round(),
                "latency_p50_ms": latency_json(&hist)["p50_ms"],
                "latency_p99_ms": latency_json(&hist)["p99_ms"],
                "latency_max_ms": latency_json(&hist)["max_ms"],
            });
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
/// database is reported too.
async fn direct(args: &Args) -> Result<Value> {
    let addrs = Arc::new(args.addrs()?);
    let pairs = args.num("pairs", 500)? as usize;
    let secs = args.num("secs", 10)?;
    let pids = args.pids();
    let db = args.get("db").map(str::to_owned);
    let users = Arc::new(accounts(addrs[0], "pair", pairs * 2).await?);
    repeat(args.num("runs", 3)?, |_| {
        let (addrs, users, pids, db) = (addrs.clone(), users.clone(), pids.clone(), db.clone());
        async move {
            let watch = Watch { server: pids, db };
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
            if watch.db.is_some() {
                v["metrics"]["db_cpu_secs_per_1000"] =
                    open["metrics"]["db_cpu_secs_per_1000"].clone();
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
    let mut receivers = Vec::new();
    for p in 0..pairs {
        let token = users[2 * p + 1].0.clone();
        let mut body = open_stream(
            addrs[(p + 1) % addrs.len()],
            Some(source(p)),
            "/api/v1/events",
            &[("authorization", format!("Bearer {token}"))],
        )
        .await?;
        let _ = body.frame().await;
        receivers.push(tokio::spawn(receive_any(
            body,
            capacity,
            quit.clone(),
            last.clone(),
        )));
    }
    let db_pids = watch.db.as_deref().map(postgres_pids).unwrap_or_default();
    let cpu_before = cpu_secs(&watch.server);
    let db_cpu_before = cpu_secs(&db_pids);
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
                let (s, _) = c
                    .call(
                        Method::POST,
                        "/api/v1/messages",
                        Some(&token),
                        "application/json",
                        Bytes::from(body.to_string()),
                    )
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
    for s in senders {
        acked.push(s.await.map_err(err)??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(&watch.server) - cpu_before;
    let db_cpu = cpu_secs(&db_pids) - db_cpu_before;
    quit.store(1, Ordering::Relaxed);
    let mut tallies = Vec::new();
    let mut hist = histogram();
    for (r, n) in receivers.into_iter().zip(&acked) {
        let (mut t, h) = r.await.map_err(err)?;
        // Only acknowledged messages were owed.
        t.seen.truncate(*n as usize);
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
    if watch.db.is_some() {
        v["metrics"]["db_cpu_secs_per_1000"] = json!(per_1000(db_cpu, total));
    }
    Ok(v)
}

/// Like [`receive`], for a sender whose count is known only at the end: stops once quit is
/// set and nothing arrived for a while.
async fn receive_any(
    mut body: Incoming,
    capacity: usize,
    quit: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
) -> (Tally, Histogram<u64>) {
    let mut parser = Parser::new();
    let mut tally = Tally::new(capacity);
    let mut hist = histogram();
    let mut idle_rounds = 0;
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if quit.load(Ordering::Relaxed) > 0 {
                    idle_rounds += 1;
                    if idle_rounds >= 8 { break }
                }
                continue;
            }
        };
        idle_rounds = 0;
        let Some(Ok(frame)) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for item in parser.feed(data) {
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
