//! The whole-device digest of a range of a device (see `blkpipe_format::digest`), computed by
//! the parallel [`scan`](crate::scan) engine that `blkhash` and `blkdiff` also use.

use blkpipe_dev::Device;
use blkpipe_format::digest::{BlockHasher, DigestBuilder};

use crate::scan::{scan_with, ScanOptions};
use crate::OpError;

/// Digest the first `len` bytes of `dev` in blocks of `block_size`, hashed with `seed`, using
/// every core.
pub fn device_digest(dev: &Device, len: u64, block_size: u32, seed: u64) -> Result<u128, OpError> {
    device_digest_with(dev, len, block_size, &BlockHasher::Xxh3 { seed })
}

/// [`device_digest`] with block hashes made by `hasher` (keyed for sealed streams).
pub fn device_digest_with(
    dev: &Device,
    len: u64,
    block_size: u32,
    hasher: &BlockHasher,
) -> Result<u128, OpError> {
    let mut builder = DigestBuilder::new(block_size as u64, hasher.seed());
    let bs = block_size as usize;
    let opts = ScanOptions::default();
    scan_with(dev, 0, len, block_size, hasher, &opts, |chunk| {
        push_chunk(&mut builder, chunk.hashes, chunk.data.len(), bs);
        Ok(())
    })?;
    Ok(builder.finish())
}

/// Feed a chunk's block hashes (of `data_len` bytes in blocks of `bs`) to a digest.
pub(crate) fn push_chunk(builder: &mut DigestBuilder, hashes: &[u128], data_len: usize, bs: usize) {
    let last = hashes.len().saturating_sub(1);
    for (i, h) in hashes.iter().enumerate() {
        let len = if i == last { data_len - i * bs } else { bs };
        builder.push(*h, len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkpipe_format::digest::digest_of;
    use std::io::Write;

    #[test]
    fn parallel_digest_equals_the_definition() {
        for len in [0usize, 1, 4095, 4096, 4097, (4 << 20) + 12345, 9 << 20] {
            let data: Vec<u8> = (0..len)
                .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
                .collect();
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&data).unwrap();
            let dev = Device::open_source(f.path(), false).unwrap();
            for bs in [4096u32, 65536, 8 << 20] {
                assert_eq!(
                    device_digest(&dev, len as u64, bs, 42).unwrap(),
                    digest_of(&data, bs as usize, 42),
                    "len {len} bs {bs}"
                );
            }
        }
    }
}
