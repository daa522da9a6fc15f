//! `cargo xtask bench` for the load scenarios: builds the server and the generator in release
//! mode, starts the server (and nginx with nchan) on loopback, runs `xtask loadgen` as a
//! separate process per scenario, and records the results.

use crate::ci::apt_install;
use crate::util::{Result, banner, run_cargo, workspace_root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Messages per second in the fanout capacity run: more than either server delivers to 5,000
/// members on this machine.
const SATURATING_RATE: &str = "100";

/// Every load scenario, in the order they run.
pub const SCENARIOS: [&str; 4] = ["idle", "fanout", "direct", "resume"];

/// The sizes of a scenario: full (the issue's defaults) or quick (a CI smoke run).
fn sizes(scenario: &str, quick: bool) -> Vec<(&'static str, String)> {
    let v =
        |pairs: &[(&'static str, u64)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    match (scenario, quick) {
        ("idle", false) => v(&[("n", 15_000), ("runs", 3)]),
        ("idle", true) => v(&[("n", 300), ("runs", 1)]),
        ("fanout", false) => v(&[("k", 5_000), ("m", 200), ("rate", 20), ("runs", 3)]),
        ("fanout", true) => v(&[("k", 100), ("m", 20), ("rate", 100), ("runs", 1)]),
        ("direct", false) => v(&[("pairs", 500), ("secs", 10), ("runs", 3)]),
        ("direct", true) => v(&[("pairs", 20), ("secs", 2), ("runs", 1)]),
        ("resume", false) => v(&[("r", 5_000), ("owed", 20), ("runs", 3)]),
        _ => v(&[("r", 100), ("owed", 20), ("runs", 1)]),
    }
}

/// A process we started; killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    pids: Vec<u32>,
    _dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (graceful), then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("web-im-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts the release `im-server` on a fresh data dir; cheap password hashing so setting up
/// thousands of accounts is quick, and direct messages open to anyone.
fn start_server(bin: &Path) -> Result<Proc> {
    let dir = temp_dir("server")?;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("IM_ARGON2__MEMORY_KIB", "8")
        .env("IM_ARGON2__ITERATIONS", "1")
        .env("IM_DIRECT_MESSAGES", "anyone")
        .env("IM_MAX_JSON_BYTES", "1048576")
        .env("IM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("im-server listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("im-server said {line:?}"))?;
    let pid = child.id();
    Ok(Proc {
        child,
        addr,
        pids: vec![pid],
        _dir: dir,
    })
}

/// Starts nginx with the nchan config in `xtask/nchan/nginx.conf` on a free loopback port,
/// installing Debian's `nginx-light` and `libnginx-mod-nchan` first if needed.
fn start_nchan(root: &Path) -> Result<Proc> {
    if !Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so").exists() || which("nginx").is_none()
    {
        apt_install(&["nginx-light", "libnginx-mod-nchan"])?;
    }
    let nginx = which("nginx").ok_or("nginx is not installed")?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = temp_dir("nchan")?;
    let template =
        std::fs::read_to_string(root.join("xtask/nchan/nginx.conf")).map_err(|e| e.to_string())?;
    let conf = template
        .replace("{{PORT}}", &port.to_string())
        .replace("{{PREFIX}}", &dir.display().to_string());
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let master = child.id();
    let mut pids = vec![master];
    pids.extend(children_of(master));
    Ok(Proc {
        child,
        addr,
        pids,
        _dir: dir,
    })
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
                })
                == Some(pid)
        })
        .collect()
}

/// Runs one scenario against one target in a generator process; its JSON result.
fn generate(
    generator: &Path,
    scenario: &str,
    target: &str,
    server: &Proc,
    quick: bool,
    extra: &[(&str, &str)],
) -> Result<Value> {
    banner(&format!(
        "{scenario} against {target} ({}) {extra:?}",
        server.addr
    ));
    let mut cmd = Command::new(generator);
    cmd.args([
        "loadgen",
        scenario,
        "--target",
        target,
        "--addr",
        &server.addr.to_string(),
    ]);
    let pids: Vec<String> = server.pids.iter().map(u32::to_string).collect();
    cmd.args(["--pids", &pids.join(",")]);
    for (k, v) in sizes(scenario, quick) {
        cmd.arg(format!("--{k}")).arg(v);
    }
    for (k, v) in extra {
        cmd.arg(format!("--{k}")).arg(v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the generator: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "{scenario}/{target}: the generator printed no result ({})",
                out.status
            )
        })?;
    if !out.status.success() || result["ok"] != json!(true) {
        return Err(format!(
            "{scenario}/{target} failed: {}",
            result
                .get("problem")
                .cloned()
                .unwrap_or(json!(out.status.to_string()))
        ));
    }
    println!("{}", result["median"]);
    Ok(result)
}

/// Runs the given load scenarios; with `quick`, small sizes, our server only, one run each,
/// and nothing written to docs/.
pub fn run(scenarios: &[&str], quick: bool) -> Result<Value> {
    let root = workspace_root();
    run_cargo(
        &root,
        &["build", "--release", "-p", "im-server", "-p", "xtask"],
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let server_bin = target_dir.join("release/im-server");
    let generator = target_dir.join("release/xtask");
    let mut results = serde_json::Map::new();
    for scenario in scenarios {
        // Fanout runs twice: at the steady rate for latency, and at a rate neither server can
        // keep up with, for deliveries per second.
        let saturating: &[(&str, &str)] = &[("rate", SATURATING_RATE)];
        let server = start_server(&server_bin)?;
        let ours = generate(&generator, scenario, "ours", &server, quick, &[])?;
        let sizes_json: std::collections::BTreeMap<_, _> =
            sizes(scenario, quick).into_iter().collect();
        let mut entry = json!({"ours": ours, "sizes": sizes_json});
        if !quick && *scenario == "fanout" {
            entry["ours_max"] = generate(&generator, scenario, "ours", &server, quick, saturating)?;
        }
        drop(server);
        if !quick && matches!(*scenario, "idle" | "fanout") {
            let nchan = start_nchan(&root)?;
            entry["nchan"] = generate(&generator, scenario, "nchan", &nchan, quick, &[])?;
            if *scenario == "fanout" {
                entry["nchan_max"] =
                    generate(&generator, scenario, "nchan", &nchan, quick, saturating)?;
            }
        }
        results.insert((*scenario).to_owned(), entry);
    }
    if quick {
        banner("nchan comparison: not run with --quick (it runs in the full `cargo xtask bench`)");
    }
    let out = Value::Object(results);
    let dir = target_dir.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("load.json"),
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x >= 1000.0 => format!("{:.0}", x),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// One table row: a figure for both servers, the ratio, and the target's verdict.
fn row(
    out: &mut String,
    scenario: &str,
    figure: &str,
    ours: Option<f64>,
    nchan: Option<f64>,
    target: &str,
    met: Option<bool>,
) {
    let ratio = match (ours, nchan) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    };
    out.push_str(&format!(
        "| {scenario} | {figure} | {} | {} | {ratio} | {target} | {verdict} |\n",
        fmt(ours),
        fmt(nchan)
    ));
}

/// A scenario's row label with the date of the run its figures come from.
fn dated(results: &Value, scenario: &str, label: String) -> String {
    match results[scenario]["when"].as_str() {
        Some(when) => format!("{label}; run {when}"),
        None => label,
    }
}

/// The Markdown table of a full run, with the machine, the command and the date.
pub fn render(results: &Value, header: &str) -> String {
    let m = |s: &str, who: &str, k: &str| num(&results[s][who]["median"][k]);
    let size = |s: &str, k: &str| results[s]["sizes"][k].as_str().unwrap_or("?").to_owned();
    let mut out = format!(
        "{header}\n\n| scenario | figure | Web-IM | nchan | Web-IM ÷ nchan | target | target met? |\n|---|---|---:|---:|---:|---|---|\n"
    );
    if results.get("idle").is_some() {
        let sc = format!("idle, N = {}", size("idle", "n"));
        let sc = dated(results, "idle", sc);
        let rss = m("idle", "ours", "rss_per_connection_kib");
        row(
            &mut out,
            &sc,
            "server RSS per idle connection (KiB)",
            rss,
            m("idle", "nchan", "rss_per_connection_kib"),
            "≤ 8 KiB",
            rss.map(|v| v <= 8.0),
        );
        row(
            &mut out,
            &sc,
            "time to connect all (s)",
            m("idle", "ours", "connect_all_secs"),
            m("idle", "nchan", "connect_all_secs"),
            "",
            None,
        );
    }
    if results.get("fanout").is_some() {
        let sc = format!(
            "fanout, K = {}, M = {} at {}/s",
            size("fanout", "k"),
            size("fanout", "m"),
            size("fanout", "rate")
        );
        let sc = dated(results, "fanout", sc);
        let (ours, theirs) = (
            m("fanout", "ours_max", "deliveries_per_sec"),
            m("fanout", "nchan_max", "deliveries_per_sec"),
        );
        let cap = format!(
            "fanout, K = {}, M = {} at {SATURATING_RATE}/s (saturating)",
            size("fanout", "k"),
            size("fanout", "m")
        );
        let cap = dated(results, "fanout", cap);
        let met = match (ours, theirs) {
            (Some(a), Some(b)) => Some(a >= b),
            _ => None,
        };
        row(
            &mut out,
            &cap,
            "deliveries per second",
            ours,
            theirs,
            "≥ nchan",
            met,
        );
        row(
            &mut out,
            &cap,
            "latency p99 (ms)",
            m("fanout", "ours_max", "latency_p99_ms"),
            m("fanout", "nchan_max", "latency_p99_ms"),
            "",
            None,
        );
        row(
            &mut out,
            &sc,
            "deliveries per second",
            m("fanout", "ours", "deliveries_per_sec"),
            m("fanout", "nchan", "deliveries_per_sec"),
            "",
            None,
        );
        row(
            &mut out,
            &sc,
            "latency p50 (ms)",
            m("fanout", "ours", "latency_p50_ms"),
            m("fanout", "nchan", "latency_p50_ms"),
            "",
            None,
        );
        let p99 = m("fanout", "ours", "latency_p99_ms");
        row(
            &mut out,
            &sc,
            "latency p99 (ms)",
            p99,
            m("fanout", "nchan", "latency_p99_ms"),
            "< 250 ms",
            p99.map(|v| v < 250.0),
        );
        row(
            &mut out,
            &sc,
            "latency max (ms)",
            m("fanout", "ours", "latency_max_ms"),
            m("fanout", "nchan", "latency_max_ms"),
            "",
            None,
        );
    }
    if results.get("direct").is_some() {
        let sc = format!(
            "direct, P = {} pairs, {} s",
            size("direct", "pairs"),
            size("direct", "secs")
        );
        let sc = dated(results, "direct", sc);
        let open = m("direct", "ours", "open_msgs_per_sec");
        row(
            &mut out,
            &sc,
            "durable messages/s, open rate",
            open,
            None,
            "≥ 20,000",
            open.map(|v| v >= 20_000.0),
        );
        row(
            &mut out,
            &sc,
            "latency p50 at open rate (ms)",
            m("direct", "ours", "open_p50_ms"),
            None,
            "",
            None,
        );
        row(
            &mut out,
            &sc,
            "latency p99 at open rate (ms)",
            m("direct", "ours", "open_p99_ms"),
            None,
            "",
            None,
        );
        row(
            &mut out,
            &sc,
            "fixed rate (half the open rate), messages/s",
            m("direct", "ours", "fixed_msgs_per_sec"),
            None,
            "",
            None,
        );
        row(
            &mut out,
            &sc,
            "latency p50 at fixed rate (ms)",
            m("direct", "ours", "fixed_p50_ms"),
            None,
            "",
            None,
        );
        let p99 = m("direct", "ours", "fixed_p99_ms");
        row(
            &mut out,
            &sc,
            "latency p99 at fixed rate (ms)",
            p99,
            None,
            "< 50 ms",
            p99.map(|v| v < 50.0),
        );
        row(
            &mut out,
            &sc,
            "server CPU seconds per 1,000 messages",
            m("direct", "ours", "cpu_secs_per_1000"),
            None,
            "",
            None,
        );
    }
    if results.get("resume").is_some() {
        let sc = format!(
            "resume, R = {} clients × {} owed",
            size("resume", "r"),
            size("resume", "owed")
        );
        let sc = dated(results, "resume", sc);
        let t = m("resume", "ours", "all_caught_up_secs");
        row(
            &mut out,
            &sc,
            "time until all caught up (s)",
            t,
            None,
            "< 5 s",
            t.map(|v| v < 5.0),
        );
        row(
            &mut out,
            &sc,
            "messages replayed, each exactly once",
            m("resume", "ours", "messages_replayed"),
            None,
            "all",
            Some(results["resume"]["ours"]["ok"] == json!(true)),
        );
    }
    out.push_str("\nnchan runs only where the scenario has an nchan equivalent (idle, fanout). Every run also checked that each message arrived exactly once; a run that lost or doubled one fails instead of reporting a figure.\n");
    out
}
