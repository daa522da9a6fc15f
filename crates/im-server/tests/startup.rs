//! Bad configuration stops the binary at start-up with status 2 and one clear line; it never
//! starts half-working.

use std::process::{Command, Stdio};

fn start(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(env.iter().copied())
        .env("IM_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_store_settings_exit_2_with_one_line() {
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("IM_STORE", "postgres"),
                // Port 1 on loopback: nothing listens there.
                ("IM_POSTGRES__URL", "postgres://postgres@127.0.0.1:1/im"),
                ("IM_FILES__DIR", "/tmp/im-shared"),
            ],
            "cannot reach PostgreSQL at 127.0.0.1:1/im",
        ),
        (&[("IM_STORE", "postgres")], "needs postgres.url"),
        (
            &[
                ("IM_STORE", "postgres"),
                ("IM_POSTGRES__URL", "not a url"),
                ("IM_FILES__DIR", "/tmp/im-shared"),
            ],
            "postgres.url",
        ),
        (
            &[
                ("IM_STORE", "postgres"),
                ("IM_POSTGRES__URL", "postgres://postgres@127.0.0.1:1/im"),
            ],
            "needs files.dir",
        ),
        (&[("IM_STORE", "oracle")], "invalid configuration"),
    ];
    for (env, says) in cases {
        let (code, stdout, stderr) = start(env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stdout.is_empty(), "{env:?} never listened: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: one line, got {stderr:?}");
        assert!(lines[0].starts_with("im-server: "), "{stderr}");
        assert!(lines[0].contains(says), "{env:?}: {stderr}");
    }
}
