//! moto, the S3-compatible server that the file storage tests start for themselves
//! (`im_testkit::MotoServer`): installed from PyPI when missing, so a fresh machine needs
//! nothing but `cargo xtask ci`, and those tests fail rather than skip without it.

use crate::ci::run_tool;
use crate::util::{Result, banner};
use std::process::{Command, Stdio};

/// What the tests run: `python3 -m moto.server`, which needs the `server` extra (flask).
fn installed() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `python3 -m moto.server` works, installing `moto[server]` with pip if not.
pub fn ensure_moto() -> Result<()> {
    if installed() {
        return Ok(());
    }
    banner("python3 -m pip install 'moto[server]' (the S3 server of the file storage tests)");
    run_tool(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
                "moto[server]",
            ])
            // CI runs as root; pip's warning about that is noise there.
            .env("PIP_ROOT_USER_ACTION", "ignore"),
        "python3 -m pip install 'moto[server]'",
    )
    .map_err(|e| {
        format!(
            "{e}; the S3 file storage tests need moto: install it with \
             `python3 -m pip install 'moto[server]'`"
        )
    })?;
    if installed() {
        Ok(())
    } else {
        Err(
            "`python3 -c \"import moto.server\"` still fails after installing moto[server]; \
             is `python3` the interpreter pip installed into?"
                .into(),
        )
    }
}
