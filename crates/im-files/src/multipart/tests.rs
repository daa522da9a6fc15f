use super::*;
use proptest::prelude::*;

/// Caps high enough not to matter, for tests of the format itself.
fn roomy() -> Limits {
    Limits {
        header_bytes: HEADER_BYTES,
        headers: MAX_HEADERS,
        parts: MAX_PARTS,
        field_bytes: u64::MAX,
        body_bytes: u64::MAX,
        file_field: FILE_FIELD,
    }
}

/// A part as a test describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    part: Part,
    data: Vec<u8>,
}

/// Feeds `body` in chunks of the given sizes (cycled), then ends it; the parts up to `End`.
/// Checks on the way that the parser holds at most a delimiter plus the header cap, and
/// that events come in a valid order.
fn parse(
    body: &[u8],
    boundary: &str,
    limits: Limits,
    sizes: &[usize],
) -> Result<Vec<Spec>, MultipartError> {
    let mut p = Parser::new(boundary, limits)?;
    let bound = boundary.len() + 4 - 1 + limits.header_bytes;
    let mut parts: Vec<Spec> = Vec::new();
    let mut open = false;
    let mut rest = body;
    let mut sizes = sizes.iter().copied().filter(|n| *n > 0).cycle();
    loop {
        loop {
            match p.next_event()? {
                None => break,
                Some(Event::Part(part)) => {
                    assert!(!open, "a part inside a part");
                    open = true;
                    parts.push(Spec {
                        part,
                        data: Vec::new(),
                    });
                }
                Some(Event::Data(d)) => {
                    assert!(open && !d.is_empty());
                    parts.last_mut().unwrap().data.extend_from_slice(&d);
                }
                Some(Event::PartEnd) => {
                    assert!(open);
                    open = false;
                }
                Some(Event::End) => {
                    assert!(!open);
                    assert!(parts.len() <= limits.parts);
                    return Ok(parts);
                }
            }
        }
        assert!(p.buffered() <= bound, "holds {} bytes", p.buffered());
        if rest.is_empty() {
            p.finish();
        } else {
            let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
            p.feed(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
        }
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A body as a browser would send it, with a preamble, padding after each boundary and an
/// epilogue.
fn build(
    boundary: &str,
    preamble: &[u8],
    parts: &[Spec],
    padding: &str,
    epilogue: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    if !preamble.is_empty() {
        b.extend_from_slice(preamble);
        b.extend_from_slice(b"\r\n");
    }
    for s in parts {
        b.extend_from_slice(format!("--{boundary}{padding}\r\n").as_bytes());
        let mut cd = "Content-Disposition: form-data".to_owned();
        if let Some(n) = &s.part.name {
            cd.push_str(&format!("; name={}", quote(n)));
        }
        if let Some(f) = &s.part.filename {
            cd.push_str(&format!("; filename={}", quote(f)));
        }
        b.extend_from_slice(cd.as_bytes());
        b.extend_from_slice(b"\r\n");
        if let Some(ct) = &s.part.content_type {
            b.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(&s.data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--{padding}").as_bytes());
    b.extend_from_slice(epilogue);
    b
}

fn spec(name: &str, filename: Option<&str>, data: &[u8]) -> Spec {
    Spec {
        part: Part {
            name: Some(name.into()),
            filename: filename.map(Into::into),
            content_type: None,
        },
        data: data.to_vec(),
    }
}

const WHOLE: &[usize] = &[usize::MAX];
const BYTES: &[usize] = &[1];

#[test]
fn a_browser_body() {
    let body = b"------WebKitFormBoundaryx7\r\n\
        Content-Disposition: form-data; name=\"caption\"\r\n\r\n\
        hi there\r\n\
        ------WebKitFormBoundaryx7\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"a b.png\"\r\n\
        Content-Type: image/png\r\n\r\n\
        \x89PNG\r\n\x1a\n\r\n\
        ------WebKitFormBoundaryx7--\r\n";
    for sizes in [WHOLE, BYTES, &[3, 7]] {
        let parts = parse(body, "----WebKitFormBoundaryx7", roomy(), sizes).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], spec("caption", None, b"hi there"));
        assert_eq!(parts[1].part.filename.as_deref(), Some("a b.png"));
        assert_eq!(parts[1].part.content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[1].data, b"\x89PNG\r\n\x1a\n");
    }
}

#[test]
fn preamble_padding_epilogue_and_empty_parts() {
    let body = b"this is the preamble\r\n--b \t\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\r\n--b\r\n\r\n\r\n--b-- \r\nepilogue --b\r\n";
    let parts = parse(body, "b", roomy(), WHOLE).unwrap();
    assert_eq!(
        parts,
        [
            spec("file", None, b""),
            Spec {
                part: Part::default(),
                data: vec![]
            }
        ]
    );
    // No part at all is a valid body too.
    assert_eq!(parse(b"--b--", "b", roomy(), BYTES).unwrap(), []);
}

#[test]
fn parameters() {
    let p = |cd: &str| {
        let body = format!("--b\r\nContent-Disposition: {cd}\r\n\r\nx\r\n--b--");
        parse(body.as_bytes(), "b", roomy(), WHOLE).map(|mut p| p.remove(0).part)
    };
    let part =
        p("form-data; filename=\"fallback.txt\"; NAME=file; filename*=UTF-8''%E2%82%AC%20x.txt")
            .unwrap();
    assert_eq!(part.name.as_deref(), Some("file"));
    assert_eq!(part.filename.as_deref(), Some("€ x.txt"), "filename* wins");
    let part =
        p("form-data; name=\"file\"; filename*=latin-1''%E9.txt; filename=\"e.txt\"").unwrap();
    assert_eq!(
        part.filename.as_deref(),
        Some("e.txt"),
        "only UTF-8 is decoded"
    );
    let part = p(r#"form-data; name="file"; filename="C:\dir\a \"q\".txt""#).unwrap();
    assert_eq!(part.filename.as_deref(), Some(r#"C:\dir\a "q".txt"#));
    let part = p(r#"form-data; name="a;b"; filename="x=y;z""#).unwrap();
    assert_eq!(
        (part.name.as_deref(), part.filename.as_deref()),
        (Some("a;b"), Some("x=y;z"))
    );
    assert_eq!(
        p("form-data; name=\"a\"; name=\"file\""),
        Err(MultipartError::Malformed("a parameter given twice"))
    );
    assert_eq!(
        p("form-data; name=\"file"),
        Err(MultipartError::Malformed("an unterminated quoted string"))
    );
}

#[test]
fn boundaries() {
    assert_eq!(
        boundary("multipart/form-data; boundary=abc").unwrap(),
        "abc"
    );
    assert_eq!(
        boundary("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b:c\"").unwrap(),
        "a b:c"
    );
    let b70 = "x".repeat(70);
    assert_eq!(
        boundary(&format!("multipart/form-data; boundary={b70}")).unwrap(),
        b70
    );
    for bad in [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"a \"",
        "multipart/form-data; boundary=a\u{e9}",
        "multipart/form-data; boundary=a\"b",
        "multipart/mixed; boundary=abc",
        "text/plain; boundary=abc",
        "",
    ] {
        assert_eq!(boundary(bad), Err(MultipartError::BadBoundary), "{bad}");
    }
    assert_eq!(
        boundary(&format!("multipart/form-data; boundary={b70}x")),
        Err(MultipartError::BadBoundary)
    );
    assert!(Parser::new("", roomy()).is_err());
}

#[test]
fn malformed_bodies() {
    let m = |body: &[u8]| parse(body, "b", roomy(), WHOLE).unwrap_err();
    let junk = MultipartError::Malformed("unexpected bytes after a boundary");
    assert_eq!(
        m(b"--bx\r\n\r\n\r\n--b--"),
        junk,
        "a longer boundary is no delimiter"
    );
    assert_eq!(m(b"--b\r\nX: y\r\n\r\ndata\r\n--bb--"), junk);
    assert_eq!(m(b"--b\rX"), junk);
    assert_eq!(
        m(b"--b\r\nno colon\r\n\r\n\r\n--b--"),
        MultipartError::Malformed("a header line without a colon")
    );
    assert_eq!(
        m(b"--b\r\nA: b\r\n c\r\n\r\n\r\n--b--"),
        MultipartError::Malformed("a folded header line")
    );
    assert_eq!(
        m(b"--b\r\nContent-Disposition: form-data\r\ncontent-disposition: form-data\r\n\r\n\r\n--b--"),
        MultipartError::Malformed("two Content-Disposition headers")
    );
    assert_eq!(m(b"no boundary here"), MultipartError::Incomplete);
    assert_eq!(m(b""), MultipartError::Incomplete);
}

#[test]
fn every_truncation_is_incomplete() {
    let body = build(
        "bnd",
        b"pre",
        &[spec("a", None, b"x\r\n-"), spec("file", Some("f"), b"yy")],
        "",
        b"",
    );
    // The body is complete only once the last `-` of its closing boundary arrived.
    for cut in 0..body.len() {
        let r = parse(&body[..cut], "bnd", roomy(), &[2]);
        assert_eq!(r, Err(MultipartError::Incomplete), "cut at {cut}");
    }
    assert!(parse(&body, "bnd", roomy(), &[2]).is_ok());
}

#[test]
fn caps() {
    let limits = Limits {
        header_bytes: 64,
        headers: 2,
        parts: 2,
        field_bytes: 5,
        body_bytes: 300,
        file_field: "file",
    };
    let run = |body: &[u8]| parse(body, "b", limits, &[1, 7]);
    // An endless header block stops at its cap, whatever follows.
    let endless = [&b"--b\r\nX: "[..], &[b'a'; 10_000]].concat();
    assert_eq!(run(&endless), Err(MultipartError::HeadersTooLarge(64)));
    let padded = [&b"--b"[..], &[b' '; 100]].concat();
    assert_eq!(run(&padded), Err(MultipartError::HeadersTooLarge(64)));
    // 64 bytes of block, blank line included, pass; 65 do not.
    let block = |n: usize| format!("--b\r\nX: {}\r\n\r\n\r\n--b--", "a".repeat(n));
    assert!(run(block(64 - 7).as_bytes()).is_ok());
    assert_eq!(
        run(block(64 - 6).as_bytes()),
        Err(MultipartError::HeadersTooLarge(64))
    );
    assert_eq!(
        run(b"--b\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n\r\n--b--"),
        Err(MultipartError::TooManyHeaders(2))
    );
    let parts = |n: usize| build("b", b"", &vec![spec("x", None, b"1"); n], "", b"");
    assert!(run(&parts(2)).is_ok());
    assert_eq!(run(&parts(3)), Err(MultipartError::TooManyParts(2)));
    // Only the file part may pass `field_bytes`.
    let field =
        |name: &str, n: usize| build("b", b"", &[spec(name, None, &vec![b'z'; n])], "", b"");
    assert!(run(&field("x", 5)).is_ok());
    assert_eq!(run(&field("x", 6)), Err(MultipartError::FieldTooLarge(5)));
    assert!(run(&field("file", 200)).is_ok());
    assert_eq!(
        run(&field("file", 400)),
        Err(MultipartError::BodyTooLarge(300))
    );
    // The body cap counts the preamble too.
    assert_eq!(run(&[b'p'; 301]), Err(MultipartError::BodyTooLarge(300)));
    for e in [
        MultipartError::HeadersTooLarge(1),
        MultipartError::TooManyHeaders(1),
        MultipartError::TooManyParts(1),
        MultipartError::FieldTooLarge(1),
        MultipartError::BodyTooLarge(1),
    ] {
        assert!(e.is_too_large());
    }
    assert!(!MultipartError::Incomplete.is_too_large());
}

#[test]
fn errors_and_end_repeat() {
    let mut p = Parser::new("b", roomy()).unwrap();
    p.feed(Bytes::from_static(b"--bx"));
    let e = p.next_event().unwrap_err();
    p.feed(Bytes::from_static(b"\r\n--b--"));
    assert_eq!(p.next_event(), Err(e));
    assert_eq!(p.buffered(), 0);
    let mut p = Parser::new("b", roomy()).unwrap();
    p.feed(Bytes::from_static(b"--b--"));
    assert_eq!(p.next_event(), Ok(Some(Event::End)));
    p.feed(Bytes::from_static(b"anything"));
    p.finish();
    assert_eq!(p.next_event(), Ok(Some(Event::End)));
}

#[tokio::test]
async fn the_async_adapter() {
    let body = build("b", b"", &[spec("file", Some("f"), b"hello")], "", b"");
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(3)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut m = Multipart::new(
        futures_util::stream::iter(chunks),
        Parser::new("b", roomy()).unwrap(),
    );
    assert!(matches!(m.next().await.unwrap(), Event::Part(p) if p.name.as_deref() == Some("file")));
    let mut data = Vec::new();
    loop {
        match m.next().await.unwrap() {
            Event::Data(d) => data.extend_from_slice(&d),
            Event::PartEnd => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(data, b"hello");
    assert_eq!(m.next().await.unwrap(), Event::End);

    let failing = futures_util::stream::iter([
        Ok(Bytes::from_static(b"--b\r\n")),
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle")),
    ]);
    let mut m = Multipart::new(failing, Parser::new("b", roomy()).unwrap());
    assert!(matches!(m.next().await, Err(ReadError::Body(_))));
    let short =
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"--b\r\n"))]);
    let mut m = Multipart::new(short, Parser::new("b", roomy()).unwrap());
    assert!(matches!(
        m.next().await,
        Err(ReadError::Multipart(MultipartError::Incomplete))
    ));
}

/// Boundaries RFC 2046 allows, the last character not a space.
fn boundary_strategy() -> impl Strategy<Value = String> {
    "[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]"
}

/// Pieces of data that come close to a delimiter: CRs, LFs, dashes, the boundary without
/// its CRLF, proper prefixes of the delimiter, and plain bytes.
fn data_strategy(boundary: String) -> impl Strategy<Value = Vec<u8>> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"--".to_vec()),
        Just(format!("--{boundary}").into_bytes()),
        (1..delimiter.len()).prop_map(move |k| delimiter[..k].to_vec()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn header_text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,16}"
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memmem::find(hay, needle).is_some()
}

fn body_strategy() -> impl Strategy<Value = (String, Vec<u8>, Vec<Spec>, String, Vec<u8>)> {
    boundary_strategy().prop_flat_map(|b| {
        let spec = (
            header_text(),
            proptest::option::of(header_text()),
            proptest::option::of("[a-z]{1,8}/[a-z0-9.+-]{1,8}"),
            data_strategy(b.clone()),
        )
            .prop_map(|(name, filename, content_type, data)| Spec {
                part: Part {
                    name: Some(name),
                    filename,
                    content_type,
                },
                data,
            });
        (
            Just(b.clone()),
            data_strategy(b.clone()),
            proptest::collection::vec(spec, 0..6),
            "[ \t]{0,3}",
            data_strategy(b),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any body built from parts parses back into those parts, however it is chunked.
    #[test]
    fn round_trip_under_any_chunking(
        (boundary, preamble, parts, padding, epilogue) in body_strategy(),
        sizes in proptest::collection::vec(1usize..80, 1..8),
    ) {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        prop_assume!(!contains(&[&b"\r\n"[..], &preamble].concat(), &delimiter));
        prop_assume!(parts.iter().all(|p| !contains(&p.data, &delimiter)));
        let body = build(&boundary, &preamble, &parts, &padding, &epilogue);
        let whole = parse(&body, &boundary, roomy(), WHOLE);
        prop_assert_eq!(&whole, &Ok(parts));
        prop_assert_eq!(&parse(&body, &boundary, roomy(), &sizes), &whole);
        prop_assert_eq!(&parse(&body, &boundary, roomy(), BYTES), &whole);
    }

    /// Random bytes, salted with boundaries and headers, never panic, never make the parser
    /// hold more than a delimiter plus the header cap (checked in `parse`), never give more
    /// parts than the cap or a capped part more than its bytes, and do not depend on the
    /// chunking.
    #[test]
    fn garbage_is_survived_within_the_caps(
        pieces in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(b"\r\n--b".to_vec()),
            Just(b"--b\r\n".to_vec()),
            Just(b"--b--".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=x\r\n".to_vec()),
            Just(b"X: y\r\n".to_vec()),
            Just(vec![b'a'; 100]),
        ], 0..40),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let body = pieces.concat();
        let limits = Limits {
            header_bytes: 48,
            headers: 3,
            parts: 3,
            field_bytes: 16,
            body_bytes: 1500,
            file_field: "file",
        };
        let chunked = parse(&body, "b", limits, &sizes);
        if let Ok(parts) = &chunked {
            for p in parts {
                if p.part.name.as_deref() != Some("file") {
                    prop_assert!(p.data.len() as u64 <= limits.field_bytes);
                }
            }
        }
        // The body cap counts bytes as they arrive, so a body over it may fail sooner or
        // later depending on the chunks; under it, chunks make no difference.
        if body.len() as u64 <= limits.body_bytes {
            prop_assert_eq!(&parse(&body, "b", limits, BYTES), &chunked);
            prop_assert_eq!(&parse(&body, "b", limits, WHOLE), &chunked);
        }
    }
}
