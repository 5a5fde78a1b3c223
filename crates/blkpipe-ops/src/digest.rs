//! The whole-device digest of a range of a device (see `blkpipe_format::digest`).

use blkpipe_dev::Device;
use blkpipe_format::digest::{block_hash, DigestBuilder};

use crate::OpError;

/// Bytes read per request while digesting.
const READ_SIZE: usize = 4 << 20;

/// Digest the first `len` bytes of `dev` in blocks of `block_size`, hashed with `seed`.
pub fn device_digest(dev: &Device, len: u64, block_size: u32, seed: u64) -> Result<u128, OpError> {
    let bs = block_size as usize;
    let per_read = (READ_SIZE / bs).max(1) * bs;
    let mut buf = vec![0u8; per_read];
    let mut builder = DigestBuilder::new(block_size as u64, seed);
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(per_read as u64) as usize;
        let got = dev.read_at(&mut buf[..want], offset)?;
        if got < want {
            return Err(OpError::Refused(format!(
                "{}: ends at {} while digesting {len} bytes",
                dev.path().display(),
                offset + got as u64
            )));
        }
        for block in buf[..want].chunks(bs) {
            builder.push(block_hash(block, seed), block.len() as u64);
        }
        offset += want as u64;
    }
    Ok(builder.finish())
}
