//! The floor of a keyed hash sync: hashes `MIB` MiB in memory, 4 KiB blocks, with one block
//! hasher, so `bench/seal` can time it (user CPU, under `/usr/bin/time`) apart from any I/O.
//!
//! `cargo build --release -p blkpipe-format --example block_hash_rate`, then
//! `block_hash_rate MODE MIB` with MODE `none` (fill only), `xxh3` (the unsealed block hash),
//! `keyed` (the keyed block hash of FORMAT.md 6.2: BLAKE3 of each 4 KiB block, 4 chunks, the
//! blake3 crate's 4-lane path) or `keyed-one` (keyed BLAKE3 of all bytes as one input: the
//! crate's widest SIMD path, a reference only: no block hash is made this way).

use blkpipe_format::digest::BlockHasher;
use blkpipe_format::seal::SealKey;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(mib)) = (
        args.get(1),
        args.get(2).and_then(|m| m.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: block_hash_rate none|xxh3|keyed|keyed-one MIB");
        std::process::exit(2);
    };
    // 1 MiB hashed again and again: in cache, as the tools hash each chunk right after
    // reading it, so this is the hash's own cost, not memory bandwidth.
    let buf: Vec<u8> = (0..1usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let key = SealKey::from_slice(&[7; 32]).expect("32 bytes");
    let hasher = match mode.as_str() {
        "xxh3" => BlockHasher::new(1, None),
        _ => BlockHasher::new(1, Some(&key)),
    };
    let mut acc = 0u128;
    for _ in 0..mib {
        match mode.as_str() {
            "none" => {}
            "xxh3" | "keyed" => {
                for b in buf.chunks(4096) {
                    acc ^= hasher.hash(b);
                }
            }
            "keyed-one" => acc ^= blake3::keyed_hash(&[7; 32], &buf).as_bytes()[0] as u128,
            _ => {
                eprintln!("block_hash_rate: unknown mode {mode}");
                std::process::exit(2);
            }
        }
    }
    println!("{acc:x}");
}
