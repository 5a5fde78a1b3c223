//! `nbdinfo --map --json` output on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = blkpipe_meta::nbdmap::parse_nbdinfo_json(text);
    }
});
