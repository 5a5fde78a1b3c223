//! thin_delta XML parser on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blkpipe_meta::xml::parse_thin_delta(data, None);
    let _ = blkpipe_meta::xml::parse_thin_delta(data, Some(65536));
});
