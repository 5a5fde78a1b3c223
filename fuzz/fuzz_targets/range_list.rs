//! Range list reader on arbitrary input.
#![no_main]

use blkpipe_format::range::RangeReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = RangeReader::new(data);
    while let Ok(Some(_)) = r.next_range() {}
});
