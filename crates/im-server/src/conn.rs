//! What one TCP connection may cost: the protocol sniff with a deadline, the write-stall
//! limit, and the cap on open connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// An accepted connection's byte stream: the socket, or TLS over it.
pub(crate) enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, boxed: its buffers and state are large next to a socket.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Whether TLS negotiated HTTP/2 (ALPN `h2`).
    pub(crate) fn alpn_h2(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
use tokio::time::Sleep;

/// The HTTP/2 connection preface, which h2c with prior knowledge starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes said.
pub(crate) struct Sniffed {
    /// Whether the connection speaks HTTP/2 (h2c with prior knowledge).
    pub h2: bool,
    /// The bytes read to decide, handed back to hyper before the rest of the socket.
    pub prefix: Prefix,
    /// An event stream's request, read whole and served without hyper (`events_h1`); its
    /// bytes are not in `prefix`.
    pub events: Option<http::Request<()>>,
}

/// Bytes already read from the socket, freed once they have been read again.
#[derive(Default)]
pub(crate) struct Prefix {
    buf: Vec<u8>,
    start: usize,
}

impl Prefix {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            // A long-lived connection keeps no copy of its first request.
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

/// The first read's size: most request heads arrive whole in it.
const FIRST_READ: usize = 1024;

/// Reads the first bytes of a connection until they either match the HTTP/2 preface or
/// cannot, with no polling: each read waits for the socket. With `events`, a request that
/// starts as an event stream's `GET` is read on to the end of its head. `None` means the
/// client closed the connection or sent nothing useful before `deadline`.
pub(crate) async fn sniff(
    stream: &mut Transport,
    deadline: Duration,
    events: bool,
) -> Option<Sniffed> {
    if stream.alpn_h2() {
        return Some(Sniffed {
            h2: true,
            prefix: Prefix::default(),
            events: None,
        });
    }
    let read = async {
        let mut buf = Vec::with_capacity(FIRST_READ);
        let h2 = loop {
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            let k = buf.len().min(PREFACE.len());
            if buf[..k] != PREFACE[..k] {
                break false;
            }
            if k == PREFACE.len() {
                break true;
            }
        };
        if events && !h2 {
            if let Some(req) = read_events_head(stream, &mut buf).await? {
                return Some(Sniffed {
                    h2,
                    prefix: Prefix::default(),
                    events: Some(req),
                });
            }
        }
        Some(Sniffed {
            h2,
            prefix: Prefix { buf, start: 0 },
            events: None,
        })
    };
    tokio::time::timeout(deadline, read).await.ok().flatten()
}

/// Reads on while `buf` may be the head of an event stream's request: `Some(None)` when it
/// is not one, `None` when the client closed the connection.
async fn read_events_head(
    stream: &mut Transport,
    buf: &mut Vec<u8>,
) -> Option<Option<http::Request<()>>> {
    use crate::events_h1::{Head, MAX_HEAD, parse};
    loop {
        match parse(buf) {
            Head::Events(req) => return Some(Some(*req)),
            Head::Other => return Some(None),
            Head::Partial => {}
        }
        // A head ends with a line: parsing again before a new one arrives would let a
        // client that trickles bytes cost a parse per byte.
        let mut scanned = buf.len();
        while !buf[scanned..].contains(&b'\n') && buf.len() < MAX_HEAD {
            scanned = buf.len();
            buf.reserve(FIRST_READ);
            if stream.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }
}

/// A timer that counts only while something is stuck: allocated on the first wait, re-armed
/// (not re-allocated) on later ones, and disarmed by progress.
#[derive(Default)]
pub(crate) struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Deadline {
    /// Progress was made: the next wait starts a new count.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Starts counting toward `at()` unless already counting, and polls the timer: ready once
    /// the deadline has passed.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        at: impl FnOnce() -> tokio::time::Instant,
    ) -> Poll<()> {
        if !self.armed {
            let at = at();
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// A connection's socket as hyper sees it: the sniffed bytes first, and writes that fail
/// once they have made no progress for the write timeout.
pub(crate) struct ConnIo {
    stream: Transport,
    prefix: Prefix,
    write_timeout: Duration,
    /// Counting while a write is blocked.
    stall: Deadline,
}

impl ConnIo {
    /// Wraps an accepted socket and the bytes [`sniff`] read from it.
    pub(crate) fn new(stream: Transport, prefix: Prefix, write_timeout: Duration) -> Self {
        Self {
            stream,
            prefix,
            write_timeout,
            stall: Deadline::default(),
        }
    }

    /// Turns a blocked write into an error once it has been blocked for the write timeout.
    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall.disarm();
            return polled;
        }
        let timeout = self.write_timeout;
        match self
            .stall
            .poll(cx, || tokio::time::Instant::now() + timeout)
        {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let pending = this.prefix.pending();
        if pending.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        this.prefix.consume(n);
        // Fill the rest of hyper's buffer in the same call, as a plain read would: a first
        // read that returned only the sniffed bytes made hyper grow its read buffer.
        if this.prefix.pending().is_empty() && buf.remaining() > 0 {
            let _ = Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

/// The cap on open connections, and a smaller allowance of connections over it that get
/// one refusal (or a health answer) and are closed.
#[derive(Clone)]
pub(crate) struct Slots {
    open: Arc<AtomicUsize>,
    max: usize,
    refusing: Arc<AtomicUsize>,
    max_refusing: usize,
}

/// What an accepted connection may do.
pub(crate) enum Admission {
    /// Served normally while the slot is held.
    Serve(Slot),
    /// Over the cap: one answer, then closed.
    Refuse(Slot),
    /// Over the cap and the refusal allowance: closed at once.
    Drop,
}

/// A held place under a cap; dropping it frees the place.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    /// A cap of `max` connections served, plus a small refusal allowance.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            open: Arc::default(),
            max,
            refusing: Arc::default(),
            max_refusing: (max / 32).max(16),
        }
    }

    /// The cap in force.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes a place for a new connection, if there is one.
    pub(crate) fn admit(&self) -> Admission {
        if take(&self.open, self.max) {
            Admission::Serve(Slot(self.open.clone()))
        } else if take(&self.refusing, self.max_refusing) {
            Admission::Refuse(Slot(self.refusing.clone()))
        } else {
            Admission::Drop
        }
    }
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// The cap when none is configured: three quarters of the open-file limit, leaving the rest
/// for the store, uploads and the connections being refused.
pub(crate) fn default_max_connections() -> usize {
    open_file_limit().map_or(4096, |n| (n / 4 * 3).max(64))
}

/// The soft open-file limit, from `/proc/self/limits` (Linux); `None` elsewhere.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_then_refuse_then_drop() {
        let slots = Slots::new(2);
        let a = slots.admit();
        let b = slots.admit();
        assert!(matches!(a, Admission::Serve(_)));
        assert!(matches!(b, Admission::Serve(_)));
        let refused: Vec<_> = (0..16).map(|_| slots.admit()).collect();
        assert!(refused.iter().all(|r| matches!(r, Admission::Refuse(_))));
        assert!(matches!(slots.admit(), Admission::Drop));
        drop(a);
        let c = slots.admit();
        assert!(matches!(c, Admission::Serve(_)));
        drop(refused);
        assert!(matches!(slots.admit(), Admission::Refuse(_)));
    }

    #[test]
    fn the_open_file_limit_is_read() {
        if cfg!(target_os = "linux") {
            assert!(open_file_limit().is_some_and(|n| n > 0));
        }
        assert!(default_max_connections() >= 64);
    }
}
