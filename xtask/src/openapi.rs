//! `cargo xtask openapi`: schemathesis, a property-based checker from PyPI, sends the debug
//! `im-server` requests made from its own OpenAPI document (`GET /api/v1/openapi.json`) and
//! fails on any answer the document does not describe: a 5xx, an undocumented status, content
//! type or header, a body off its schema, invalid input that is accepted, a route that works
//! without a session. schemathesis lives in a venv under the target dir, installed (pinned)
//! when missing, so a fresh machine needs nothing but this command.

use crate::ci::{apt_install, run_tool};
use crate::loadbench;
use crate::util::{Result, banner, run_cargo, workspace_root};
use hyper::{Method, StatusCode};
use im_client::Client;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The schemathesis release the checks were written against; a new one may bring new checks,
/// so it is raised on purpose, not by a fresh install.
const SCHEMATHESIS: &str = "4.32.5";

/// Test cases per operation in the fuzzing and stateful phases; the examples and coverage
/// phases add their own fixed sets. Keeps the whole step to a couple of minutes on 2 cores.
const MAX_EXAMPLES: &str = "50";

/// Operations that end the session they are called with: run on their own, each with a fresh
/// token, after the rest. `streamEvents` (`GET /api/v1/events`) never ends and is not run.
const SESSION_ENDERS: [&str; 3] = ["endSession", "logout", "logoutAll"];

/// Statuses that refuse invalid input: schemathesis's list plus 413 and 415, which the server
/// answers for bodies that are too large or not JSON at all.
const REJECTIONS: &str = "[400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428]";

/// The file the fixture uploads, as a whole `multipart/form-data` body.
const UPLOAD: &[u8] = b"--openapi\r\nContent-Disposition: form-data; name=\"file\"; \
    filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\nsome notes\r\n--openapi--\r\n";

/// The server API key the checker presents (`serverApiKey`).
const SERVER_API_KEY: &str = "openapi-check-server-api-key";

/// The settings the server runs with: no rate limits (the checker sends hundreds of logins
/// and registrations from one address), cheap password hashing, `/metrics` on behind a
/// token the checker does not have (so it meets the 401s the document promises), and the
/// server API on with a key it has.
const SERVER_ENV: [(&str, &str); 6] = [
    ("IM_RATE_LIMITS__ENABLED", "false"),
    ("IM_ARGON2__MEMORY_KIB", "64"),
    ("IM_ARGON2__ITERATIONS", "1"),
    ("IM_LOG", "warn"),
    ("IM_METRICS__TOKEN", "openapi-check-metrics-token"),
    ("IM_SERVER_API__KEYS", SERVER_API_KEY),
];

/// Runs the whole check: install, build, start the server, set up data, run schemathesis.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let target = loadbench::target_dir(&root);
    let work = target.join("openapi");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let st = ensure_schemathesis(&work)?;
    run_cargo(&root, &crate::util::DEBUG_BUILD)?;
    let dir = loadbench::temp_dir("openapi")?;
    let mut cmd = loadbench::server_command(&target.join("debug/im-server"), &dir);
    cmd.envs(SERVER_ENV);
    let server = loadbench::spawn_server(cmd, dir)?;
    let base = format!("http://{}", server.addr);
    banner(&format!(
        "openapi: im-server on {base}, schemathesis {SCHEMATHESIS}"
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fixture = runtime.block_on(Fixture::create(server.addr))?;
    let mut failed = Vec::new();
    let config = fixture.config(&fixture.token);
    let skip = format!("^(streamEvents|{})$", SESSION_ENDERS.join("|"));
    let main = ["--exclude-operation-id-regex", skip.as_str()];
    if !schemathesis(&st, &work, &base, "all", &config, &main)? {
        failed.push("the operations that keep the session".to_owned());
    }
    for op in SESSION_ENDERS {
        let token = runtime.block_on(fresh_token(server.addr))?;
        let only = ["--include-operation-id", op];
        if !schemathesis(&st, &work, &base, op, &fixture.config(&token), &only)? {
            failed.push(op.to_owned());
        }
    }
    drop(server);
    let secs = started.elapsed().as_secs();
    if failed.is_empty() {
        banner(&format!(
            "openapi: the server and openapi.json agree ({secs} s)"
        ));
        Ok(())
    } else {
        Err(format!(
            "schemathesis found answers that openapi.json does not describe ({}); its report \
             is above, and JUnit files are in {}. Fix the server if it breaks docs/API.md, \
             else the document",
            failed.join(", "),
            work.display()
        ))
    }
}

/// `schemathesis` of the pinned release in a venv under `work`, installed if missing.
fn ensure_schemathesis(work: &Path) -> Result<PathBuf> {
    let venv = work.join("venv");
    let st = venv.join("bin/schemathesis");
    let python = venv.join("bin/python");
    if installed_version(&python).as_deref() == Some(SCHEMATHESIS) && st.is_file() {
        return Ok(st);
    }
    banner(&format!(
        "python3 -m venv {} && pip install schemathesis=={SCHEMATHESIS}",
        venv.display()
    ));
    // A half-made venv (an interrupted install) is made anew.
    let _ = std::fs::remove_dir_all(&venv);
    if make_venv("python3", &venv).is_err() {
        // Debian's python3 has no venv module (ensurepip) until python3-venv is installed.
        apt_install(&["python3", "python3-venv"])?;
        let _ = std::fs::remove_dir_all(&venv);
        make_venv("/usr/bin/python3", &venv)?;
    }
    run_tool(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .arg(format!("schemathesis=={SCHEMATHESIS}")),
        &format!("pip install schemathesis=={SCHEMATHESIS}"),
    )?;
    match installed_version(&python) {
        Some(v) if v == SCHEMATHESIS && st.is_file() => Ok(st),
        other => Err(format!(
            "schemathesis {SCHEMATHESIS} is still not in {} after installing it (found {other:?})",
            venv.display()
        )),
    }
}

/// The schemathesis version a venv's python has, if any.
fn installed_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `python -m venv venv`.
fn make_venv(python: &str, venv: &Path) -> Result<()> {
    run_tool(
        Command::new(python).args(["-m", "venv"]).arg(venv),
        &format!("{python} -m venv"),
    )
}

/// One schemathesis run named `name` with `config` (TOML) and extra `run` arguments; whether
/// every check passed. An error only if it could not run at all.
fn schemathesis(
    st: &Path,
    work: &Path,
    base: &str,
    name: &str,
    config: &str,
    extra: &[&str],
) -> Result<bool> {
    banner(&format!("openapi: schemathesis run ({name})"));
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, config).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let report = work.join("report").join(name);
    let status = Command::new(st)
        .arg("--config-file")
        .arg(&path)
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", base, "--mode", "all", "--workers", "2"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .args(extra)
        // Its example database and crash files stay out of the work tree.
        .current_dir(work)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("could not start {}: {e}", st.display()))?;
    // 1 is "a check failed"; anything else is a broken run.
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(format!("schemathesis ({name}) could not run ({status})")),
    }
}

/// Data the random run starts from, so that more operations reach a 2xx: four accounts,
/// two of them friends, two pending requests to the first, a group, messages and a file link.
struct Fixture {
    /// The first account's session: the run's credentials.
    token: String,
    /// The group the first account owns, with the second as a member.
    group: u64,
    /// The second account, the first one's friend.
    friend: u64,
    /// The third and fourth accounts' pending requests to the first: one to accept, one to
    /// decline.
    requests: (u64, u64),
    /// The direct conversation of the first two.
    conversation: String,
    /// The first account's uploaded file: its link's token and name.
    file: (String, String),
    /// The third account, whose sessions the server API may revoke without ending the run's.
    stranger: u64,
}

/// Where friend requests are made.
const REQUESTS: &str = "/api/v1/friends/requests";

impl Fixture {
    /// Makes the data through the API itself, on the server at `addr`.
    async fn create(addr: SocketAddr) -> Result<Self> {
        let mut users = Vec::new();
        for i in 0..4 {
            users.push(account(addr, i).await?);
        }
        let [(me, first), (friend, second), strangers @ ..] = &users[..] else {
            return Err(format!("4 accounts expected, got {}", users.len()));
        };
        let (me, friend) = (*me, *friend);
        let ask = |name: &str| json!({ "username": name });
        post(first, REQUESTS, &ask("openapi1")).await?;
        // The crossing request is accepted at once.
        post(second, REQUESTS, &ask("openapi0")).await?;
        let mut requests = Vec::new();
        for (_, stranger) in strangers {
            let pending = post(stranger, REQUESTS, &ask("openapi0")).await?;
            requests.push(id(&pending["request"])?);
        }
        let [accept, decline] = requests[..] else {
            return Err(format!("2 pending requests expected, got {requests:?}"));
        };
        let group = json!({ "name": "openapi", "members": [friend] });
        let group = id(&post(first, "/api/v1/groups", &group).await?["group"])?;
        for to in [json!({ "user": friend }), json!({ "group": group })] {
            let message = json!({ "to": to, "kind": "text", "body": { "text": "hello" } });
            post(first, "/api/v1/messages", &message).await?;
        }
        let res = first
            .raw(
                Method::POST,
                "/api/v1/files",
                &[("content-type", "multipart/form-data; boundary=openapi")],
                UPLOAD,
            )
            .await
            .map_err(|e| format!("POST /api/v1/files: {e}"))?;
        let (status, answer) = (res.status, res.json::<Value>().unwrap_or(Value::Null));
        let url = answer["file"]["url"].as_str().unwrap_or_default();
        let file = match url.strip_prefix("/files/").and_then(|l| l.split_once('/')) {
            Some((t, n)) if status == StatusCode::CREATED => (t.to_owned(), n.to_owned()),
            _ => return Err(format!("POST /api/v1/files: {status} {answer}")),
        };
        let (lo, hi) = (me.min(friend), me.max(friend));
        Ok(Self {
            token: first.token().unwrap_or_default().to_owned(),
            group,
            friend,
            requests: (accept, decline),
            conversation: format!("d{lo}-{hi}"),
            file,
            stranger: strangers[0].0,
        })
    }

    /// A schemathesis configuration (TOML) that authenticates with `token` and points some
    /// operations at the fixture's data.
    fn config(&self, token: &str) -> String {
        let Self {
            group,
            friend,
            requests: (accept, decline),
            conversation,
            file: (link, name),
            stranger,
            ..
        } = self;
        let pin = |op: &str, params: &str| {
            format!(
                "\n[[operations]]\ninclude-operation-id = \"{op}\"\nparameters = {{ {params} }}\n"
            )
        };
        let mut toml = format!(
            "# Written by `cargo xtask openapi` (xtask/src/openapi.rs) for one run.\n\
             [checks]\nnegative_data_rejection.expected-statuses = {REJECTIONS}\n\n\
             [auth.openapi.bearerAuth]\nbearer = \"{token}\"\n\n\
             [auth.openapi.serverApiKey]\napi_key = \"{SERVER_API_KEY}\"\n"
        );
        let conversation = format!("\"path.conversation\" = \"{conversation}\"");
        let file = format!("\"path.token\" = \"{link}\", \"path.name\" = \"{name}\"");
        for (op, params) in [
            ("getHistory", conversation.clone()),
            ("serverHistory", conversation.clone()),
            ("serverHistoryHead", conversation.clone()),
            (
                "serverRevokeSessions",
                format!("\"path.user_id\" = {stranger}"),
            ),
            ("markRead", conversation),
            ("getGroup", format!("\"path.id\" = {group}")),
            ("addMember", format!("\"path.id\" = {group}")),
            (
                "setRole",
                format!("\"path.id\" = {group}, \"path.user_id\" = {friend}"),
            ),
            ("acceptFriendRequest", format!("\"path.id\" = {accept}")),
            ("declineFriendRequest", format!("\"path.id\" = {decline}")),
            ("downloadFile", file.clone()),
            ("downloadFileHead", file),
        ] {
            toml.push_str(&pin(op, &params));
        }
        toml
    }
}

/// Account `openapi{i}` (registered unless it exists) and a new session of it: its id, and a
/// client holding the session.
async fn account(addr: SocketAddr, i: usize) -> Result<(u64, Client)> {
    let anon = Client::new(addr);
    let name = format!("openapi{i}");
    let password = "openapi-password";
    let failed = |e: im_client::ClientError| format!("setting up {name}: {e}");
    if let Err(e) = anon.register(&name, password).await {
        if !matches!(e, im_client::ClientError::Status { status, .. } if status == StatusCode::CONFLICT)
        {
            return Err(failed(e));
        }
    }
    let client = anon.login(&name, password).await.map_err(failed)?;
    let me: Value = client
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .and_then(|r| r.expect(StatusCode::OK))
        .and_then(|r| r.json())
        .map_err(failed)?;
    Ok((id(&me["user"])?, client))
}

/// POSTs `body` as JSON as `c`; the answer, or an error unless it is a 2xx.
async fn post(c: &Client, path: &str, body: &Value) -> Result<Value> {
    let res = c
        .call(Method::POST, path, Some(body))
        .await
        .map_err(|e| format!("setting up: POST {path}: {e}"))?;
    let answer = res.json::<Value>().unwrap_or(Value::Null);
    if res.status.is_success() {
        Ok(answer)
    } else {
        Err(format!("setting up: POST {path}: {} {answer}", res.status))
    }
}

/// The `id` of an object in an answer.
fn id(v: &Value) -> Result<u64> {
    v["id"].as_u64().ok_or_else(|| format!("no id in {v}"))
}

/// A new session of the first account, for a run that ends it.
async fn fresh_token(addr: SocketAddr) -> Result<String> {
    let (_, client) = account(addr, 0).await?;
    Ok(client.token().unwrap_or_default().to_owned())
}
