//! Block hashes and the whole-device digest.
//!
//! A block's hash is `xxh3-128(block bytes, seed)`. A hash stream stores its low 64 bits
//! (`--hash-bits 64`) or all 128. The whole-device digest is `xxh3-128` with the same seed over
//! the little-endian 128-bit hashes of every block in order, followed by the little-endian
//! block size (u64) and the hashed length (u64). Equal content, block size and seed give equal
//! digests, wherever the bytes come from.

use xxhash_rust::xxh3::{xxh3_128_with_seed, Xxh3};

/// The 128-bit hash of one block.
#[inline]
pub fn block_hash(block: &[u8], seed: u64) -> u128 {
    xxh3_128_with_seed(block, seed)
}

/// Builds a whole-device digest from block hashes fed in block order.
#[derive(Clone)]
pub struct DigestBuilder {
    hasher: Xxh3,
    block_size: u64,
    bytes: u64,
}

impl DigestBuilder {
    /// A builder for blocks of `block_size` bytes hashed with `seed`.
    pub fn new(block_size: u64, seed: u64) -> Self {
        DigestBuilder {
            hasher: Xxh3::with_seed(seed),
            block_size,
            bytes: 0,
        }
    }

    /// Add the hash of the next block, which holds `len` bytes (the block size, or less for the
    /// last block).
    #[inline]
    pub fn push(&mut self, hash: u128, len: u64) {
        self.hasher.update(&hash.to_le_bytes());
        self.bytes += len;
    }

    /// The digest of everything pushed.
    pub fn finish(mut self) -> u128 {
        self.hasher.update(&self.block_size.to_le_bytes());
        self.hasher.update(&self.bytes.to_le_bytes());
        self.hasher.digest128()
    }
}

/// The digest of a byte slice as if it were a device.
pub fn digest_of(data: &[u8], block_size: usize, seed: u64) -> u128 {
    let mut b = DigestBuilder::new(block_size as u64, seed);
    for block in data.chunks(block_size) {
        b.push(block_hash(block, seed), block.len() as u64);
    }
    b.finish()
}

/// Format a digest the way every tool prints it: `xxh3-128:` and 32 hex digits.
pub fn format_digest(d: u128) -> String {
    format!("xxh3-128:{d:032x}")
}
