//! Hash stream reader on arbitrary input.
#![no_main]

use blkpipe_format::hash::HashReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = HashReader::new(data) {
        while let Ok(Some(_)) = r.next_group() {}
    }
    // The keyed path: the key id, header MAC and per-group MAC reading (FORMAT.md 6).
    let key = blkpipe_format::seal::SealKey::from_slice(&[7u8; 32]).expect("32 bytes");
    if let Ok(mut r) = HashReader::with_key(data, Some(&key)) {
        while let Ok(Some(_)) = r.next_group() {}
    }
});
