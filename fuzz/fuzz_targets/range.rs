//! The `Range` parser: whatever the header, a partial answer lies inside the file.
#![no_main]

use im_files::{RangeReply, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap_or_default()) >> (data[0] % 64);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    if let RangeReply::Partial { start, end } = parse_range(Some(header), size) {
        assert!(start <= end, "{header:?} on {size}: {start} > {end}");
        assert!(end < size, "{header:?} on {size}: end {end} outside");
    }
});
