//! The services the test suite needs, made reachable before any test runs: the store suite,
//! the ordering proof and the cluster tests use PostgreSQL. A missing service is started (or
//! installed) here; if it still cannot be reached, the gate fails with a message saying so.

use crate::ci::{apt_install, run_tool};
use crate::util::{Result, banner};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the tests look for PostgreSQL (`IM_TEST_POSTGRES`, as `im-testkit` reads it).
fn postgres_addr() -> SocketAddr {
    let url = std::env::var("IM_TEST_POSTGRES").unwrap_or_default();
    // postgres://user@host:port/db -> host:port; anything unusual falls back to the default.
    url.split_once('@')
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .and_then(|hostport| hostport.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5432)))
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn wait_for(addr: SocketAddr, patience: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < patience {
        if reachable(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// Every Debian cluster version installed (`/etc/postgresql/<version>/main`).
fn clusters() -> Vec<String> {
    std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("main").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Trust for loopback connections, as on the developers' machines, so the tests connect as
/// `postgres` without a password. Only applied to a cluster this function installed.
fn trust_loopback(version: &str) -> Result<()> {
    let hba = Path::new("/etc/postgresql")
        .join(version)
        .join("main/pg_hba.conf");
    let rules = "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
    let old = std::fs::read_to_string(&hba).map_err(|e| format!("{}: {e}", hba.display()))?;
    std::fs::write(&hba, format!("{rules}{old}")).map_err(|e| format!("{}: {e}", hba.display()))
}

/// Makes sure PostgreSQL answers on its port: starts the installed cluster if it is down, and
/// installs one from Debian's packages if there is none.
pub fn ensure_postgres() -> Result<()> {
    let addr = postgres_addr();
    if reachable(addr) {
        return Ok(());
    }
    banner(&format!(
        "PostgreSQL is not answering on {addr}: starting it"
    ));
    let mut installed_here = false;
    if clusters().is_empty() {
        apt_install(&["postgresql"])?;
        installed_here = true;
    }
    for version in clusters() {
        if installed_here {
            trust_loopback(&version)?;
        }
        // A fresh install must re-read pg_hba.conf; an existing cluster was merely down.
        let action = if installed_here { "restart" } else { "start" };
        let _ = run_tool(
            Command::new("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                &version,
                "main",
                action,
            ]),
            "pg_ctlcluster",
        );
    }
    if wait_for(addr, Duration::from_secs(30)) {
        Ok(())
    } else {
        Err(format!(
            "PostgreSQL is needed by the store and cluster tests, and it does not answer on \
             {addr} even after trying to start it. Start it (Debian: `pg_ctlcluster \
             --skip-systemctl-redirect <version> main start`), or set IM_TEST_POSTGRES to a \
             server with trust auth for user postgres."
        ))
    }
}

/// `host:port` of a service URL in `var` (as `im-testkit` reads it), else `default`.
fn service_addr(var: &str, default: SocketAddr) -> SocketAddr {
    let url = std::env::var(var).unwrap_or_default();
    url.split_once("://")
        .map(|(_, rest)| rest.rsplit('@').next().unwrap_or(rest))
        .and_then(|rest| rest.split(['/', '?']).next())
        .and_then(|hostport| hostport.parse().ok())
        .unwrap_or(default)
}

/// Starts a service that is not answering: installs `package` if `binary` is missing, runs
/// `start`, and waits for the port.
fn ensure_service(
    what: &str,
    addr: SocketAddr,
    binary: &str,
    package: &str,
    start: &mut Command,
    hint: &str,
) -> Result<()> {
    if reachable(addr) {
        return Ok(());
    }
    banner(&format!("{what} is not answering on {addr}: starting it"));
    if which(binary).is_none() {
        apt_install(&[package])?;
    }
    // Detached: the service outlives this command, as the machine's own would.
    start
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    if wait_for(addr, Duration::from_secs(30)) {
        Ok(())
    } else {
        Err(format!(
            "{what} is needed by the bus and cluster tests, and it does not answer on {addr} \
             even after trying to start it. {hint}"
        ))
    }
}

fn which(binary: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/usr/bin".into()])
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

/// Makes sure Redis answers (`IM_TEST_REDIS`, default 127.0.0.1:6379), starting one that
/// keeps nothing on disk if not.
pub fn ensure_redis() -> Result<()> {
    let addr = service_addr("IM_TEST_REDIS", SocketAddr::from(([127, 0, 0, 1], 6379)));
    let binary = which("redis-server").unwrap_or_else(|| "redis-server".into());
    ensure_service(
        "Redis",
        addr,
        "redis-server",
        "redis-server",
        Command::new(binary).args([
            "--bind",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
        ]),
        "Start it (`redis-server --daemonize yes`), or set IM_TEST_REDIS=redis://host:port/.",
    )
}

/// Makes sure NATS answers (`IM_TEST_NATS`, default 127.0.0.1:4222).
pub fn ensure_nats() -> Result<()> {
    let addr = service_addr("IM_TEST_NATS", SocketAddr::from(([127, 0, 0, 1], 4222)));
    let binary = which("nats-server").unwrap_or_else(|| "nats-server".into());
    ensure_service(
        "NATS",
        addr,
        "nats-server",
        "nats-server",
        Command::new(binary).args(["-a", &addr.ip().to_string(), "-p", &addr.port().to_string()]),
        "Start it (`nats-server -js`), or set IM_TEST_NATS=nats://host:port.",
    )
}
