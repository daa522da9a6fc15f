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
