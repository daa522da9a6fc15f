//! A real S3-compatible server for tests: moto (`moto[server]` from PyPI) as a child process
//! on a loopback port of its own, killed when the value drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to get moto, said by every failure that comes from it missing.
const INSTALL: &str = "install it with `python3 -m pip install 'moto[server]'` \
                       (`cargo xtask ci` does)";

/// Credentials moto accepts (it checks none); tests hand them to the store under test.
pub const MOTO_KEY_ID: &str = "testing";
/// The secret that goes with [`MOTO_KEY_ID`].
pub const MOTO_SECRET: &str = "testing";
/// The region tests sign for; moto serves any.
pub const MOTO_REGION: &str = "us-east-1";

/// A moto server process for one test. Every request it serves is logged, so a test can
/// count what reached the storage (say, how many times an object was deleted).
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers. Panics with how to
    /// install it if `python3 -c "import moto.server"` fails: a test that needs S3 must
    /// fail, never skip.
    pub fn start() -> Self {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdin(Stdio::null())
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "moto is not installed for python3 ({}); these tests need a real S3 server: \
                 {INSTALL}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run python3 ({e}); these tests need moto: {INSTALL}"),
        }
        // The port is free when probed but could be taken before moto binds it: try again
        // on another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                Err(e) => failures.push(e),
            }
        }
        panic!("moto did not start: {}", failures.join("; "));
    }

    fn try_start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn python3 -m moto.server: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "moto exited ({status}): {}",
                    server.log_lines().join(" | ")
                ));
            }
            if server.request("GET", "/").is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("moto did not answer within 60 s".into())
    }

    /// The URL to give an S3 client as its endpoint (plain HTTP, path-style).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address moto listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates a bucket with a random name and returns the name, so tests sharing a server
    /// never see each other's objects.
    pub fn bucket(&self) -> String {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).expect("randomness");
        let name = format!(
            "im-test-{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let (status, body) = self
            .request("PUT", &format!("/{name}"))
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        assert_eq!(status, 200, "creating bucket {name}: {body}");
        name
    }

    /// The keys in `bucket`, straight from the server (not through the code under test).
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        let body = self.get_ok(&format!("/{bucket}?list-type=2"));
        elements(&body, "Key")
    }

    /// How many multipart uploads in `bucket` were started and neither completed nor
    /// aborted: the parts an abandoned upload would leave behind.
    pub fn pending_uploads(&self, bucket: &str) -> usize {
        let body = self.get_ok(&format!("/{bucket}?uploads"));
        elements(&body, "UploadId").len()
    }

    /// How many `DELETE` requests for `key` in `bucket` moto has served.
    pub fn deletes(&self, bucket: &str, key: &str) -> usize {
        let line = format!("\"DELETE /{bucket}/{key} HTTP/");
        self.log_lines()
            .iter()
            .filter(|l| l.contains(&line))
            .count()
    }

    /// Everything moto has logged so far: one line per request served, and any errors.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn get_ok(&self, path: &str) -> String {
        let (status, body) = self
            .request("GET", path)
            .unwrap_or_else(|e| panic!("GET {path} from moto: {e}"));
        assert_eq!(status, 200, "GET {path} from moto: {body}");
        body
    }

    /// One unsigned request with no body (moto checks no signatures); status and body.
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The texts of every `<tag>…</tag>` in `xml`; enough for S3's flat listings.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn elements_of_a_listing() {
        let xml = "<R><Contents><Key>a</Key></Contents><Contents><Key>b1</Key></Contents></R>";
        assert_eq!(super::elements(xml, "Key"), ["a", "b1"]);
        assert!(super::elements("<R/>", "Key").is_empty());
    }
}
