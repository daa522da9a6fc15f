//! Helpers shared by the commands: errors, the workspace root and running cargo.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A failure with a message for a human; `main` prints it and exits with status 1.
pub type Result<T> = std::result::Result<T, String>;

/// The workspace root: the parent of this crate's directory.
///
/// `cargo run` sets `CARGO_MANIFEST_DIR` at run time too; the compile-time value is the
/// fallback for running the binary directly.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    match manifest_dir.parent() {
        Some(root) => root.to_path_buf(),
        None => manifest_dir,
    }
}

/// The cargo that started us (`$CARGO`), so every step uses the same toolchain.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// A `cargo` command run in `root`, with no stdin (CI machines have none to give).
pub fn cargo(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.args(args).current_dir(root).stdin(Stdio::null());
    cmd
}

/// The debug build the browser tests and the OpenAPI check run (`target/debug/im-server`):
/// the gate's own test build, so after `cargo test --workspace --all-targets` it is already
/// fresh. `cargo build -p im-server` would resolve other features and build most crates again.
pub const DEBUG_BUILD: [&str; 4] = ["test", "--workspace", "--all-targets", "--no-run"];

/// The release build of the server and the load generator (`im-loadgen`) that the soak and
/// the load benchmarks share; one feature set, so the second of them finds it built.
pub const RELEASE_BUILD: [&str; 6] = ["build", "--release", "-p", "im-server", "-p", "im-loadgen"];

/// Runs `cargo <args>` in `root`, showing its output; an error if it fails to start or fails.
pub fn run_cargo(root: &Path, args: &[&str]) -> Result<()> {
    let shown = display_cargo(args);
    // Our own output must come before the child's, which writes to the same terminal.
    let _ = std::io::stdout().flush();
    let status = cargo(root, args)
        .status()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// `cargo <args>` as a shell would need it typed, for messages and the benchmark record.
pub fn display_cargo(args: &[&str]) -> String {
    let mut shown = String::from("cargo");
    for arg in args {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        shown.push(' ');
        if plain {
            shown.push_str(arg);
        } else {
            shown.push('\'');
            shown.push_str(&arg.replace('\'', r"'\''"));
            shown.push('\'');
        }
    }
    shown
}

/// Whether `cargo <args>` succeeds, with its output hidden (for probes like `--version`).
pub fn cargo_succeeds(root: &Path, args: &[&str]) -> bool {
    cargo(root, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints a step banner, flushed so it appears before the step's own output.
pub fn banner(text: &str) {
    println!("\n==> {text}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn display_quotes_what_the_shell_would_expand() {
        let shown = super::display_cargo(&["bench", "--bench", "*", "--", "it's"]);
        assert_eq!(shown, r"cargo bench --bench '*' -- 'it'\''s'");
    }
}
