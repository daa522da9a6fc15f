//! `cargo xtask ci`: the gate every change passes, in the order that fails fastest.

use crate::util::{
    Result, banner, cargo, cargo_succeeds, display_cargo, run_cargo, workspace_root,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cargo invocations of the gate, cheapest first; the first failure stops the run.
const STEPS: [&[&str]; 8] = [
    &["fmt", "--all", "--", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    // The store without its optional ports (and their domain crates) builds on its own.
    &[
        "clippy",
        "-p",
        "im-store",
        "--no-default-features",
        "--features",
        "postgres",
        "--",
        "-D",
        "warnings",
    ],
    // Every crate's docs build without a broken link or a bad code block.
    &[
        "doc",
        "--workspace",
        "--no-deps",
        "--config",
        "build.rustdocflags=[\"-D\", \"warnings\"]",
    ],
    // Every crate packages on its own (`--no-verify`: building each again would double the
    // gate); what a package embeds is held inside it by a test in `xtask/src/drift.rs`.
    &["package", "--workspace", "--no-verify", "--allow-dirty"],
    // Licenses, banned crates (a second TLS stack) and sources, by `deny.toml`; the RustSec
    // advisories need GitHub, which the CI machine cannot reach.
    &["deny", "check", "bans", "licenses", "sources"],
    &["test", "--workspace", "--all-targets"],
    &["test", "--workspace", "--doc"],
];

/// The in-process end-to-end tests that run a second time with every server on a PostgreSQL
/// database of its own (`IM_TEST_STORE=postgres`), so both adapters serve the same contract.
/// `--workspace` resolves the features of the gate's test build, which it reuses; `-p
/// im-server` would build most crates again (about 3 minutes here).
const PG_AGAIN: [&str; 14] = [
    "test",
    "--workspace",
    "--test",
    "messaging",
    "--test",
    "amendments",
    "--test",
    "social",
    "--test",
    "files",
    "--test",
    "bad_input",
    "--test",
    "examples",
];

/// Runs the whole gate from the workspace root.
pub fn run() -> Result<()> {
    let root = workspace_root();
    ensure_components(&root)?;
    ensure_cargo_deny(&root)?;
    crate::services::ensure_postgres()?;
    crate::services::ensure_redis()?;
    crate::services::ensure_nats()?;
    crate::moto::ensure_moto()?;
    for (i, args) in STEPS.iter().enumerate() {
        banner(&format!(
            "[{}/{}] {}",
            i + 1,
            STEPS.len(),
            display_cargo(args)
        ));
        run_cargo(&root, args).map_err(|e| format!("ci step {} failed: {e}", i + 1))?;
    }
    // The oldest compiler the manifests declare, from Debian's packages.
    crate::msrv::run()?;
    banner(&format!(
        "the server's end-to-end tests again, on PostgreSQL: IM_TEST_STORE=postgres {}",
        display_cargo(&PG_AGAIN)
    ));
    run_tool(
        cargo(&root, &PG_AGAIN).env("IM_TEST_STORE", "postgres"),
        "the end-to-end tests on PostgreSQL",
    )?;
    browser_tests(&root)?;
    // The server's answers against its OpenAPI document, by a property-based checker.
    crate::openapi::run()?;
    // A short pass over every fuzz target; `cargo xtask fuzz` is the long one.
    crate::fuzz::run(&crate::fuzz::Options {
        seconds: 10,
        targets: Vec::new(),
    })?;
    // Half a minute of the soak's traffic, so the command cannot rot; the hour is run by hand.
    banner("soak smoke run: cargo xtask soak --seconds 30");
    crate::soak::run(&crate::soak::Options {
        duration: std::time::Duration::from_secs(30),
        ..crate::soak::Options::default()
    })?;
    banner("benchmark smoke run: cargo xtask bench --quick");
    crate::bench::run(&crate::bench::Options {
        quick: true,
        scenarios: Vec::new(),
        render: false,
    })?;
    banner("ci: every step passed");
    Ok(())
}

/// Makes sure `cargo fmt` and `cargo clippy` exist, installing the rustup components if not
/// (a fresh machine often has a minimal toolchain).
fn ensure_components(root: &Path) -> Result<()> {
    let present = |sub: &str| cargo_succeeds(root, &[sub, "--version"]);
    if present("fmt") && present("clippy") {
        return Ok(());
    }
    banner("rustup component add rustfmt clippy");
    let status = Command::new("rustup")
        .args(["component", "add", "rustfmt", "clippy"])
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "`cargo fmt` or `cargo clippy` is missing and rustup could not be started \
                 ({e}); install the rustfmt and clippy components for this toolchain"
            )
        })?;
    if !status.success() {
        return Err(format!(
            "`rustup component add rustfmt clippy` failed ({status})"
        ));
    }
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if !present(sub) {
            return Err(format!(
                "`cargo {sub} --version` still fails after installing the {component} component"
            ));
        }
    }
    Ok(())
}

/// The cargo-deny release `deny.toml` is written for, installed from crates.io when missing.
const CARGO_DENY: &str = "0.20.2";

/// Installs `cargo deny` (pinned, `--locked`) if `cargo deny --version` fails.
fn ensure_cargo_deny(root: &Path) -> Result<()> {
    if cargo_succeeds(root, &["deny", "--version"]) {
        return Ok(());
    }
    banner(&format!("cargo install cargo-deny@{CARGO_DENY} --locked"));
    run_cargo(
        root,
        &["install", &format!("cargo-deny@{CARGO_DENY}"), "--locked"],
    )
    .map_err(|e| format!("installing cargo-deny: {e}"))
}

/// The web app's unit tests (`web/tests/unit.mjs`, Node's own runner) and its browser
/// end-to-end tests (`web/tests/e2e.mjs`): Debian's chromium driven by
/// playwright-core from npm, against the debug `im-server`. Everything they need is installed
/// here when missing, so a fresh machine needs nothing but `cargo xtask ci`.
fn browser_tests(root: &Path) -> Result<()> {
    banner("browser tests (headless chromium, playwright-core)");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        apt_install(&["chromium"])?;
    }
    if !Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        apt_install(&["nodejs", "npm"])?;
    }
    let tests = root.join("web/tests");
    run_tool(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&tests),
        "npm ci (playwright-core)",
    )?;
    // The app's pure helpers first: seconds, and no browser needed to read a failure.
    run_tool(
        Command::new("node")
            .args(["--test", "unit.mjs"])
            .current_dir(&tests),
        "node --test web/tests/unit.mjs",
    )?;
    run_cargo(root, &crate::util::DEBUG_BUILD)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    run_tool(
        Command::new("node")
            .arg("e2e.mjs")
            .current_dir(&tests)
            .env("E2E_SERVER_BIN", target.join("debug/im-server"))
            .env("E2E_SCREENSHOTS", target.join("browser"))
            .env("CHROMIUM", &chromium),
        "node web/tests/e2e.mjs",
    )?;
    // The README's cluster walkthrough, in browsers: two nodes on PostgreSQL behind
    // `cargo xtask balance` (this very binary), each killed in turn.
    let balance = std::env::current_exe()
        .map_err(|e| format!("cannot find the xtask binary for the balancer: {e}"))?;
    run_tool(
        Command::new("node")
            .arg("cluster.mjs")
            .current_dir(&tests)
            .env("E2E_SERVER_BIN", target.join("debug/im-server"))
            .env("E2E_BALANCE_BIN", balance)
            .env("CHROMIUM", &chromium),
        "node web/tests/cluster.mjs",
    )
}

/// Installs Debian packages (CI runs as root with no stdin).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    banner(&format!("apt-get install {}", packages.join(" ")));
    run_tool(
        Command::new("apt-get").arg("update").arg("-qq"),
        "apt-get update",
    )?;
    run_tool(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// Runs a command with no stdin; an error naming `what` if it cannot start or fails.
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}
