//! The SSE parser: any bytes, in any chunking, give the same items as in one piece, and
//! never panic.
#![no_main]

use im_protocol::sse::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = Parser::new().feed(bytes);
    let mut chunked = Vec::new();
    let mut parser = Parser::new();
    for chunk in bytes.chunks(usize::from(step).max(1)) {
        chunked.extend(parser.feed(chunk));
    }
    assert_eq!(whole, chunked);
});
