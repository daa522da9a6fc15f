//! Event streams over HTTP/1.1 without hyper's connection buffers.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for as long as a connection
//! lives. For a request/response connection that is cheap; an event stream lives for hours
//! and writes a few hundred bytes now and then, and at 15,000 streams those buffers were
//! nine tenths of the server's memory. So a plain `GET /api/v1/events` is read here, answered
//! by the same [`App::handle`] as every request, and its response written here with chunked
//! framing straight from the stream's frames: the connection holds no buffer of its own
//! while the stream is open. Anything else (another route, HTTP/1.0, a body, a pipelined
//! request, a head hyper would refuse) goes to hyper with every byte read so far, so its
//! answer is exactly hyper's. After an answer that ends, the connection goes on under hyper.

use crate::conn::ConnIo;
use crate::http::RequestBody;
use crate::routes::App;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request line every hand-read request starts with.
const TARGET: &[u8] = b"GET /api/v1/events";

/// The longest head read here; a longer one goes to hyper, whose limits then apply.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// As many headers as hyper accepts by default.
const MAX_HEADERS: usize = 100;

/// What the bytes read so far are.
#[derive(Debug)]
pub(crate) enum Head {
    /// The start of an event stream's request: read on.
    Partial,
    /// Not one this module serves: hyper gets the bytes.
    Other,
    /// A whole event stream request, and nothing after it.
    Events(Box<Request<()>>),
}

/// Classifies the first bytes of a connection.
pub(crate) fn parse(buf: &[u8]) -> Head {
    let k = buf.len().min(TARGET.len());
    if buf[..k] != TARGET[..k] {
        return Head::Other;
    }
    if buf.len() > TARGET.len() && !matches!(buf[TARGET.len()], b' ' | b'?') {
        return Head::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Partial,
        // A pipelined request after this one would wait behind an endless answer: hyper
        // answers those.
        Ok(httparse::Status::Complete(n)) if n == buf.len() && n <= MAX_HEAD => {
            request(&req).map_or(Head::Other, |req| Head::Events(Box::new(req)))
        }
        _ => Head::Other,
    }
}

/// The request as routes see it, if it is one this module may serve.
fn request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if parsed.version != Some(1) {
        return None; // HTTP/1.0 has no chunked framing
    }
    let mut req = Request::get(parsed.path?)
        .version(Version::HTTP_11)
        .body(())
        .ok()?;
    let headers = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        let plain = match name {
            header::CONTENT_LENGTH => value.as_bytes() == b"0",
            header::CONNECTION => !value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")),
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => false,
            _ => true,
        };
        if !plain {
            return None;
        }
        headers.append(name, value);
    }
    Some(req)
}

/// Answers `req` on `io`. `Ok` means the answer ended and the connection may serve the next
/// request; an error means it must close (the peer left, or a write failed or stalled).
pub(crate) async fn serve(
    app: Arc<App>,
    req: Request<RequestBody>,
    io: &mut ConnIo,
) -> io::Result<()> {
    // Boxed, so the connection's task is not as large as the route's future for its life.
    let res = Box::pin(app.handle(req)).await;
    let (parts, body) = res.into_parts();
    let length = body.size_hint().exact();
    io.write_all(&response_head(&parts, length)).await?;
    drop(parts);
    let mut body = std::pin::pin!(body);
    // Reads only notice the peer leaving; they need no buffer worth keeping.
    let mut scratch = [0u8; 16];
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // A request sent while the stream is open cannot be answered before it ends.
            _ = io.read(&mut scratch) => return Err(io::ErrorKind::ConnectionAborted.into()),
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if length.is_some() {
            io.write_all(&data).await?;
        } else {
            write_chunk(io, &data).await?;
        }
    }
    if length.is_none() {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.flush().await
}

/// The status line and headers, with the framing this module writes.
fn response_head(parts: &http::response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    match length {
        Some(n) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(n.to_string().as_bytes());
            head.extend_from_slice(b"\r\n\r\n");
        }
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    head
}

/// Writes `data` as one chunk, in one `writev` when the socket takes it all.
async fn write_chunk(io: &mut ConnIo, data: &Bytes) -> io::Result<()> {
    let mut size = [0u8; 18];
    let n = chunk_size_line(data.len(), &mut size);
    let mut slices = [
        IoSlice::new(&size[..n]),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Writes `len` in hex and CRLF into `out`; returns how many bytes it took.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(buf: &[u8]) -> Option<Request<()>> {
        match parse(buf) {
            Head::Events(req) => Some(*req),
            _ => None,
        }
    }

    #[test]
    fn an_event_stream_request_is_read_here() {
        let req = events(
            b"GET /api/v1/events?last_event_id=7 HTTP/1.1\r\nHost: x\r\nCookie: a=b\r\nLast-Event-ID: 9\r\n\r\n",
        )
        .expect("served here");
        assert_eq!(req.uri().path(), "/api/v1/events");
        assert_eq!(req.uri().query(), Some("last_event_id=7"));
        assert_eq!(req.headers()["cookie"], "a=b");
        assert_eq!(req.headers()["last-event-id"], "9");
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for other in [
            &b"GET /healthz HTTP/1.1\r\n\r\n"[..],
            b"GET /api/v1/eventsx HTTP/1.1\r\n\r\n",
            b"POST /api/v1/events HTTP/1.1\r\n\r\n",
            b"GET /api/v1/events HTTP/1.0\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /api/v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\n\r\nGET /api/v1/health HTTP/1.1\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other), Head::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        let long = format!(
            "GET /api/v1/events HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(matches!(parse(long.as_bytes()), Head::Other));
        let partial = format!("GET /api/v1/events HTTP/1.1\r\nX: {}", "a".repeat(100));
        assert!(matches!(parse(partial.as_bytes()), Head::Partial));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = [0u8; 18];
        for (len, want) in [(0, "0"), (9, "9"), (16, "10"), (255, "ff"), (4096, "1000")] {
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], format!("{want}\r\n").as_bytes());
        }
        let n = chunk_size_line(usize::MAX, &mut out);
        assert_eq!(n, usize::BITS as usize / 4 + 2);
    }

    proptest! {
        #[test]
        fn any_bytes_are_classified_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut with_target = TARGET.to_vec();
            with_target.extend_from_slice(&bytes);
            let _ = parse(&with_target);
        }

        #[test]
        fn a_request_split_anywhere_is_partial_until_whole(
            query in "[a-z0-9=&_]{0,40}",
            values in proptest::collection::vec("[ -~]{0,60}", 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut text = format!("GET /api/v1/events?{query} HTTP/1.1\r\n");
            for (i, v) in values.iter().enumerate() {
                text.push_str(&format!("x-h{i}: {}\r\n", v.trim()));
            }
            text.push_str("\r\n");
            let bytes = text.as_bytes();
            let req = events(bytes).expect("a whole request is served here");
            prop_assert_eq!(req.headers().len(), values.len());
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(req.headers()[format!("x-h{i}").as_str()].as_bytes(), v.trim().as_bytes());
            }
            let cut = cut.index(bytes.len());
            prop_assert!(matches!(parse(&bytes[..cut]), Head::Partial));
        }

        #[test]
        fn chunk_size_lines_round_trip(len in any::<usize>()) {
            let mut out = [0u8; 18];
            let n = chunk_size_line(len, &mut out);
            let text = std::str::from_utf8(&out[..n - 2]).expect("ascii");
            prop_assert_eq!(usize::from_str_radix(text, 16).ok(), Some(len));
            prop_assert_eq!(&out[n - 2..n], b"\r\n");
        }
    }
}
