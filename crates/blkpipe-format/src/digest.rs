//! Block hashes and the whole-device digest.
//!
//! A block's hash is `xxh3-128(block bytes, seed)`. A hash stream stores its low 64 bits
//! (`--hash-bits 64`) or all 128. The whole-device digest is `xxh3-128` with the same seed over
//! the little-endian 128-bit hashes of every block in order, followed by the little-endian
//! block size (u64) and the hashed length (u64). Equal content, block size and seed give equal
//! digests, wherever the bytes come from.

use crate::xxh3::{xxh3_128_with_seed, Xxh3_128};
use zeroize::Zeroize;

use crate::seal::SealKey;

/// The 128-bit hash of one block.
#[inline]
pub fn block_hash(block: &[u8], seed: u64) -> u128 {
    xxh3_128_with_seed(block, seed)
}

/// How block hashes are computed: xxh3-128 with a seed, or (keyed hash streams and sealed
/// patch streams, FORMAT.md 6) the first 16 bytes of BLAKE3 keyed with a key derived from the
/// stream key and the seed, so nobody without the key can craft colliding blocks.
#[derive(Clone)]
pub enum BlockHasher {
    /// `xxh3-128(seed, block)`.
    Xxh3 {
        /// The seed.
        seed: u64,
    },
    /// `BLAKE3-keyed(block key, block)[..16]`, the block key from [`SealKey::block_hasher_key`].
    Keyed {
        /// The derived block key.
        key: [u8; 32],
        /// The seed it was derived with.
        seed: u64,
    },
}

impl std::fmt::Debug for BlockHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockHasher::Xxh3 { seed } => write!(f, "Xxh3 {{ seed: {seed} }}"),
            BlockHasher::Keyed { seed, .. } => write!(f, "Keyed {{ seed: {seed} }}"),
        }
    }
}

impl Drop for BlockHasher {
    fn drop(&mut self) {
        if let BlockHasher::Keyed { key, .. } = self {
            key.zeroize();
        }
    }
}

impl BlockHasher {
    /// xxh3 with `seed`, or keyed BLAKE3 when a key is given.
    pub fn new(seed: u64, key: Option<&SealKey>) -> Self {
        match key {
            Some(k) => BlockHasher::Keyed {
                key: k.block_hasher_key(seed),
                seed,
            },
            None => BlockHasher::Xxh3 { seed },
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        match self {
            BlockHasher::Xxh3 { seed } | BlockHasher::Keyed { seed, .. } => *seed,
        }
    }

    /// Whether the hashes are keyed.
    pub fn is_keyed(&self) -> bool {
        matches!(self, BlockHasher::Keyed { .. })
    }

    /// The 128-bit hash of one block.
    #[inline]
    pub fn hash(&self, block: &[u8]) -> u128 {
        match self {
            BlockHasher::Xxh3 { seed } => xxh3_128_with_seed(block, *seed),
            BlockHasher::Keyed { key, .. } => {
                let h = blake3::keyed_hash(key, block);
                u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
            }
        }
    }
}

/// Builds a whole-device digest from block hashes fed in block order.
#[derive(Clone)]
pub struct DigestBuilder {
    hasher: Xxh3_128,
    block_size: u64,
    bytes: u64,
}

impl DigestBuilder {
    /// A builder for blocks of `block_size` bytes hashed with `seed`.
    pub fn new(block_size: u64, seed: u64) -> Self {
        DigestBuilder {
            hasher: Xxh3_128::with_seed(seed),
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
        self.hasher.digest()
    }
}

/// The digest of a byte slice as if it were a device.
pub fn digest_of(data: &[u8], block_size: usize, seed: u64) -> u128 {
    digest_with(data, block_size, &BlockHasher::Xxh3 { seed })
}

/// [`digest_of`] with block hashes made by `hasher`.
pub fn digest_with(data: &[u8], block_size: usize, hasher: &BlockHasher) -> u128 {
    let mut b = DigestBuilder::new(block_size as u64, hasher.seed());
    for block in data.chunks(block_size) {
        b.push(hasher.hash(block), block.len() as u64);
    }
    b.finish()
}

/// Format a digest the way every tool prints it: `xxh3-128:` and 32 hex digits.
pub fn format_digest(d: u128) -> String {
    format!("xxh3-128:{d:032x}")
}
