//! `cargo xtask bench` for the load scenarios: builds the server and the generator in release
//! mode, starts the server (and nginx with nchan) on loopback, runs `im-loadgen` as a
//! separate process per scenario, and records the results. The `cluster` scenario starts a
//! fresh deployment (a [`Setup`]) for each of its jobs: the `direct` generator against each
//! setup in [`CLUSTER_DIRECT`] (one SQLite node; PostgreSQL with Redis on one, two and three
//! nodes; PostgreSQL with `NOTIFY` on two), the `fanout` generator against each setup in
//! [`CLUSTER_FANOUT`], and the `failover` generator against [`FAILOVER`], where one node of
//! three is killed.

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
pub const SCENARIOS: [&str; 6] = ["idle", "fanout", "direct", "resume", "login", "cluster"];

/// The sizes of a scenario: full (the issue's defaults) or quick (a CI smoke run).
fn sizes(scenario: &str, quick: bool) -> Vec<(&'static str, String)> {
    let v =
        |pairs: &[(&'static str, u64)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    match (scenario, quick) {
        // Streams per burst, the users they belong to, bursts per server, connecting at once;
        // each run on a fresh server.
        ("idle", false) => v(&[
            ("n", 15_000),
            ("users", 5_000),
            ("bursts", 3),
            ("parallel", 2_000),
            ("runs", 3),
        ]),
        ("idle", true) => v(&[
            ("n", 300),
            ("users", 100),
            ("bursts", 3),
            ("parallel", 2_000),
            ("runs", 1),
        ]),
        ("fanout", false) => v(&[("k", 5_000), ("m", 200), ("rate", 20), ("runs", 3)]),
        ("fanout", true) => v(&[("k", 100), ("m", 20), ("rate", 100), ("runs", 1)]),
        ("direct", false) => v(&[("pairs", 500), ("secs", 10), ("runs", 3)]),
        ("direct", true) => v(&[("pairs", 20), ("secs", 2), ("runs", 1)]),
        ("resume", false) => v(&[("r", 5_000), ("owed", 20), ("runs", 3)]),
        ("resume", true) => v(&[("r", 100), ("owed", 20), ("runs", 1)]),
        // Wrong passwords from this many connections at once, for this long, at full cost.
        ("login", false) => v(&[("parallel", 64), ("secs", 10), ("runs", 3)]),
        ("login", true) => v(&[("parallel", 8), ("secs", 2), ("runs", 1)]),
        // Direct chat on five setups, fan-out on two, a killed node: the quick one stays short.
        ("cluster", false) => v(&[
            ("pairs", 500),
            ("secs", 10),
            ("runs", 3),
            ("k", 5_000),
            ("m", 200),
            ("rate", 20),
            ("r", 5_000),
            ("fo_rate", 2_500),
            ("before", 5),
            ("after", 15),
        ]),
        _ => v(&[
            ("pairs", 20),
            ("secs", 1),
            ("runs", 1),
            ("k", 100),
            ("m", 20),
            ("rate", 100),
            ("r", 100),
            ("fo_rate", 200),
            ("before", 1),
            ("after", 3),
        ]),
    }
}

/// The value of one of `scenario`'s sizes.
fn size(scenario: &str, quick: bool, key: &str) -> String {
    sizes(scenario, quick)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// A process we started; killed when dropped.
pub(crate) struct Proc {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its process ids (nginx: the master and its workers).
    pub(crate) pids: Vec<u32>,
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

/// A fresh, empty directory for one started process, removed with its [`Proc`].
pub(crate) fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("web-im-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts the release `im-server` on a fresh data dir named after `node`; cheap password
/// hashing so setting up thousands of accounts is quick, and direct messages open to anyone.
/// With `shared`, the node keeps its truth in that PostgreSQL database and files directory
/// and talks to the other nodes over its bus (one deployment with every other node started
/// on it); without, in SQLite in its data dir.
fn start_server(bin: &Path, node: &str, shared: Option<&Shared>) -> Result<Proc> {
    let (cmd, dir) = configured_server(bin, node, shared)?;
    spawn_server(cmd, dir)
}

/// The command [`start_server`] runs, with its data dir, for a caller to add settings to.
fn configured_server(
    bin: &Path,
    node: &str,
    shared: Option<&Shared>,
) -> Result<(Command, PathBuf)> {
    let dir = temp_dir(node)?;
    let mut cmd = server_command(bin, &dir);
    cmd.env("IM_ARGON2__MEMORY_KIB", "8")
        .env("IM_ARGON2__ITERATIONS", "1")
        .env("IM_DIRECT_MESSAGES", "anyone")
        .env("IM_MAX_JSON_BYTES", "1048576")
        // The scenarios measure capacity: thousands of accounts from one address, and
        // senders far over a person's pace.
        .env("IM_RATE_LIMITS__ENABLED", "false")
        .env("IM_LOG", "warn");
    if let Some(shared) = shared {
        cmd.env("IM_STORE", "postgres")
            .env("IM_POSTGRES__URL", &shared.url)
            .env("IM_FILES__DIR", &shared.files);
        match shared.bus {
            Bus::Redis => cmd
                .env("IM_BUS", "redis")
                .env("IM_REDIS__URL", redis_url())
                .env("IM_REDIS__PREFIX", format!("{}:", shared.name)),
            Bus::Notify | Bus::Local => cmd.env("IM_BUS", "postgres"),
        };
    }
    Ok((cmd, dir))
}

/// Connections the `idle` scenario's server accepts: its 15,000 streams and the setup's
/// connections. The default cap, three quarters of the 20,000 open files (15,000), leaves
/// no room for them.
const IDLE_MAX_CONNECTIONS: &str = "19000";

/// A fresh server for one run of the `idle` scenario.
fn start_idle_server(bin: &Path) -> Result<Proc> {
    let (mut cmd, dir) = configured_server(bin, "server", None)?;
    cmd.env("IM_LIMITS__MAX_CONNECTIONS", IDLE_MAX_CONNECTIONS);
    spawn_server(cmd, dir)
}

/// The login flood's server: argon2 at its default cost, so the flood meets real hashing.
fn start_login_server(bin: &Path) -> Result<Proc> {
    let (mut cmd, dir) = configured_server(bin, "server", None)?;
    cmd.env_remove("IM_ARGON2__MEMORY_KIB")
        .env_remove("IM_ARGON2__ITERATIONS");
    spawn_server(cmd, dir)
}

/// `bin` (the release `im-server`) on a free loopback port with its data in `dir`, to be
/// given its settings and then [`spawn_server`]ed.
pub(crate) fn server_command(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(dir);
    cmd
}

/// Starts a [`server_command`] and waits for the line that says where it listens; the
/// [`Proc`] stops it and removes `dir` when dropped.
pub(crate) fn spawn_server(mut cmd: Command, dir: PathBuf) -> Result<Proc> {
    let bin = cmd.get_program().to_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.to_string_lossy()))?;
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

/// The Redis the Redis setups use: `IM_TEST_REDIS`, as for the tests (and
/// `services::ensure_redis`), else the local server.
fn redis_url() -> String {
    std::env::var("IM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
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

/// What the nodes of one PostgreSQL deployment share: a fresh database (`im_bench_<random>`),
/// a fresh files directory, and the bus (on Redis, the database's name and a colon is the
/// prefix, so the deployment's channel is its own; it leaves no keys behind). Dropping it
/// drops the database (`WITH (FORCE)`) and removes the directory, whatever happened
/// meanwhile.
struct Shared {
    /// The database's name.
    name: String,
    /// What wakes the other nodes.
    bus: Bus,
    /// The URL the nodes connect to.
    url: String,
    /// The files directory every node uses.
    files: PathBuf,
    /// Where `CREATE` and `DROP DATABASE` run.
    admin: String,
}

impl Shared {
    /// Creates the database and the directory.
    fn create(bus: Bus) -> Result<Self> {
        crate::services::ensure_postgres()?;
        if bus == Bus::Redis {
            crate::services::ensure_redis()?;
        }
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
            bus,
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
            Store::Postgres => Some(Shared::create(setup.bus)?),
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

    /// The direct generator's extra arguments: the database whose PostgreSQL processes it
    /// watches, and on Redis the Redis server's processes.
    fn extra(&self) -> Vec<(&'static str, String)> {
        let mut extra = Vec::new();
        if let Some(shared) = &self.shared {
            extra.push(("db", shared.name.clone()));
            if shared.bus == Bus::Redis {
                let pids: Vec<String> = processes_named("redis-server")
                    .iter()
                    .map(u32::to_string)
                    .collect();
                extra.push(("bus-pids", pids.join(",")));
            }
        }
        extra
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

/// Processes whose command name is `name`, from /proc.
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
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

/// Runs the `im-loadgen` scenario `scenario` against one target (one server, or the nodes of
/// one deployment) in a generator process, with `args` as `--key value`; its JSON result.
fn generate(
    generator: &Path,
    scenario: &str,
    target: &str,
    servers: &[Proc],
    args: &[(&str, String)],
) -> Result<Value> {
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let addrs = addrs.join(",");
    banner(&format!("{scenario} against {target} ({addrs}) {args:?}"));
    let pids: Vec<String> = servers
        .iter()
        .flat_map(|s| &s.pids)
        .map(u32::to_string)
        .collect();
    let mut all = vec![
        ("target", target.to_owned()),
        ("addr", addrs),
        ("pids", pids.join(",")),
    ];
    all.extend(args.iter().cloned());
    let (status, result) = run_generator(generator, scenario, &all)?;
    let result = result.ok_or_else(|| {
        format!("{scenario}/{target}: the generator printed no result ({status})")
    })?;
    if !status.success() || result["ok"] != json!(true) {
        return Err(format!(
            "{scenario}/{target} failed: {}",
            result
                .get("problem")
                .cloned()
                .unwrap_or(json!(status.to_string()))
        ));
    }
    println!("{}", result["median"]);
    Ok(result)
}

/// Runs `im-loadgen scenario --key value ...`, its stderr shown as it goes; how it exited, and
/// the JSON object it printed last on stdout, if any.
pub(crate) fn run_generator(
    generator: &Path,
    scenario: &str,
    args: &[(&str, String)],
) -> Result<(std::process::ExitStatus, Option<Value>)> {
    let mut cmd = Command::new(generator);
    cmd.arg(scenario);
    for (k, v) in args {
        cmd.arg(format!("--{k}")).arg(v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the generator {}: {e}", generator.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result = text.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(Value::is_object)
    });
    Ok((out.status, result))
}

/// A scenario's sizes as generator arguments, followed by `extra`.
fn with_sizes<'a>(
    scenario: &str,
    quick: bool,
    extra: &[(&'a str, &str)],
) -> Vec<(&'a str, String)> {
    let mut args = sizes(scenario, quick);
    args.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    args
}

/// Runs the given load scenarios; with `quick`, small sizes, our server only, one run each,
/// and nothing written to docs/.
pub fn run(scenarios: &[&str], quick: bool) -> Result<Value> {
    let root = workspace_root();
    run_cargo(&root, &crate::util::RELEASE_BUILD)?;
    let target_dir = target_dir(&root);
    let bins = Bins {
        server: target_dir.join("release/im-server"),
        generator: target_dir.join("release/im-loadgen"),
    };
    let mut results = serde_json::Map::new();
    for scenario in scenarios {
        let sizes_json: std::collections::BTreeMap<_, _> =
            sizes(scenario, quick).into_iter().collect();
        let mut entry = json!({"sizes": sizes_json});
        if *scenario == "cluster" {
            run_cluster(&bins, quick, &mut entry)?;
        } else if *scenario == "idle" {
            run_idle(&bins, &root, quick, &mut entry)?;
        } else if *scenario == "login" {
            let server = [start_login_server(&bins.server)?];
            let args = with_sizes(scenario, quick, &[]);
            entry["ours"] = generate(&bins.generator, scenario, "ours", &server, &args)?;
        } else {
            // Fanout runs twice: at the steady rate for latency, and at a rate neither server
            // can keep up with, for deliveries per second.
            let saturating: &[(&str, &str)] = &[("rate", SATURATING_RATE)];
            let server = [start_server(&bins.server, "server", None)?];
            let args = with_sizes(scenario, quick, &[]);
            entry["ours"] = generate(&bins.generator, scenario, "ours", &server, &args)?;
            if !quick && *scenario == "fanout" {
                let args = with_sizes(scenario, quick, saturating);
                entry["ours_max"] = generate(&bins.generator, scenario, "ours", &server, &args)?;
            }
            drop(server);
            if !quick && *scenario == "fanout" {
                let nchan = [start_nchan(&root)?];
                let args = with_sizes(scenario, quick, &[]);
                entry["nchan"] = generate(&bins.generator, scenario, "nchan", &nchan, &args)?;
                let args = with_sizes(scenario, quick, saturating);
                entry["nchan_max"] = generate(&bins.generator, scenario, "nchan", &nchan, &args)?;
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

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace, where the
/// release binaries and the results go.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The release binaries a load run uses.
struct Bins {
    server: PathBuf,
    generator: PathBuf,
}

/// The `idle` scenario, the connect burst: every run on a fresh server (ours, then nchan on
/// a fresh nginx; nchan not with `quick`). A run is the generator's whole sequence of bursts,
/// and its first burst starts from a fresh server's baseline, so the generator does one run
/// per server and the entry holds every run and the medians over them, as the failover job
/// does.
fn run_idle(bins: &Bins, root: &Path, quick: bool, entry: &mut Value) -> Result<()> {
    let runs: u64 = size("idle", quick, "runs").parse().unwrap_or(1);
    let args: Vec<(&str, String)> = sizes("idle", quick)
        .into_iter()
        .filter(|(k, _)| *k != "runs")
        .collect();
    let mut ours = Vec::new();
    for _ in 0..runs.max(1) {
        let server = [start_idle_server(&bins.server)?];
        ours.push(generate(&bins.generator, "idle", "ours", &server, &args)?);
    }
    entry["ours"] = combine(&ours);
    if !quick {
        let mut nchan = Vec::new();
        for _ in 0..runs.max(1) {
            let server = [start_nchan(root)?];
            nchan.push(generate(&bins.generator, "idle", "nchan", &server, &args)?);
        }
        entry["nchan"] = combine(&nchan);
    }
    Ok(())
}

/// The `cluster` scenario: each job on a fresh deployment, its results in `entry` under the
/// setup's entry name.
fn run_cluster(bins: &Bins, quick: bool, entry: &mut Value) -> Result<()> {
    let size = |key: &str| size("cluster", quick, key);
    for setup in &CLUSTER_DIRECT {
        let deployment = Deployment::start(&bins.server, setup)?;
        let mut args = vec![
            ("pairs", size("pairs")),
            ("secs", size("secs")),
            ("runs", size("runs")),
        ];
        args.extend(deployment.extra());
        entry[setup.entry] = generate(&bins.generator, "direct", "ours", &deployment.nodes, &args)?;
    }
    add_shares(entry);
    for (setup, max) in &CLUSTER_FANOUT {
        let deployment = Deployment::start(&bins.server, setup)?;
        let args = |rate: String| {
            vec![
                ("k", size("k")),
                ("m", size("m")),
                ("rate", rate),
                ("runs", size("runs")),
            ]
        };
        // Quick: one run at the sizes' rate (100/s) only, as the fanout scenario does.
        entry[setup.entry] = generate(
            &bins.generator,
            "fanout",
            "ours",
            &deployment.nodes,
            &args(size("rate")),
        )?;
        if !quick {
            entry[*max] = generate(
                &bins.generator,
                "fanout",
                "ours",
                &deployment.nodes,
                &args(SATURATING_RATE.to_owned()),
            )?;
        }
    }
    // A node dies once: every run gets fresh nodes (and a fresh database).
    let runs: u64 = size("runs").parse().unwrap_or(1);
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        let deployment = Deployment::start(&bins.server, &FAILOVER)?;
        let victim = deployment.nodes.last().map_or(0, |n| n.pids[0]);
        let mut args = vec![
            ("r", size("r")),
            ("rate", size("fo_rate")),
            ("before", size("before")),
            ("after", size("after")),
            ("kill", victim.to_string()),
        ];
        args.extend(deployment.extra().into_iter().filter(|(k, _)| *k == "db"));
        results.push(generate(
            &bins.generator,
            "failover",
            "ours",
            &deployment.nodes,
            &args,
        )?);
    }
    entry[FAILOVER.entry] = combine(&results);
    Ok(())
}

/// Every setup's open rate as a share of one SQLite node's in the same run
/// (`open_vs_sqlite_1`), the figure the two-node target is judged by.
fn add_shares(entry: &mut Value) {
    let Some(sqlite) = num(&entry["sqlite_1"]["median"]["open_msgs_per_sec"]) else {
        return;
    };
    for setup in CLUSTER_DIRECT.iter().filter(|s| s.entry != "sqlite_1") {
        // Indexing a missing entry mutably would make it.
        if entry.get(setup.entry).is_none() {
            continue;
        }
        let median = &mut entry[setup.entry]["median"];
        if let Some(open) = num(&median["open_msgs_per_sec"]).filter(|_| sqlite > 0.0) {
            median[SHARE] = json!((open / sqlite * 1000.0).round() / 1000.0);
        }
    }
}

/// The results of several one-run generator invocations as one: every run, and the median of
/// each figure.
fn combine(results: &[Value]) -> Value {
    let runs: Vec<Value> = results
        .iter()
        .flat_map(|r| r["runs"].as_array().cloned().unwrap_or_default())
        .collect();
    let mut medians = serde_json::Map::new();
    if let Some(Value::Object(first)) = results.first().map(|r| &r["median"]) {
        for key in first.keys() {
            let mut xs: Vec<f64> = results
                .iter()
                .filter_map(|r| num(&r["median"][key]))
                .collect();
            xs.sort_by(f64::total_cmp);
            if let Some(m) = xs.get(xs.len() / 2) {
                medians.insert(key.clone(), json!(m));
            }
        }
    }
    let ok = results.iter().all(|r| r["ok"] == json!(true));
    json!({"ok": ok, "runs": runs, "median": medians})
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt(v: Option<f64>) -> String {
    // By size, whatever the sign (memory growth may be negative).
    match v.map(|x| (x, x.abs())) {
        None => "–".into(),
        Some((x, a)) if a >= 1000.0 || x.fract() == 0.0 => format!("{:.0}", x),
        // CPU seconds per 1,000 messages are a few hundredths: keep a third digit.
        Some((x, a)) if a < 0.1 => format!("{x:.3}"),
        Some((x, a)) if a >= 10.0 => format!("{x:.1}"),
        Some((x, _)) => format!("{x:.2}"),
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
    /// At least this many times nchan's figure.
    AtLeastNchan(f64),
    /// At most nchan's figure.
    AtMostNchan,
    /// The scenario's exactly-once check passed.
    AllArrived,
}

/// One row: a figure of one scenario; `ours` and `nchan` name the result entries to read.
#[derive(Clone, Copy)]
struct Row {
    scenario: &'static str,
    label: fn(&Sizes<'_>) -> String,
    /// The setup's name, added to the label (empty for single-setup scenarios).
    setup: &'static str,
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
        label: idle,
        setup: "",
        figure: "total server memory with all streams open, first burst (MiB)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "rss_streams_mib",
        target: "≤ nchan",
        goal: Goal::AtMostNchan,
    },
    Row {
        scenario: "idle",
        label: idle,
        setup: "",
        figure: "memory per stream above the idle baseline (KiB)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "per_stream_kib",
        target: "< 4 KiB",
        goal: Goal::Below(4.0),
    },
    Row {
        scenario: "idle",
        label: idle,
        setup: "",
        figure: "memory after the streams close vs before the burst (%)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "closed_vs_idle_pct",
        target: "≤ 20%",
        goal: Goal::AtMost(20.0),
    },
    Row {
        scenario: "idle",
        label: idle,
        setup: "",
        figure: "growth on later bursts: memory left after burst 2 or 3 vs after the one before, the larger (%)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "later_growth_pct",
        target: "< 5%",
        goal: Goal::Below(5.0),
    },
    Row {
        scenario: "idle",
        label: idle,
        setup: "",
        figure: "peak threads, all the server's processes",
        ours: "ours",
        nchan: Some("nchan"),
        key: "peak_threads",
        target: "< 32",
        goal: Goal::Below(32.0),
    },
    Row {
        scenario: "idle",
        label: idle,
        setup: "",
        figure: "time to connect all, first burst (s)",
        ours: "ours",
        nchan: Some("nchan"),
        key: "connect_all_secs",
        target: "",
        goal: Goal::None,
    },
    Row {
        scenario: "fanout",
        label: fanout_max,
        setup: "",
        figure: "deliveries per second",
        ours: "ours_max",
        nchan: Some("nchan_max"),
        key: "deliveries_per_sec",
        target: "≥ 2 × nchan",
        goal: Goal::AtLeastNchan(2.0),
    },
    Row {
        scenario: "fanout",
        label: fanout_max,
        setup: "",
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
        setup: "",
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
        setup: "",
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
        setup: "",
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
        setup: "",
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
        setup: "",
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
        setup: "",
        figure: "messages replayed, each exactly once",
        ours: "ours",
        nchan: None,
        key: "messages_replayed",
        target: "all",
        goal: Goal::AllArrived,
    },
    login_row(
        "server memory before the flood (MiB)",
        "rss_before_mib",
        "",
        Goal::None,
    ),
    login_row(
        "server memory at its peak during the flood (MiB)",
        "rss_peak_mib",
        "",
        Goal::None,
    ),
    login_row(
        "memory left 5 s after the flood vs before (%)",
        "after_vs_before_pct",
        "≤ 20%",
        Goal::AtMost(20.0),
    ),
    login_row(
        "wrong passwords answered per second",
        "wrong_per_sec",
        "",
        Goal::None,
    ),
    login_row(
        "a real login during the flood, p50 (ms)",
        "real_login_p50_ms",
        "",
        Goal::None,
    ),
];

fn idle(s: &Sizes<'_>) -> String {
    format!(
        "idle (connect burst), N = {} streams of {} users, {} bursts on a fresh server",
        s("idle", "n"),
        s("idle", "users"),
        s("idle", "bursts")
    )
}

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

/// What wakes a PostgreSQL setup's other nodes after a commit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bus {
    /// One SQLite process: no bus.
    Local,
    /// PostgreSQL's `NOTIFY`.
    Notify,
    /// Redis pub/sub, carrying the committed entries.
    Redis,
}

/// A deployment a job runs against, and the targets its figures are judged by.
struct Setup {
    /// The result entry its figures are recorded under.
    entry: &'static str,
    /// What the rows call it (empty for the single-setup scenarios).
    name: &'static str,
    /// Where the nodes keep the truth.
    store: Store,
    /// What wakes the other nodes.
    bus: Bus,
    /// How many nodes share the load. Direct chat: pair i's sender posts to node i mod n and
    /// its receiver listens on node i + 1 mod n, so with several nodes every message crosses
    /// nodes. Fan-out: member i's stream is on node i mod n. Failover: the last is killed.
    nodes: usize,
    /// Targets: (result key, what the table says, how it is judged).
    targets: &'static [(&'static str, &'static str, Goal)],
}

/// The `direct` scenario's one setup: a single SQLite node.
const DIRECT: Setup = Setup {
    entry: "ours",
    name: "",
    store: Store::Sqlite,
    bus: Bus::Local,
    nodes: 1,
    targets: &[
        ("open_msgs_per_sec", "≥ 25,000", Goal::AtLeast(25_000.0)),
        ("fixed_p99_ms", "< 25 ms", Goal::Below(25.0)),
        ("cpu_secs_per_1000", "≤ 0.05 s", Goal::AtMost(0.05)),
    ],
};

/// The `cluster` scenario's direct-chat setups, in the order they run and are shown.
const CLUSTER_DIRECT: [Setup; 5] = [
    Setup {
        entry: "sqlite_1",
        name: "sqlite 1 node",
        store: Store::Sqlite,
        bus: Bus::Local,
        nodes: 1,
        targets: &[],
    },
    Setup {
        entry: "redis_1",
        name: "postgres + redis 1 node",
        store: Store::Postgres,
        bus: Bus::Redis,
        nodes: 1,
        targets: &[],
    },
    Setup {
        entry: "redis_2",
        name: "postgres + redis 2 nodes (every message crosses nodes)",
        store: Store::Postgres,
        bus: Bus::Redis,
        nodes: 2,
        targets: &[
            (SHARE, "≥ 0.60", Goal::AtLeast(0.6)),
            ("fixed_p99_ms", "< 100 ms", Goal::Below(100.0)),
        ],
    },
    Setup {
        entry: "redis_3",
        name: "postgres + redis 3 nodes (every message crosses nodes)",
        store: Store::Postgres,
        bus: Bus::Redis,
        nodes: 3,
        targets: &[],
    },
    Setup {
        entry: "notify_2",
        name: "postgres + NOTIFY 2 nodes (every message crosses nodes)",
        store: Store::Postgres,
        bus: Bus::Notify,
        nodes: 2,
        targets: &[],
    },
];

/// The `cluster` scenario's fan-out setups: one group of K members whose streams are spread
/// over the nodes. Each runs at the steady rate and (full runs) at the saturating one, whose
/// figures are recorded under the second entry name.
const CLUSTER_FANOUT: [(Setup, &str); 2] = [
    (
        Setup {
            entry: "fanout_sqlite_1",
            name: "sqlite 1 node",
            store: Store::Sqlite,
            bus: Bus::Local,
            nodes: 1,
            targets: &[],
        },
        "fanout_sqlite_1_max",
    ),
    (
        Setup {
            entry: "fanout_redis_2",
            name: "postgres + redis 2 nodes (streams spread over both)",
            store: Store::Postgres,
            bus: Bus::Redis,
            nodes: 2,
            targets: &[(
                "deliveries_per_sec",
                "≥ 100,000 (nchan at 5,000)",
                Goal::AtLeast(100_000.0),
            )],
        },
        "fanout_redis_2_max",
    ),
];

/// The `cluster` scenario's failover setup: the third of three nodes is killed.
const FAILOVER: Setup = Setup {
    entry: "failover_redis_3",
    name: "postgres + redis 3 nodes, the third killed",
    store: Store::Postgres,
    bus: Bus::Redis,
    nodes: 3,
    targets: &[
        ("worst_acked_caught_up_secs", "≤ 10 s", Goal::AtMost(10.0)),
        ("worst_caught_up_secs", "≤ 10 s", Goal::AtMost(10.0)),
    ],
};

/// The result key of PostgreSQL's CPU per 1,000 messages, reported for PostgreSQL setups.
const DB_CPU: &str = "db_cpu_secs_per_1000";

/// The result key of a cluster setup's open rate as a share of one SQLite node's.
const SHARE: &str = "open_vs_sqlite_1";

/// The result key of the bus server's CPU per 1,000 messages, reported for Redis setups.
const BUS_CPU: &str = "bus_cpu_secs_per_1000";

/// The figures of a run of the `direct` generator: (figure, result key).
const DIRECT_FIGURES: [(&str, &str); 12] = [
    ("durable messages/s, open rate", "open_msgs_per_sec"),
    ("open rate ÷ sqlite 1 node's in the same run", SHARE),
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
    ("Redis CPU seconds per 1,000 messages", BUS_CPU),
    (
        "generator CPU seconds per 1,000 messages",
        "generator_cpu_secs_per_1000",
    ),
    ("cores busy machine-wide at open rate", "busy_cores"),
];

/// The target of `key` in `setup`, if it has one.
fn target_of(setup: &Setup, key: &str) -> (&'static str, Goal) {
    setup
        .targets
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or(("", Goal::None), |&(_, text, goal)| (text, goal))
}

/// The rows of one setup's run of the `direct` generator in `scenario`.
fn direct_rows(
    scenario: &'static str,
    label: fn(&Sizes<'_>) -> String,
    setup: &'static Setup,
) -> impl Iterator<Item = Row> {
    DIRECT_FIGURES
        .iter()
        .filter(move |(_, key)| setup.store == Store::Postgres || *key != DB_CPU)
        .filter(move |(_, key)| setup.bus == Bus::Redis || *key != BUS_CPU)
        .filter(move |(_, key)| scenario == "cluster" && setup.entry != "sqlite_1" || *key != SHARE)
        .map(move |&(figure, key)| {
            let (target, goal) = target_of(setup, key);
            Row {
                scenario,
                label,
                setup: setup.name,
                figure,
                ours: setup.entry,
                nchan: None,
                key,
                target,
                goal,
            }
        })
}

/// The rows of one cluster fan-out setup: saturating, then steady.
fn fanout_rows(setup: &'static Setup, max: &'static str) -> impl Iterator<Item = Row> {
    const SATURATING: [(&str, &str); 5] = [
        ("deliveries per second", "deliveries_per_sec"),
        ("latency p99 (ms)", "latency_p99_ms"),
        (
            "server CPU seconds per 1,000 deliveries",
            "cpu_secs_per_1000",
        ),
        (
            "generator CPU seconds per 1,000 deliveries",
            "generator_cpu_secs_per_1000",
        ),
        ("cores busy machine-wide", "busy_cores"),
    ];
    const STEADY: [(&str, &str); 3] = [
        ("deliveries per second", "deliveries_per_sec"),
        ("latency p50 (ms)", "latency_p50_ms"),
        ("latency p99 (ms)", "latency_p99_ms"),
    ];
    let saturating = SATURATING.into_iter().map(move |(figure, key)| {
        let (target, goal) = target_of(setup, key);
        Row {
            scenario: "cluster",
            label: cluster_fanout_max,
            setup: setup.name,
            figure,
            ours: max,
            nchan: None,
            key,
            target,
            goal,
        }
    });
    let steady = STEADY.into_iter().map(move |(figure, key)| Row {
        scenario: "cluster",
        label: cluster_fanout,
        setup: setup.name,
        figure,
        ours: setup.entry,
        nchan: None,
        key,
        target: "",
        goal: Goal::None,
    });
    saturating.chain(steady)
}

/// The rows of the failover job.
fn failover_rows() -> impl Iterator<Item = Row> {
    const FIGURES: [(&str, &str); 17] = [
        (
            "from the kill until every client had every message acknowledged before it (s), median",
            "acked_caught_up_secs",
        ),
        ("… the slowest run", "worst_acked_caught_up_secs"),
        (
            "… until it also had every message acknowledged before its new stream opened (s), median",
            "caught_up_secs",
        ),
        ("… the slowest run", "worst_caught_up_secs"),
        (
            "… until every client's new stream was open (s)",
            "reconnected_secs",
        ),
        (
            "… until every client got a message sent after that (live again) (s)",
            "live_secs",
        ),
        ("… the slowest run", "worst_live_secs"),
        (
            "messages acknowledged before the kill, not yet delivered by it",
            "owed_at_kill",
        ),
        ("messages replayed on reconnect", "replayed"),
        (
            "connections the kernel refused, listen queue full (after the kill)",
            "listen_overflows_after_kill",
        ),
        ("messages/s during the run", "msgs_per_sec"),
        (
            "seconds between two messages to one client",
            "secs_between_messages_per_client",
        ),
        (
            "latency p99 before the kill (ms)",
            "latency_p99_before_kill_ms",
        ),
        (
            "PostgreSQL cores busy before the kill",
            "db_cores_before_kill",
        ),
        (
            "PostgreSQL cores busy after the kill, until the senders stopped",
            "db_cores_after_kill",
        ),
        ("messages, each exactly once", "messages"),
        ("runs (fresh nodes each)", RUNS),
    ];
    FIGURES.into_iter().map(|(figure, key)| {
        let (target, goal) = match key {
            "messages" => ("all", Goal::AllArrived),
            _ => target_of(&FAILOVER, key),
        };
        Row {
            scenario: "cluster",
            label: cluster_failover,
            setup: FAILOVER.name,
            figure,
            ours: FAILOVER.entry,
            nchan: None,
            key,
            target,
            goal,
        }
    })
}

/// A row key read from every run's metrics instead of the medians: the largest value of the
/// metric named after this prefix.
const WORST: &str = "worst_";

/// A row key counting an entry's runs.
const RUNS: &str = "runs";

/// The figure `key` of a result entry: a median, the worst (largest) of its runs' values for
/// a `worst_` key, or its number of runs.
fn figure_of(entry: &Value, key: &str) -> Option<f64> {
    let runs = || entry["runs"].as_array().into_iter().flatten();
    if key == RUNS {
        return Some(runs().count() as f64).filter(|n| *n > 0.0);
    }
    match key.strip_prefix(WORST) {
        Some(metric) => runs()
            .filter_map(|r| num(&r["metrics"][metric]))
            .reduce(f64::max),
        None => num(&entry["median"][key]),
    }
}

fn cluster_fanout_max(s: &Sizes<'_>) -> String {
    format!(
        "cluster fan-out, K = {}, M = {} at {SATURATING_RATE}/s (saturating)",
        s("cluster", "k"),
        s("cluster", "m")
    )
}

fn cluster_fanout(s: &Sizes<'_>) -> String {
    format!(
        "cluster fan-out, K = {}, M = {} at {}/s",
        s("cluster", "k"),
        s("cluster", "m"),
        s("cluster", "rate")
    )
}

fn cluster_failover(s: &Sizes<'_>) -> String {
    format!(
        "cluster failover, R = {} streams on the killed node, messages to them offered at {}/s",
        s("cluster", "r"),
        s("cluster", "fo_rate")
    )
}

/// Every row, grouped by scenario in [`SCENARIOS`] order.
fn rows() -> Vec<Row> {
    let mut rows = ROWS.to_vec();
    rows.extend(direct_rows("direct", |s| pairs(s, "direct"), &DIRECT));
    for setup in &CLUSTER_DIRECT {
        rows.extend(direct_rows("cluster", |s| pairs(s, "cluster"), setup));
    }
    for (setup, max) in &CLUSTER_FANOUT {
        rows.extend(fanout_rows(setup, max));
    }
    rows.extend(failover_rows());
    // Stable: each scenario's rows keep their order.
    rows.sort_by_key(|r| SCENARIOS.iter().position(|s| *s == r.scenario));
    rows
}

/// A row of the login flood: ours only, one figure.
const fn login_row(
    figure: &'static str,
    key: &'static str,
    target: &'static str,
    goal: Goal,
) -> Row {
    Row {
        scenario: "login",
        label: login,
        setup: "",
        figure,
        ours: "ours",
        nchan: None,
        key,
        target,
        goal,
    }
}

fn login(s: &Sizes<'_>) -> String {
    format!(
        "login flood, {} connections × {} s of wrong passwords, default argon2",
        s("login", "parallel"),
        s("login", "secs")
    )
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
    let recorded = |r: &&Row| {
        results
            .get(r.scenario)
            .is_some_and(|s| s.get(r.ours).is_some())
    };
    for r in rows().iter().filter(recorded) {
        let ours = figure_of(&results[r.scenario][r.ours], r.key);
        // A figure the run did not report (an older run) has no row.
        if ours.is_none() {
            continue;
        }
        let nchan = r
            .nchan
            .and_then(|n| num(&results[r.scenario][n]["median"][r.key]));
        let met = match (r.goal, ours) {
            (Goal::None, _) | (_, None) => None,
            (Goal::AtMost(t), Some(v)) => Some(v <= t),
            (Goal::Below(t), Some(v)) => Some(v < t),
            (Goal::AtLeast(t), Some(v)) => Some(v >= t),
            (Goal::AtLeastNchan(times), Some(v)) => nchan.map(|n| v >= times * n),
            (Goal::AtMostNchan, Some(v)) => nchan.map(|n| v <= n),
            (Goal::AllArrived, Some(_)) => Some(results[r.scenario][r.ours]["ok"] == json!(true)),
        };
        let label = match r.setup {
            "" => (r.label)(&size),
            setup => format!("{}, {setup}", (r.label)(&size)),
        };
        let label = dated(results, r.scenario, label);
        row(&mut out, &label, r.figure, ours, nchan, r.target, met);
    }
    out.push_str("\nnchan runs only where the scenario has an nchan equivalent (idle, fanout). Every run also checked that each message arrived exactly once; a run that lost or doubled one fails instead of reporting a figure.\n");
    if results.get("cluster").is_some() {
        out.push_str(CLUSTER_NOTE);
    }
    out
}

/// What the `cluster` rows measure, under the table.
const CLUSTER_NOTE: &str = "
cluster starts a fresh deployment for each job: PostgreSQL setups get a fresh database and files directory, and on Redis their own channel prefix. All nodes, PostgreSQL, Redis and the generator share the machine's cores, so more nodes cannot mean more throughput here: the figures show what the cluster costs, not how it scales.

- Direct chat (the direct generator, P pairs): one SQLite node; PostgreSQL with Redis as the bus on one, two and three nodes; PostgreSQL with `NOTIFY` on two. With several nodes, pair i's sender posts to node i mod N and its receiver listens on node (i + 1) mod N, so every message crosses nodes. \"÷ sqlite 1 node\" divides by the SQLite node's open rate in the same run. Server CPU is all nodes together; PostgreSQL CPU is the backends serving the setup's database plus the WAL writer, checkpointer and background writer.
- Fan-out (the fanout generator): one group of K members, member i's stream on node i mod N, the 4 posting connections spread over the nodes too; at the saturating rate, deliveries per second is the capacity figure.
- Failover (the failover generator, one run per fresh deployment, medians over the runs): R clients hold their streams on the third of three nodes; senders post to the other two, a steady rate in all, each message to one client with a `client_id` (retried after a 503). After some seconds the third node is killed with SIGKILL; each client waits the server's `retry:` hint (2 s, as a browser's `EventSource` does) and resumes on a surviving node with `Last-Event-ID`. Times run from the kill. Every message acknowledged over the whole run must reach its client exactly once across the two streams.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_rows_name_their_setup_and_judge_the_two_node_share() {
        let figures = |open: f64, p99: f64| {
            json!({"median": {"open_msgs_per_sec": open, "fixed_p99_ms": p99,
                              "cpu_secs_per_1000": 0.1, "db_cpu_secs_per_1000": 0.2}})
        };
        let mut results = json!({"cluster": {
            "sizes": {"pairs": "500", "secs": "10", "runs": "3", "k": "5000", "m": "200",
                      "rate": "20", "r": "5000", "fo_rate": "5000"},
            "sqlite_1": figures(15_000.0, 40.0),
            "redis_1": figures(10_000.0, 60.0),
            "redis_2": figures(8_000.0, 150.0),
            "fanout_redis_2_max": {"median": {"deliveries_per_sec": 120_000.0}},
            "failover_redis_3": {"ok": true,
                "runs": [{"metrics": {"acked_caught_up_secs": 11.5}},
                         {"metrics": {"acked_caught_up_secs": 2.0}}],
                "median": {"acked_caught_up_secs": 2.0, "messages": 90_000.0}},
        }});
        add_shares(&mut results["cluster"]);
        assert_eq!(results["cluster"]["redis_2"]["median"][SHARE], 0.533);
        let table = render(&results, "header");
        let line = |setup: &str, figure: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!(", {setup} |")) && l.contains(figure))
                .unwrap_or_default()
                .to_owned()
        };
        let two = "postgres + redis 2 nodes (every message crosses nodes)";
        assert!(line(two, "open rate |").ends_with("| 8000 | – | – |  |  |"));
        assert!(line(two, "÷ sqlite").ends_with("| 0.53 | – | – | ≥ 0.60 | **missed** |"));
        assert!(line(two, "p99 at fixed").ends_with("| < 100 ms | **missed** |"));
        assert!(line("postgres + redis 1 node", "÷ sqlite").ends_with("| 0.67 | – | – |  |  |"));
        assert!(line("postgres + redis 1 node", "PostgreSQL CPU").contains("| 0.20 |"));
        assert_eq!(line("sqlite 1 node", "PostgreSQL CPU"), "");
        assert_eq!(line("sqlite 1 node", "÷ sqlite"), "");
        // Setups without results have no rows.
        assert!(!table.contains("3 nodes (every message"));
        assert!(!table.contains("| direct,"));
        let fanout = line(
            "postgres + redis 2 nodes (streams spread over both)",
            "deliveries",
        );
        assert!(
            fanout.contains("(saturating)")
                && fanout.ends_with("| 120000 | – | – | ≥ 100,000 (nchan at 5,000) | met |")
        );
        let killed = "postgres + redis 3 nodes, the third killed";
        assert!(line(killed, "acknowledged before it").ends_with("| 2 | – | – |  |  |"));
        assert!(line(killed, "slowest run").ends_with("| 11.5 | – | – | ≤ 10 s | **missed** |"));
        assert!(line(killed, "runs (fresh").ends_with("| 2 | – | – |  |  |"));
        // The other figures were not reported: no rows.
        assert_eq!(table.matches("slowest run").count(), 1);
        assert!(line(killed, "exactly once").ends_with("| 90000 | – | – | all | met |"));
    }

    #[test]
    fn idle_memory_is_judged_against_nchan_and_growth_may_be_negative() {
        let figures = |mib: f64, growth: f64| {
            json!({"median": {"rss_streams_mib": mib, "per_stream_kib": 3.5,
                              "closed_vs_idle_pct": 25.0, "later_growth_pct": growth,
                              "peak_threads": 40.0, "connect_all_secs": 1.8}})
        };
        let results = |ours_mib: f64| {
            json!({"idle": {
                "sizes": {"n": "15000", "users": "5000", "bursts": "3", "runs": "3"},
                "ours": figures(ours_mib, -1.25),
                "nchan": figures(100.0, -0.05),
            }})
        };
        let line = |table: &str, figure: &str| {
            table
                .lines()
                .find(|l| l.contains(figure))
                .unwrap_or_default()
                .to_owned()
        };
        let table = render(&results(90.0), "header");
        let memory = line(&table, "all streams open");
        assert!(
            memory.starts_with("| idle (connect burst), N = 15000 streams of 5000 users, 3 bursts")
        );
        assert!(memory.ends_with("| 90 | 100 | 0.90 | ≤ nchan | met |"));
        assert!(line(&table, "per stream").ends_with("| 3.50 | 3.50 | 1.00 | < 4 KiB | met |"));
        assert!(line(&table, "after the streams close").ends_with("| ≤ 20% | **missed** |"));
        assert!(line(&table, "later bursts").contains("| -1.25 | -0.050 |"));
        assert!(line(&table, "later bursts").ends_with("| < 5% | met |"));
        assert!(line(&table, "peak threads").ends_with("| < 32 | **missed** |"));
        let table = render(&results(110.0), "header");
        assert!(
            line(&table, "all streams open")
                .ends_with("| 110 | 100 | 1.10 | ≤ nchan | **missed** |")
        );
        // Without nchan's figure there is nothing to judge by.
        let mut alone = results(90.0);
        alone["idle"].as_object_mut().map(|e| e.remove("nchan"));
        let table = render(&alone, "header");
        assert!(line(&table, "all streams open").ends_with("| 90 | – | – | ≤ nchan |  |"));
    }

    #[test]
    fn one_run_results_combine_into_medians() {
        let run = |x: f64| json!({"ok": true, "runs": [{"metrics": {"x": x}}], "median": {"x": x}});
        let all = combine(&[run(3.0), run(1.0), run(2.0)]);
        assert_eq!(all["median"]["x"], 2.0);
        assert_eq!(all["runs"].as_array().map(Vec::len), Some(3));
        assert_eq!(all["ok"], true);
    }
}
