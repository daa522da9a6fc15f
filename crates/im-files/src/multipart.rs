//! Streaming `multipart/form-data` (RFC 7578 on RFC 2046) with hard caps.
//!
//! [`Parser`] is a sans-I/O state machine: [`Parser::feed`] it chunks as they arrive and
//! pull [`Event`]s with [`Parser::next_event`], so it can be fuzzed and property-tested
//! without a runtime. [`Multipart`] is the thin async adapter the upload route uses.
//!
//! Why our own: a general-purpose parser buffered a part's headers until CRLFCRLF with no cap
//! and rescanned that buffer on every chunk, so one endless header cost memory equal to the
//! bytes sent and CPU quadratic in them. Here:
//! - time is linear: the delimiter search keeps only the bytes that may begin a delimiter
//!   (at most its length - 1) between chunks and never looks at a byte twice otherwise;
//! - memory is one chunk plus [`Limits::header_bytes`], whatever the input;
//! - every size is capped ([`Limits`]), and non-file parts are counted though dropped.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;
use std::error::Error as StdError;
use std::pin::Pin;

/// Most bytes of one part's header block, terminating blank line included (nginx's
/// `large_client_header_buffers` is 8 KiB too).
pub const HEADER_BYTES: usize = 8 * 1024;
/// Most header lines in one part.
pub const MAX_HEADERS: usize = 16;
/// Most parts in one request.
pub const MAX_PARTS: usize = 16;
/// Most bytes of one part that is not the file; such parts are dropped, but read.
pub const FIELD_BYTES: u64 = 64 * 1024;
/// What a request body may have beyond the file cap: the framing and small fields.
pub const SLACK: u64 = 64 * 1024;
/// The part whose bytes are the upload.
pub const FILE_FIELD: &str = "file";
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// The caps one parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of a part's header block (and, separately, of the padding after a boundary).
    pub header_bytes: usize,
    /// Most header lines in a part.
    pub headers: usize,
    /// Most parts in the body.
    pub parts: usize,
    /// Most bytes of a part not named [`Limits::file_field`].
    pub field_bytes: u64,
    /// Most bytes of the whole body, preamble and framing included.
    pub body_bytes: u64,
    /// The name of the one part exempt from `field_bytes` (the file).
    pub file_field: &'static str,
}

impl Limits {
    /// The caps of an upload whose file may have `max_file_bytes`: the constants above, and
    /// a body of at most `max_file_bytes` + [`SLACK`].
    pub fn upload(max_file_bytes: u64) -> Self {
        Self {
            header_bytes: HEADER_BYTES,
            headers: MAX_HEADERS,
            parts: MAX_PARTS,
            field_bytes: FIELD_BYTES,
            body_bytes: max_file_bytes.saturating_add(SLACK),
            file_field: FILE_FIELD,
        }
    }
}

/// What the headers of a part said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    /// `name` of `Content-Disposition`.
    pub name: Option<String>,
    /// `filename*` (RFC 5987, UTF-8 only) or else `filename` of `Content-Disposition`, as sent:
    /// sanitize it before use.
    pub filename: Option<String>,
    /// The part's `Content-Type`, as sent (not trusted for anything).
    pub content_type: Option<String>,
}

/// One step of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins; its data follows.
    Part(Part),
    /// Bytes of the current part (never empty).
    Data(Bytes),
    /// The current part is complete.
    PartEnd,
    /// The closing boundary was seen; anything after it (the epilogue) is ignored.
    End,
}

/// Why a multipart body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The boundary is missing, longer than 70 characters or has characters RFC 2046 forbids.
    #[error("the multipart boundary is missing or invalid")]
    BadBoundary,
    /// A part's header block (or the padding after a boundary) is over the cap.
    #[error("a part's headers are over {0} bytes")]
    HeadersTooLarge(usize),
    /// A part has too many header lines.
    #[error("a part has more than {0} headers")]
    TooManyHeaders(usize),
    /// The body has too many parts.
    #[error("the body has more than {0} parts")]
    TooManyParts(usize),
    /// A part other than the file is over its cap.
    #[error("a part other than `file` is over {0} bytes")]
    FieldTooLarge(u64),
    /// The whole body is over its cap.
    #[error("the request body is over {0} bytes")]
    BodyTooLarge(u64),
    /// The bytes are not multipart as RFC 2046 and RFC 7578 define it.
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    /// The body ended before the closing boundary.
    #[error("the multipart body ended before its closing boundary")]
    Incomplete,
}

impl MultipartError {
    /// Whether a cap was hit (413), as opposed to a malformed body (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::HeadersTooLarge(_)
                | Self::TooManyHeaders(_)
                | Self::TooManyParts(_)
                | Self::FieldTooLarge(_)
                | Self::BodyTooLarge(_)
        )
    }
}

/// Where the parser is, between two bytes of input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the first boundary: bytes are dropped.
    Preamble,
    /// Right after a delimiter: `--` closes, else padding then CRLF opens a part.
    AfterDelimiter(After),
    /// Inside a part's header block.
    Headers,
    /// Inside a part's data.
    Body,
    /// After the closing delimiter.
    Done,
    /// An error was returned; it is returned again.
    Failed(MultipartError),
}

/// The bytes seen after a delimiter so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Start,
    Dash,
    Padding,
    Cr,
}

/// The streaming parser; see the module docs. Feed a chunk only once [`Parser::next_event`]
/// has returned `Ok(None)` (it wants more), so that at most one chunk is held.
#[derive(Debug)]
pub struct Parser {
    /// `\r\n--boundary`.
    finder: memmem::Finder<'static>,
    limits: Limits,
    state: State,
    /// Unconsumed input: the newest chunk, after at most a delimiter's length of carry-over.
    input: Bytes,
    eof: bool,
    /// Body bytes fed so far.
    received: u64,
    parts: usize,
    /// The current header block, at most `limits.header_bytes`.
    head: Vec<u8>,
    /// How much of `\r\n\r\n` the header block ends with (starts at 2: the CRLF after the
    /// boundary line, so that an empty block ends at the next CRLF).
    crlfs: u8,
    /// Padding bytes after the current delimiter.
    padding: usize,
    /// Data bytes of the current part.
    part_bytes: u64,
    /// Whether the current part is limited to `limits.field_bytes`.
    capped: bool,
}

impl Parser {
    /// A parser for parts separated by `boundary` (the `boundary` parameter, see
    /// [`boundary`]); refuses a boundary RFC 2046 does not allow.
    pub fn new(boundary: &str, limits: Limits) -> Result<Self, MultipartError> {
        if !valid_boundary(boundary) {
            return Err(MultipartError::BadBoundary);
        }
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        Ok(Self {
            finder: memmem::Finder::new(&delimiter).into_owned(),
            limits,
            state: State::Preamble,
            // The first boundary may open the body; with a CRLF before it, it is found as
            // a delimiter like every other.
            input: Bytes::from_static(b"\r\n"),
            eof: false,
            received: 0,
            parts: 0,
            head: Vec::new(),
            crlfs: 2,
            padding: 0,
            part_bytes: 0,
            capped: true,
        })
    }

    /// Hands the parser the next bytes of the body. The body cap counts them here.
    pub fn feed(&mut self, chunk: Bytes) {
        if matches!(self.state, State::Done | State::Failed(_)) || chunk.is_empty() {
            return;
        }
        self.received = self.received.saturating_add(chunk.len() as u64);
        if self.received > self.limits.body_bytes {
            self.state = State::Failed(MultipartError::BodyTooLarge(self.limits.body_bytes));
            self.input = Bytes::new();
            return;
        }
        if self.input.is_empty() {
            self.input = chunk;
        } else {
            let mut joined = BytesMut::with_capacity(self.input.len() + chunk.len());
            joined.extend_from_slice(&self.input);
            joined.extend_from_slice(&chunk);
            self.input = joined.freeze();
        }
    }

    /// Says the body has ended: what is still open becomes [`MultipartError::Incomplete`].
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Bytes the parser holds: carried-over input and the header block so far. After
    /// `next_event` returned `Ok(None)` this is under a delimiter's length plus
    /// [`Limits::header_bytes`].
    pub fn buffered(&self) -> usize {
        self.input.len() + self.head.len()
    }

    /// The next event, `Ok(None)` if more input is needed. After `End` it returns `End`
    /// again, after an error the same error.
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        let result = self.step();
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
            self.input = Bytes::new();
            self.head = Vec::new();
        }
        result
    }

    fn step(&mut self) -> Result<Option<Event>, MultipartError> {
        loop {
            match &self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Done => return Ok(Some(Event::End)),
                State::Preamble => match self.scan() {
                    Scan::Data(_) => {}
                    Scan::Delimiter => self.state = State::AfterDelimiter(After::Start),
                    Scan::More => return self.more(),
                },
                State::Body => match self.scan() {
                    Scan::Data(data) => {
                        self.part_bytes += data.len() as u64;
                        if self.capped && self.part_bytes > self.limits.field_bytes {
                            return Err(MultipartError::FieldTooLarge(self.limits.field_bytes));
                        }
                        return Ok(Some(Event::Data(data)));
                    }
                    Scan::Delimiter => {
                        self.state = State::AfterDelimiter(After::Start);
                        return Ok(Some(Event::PartEnd));
                    }
                    Scan::More => return self.more(),
                },
                State::AfterDelimiter(after) => {
                    let after = *after;
                    if self.input.is_empty() {
                        return self.more();
                    }
                    let b = self.input.get_u8();
                    self.after_delimiter(after, b)?;
                }
                State::Headers => {
                    if let Some(part) = self.headers()? {
                        return Ok(Some(Event::Part(part)));
                    }
                    return self.more();
                }
            }
        }
    }

    /// `Ok(None)` while the body goes on; at its end, whatever is open is incomplete.
    fn more(&self) -> Result<Option<Event>, MultipartError> {
        if self.eof {
            Err(MultipartError::Incomplete)
        } else {
            Ok(None)
        }
    }

    /// Finds the next delimiter in the input: the bytes before it, or the delimiter itself
    /// once it is first, or a request for more input. Only a tail that could start a
    /// delimiter is kept back.
    fn scan(&mut self) -> Scan {
        let delimiter = self.finder.needle().len();
        match self.finder.find(&self.input) {
            Some(0) => {
                self.input.advance(delimiter);
                Scan::Delimiter
            }
            Some(i) => Scan::Data(self.input.split_to(i)),
            None => {
                let keep = partial_suffix(&self.input, self.finder.needle());
                let n = self.input.len() - keep;
                if n == 0 {
                    Scan::More
                } else {
                    Scan::Data(self.input.split_to(n))
                }
            }
        }
    }

    /// One byte after a delimiter: `--` closes; else transport padding, then CRLF opens a
    /// part (RFC 2046 5.1.1).
    fn after_delimiter(&mut self, after: After, b: u8) -> Result<(), MultipartError> {
        const JUNK: MultipartError = MultipartError::Malformed("unexpected bytes after a boundary");
        self.state = match (after, b) {
            (After::Start, b'-') => State::AfterDelimiter(After::Dash),
            (After::Dash, b'-') => State::Done,
            (After::Start | After::Padding, b' ' | b'\t') => {
                self.padding += 1;
                if self.padding > self.limits.header_bytes {
                    return Err(MultipartError::HeadersTooLarge(self.limits.header_bytes));
                }
                State::AfterDelimiter(After::Padding)
            }
            (After::Start | After::Padding, b'\r') => State::AfterDelimiter(After::Cr),
            (After::Cr, b'\n') => {
                self.parts += 1;
                if self.parts > self.limits.parts {
                    return Err(MultipartError::TooManyParts(self.limits.parts));
                }
                self.padding = 0;
                self.head.clear();
                self.crlfs = 2;
                State::Headers
            }
            _ => return Err(JUNK),
        };
        if self.state == State::Done {
            self.input = Bytes::new();
        }
        Ok(())
    }

    /// Moves input into the header block until it ends; then the parsed part.
    fn headers(&mut self) -> Result<Option<Part>, MultipartError> {
        const END: &[u8; 4] = b"\r\n\r\n";
        let mut used = 0;
        let mut complete = false;
        for &b in self.input.iter() {
            if self.head.len() >= self.limits.header_bytes {
                return Err(MultipartError::HeadersTooLarge(self.limits.header_bytes));
            }
            self.head.push(b);
            used += 1;
            self.crlfs = if b == END[self.crlfs as usize] {
                self.crlfs + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.crlfs == 4 {
                complete = true;
                break;
            }
        }
        self.input.advance(used);
        if !complete {
            return Ok(None);
        }
        // The block ends with the blank line; alone it is two bytes (the boundary line's CRLF
        // counted as the first two).
        let block = &self.head[..self.head.len().saturating_sub(4)];
        let part = parse_headers(block, self.limits.headers)?;
        self.capped = part.name.as_deref() != Some(self.limits.file_field);
        self.part_bytes = 0;
        self.head.clear();
        self.state = State::Body;
        Ok(Some(part))
    }
}

/// The outcome of one delimiter search.
enum Scan {
    Data(Bytes),
    Delimiter,
    More,
}

/// The length of the longest tail of `hay` that is a proper prefix of `delimiter`. Since
/// `\r` occurs only first in a delimiter, only tails starting at a `\r` can match, and
/// their comparisons stop at the first mismatch: linear in the delimiter's length.
fn partial_suffix(hay: &[u8], delimiter: &[u8]) -> usize {
    let from = hay.len().saturating_sub(delimiter.len() - 1);
    (from..hay.len())
        .find(|&p| hay[p] == b'\r' && delimiter.starts_with(&hay[p..]))
        .map_or(0, |p| hay.len() - p)
}

/// Parses a header block (lines without the blank line): `Content-Disposition` and
/// `Content-Type`; other headers are counted and ignored.
fn parse_headers(block: &[u8], max_headers: usize) -> Result<Part, MultipartError> {
    let mut part = Part::default();
    let mut disposition = false;
    if block.is_empty() {
        return Ok(part);
    }
    for (i, line) in memmem::find_iter(block, b"\r\n")
        .chain([block.len()])
        .scan(0, |start, end| {
            let line = &block[*start..end];
            *start = end + 2;
            Some(line)
        })
        .enumerate()
    {
        if i >= max_headers {
            return Err(MultipartError::TooManyHeaders(max_headers));
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(MultipartError::Malformed("a folded header line"));
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or(MultipartError::Malformed("a header line without a colon"))?;
        let name = line[..colon].trim_ascii();
        if name.is_empty() {
            return Err(MultipartError::Malformed("a header without a name"));
        }
        let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-disposition") {
            if disposition {
                return Err(MultipartError::Malformed("two Content-Disposition headers"));
            }
            disposition = true;
            disposition_params(&value, &mut part)?;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            part.content_type = Some(value.into_owned());
        }
    }
    Ok(part)
}

/// `name`, `filename` and `filename*` of a `Content-Disposition` value.
fn disposition_params(value: &str, part: &mut Part) -> Result<(), MultipartError> {
    let mut filename = None;
    let mut extended = None;
    for (key, v) in params(value)? {
        let slot = match key.as_str() {
            "name" => &mut part.name,
            "filename" => &mut filename,
            "filename*" => &mut extended,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(MultipartError::Malformed("a parameter given twice"));
        }
    }
    // RFC 6266 4.3: `filename*` wins where it can be decoded.
    part.filename = extended.and_then(|v| decode_ext_value(&v)).or(filename);
    Ok(())
}

/// An RFC 5987 `ext-value` in UTF-8 (`UTF-8'lang'percent-encoded`); other charsets are not
/// decoded.
fn decode_ext_value(v: &str) -> Option<String> {
    let mut fields = v.splitn(3, '\'');
    let charset = fields.next()?;
    let _language = fields.next()?;
    let encoded = fields.next()?;
    charset
        .eq_ignore_ascii_case("utf-8")
        .then(|| crate::name::percent_decode(encoded))?
}

/// The `key=value` parameters after the first `;` of a header value (keys lower-cased);
/// a quoted value may escape `"` and `\` with a backslash, other backslashes stay (old
/// browsers sent Windows paths).
fn params(value: &str) -> Result<Vec<(String, String)>, MultipartError> {
    let mut out = Vec::new();
    let Some((_, mut rest)) = value.split_once(';') else {
        return Ok(out);
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(out);
        }
        let key_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_ascii_lowercase();
        rest = &rest[key_end..];
        let Some(after_eq) = rest.strip_prefix('=') else {
            continue; // a parameter without a value
        };
        let after_eq = after_eq.trim_start_matches([' ', '\t']);
        let (v, next) = if let Some(quoted) = after_eq.strip_prefix('"') {
            unquote(quoted)?
        } else {
            let end = after_eq.find(';').unwrap_or(after_eq.len());
            (after_eq[..end].trim().to_owned(), &after_eq[end..])
        };
        out.push((key, v));
        rest = next;
    }
}

/// A quoted string's content (after the opening quote) and what follows its closing quote.
fn unquote(s: &str) -> Result<(String, &str), MultipartError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match s[i + 1..].chars().next() {
                Some(e @ ('"' | '\\')) => {
                    out.push(e);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    Err(MultipartError::Malformed("an unterminated quoted string"))
}

/// Whether `b` is a boundary RFC 2046 allows: 1–70 of `bchars`, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=MAX_BOUNDARY).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// The boundary of a `multipart/form-data` request's `Content-Type`, if it is one and its
/// boundary is valid (RFC 2046: 1–70 characters).
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::BadBoundary);
    }
    params(content_type)?
        .into_iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v)
        .filter(|v| valid_boundary(v))
        .ok_or(MultipartError::BadBoundary)
}

/// Why [`Multipart::next`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is refused.
    #[error(transparent)]
    Multipart(#[from] MultipartError),
    /// Reading the body failed (the connection, or the server's body timeout).
    #[error("reading the body: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
}

/// The async adapter: a [`Parser`] fed from a body stream, one chunk at a time.
pub struct Multipart<S> {
    body: Pin<Box<S>>,
    parser: Parser,
}

impl<S, E> Multipart<S>
where
    S: futures_core::Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Parses `body` with `parser`.
    pub fn new(body: S, parser: Parser) -> Self {
        Self {
            body: Box::pin(body),
            parser,
        }
    }

    /// The next event, reading as much of the body as it takes.
    pub async fn next(&mut self) -> Result<Event, ReadError> {
        use futures_util::StreamExt;
        loop {
            if let Some(event) = self.parser.next_event()? {
                return Ok(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.parser.feed(chunk),
                Some(Err(e)) => return Err(ReadError::Body(e.into())),
                None => self.parser.finish(),
            }
        }
    }
}

impl<S> std::fmt::Debug for Multipart<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("parser", &self.parser)
            .finish()
    }
}

#[cfg(test)]
mod tests;
