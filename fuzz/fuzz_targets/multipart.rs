//! The upload path's multipart parser: any body, in any chunking, never panics and never
//! buffers beyond its caps.
#![no_main]

use bytes::Bytes;
use im_files::multipart::{Event, Limits, Parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let limits = Limits::upload(4096);
    let Ok(mut parser) = Parser::new("xyzzy", limits) else {
        return;
    };
    // Waiting for input, it holds under a delimiter's length besides the header block.
    let cap = limits.header_bytes + "\r\n--xyzzy".len();
    let mut chunks = body.chunks(usize::from(step).max(1));
    loop {
        match parser.next_event() {
            Err(_) | Ok(Some(Event::End)) => return,
            Ok(Some(_)) => continue,
            Ok(None) => {}
        }
        assert!(parser.buffered() <= cap, "buffered {} > {cap}", parser.buffered());
        match chunks.next() {
            Some(chunk) => parser.feed(Bytes::copy_from_slice(chunk)),
            None => {
                parser.finish();
                while let Ok(Some(event)) = parser.next_event() {
                    if event == Event::End {
                        break;
                    }
                }
                return;
            }
        }
    }
});
