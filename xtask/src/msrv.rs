//! `cargo xtask msrv`: the workspace builds with the oldest compiler it declares
//! (`rust-version` in `Cargo.toml`), not only with the newest one it is developed on.
//!
//! rustup cannot reach its servers from the CI machine, but Debian ships that compiler:
//! bookworm's `rustc-web` and `cargo-web` 1.85. Their packages are downloaded with
//! `apt-get download` and unpacked under `target/msrv/toolchain` (never installed: a system
//! `cargo` would shadow rustup's), and the workspace is checked with them in a target dir of
//! its own. The shared libraries they link against are ordinary Debian packages, installed
//! only when the unpacked compiler cannot start.
//!
//! What is checked: every crate, its tests and examples, with the features the workspace
//! declares by default, except NATS: `async-nats` needs 1.89, so `im-bus` and `im-server` are
//! checked without their `nats` feature (their manifests say so).

use crate::ci::{apt_install, run_tool};
use crate::util::{Result, banner, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `rust-version` this check holds the workspace to; `Cargo.toml` must say the same.
const RUST_VERSION: &str = "1.85";

/// The Debian version of `rustc-web` and `cargo-web` that is that compiler.
const DEBIAN_VERSION: &str = "1.85.0+dfsg3-1~deb12u3";

/// The toolchain's own packages, unpacked at [`DEBIAN_VERSION`].
const TOOLCHAIN: [&str; 4] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-1.85",
    "libstd-rust-web-dev",
];

/// The libraries the unpacked `rustc` and `cargo` link against beyond a base system.
const LIBRARIES: [&str; 8] = [
    "libllvm19",
    "libcurl4",
    "libhttp-parser2.9",
    "libssh2-1",
    "libpcre3",
    "libsqlite3-0",
    "libssl3",
    "libstdc++6",
];

/// The cargo invocations, each run with the old toolchain.
const CHECKS: [&[&str]; 2] = [
    &[
        "check",
        "--locked",
        "--workspace",
        "--exclude",
        "im-bus",
        "--exclude",
        "im-server",
        "--all-targets",
    ],
    &[
        "check",
        "--locked",
        "-p",
        "im-server",
        "--no-default-features",
        "--features",
        "postgres,object-store,s3,redis",
        "--all-targets",
    ],
];

/// Fetches the old toolchain if needed and checks the workspace with it.
pub fn run() -> Result<()> {
    let root = workspace_root();
    declared_matches(&root)?;
    let dir = crate::loadbench::target_dir(&root).join("msrv");
    let toolchain = toolchain(&dir)?;
    for args in CHECKS {
        banner(&format!("rust {RUST_VERSION}: cargo {}", args.join(" ")));
        run_tool(
            toolchain
                .command("cargo")
                .args(args)
                .current_dir(&root)
                .env("RUSTC", toolchain.bin.join("rustc"))
                .env("CARGO_TARGET_DIR", dir.join("target")),
            &format!("cargo check with rust {RUST_VERSION}"),
        )?;
    }
    Ok(())
}

/// An error unless the workspace declares [`RUST_VERSION`], so raising one without the other
/// fails here instead of checking the wrong compiler.
fn declared_matches(root: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read Cargo.toml: {e}"))?;
    let want = format!("rust-version = \"{RUST_VERSION}\"");
    if manifest.lines().any(|l| l.trim() == want) {
        Ok(())
    } else {
        Err(format!(
            "Cargo.toml does not declare `{want}`; change `RUST_VERSION` and \
             `DEBIAN_VERSION` in xtask/src/msrv.rs with it"
        ))
    }
}

/// The unpacked compiler: where its binaries and libraries are.
struct Toolchain {
    bin: PathBuf,
    libs: String,
}

impl Toolchain {
    fn at(root: &Path) -> Self {
        let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .map(|d| root.join(d).display().to_string())
            .join(":");
        Self {
            bin: root.join("usr/bin"),
            libs,
        }
    }

    /// `program` from the toolchain, finding its libraries and its own siblings first.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("LD_LIBRARY_PATH", &self.libs)
            .env("PATH", format!("{}:{path}", self.bin.display()));
        cmd
    }

    /// Whether both binaries start and `rustc` is the expected release.
    fn works(&self) -> bool {
        let version = |program: &str| {
            self.command(program)
                .arg("--version")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        version("rustc").is_some_and(|v| v.starts_with(&format!("rustc {RUST_VERSION}.")))
            && version("cargo").is_some()
    }
}

/// The toolchain under `dir`, downloaded and unpacked on first use.
fn toolchain(dir: &Path) -> Result<Toolchain> {
    let unpacked = dir.join("toolchain");
    let toolchain = Toolchain::at(&unpacked);
    if toolchain.works() {
        return Ok(toolchain);
    }
    banner(&format!(
        "rust {RUST_VERSION}: unpacking Debian's rustc-web {DEBIAN_VERSION}"
    ));
    let debs = dir.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    let download = |packages: &[String]| {
        run_tool(
            Command::new("apt-get")
                .arg("download")
                .args(packages)
                .current_dir(&debs),
            "apt-get download",
        )
    };
    let wanted: Vec<String> = TOOLCHAIN
        .iter()
        .map(|p| format!("{p}={DEBIAN_VERSION}"))
        .collect();
    if download(&wanted).is_err() {
        // A fresh machine may have no package lists yet.
        run_tool(
            Command::new("apt-get").arg("update").arg("-qq"),
            "apt-get update",
        )?;
        download(&wanted)?;
    }
    let _ = std::fs::remove_dir_all(&unpacked);
    for entry in
        std::fs::read_dir(&debs).map_err(|e| format!("cannot list {}: {e}", debs.display()))?
    {
        let deb = entry.map_err(|e| format!("cannot list {}: {e}", debs.display()))?;
        run_tool(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb.path())
                .arg(&unpacked),
            "dpkg-deb -x",
        )?;
    }
    if !toolchain.works() {
        apt_install(&LIBRARIES)?;
    }
    if toolchain.works() {
        Ok(toolchain)
    } else {
        Err(format!(
            "the unpacked rust {RUST_VERSION} in {} does not start; run its rustc to see why",
            unpacked.display()
        ))
    }
}
