//! Hash stream reader on arbitrary input.
#![no_main]

use blkpipe_format::hash::HashReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = HashReader::new(data) {
        while let Ok(Some(_)) = r.next_group() {}
    }
});
