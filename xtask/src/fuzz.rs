//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` with sanitizer coverage on
//! the stable toolchain (the same flags `cargo fuzz --sanitizer none` passes, so neither
//! cargo-fuzz nor a nightly toolchain is needed) and runs each for a while.
//!
//! Each target keeps what it learns in `fuzz/corpus/<target>` (not committed) and starts from
//! the seeds in `fuzz/seeds/<target>` (committed). A crash stops the run and leaves its input
//! in `fuzz/artifacts/<target>/`; rerun that one input with
//! `target/fuzz/<triple>/release/<target> <file>`.

use crate::ci::run_tool;
use crate::util::{Result, banner, cargo, workspace_root};
use std::path::Path;
use std::process::Command;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "sse_parser",
    "range",
    "file_name",
    "multipart",
    "draft_json",
];

/// What `cargo xtask fuzz` was asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Seconds each target runs.
    pub seconds: u64,
    /// The targets to run; all when empty.
    pub targets: Vec<String>,
}

impl Options {
    /// Reads `[TARGET...] [--seconds N]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Options {
            seconds: 300,
            targets: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--seconds" => {
                    options.seconds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--seconds needs a positive number")?;
                }
                t if TARGETS.contains(&t) => options.targets.push(t.to_owned()),
                other => {
                    return Err(format!(
                        "unknown fuzz target `{other}` (targets: {})",
                        TARGETS.join(", ")
                    ));
                }
            }
        }
        Ok(options)
    }
}

/// Builds the targets and runs each for `options.seconds`.
pub fn run(options: &Options) -> Result<()> {
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    let triple = host_triple(&root)?;
    let target_dir = root.join("target/fuzz");
    banner("building the fuzz targets (libFuzzer, sanitizer coverage)");
    let flags = [
        "--cfg fuzzing",
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
    ]
    .join(" ");
    // An explicit --target keeps the flags off build scripts and proc macros.
    run_tool(
        cargo(
            &fuzz,
            &["build", "--release", "--bins", "--target", &triple],
        )
        .env("RUSTFLAGS", flags)
        .env("CARGO_TARGET_DIR", &target_dir),
        "the fuzz build",
    )?;
    let all: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    let targets = if options.targets.is_empty() {
        &all
    } else {
        &options.targets
    };
    for target in targets {
        banner(&format!("fuzz {target} for {} s", options.seconds));
        let corpus = fuzz.join("corpus").join(target);
        let artifacts = fuzz.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let binary = target_dir.join(&triple).join("release").join(target);
        run_tool(
            Command::new(&binary)
                .arg(&corpus)
                .arg(fuzz.join("seeds").join(target))
                .arg(format!("-max_total_time={}", options.seconds))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg("-max_len=65536")
                .arg("-timeout=10")
                .arg("-rss_limit_mb=1024")
                .arg("-print_final_stats=1"),
            &format!(
                "fuzz target {target} (a crash input is in {})",
                artifacts.display()
            ),
        )?;
    }
    banner("fuzz: no target crashed");
    Ok(())
}

/// The host's target triple, from `rustc -vV`.
fn host_triple(root: &Path) -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .current_dir(root)
        .output()
        .map_err(|e| format!("could not run rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV printed no host triple".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        assert_eq!(
            Options::parse(&args(&["range", "--seconds", "5"])).unwrap(),
            Options {
                seconds: 5,
                targets: vec!["range".into()]
            }
        );
        assert_eq!(Options::parse(&[]).unwrap().seconds, 300);
        assert!(Options::parse(&args(&["nope"])).is_err());
        assert!(Options::parse(&args(&["--seconds", "0"])).is_err());
    }
}
