//! Patch stream reader on arbitrary input.
#![no_main]

use blkpipe_format::patch::PatchReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = PatchReader::new(data) {
        while let Ok(Some(_)) = r.next_record() {}
    }
    // The sealed path: the key id, header MAC and per-record MAC reading (FORMAT.md 6).
    let key = blkpipe_format::seal::SealKey::from_slice(&[7u8; 32]).expect("32 bytes");
    if let Ok(mut r) = PatchReader::with_key(data, Vec::new(), Some(&key)) {
        while let Ok(Some(_)) = r.next_record() {}
    }
});
