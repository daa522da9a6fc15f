//! Server-Sent Events framing: an encoder used once per message, and an incremental parser
//! for clients and tests.
//!
//! The encoder writes one frame per event; the [`Parser`] accepts any chunking of the byte
//! stream and any of the three line endings the SSE spec allows.

use crate::Message;
use bytes::Bytes;

/// Appends one event to `out`: optional `id:`, optional `event:`, one `data:` line per line
/// of `data`, then the blank line that dispatches it.
///
/// `event` must not contain a line break (names are chosen by code, never by users).
pub fn write_event(out: &mut Vec<u8>, id: Option<u64>, event: Option<&str>, data: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.to_string().as_bytes());
        out.push(b'\n');
    }
    if let Some(event) = event {
        debug_assert!(!event.contains(['\r', '\n']), "event names are single-line");
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    for line in split_lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Encodes a durable log entry as `id:` + `event:` + `data: <json>`: done once per entry,
/// and the resulting `Bytes` shared by every recipient session. A message is `event: message`
/// with the message as data; an amendment is its own event (`message_edited`, ...) with its
/// body as data.
pub fn message_frame(msg: &Message) -> Bytes {
    let json = match msg.amends {
        None => serde_json::to_string(msg),
        Some(_) => serde_json::to_string(&msg.body),
    };
    let json = json.unwrap_or_else(|_| "{}".to_owned());
    let mut out = Vec::with_capacity(json.len() + 40);
    write_event(&mut out, Some(msg.id.0), Some(msg.event()), &json);
    Bytes::from(out)
}

/// Encodes an ephemeral event (presence, typing, resync, ...): it has no `id:` so it never
/// moves the client's resume position.
pub fn ephemeral_frame(event: &str, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.len() + 16);
    write_event(&mut out, None, Some(event), data);
    Bytes::from(out)
}

/// The keep-alive comment idle streams get; clients ignore it, proxies see traffic.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The `retry:` hint sent when a stream opens: how long the browser waits before reconnecting.
pub fn retry_frame(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// Splits on `\r\n`, `\n` or `\r`, as SSE readers do, so the parser sees the same lines.
fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// One item read from an SSE stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(Event),
    /// A comment line (keep-alive), without the leading colon and space.
    Comment(String),
    /// A `retry:` hint in milliseconds.
    Retry(u64),
}

/// A dispatched SSE event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The event's `id:` if it had one. Durable events always do.
    pub id: Option<String>,
    /// The event name; `message` when none was given.
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser: feed it bytes in any chunking, get complete items back.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    skip_lf: bool,
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns the items they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        for &b in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.skip_lf = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line), &mut items);
                }
                _ => self.line.push(b),
            }
        }
        items
    }

    fn line_done(&mut self, line: &str, items: &mut Vec<Item>) {
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                data.pop();
                items.push(Item::Event(Event {
                    id: self.id.clone(),
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data,
                }));
            }
            self.has_data = false;
            self.data.clear();
            self.event = None;
            // Per the SSE spec the last event id persists across events, but a frame without
            // `id:` must not inherit one; we report ids per frame, so reset here.
            self.id = None;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(Item::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    items.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

/// An encoded SSE frame as it travels to mailboxes: the bytes are shared, and the id lets a
/// resuming stream drop live frames it already replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The durable message id, or `None` for ephemeral events and comments.
    pub id: Option<u64>,
    /// The encoded frame.
    pub bytes: Bytes,
}

impl Frame {
    /// The frame of a durable message.
    pub fn message(msg: &Message) -> Self {
        Self {
            id: Some(msg.id.0),
            bytes: message_frame(msg),
        }
    }

    /// The frame of an ephemeral event.
    pub fn ephemeral(event: &str, data: &str) -> Self {
        Self {
            id: None,
            bytes: ephemeral_frame(event, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_shape() {
        let mut out = Vec::new();
        write_event(&mut out, Some(7), Some("message"), "a\nb");
        assert_eq!(out, b"id: 7\nevent: message\ndata: a\ndata: b\n\n");
    }

    #[test]
    fn parses_comments_retry_and_crlf() {
        let mut p = Parser::new();
        let items = p.feed(b"retry: 3000\r\n\r\n: ka\r\nid: 1\r\nevent: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            items,
            vec![
                Item::Retry(3000),
                Item::Comment("ka".into()),
                Item::Event(Event {
                    id: Some("1".into()),
                    event: "x".into(),
                    data: "y".into()
                })
            ]
        );
    }

    fn normalize(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    proptest! {
        #[test]
        fn roundtrip_any_chunking(
            events in proptest::collection::vec(
                (proptest::option::of(any::<u64>()), "[a-z_]{1,12}", any::<String>()),
                1..8,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut bytes = Vec::new();
            for (id, name, data) in &events {
                write_event(&mut bytes, *id, Some(name), data);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = Parser::new();
            let mut items = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                items.extend(p.feed(&bytes[start..c]));
                start = c;
            }
            let got: Vec<Event> = items.into_iter().filter_map(|i| match i {
                Item::Event(e) => Some(e),
                _ => None,
            }).collect();
            prop_assert_eq!(got.len(), events.len());
            for (e, (id, name, data)) in got.iter().zip(&events) {
                prop_assert_eq!(&e.id, &id.map(|i| i.to_string()));
                prop_assert_eq!(&e.event, name);
                prop_assert_eq!(&e.data, &normalize(data));
            }
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Parser::new().feed(&bytes);
        }
    }
}
