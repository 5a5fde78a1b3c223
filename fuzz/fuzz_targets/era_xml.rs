//! era_invalidate XML parser on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blkpipe_meta::xml::parse_era_invalidate(data, 4096);
});
