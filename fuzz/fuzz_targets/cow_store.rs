//! The dm-snapshot exception store reader on arbitrary COW images: errors, never panics, and
//! never more exceptions than the image can hold. The first byte picks the read-ahead and
//! whether an origin size is checked (see `blkpipe_testkit::fuzz_cow_store`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blkpipe_testkit::fuzz_cow_store(data));
