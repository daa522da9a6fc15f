//! The contract every `Bus` adapter keeps, as one suite that each adapter's tests run
//! against a real server.

use bytes::Bytes;
use im_cluster::{Bus, Inbound};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a started bus handed its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A frame from some node.
    Frame(Bytes),
    /// A commit head told by the store.
    Head(u64),
    /// The bus (re)connected.
    Reconnected,
}

struct Ear(mpsc::UnboundedSender<Heard>);

impl Inbound for Ear {
    fn frame(&self, frame: Bytes) {
        let _ = self.0.send(Heard::Frame(frame));
    }
    fn head(&self, head: u64) {
        let _ = self.0.send(Heard::Head(head));
    }
    fn reconnected(&self) {
        let _ = self.0.send(Heard::Reconnected);
    }
}

/// What one started bus heard, in order.
#[derive(Debug)]
pub struct Heards(mpsc::UnboundedReceiver<Heard>);

impl Heards {
    /// The next thing heard that `want` accepts; panics after a minute of nothing, naming
    /// `what`, so a broken bus fails the test instead of hanging it.
    pub async fn next_where(&mut self, what: &str, want: impl Fn(&Heard) -> bool) -> Heard {
        let wait = async {
            loop {
                match self.0.recv().await {
                    Some(h) if want(&h) => return h,
                    Some(_) => continue,
                    None => panic!("the bus went away while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("heard no {what} within a minute"))
    }

    /// Everything heard so far, without waiting.
    pub fn drain(&mut self) -> Vec<Heard> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// Starts `bus` and waits until it says it is connected.
pub async fn start(bus: &dyn Bus) -> Heards {
    let (tx, rx) = mpsc::unbounded_channel();
    bus.start(Arc::new(Ear(tx)));
    let mut heard = Heards(rx);
    heard
        .next_where("connection", |h| *h == Heard::Reconnected)
        .await;
    heard
}

/// A numbered frame of `len` bytes whose content depends on its number, zeros included.
fn numbered(n: u32, len: usize) -> Bytes {
    let mut f = n.to_le_bytes().to_vec();
    f.extend((0..len).map(|i| (i as u32 ^ n) as u8));
    Bytes::from(f)
}

/// Runs the bus contract. `node(space)` makes a new node's bus (not started) in namespace
/// `space`, 0 or 1: a prefix, a subject or a database, as the adapter names deployments.
///
/// - Frames one node sends reach another node of its namespace intact and in order.
/// - Nodes of the other namespace hear none of them.
/// - Frames travel both ways; `connected()` is true once started.
pub async fn contract(node: impl Fn(usize) -> Arc<dyn Bus>) {
    let (a, b, c, d) = (node(0), node(0), node(1), node(1));
    let mut heard_a = start(a.as_ref()).await;
    let mut heard_b = start(b.as_ref()).await;
    let mut heard_c = start(c.as_ref()).await;
    let _heard_d = start(d.as_ref()).await;
    for bus in [&a, &b, &c, &d] {
        assert!(bus.connected(), "{} says it is not connected", bus.name());
    }

    let big = a.max_frame().min(200_000) - 4;
    let frames: Vec<Bytes> = (0..200u32)
        .map(|n| {
            let len = match n {
                0 => 0,
                7 => big,
                _ => (n as usize * 37) % 3000,
            };
            numbered(n, len)
        })
        .collect();
    for f in &frames {
        a.send(f.clone());
        // A bus may drop frames when its queue is full; pace so a healthy one never is.
        tokio::task::yield_now().await;
    }
    for (n, f) in frames.iter().enumerate() {
        let got = heard_b
            .next_where(&format!("frame {n}"), |h| matches!(h, Heard::Frame(_)))
            .await;
        assert_eq!(
            got,
            Heard::Frame(f.clone()),
            "frame {n} arrived changed or out of order"
        );
    }

    // The other namespace heard none of it: its own sentinel comes first.
    let sentinel = numbered(9999, 16);
    d.send(sentinel.clone());
    let got = heard_c
        .next_where("the other namespace's sentinel", |h| {
            matches!(h, Heard::Frame(_))
        })
        .await;
    assert_eq!(got, Heard::Frame(sentinel), "a frame crossed namespaces");

    // And back the other way.
    let reply = numbered(4242, 100);
    b.send(reply.clone());
    heard_a
        .next_where("the reply", |h| *h == Heard::Frame(reply.clone()))
        .await;
}

/// The Redis tests use: `IM_TEST_REDIS`, else the local default. Panics with a clear
/// message if nothing answers there: a test that needs Redis fails, never skips.
pub fn redis_url() -> String {
    let url = std::env::var("IM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    expect_listening(&url, "Redis", "IM_TEST_REDIS");
    url
}

/// The NATS tests use: `IM_TEST_NATS`, else the local default; panics as [`redis_url`].
pub fn nats_url() -> String {
    let url = std::env::var("IM_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    expect_listening(&url, "NATS", "IM_TEST_NATS");
    url
}

/// A prefix no other test or deployment uses, e.g. `imtest-3fa9c2:`, ending in `sep`.
pub fn unique_prefix(sep: char) -> String {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).expect("randomness");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("imtest-{hex}{sep}")
}

fn expect_listening(url: &str, what: &str, var: &str) {
    let host_port = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
        });
    assert!(
        reachable,
        "{what} is not reachable at {url}. These tests need it: start it (`cargo xtask ci` \
         does), or point {var} at one."
    );
}
