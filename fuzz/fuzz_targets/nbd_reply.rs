//! NBD reply headers, block status, error chunks, export info and meta context replies on
//! arbitrary input (byte 0 picks extended headers), through the client's own decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blkpipe_dev::nbd::wire::fuzz_replies(data);
});
