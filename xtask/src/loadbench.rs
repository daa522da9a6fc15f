//! `cargo xtask bench` for the load scenarios: builds the server and the generator in release
//! mode, starts the server (and nginx with nchan) on loopback, runs `xtask loadgen` as a
//! separate process per scenario, and records the results. The `cluster` scenario runs the
//! `direct` generator against each [`Setup`] in [`CLUSTER`]: one SQLite node, one PostgreSQL
//! node, and two PostgreSQL nodes sharing a fresh database.

use crate::ci::apt_install;
use crate::util::{Result, banner, run_cargo, workspace_root};
use serde_json::{Value, json};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Messages per second in the fanout capacity run: more than either server delivers to 5,000
/// members on this machine.
const SATURATING_RATE: &str = "100";

/// Every load scenario, in the order they run.
pub const SCENARIOS: [&str; 5] = ["idle", "fanout", "direct", "resume", "cluster"];

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
        ("resume", true) => v(&[("r", 100), ("owed", 20), ("runs", 1)]),
        // Three setups in one run: the quick one stays short.
        ("cluster", false) => v(&[("pairs", 500), ("secs", 10), ("runs", 3)]),
        _ => v(&[("pairs", 20), ("secs", 1), ("runs", 1)]),
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

/// Starts the release `im-server` on a fresh data dir named after `node`; cheap password
/// hashing so setting up thousands of accounts is quick, and direct messages open to anyone.
/// With `shared`, the node keeps its truth in that PostgreSQL database and files directory
/// (one deployment with every other node started on it); without, in SQLite in its data dir.
fn start_server(bin: &Path, node: &str, shared: Option<&Shared>) -> Result<Proc> {
    let dir = temp_dir(node)?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("IM_ARGON2__MEMORY_KIB", "8")
        .env("IM_ARGON2__ITERATIONS", "1")
        .env("IM_DIRECT_MESSAGES", "anyone")
        .env("IM_MAX_JSON_BYTES", "1048576")
        .env("IM_LOG", "warn");
    if let Some(shared) = shared {
        cmd.env("IM_STORE", "postgres")
            .env("IM_POSTGRES__URL", &shared.url)
            .env("IM_FILES__DIR", &shared.files);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let pid = child.id();
    // From here on, a failure still stops the child (and removes its dir).
    let mut proc = Proc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        pids: vec![pid],
        _dir: dir,
    };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    proc.addr = line
        .trim()
        .strip_prefix("im-server listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("im-server said {line:?}"))?;
    Ok(proc)
}

/// The admin URL of the PostgreSQL server the cluster setups use: `IM_TEST_POSTGRES`, as for
/// the tests (and `services::ensure_postgres`), else the local server with trust auth.
fn postgres_admin_url() -> String {
    std::env::var("IM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs one SQL statement with `psql` on the maintenance database.
fn psql(admin_url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([admin_url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql (needed for the cluster scenario): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the nodes of one PostgreSQL deployment share: a fresh database (`im_bench_<random>`)
/// and a fresh files directory. Dropping it drops the database (`WITH (FORCE)`) and removes
/// the directory, whatever happened meanwhile.
struct Shared {
    /// The database's name.
    name: String,
    /// The URL the nodes connect to.
    url: String,
    /// The files directory every node uses.
    files: PathBuf,
    /// Where `CREATE` and `DROP DATABASE` run.
    admin: String,
}

impl Shared {
    /// Creates the database and the directory.
    fn create() -> Result<Self> {
        crate::services::ensure_postgres()?;
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let name = format!("im_bench_{random:016x}");
        let admin = postgres_admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        // Built first, so a failed CREATE still removes the directory.
        let shared = Self {
            name,
            url,
            files: temp_dir("files")?,
            admin,
        };
        psql(&shared.admin, &format!("CREATE DATABASE {}", shared.name))?;
        Ok(shared)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin, &sql) {
            eprintln!(
                "xtask: could not drop the bench database {}: {e}",
                self.name
            );
        }
        let _ = std::fs::remove_dir_all(&self.files);
    }
}

/// The running nodes of one setup. Fields drop in order: the nodes stop before what they
/// share goes.
struct Deployment {
    /// The nodes, in the order the generator spreads pairs over them.
    nodes: Vec<Proc>,
    /// The database and files directory of a PostgreSQL setup.
    shared: Option<Shared>,
}

impl Deployment {
    /// Starts `setup`'s nodes, on a fresh database if it is a PostgreSQL setup.
    fn start(bin: &Path, setup: &Setup) -> Result<Self> {
        let shared = match setup.store {
            Store::Sqlite => None,
            Store::Postgres => Some(Shared::create()?),
        };
        let mut deployment = Self {
            nodes: Vec::new(),
            shared,
        };
        for i in 0..setup.nodes {
            let node = start_server(bin, &format!("node{i}"), deployment.shared.as_ref())?;
            deployment.nodes.push(node);
        }
        Ok(deployment)
    }

    /// The generator's extra arguments: the database whose PostgreSQL processes it watches.
    fn extra(&self) -> Vec<(&str, &str)> {
        self.shared
            .iter()
            .map(|s| ("db", s.name.as_str()))
            .collect()
    }
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

/// The generator scenario a bench scenario runs: `cluster` is `direct` against each setup.
fn loadgen_scenario(scenario: &str) -> &str {
    match scenario {
        "cluster" => "direct",
        other => other,
    }
}

/// Runs one scenario against one target (one server, or the nodes of one deployment) in a
/// generator process; its JSON result.
fn generate(
    generator: &Path,
    scenario: &str,
    target: &str,
    servers: &[Proc],
    quick: bool,
    extra: &[(&str, &str)],
) -> Result<Value> {
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let addrs = addrs.join(",");
    banner(&format!("{scenario} against {target} ({addrs}) {extra:?}"));
    let mut cmd = Command::new(generator);
    cmd.args([
        "loadgen",
        loadgen_scenario(scenario),
        "--target",
        target,
        "--addr",
        &addrs,
    ]);
    let pids: Vec<String> = servers
        .iter()
        .flat_map(|s| &s.pids)
        .map(u32::to_string)
        .collect();
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
        let sizes_json: std::collections::BTreeMap<_, _> =
            sizes(scenario, quick).into_iter().collect();
        let mut entry = json!({"sizes": sizes_json});
        if *scenario == "cluster" {
            for setup in &CLUSTER {
                let deployment = Deployment::start(&server_bin, setup)?;
                entry[setup.entry] = generate(
                    &generator,
                    scenario,
                    "ours",
                    &deployment.nodes,
                    quick,
                    &deployment.extra(),
                )?;
            }
        } else {
            // Fanout runs twice: at the steady rate for latency, and at a rate neither server
            // can keep up with, for deliveries per second.
            let saturating: &[(&str, &str)] = &[("rate", SATURATING_RATE)];
            let server = [start_server(&server_bin, "server", None)?];
            entry["ours"] = generate(&generator, scenario, "ours", &server, quick, &[])?;
            if !quick && *scenario == "fanout" {
                entry["ours_max"] =
                    generate(&generator, scenario, "ours", &server, quick, saturating)?;
            }
            drop(server);
            if !quick && matches!(*scenario, "idle" | "fanout") {
                let nchan = [start_nchan(&root)?];
                entry["nchan"] = generate(&generator, scenario, "nchan", &nchan, quick, &[])?;
                if *scenario == "fanout" {
                    entry["nchan_max"] =
                        generate(&generator, scenario, "nchan", &nchan, quick, saturating)?;
                }
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

/// Looks up a scenario's size parameter, e.g. `("fanout", "k")`.
type Sizes<'a> = dyn Fn(&str, &str) -> String + 'a;

/// How a figure is judged against its target.
#[derive(Clone, Copy)]
enum Goal {
    /// No target.
    None,
    /// At most this much.
    AtMost(f64),
    /// Less than this.
    Below(f64),
    /// At least this much.
    AtLeast(f64),
    /// At least nchan's figure.
    AtLeastNchan,
    /// The scenario's exactly-once check passed.
    AllArrived,
}

/// One row: a figure of one scenario; `ours` and `nchan` name the result entries to read.
#[derive(Clone, Copy)]
struct Row {
    scenario: &'static str,
    label: fn(&Sizes<'_>) -> String,
    figure: &'static str,
    ours: &'static str,
    nchan: Option<&'static str>,
    key: &'static str,
    target: &'static str,
    goal: Goal,
}

/// The rows of the scenarios with fixed rows; the direct-messages rows come from
/// [`direct_rows`].
const ROWS: &[Row] = &[
    Row {
        scenario: "idle",
        label: |s| format!("idle, N = {}", s("idle", "n")),
        figure: "server RSS per idle connection (KiB)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "rss_per_connection_kib",
        target: "≤ 8 KiB",
        goal: Goal::AtMost(8.0),
    },
    Row {
        scenario: "idle",
        label: |s| format!("idle, N = {}", s("idle", "n")),
        figure: "time to connect all (s)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "connect_all_secs",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "fanout",
        label: fanout_max,
        figure: "deliveries per second",
        ours: "ours_max",
        nchan: Some("nchan_max"),
        key: "deliveries_per_sec",
        target: "≥ nchan",
        goal: Goal::AtLeastNchan,
    },
    Row {
        scenario: "fanout",
        label: fanout_max,
        figure: "latency p99 (ms)",
        ours: "ours_max",
        nchan: Some("nchan_max"),
        key: "latency_p99_ms",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "fanout",
        label: fanout,
        figure: "deliveries per second",
        ours: "ours",
        nchan: Some("nchan"),
        key: "deliveries_per_sec",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "fanout",
        label: fanout,
        figure: "latency p50 (ms)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "latency_p50_ms",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "fanout",
        label: fanout,
        figure: "latency p99 (ms)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "latency_p99_ms",
        target: "< 250 ms",
        goal: Goal::Below(250.0),
    },
    Row {
        scenario: "fanout",
        label: fanout,
        figure: "latency max (ms)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "latency_max_ms",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "resume",
        label: resume,
        figure: "time until all caught up (s)",
        ours: "ours",
        nchan: None,
        key: "all_caught_up_secs",
        target: "< 5 s",
        goal: Goal::Below(5.0),
    },
    Row {
        scenario: "resume",
        label: resume,
        figure: "messages replayed, each exactly once",
        ours: "ours",
        nchan: None,
        key: "messages_replayed",
        target: "all",
        goal: Goal::AllArrived,
    },
];

fn fanout_max(s: &Sizes<'_>) -> String {
    format!(
        "fanout, K = {}, M = {} at {SATURATING_RATE}/s (saturating)",
        s("fanout", "k"),
        s("fanout", "m")
    )
}

fn fanout(s: &Sizes<'_>) -> String {
    format!(
        "fanout, K = {}, M = {} at {}/s",
        s("fanout", "k"),
        s("fanout", "m"),
        s("fanout", "rate")
    )
}

/// The label of a run of the `direct` generator in `scenario` (`direct` or `cluster`).
fn pairs(s: &Sizes<'_>, scenario: &str) -> String {
    format!(
        "{scenario}, P = {} pairs, {} s",
        s(scenario, "pairs"),
        s(scenario, "secs")
    )
}

/// Where a setup's nodes keep the truth.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// The embedded SQLite store, in the node's data dir.
    Sqlite,
    /// A PostgreSQL database, fresh for the setup.
    Postgres,
}

/// How a run of the `direct` generator is set up, and the targets its figures are judged by.
struct Setup {
    /// The result entry its figures are recorded under.
    entry: &'static str,
    /// What the rows call it (empty for the `direct` scenario's one setup).
    name: &'static str,
    /// Where the nodes keep the truth.
    store: Store,
    /// How many nodes share the load: pair i's sender posts to node i mod n and its receiver
    /// listens on node i + 1 mod n, so with two nodes every message crosses nodes.
    nodes: usize,
    /// The target for durable messages per second at open rate.
    open_target: (&'static str, Goal),
    /// The target for p99 latency at half the open rate.
    p99_target: (&'static str, Goal),
}

/// A figure without a target.
const NO_TARGET: (&str, Goal) = ("", Goal::None);

/// The `direct` scenario's one setup: a single SQLite node.
const DIRECT: Setup = Setup {
    entry: "ours",
    name: "",
    store: Store::Sqlite,
    nodes: 1,
    open_target: ("≥ 20,000", Goal::AtLeast(20_000.0)),
    p99_target: ("< 50 ms", Goal::Below(50.0)),
};

/// The `cluster` scenario's setups, in the order they run and are shown.
const CLUSTER: [Setup; 3] = [
    Setup {
        entry: "sqlite_1",
        name: "sqlite 1 node",
        store: Store::Sqlite,
        nodes: 1,
        open_target: NO_TARGET,
        p99_target: NO_TARGET,
    },
    Setup {
        entry: "postgres_1",
        name: "postgres 1 node",
        store: Store::Postgres,
        nodes: 1,
        open_target: NO_TARGET,
        p99_target: NO_TARGET,
    },
    Setup {
        entry: "postgres_2",
        name: "postgres 2 nodes (every message crosses nodes)",
        store: Store::Postgres,
        nodes: 2,
        open_target: ("≥ 10,000", Goal::AtLeast(10_000.0)),
        p99_target: ("< 100 ms", Goal::Below(100.0)),
    },
];

/// The result key of PostgreSQL's CPU per 1,000 messages, reported for PostgreSQL setups.
const DB_CPU: &str = "db_cpu_secs_per_1000";

/// The figures of a run of the `direct` generator: (figure, result key).
const DIRECT_FIGURES: [(&str, &str); 8] = [
    ("durable messages/s, open rate", "open_msgs_per_sec"),
    ("latency p50 at open rate (ms)", "open_p50_ms"),
    ("latency p99 at open rate (ms)", "open_p99_ms"),
    (
        "fixed rate (half the open rate), messages/s",
        "fixed_msgs_per_sec",
    ),
    ("latency p50 at fixed rate (ms)", "fixed_p50_ms"),
    ("latency p99 at fixed rate (ms)", "fixed_p99_ms"),
    ("server CPU seconds per 1,000 messages", "cpu_secs_per_1000"),
    ("PostgreSQL CPU seconds per 1,000 messages", DB_CPU),
];

/// The rows of one setup's run of the `direct` generator in `scenario`.
fn direct_rows(
    scenario: &'static str,
    label: fn(&Sizes<'_>) -> String,
    setup: &'static Setup,
) -> impl Iterator<Item = Row> {
    DIRECT_FIGURES
        .iter()
        .filter(move |(_, key)| setup.store == Store::Postgres || *key != DB_CPU)
        .map(move |&(figure, key)| {
            let (target, goal) = match key {
                "open_msgs_per_sec" => setup.open_target,
                "fixed_p99_ms" => setup.p99_target,
                _ => NO_TARGET,
            };
            Row {
                scenario,
                label,
                figure,
                ours: setup.entry,
                nchan: None,
                key,
                target,
                goal,
            }
        })
}

/// Every row, grouped by scenario in [`SCENARIOS`] order.
fn rows() -> Vec<Row> {
    let mut rows = ROWS.to_vec();
    rows.extend(direct_rows("direct", |s| pairs(s, "direct"), &DIRECT));
    for setup in &CLUSTER {
        rows.extend(direct_rows("cluster", |s| pairs(s, "cluster"), setup));
    }
    // Stable: each scenario's rows keep their order.
    rows.sort_by_key(|r| SCENARIOS.iter().position(|s| *s == r.scenario));
    rows
}

/// The setup a row's figure comes from, as the row names it: empty for single-setup rows.
fn setup_name(r: &Row) -> &'static str {
    CLUSTER
        .iter()
        .find(|s| r.scenario == "cluster" && s.entry == r.ours)
        .map_or("", |s| s.name)
}

fn resume(s: &Sizes<'_>) -> String {
    format!(
        "resume, R = {} clients × {} owed",
        s("resume", "r"),
        s("resume", "owed")
    )
}

/// The Markdown table of the recorded results, each row dated with its scenario's run.
pub fn render(results: &Value, header: &str) -> String {
    let size = |s: &str, k: &str| results[s]["sizes"][k].as_str().unwrap_or("?").to_owned();
    let mut out = format!(
        "{header}\n\n| scenario | figure | Web-IM | nchan | Web-IM ÷ nchan | target | target met? |\n|---|---|---:|---:|---:|---|---|\n"
    );
    for r in rows().iter().filter(|r| results.get(r.scenario).is_some()) {
        let ours = num(&results[r.scenario][r.ours]["median"][r.key]);
        let nchan = r
            .nchan
            .and_then(|n| num(&results[r.scenario][n]["median"][r.key]));
        let met = match (r.goal, ours) {
            (Goal::None, _) | (_, None) => None,
            (Goal::AtMost(t), Some(v)) => Some(v <= t),
            (Goal::Below(t), Some(v)) => Some(v < t),
            (Goal::AtLeast(t), Some(v)) => Some(v >= t),
            (Goal::AtLeastNchan, Some(v)) => nchan.map(|n| v >= n),
            (Goal::AllArrived, Some(_)) => Some(results[r.scenario][r.ours]["ok"] == json!(true)),
        };
        let label = match setup_name(r) {
            "" => (r.label)(&size),
            setup => format!("{}, {setup}", (r.label)(&size)),
        };
        let label = dated(results, r.scenario, label);
        row(&mut out, &label, r.figure, ours, nchan, r.target, met);
    }
    out.push_str("\nnchan runs only where the scenario has an nchan equivalent (idle, fanout). Every run also checked that each message arrived exactly once; a run that lost or doubled one fails instead of reporting a figure.\n");
    if results.get("cluster").is_some() {
        out.push_str("\ncluster runs the direct generator against three setups in one run: one node on SQLite, one node on PostgreSQL, and two nodes sharing one PostgreSQL database, where pair i's sender posts to node i mod 2 and its receiver listens on the other node, so every message crosses nodes. Each PostgreSQL setup gets a fresh database and files directory. Server CPU is all nodes together; PostgreSQL CPU is the backends serving the setup's database plus the WAL writer, checkpointer and background writer.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_rows_name_their_setup_and_judge_only_two_nodes() {
        let figures = |open: f64, p99: f64| {
            json!({"median": {"open_msgs_per_sec": open, "fixed_p99_ms": p99,
                              "cpu_secs_per_1000": 0.1, "db_cpu_secs_per_1000": 0.2}})
        };
        let results = json!({"cluster": {
            "sizes": {"pairs": "500", "secs": "10", "runs": "3"},
            "sqlite_1": figures(15_000.0, 40.0),
            "postgres_1": figures(8_000.0, 60.0),
            "postgres_2": figures(12_000.0, 150.0),
        }});
        let table = render(&results, "header");
        let line = |setup: &str, figure: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!("10 s, {setup} |")) && l.contains(figure))
                .unwrap_or_default()
                .to_owned()
        };
        let two = "postgres 2 nodes (every message crosses nodes)";
        assert!(line(two, "open rate |").ends_with("| 12000 | – | – | ≥ 10,000 | met |"));
        assert!(line(two, "p99 at fixed").ends_with("| < 100 ms | **missed** |"));
        assert!(line("postgres 1 node", "open rate |").ends_with("| 8000 | – | – |  |  |"));
        assert!(line("postgres 1 node", "PostgreSQL CPU").contains("| 0.20 |"));
        assert_eq!(line("sqlite 1 node", "PostgreSQL CPU"), "");
        assert!(!table.contains("| direct,"));
    }
}
