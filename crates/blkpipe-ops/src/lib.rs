//! The verbs of blkpipe pipelines, each over `impl Read` / `impl Write` and a [`Device`]:
//!
//! - [`chunks::read_chunks`]: read a range list's ranges from a device into a patch stream
//!   (`blkread-chunks`).
//! - [`apply::apply_patch`]: apply a patch stream to a target, safely (`blkpatch`).
//! - [`hash::hash_device`]: hash every block of a device into a hash stream, a text list or a
//!   whole-device digest (`blkhash`).
//! - [`diff::diff_device`]: compare a device with a remote hash stream and write a patch stream
//!   of the blocks that differ (`blkdiff`).
//! - [`digest::device_digest`]: the whole-device digest (`blkpatch --verify`, `blkhash --digest`).
//!
//! The last three read through one engine, [`scan::scan`]: large reads by parallel workers,
//! block hashes delivered in device order, bounded memory, page cache left alone.
//!
//! Shared pieces: [`OpError`] (the tools' exit-code table, in blkpipe-cli, maps it), [`input::open_input`]
//! (transparent zstd / lz4 / gzip input), [`progress::Progress`] and [`Stats`].
//!
//! ```no_run
//! use blkpipe_ops::{chunks, progress::Progress};
//! use blkpipe_dev::Device;
//! let dev = Device::open_source("src.img".as_ref(), false).unwrap();
//! let ranges = "0 4096\n".as_bytes();
//! let opts = chunks::ChunkOptions::default();
//! let stats = chunks::read_chunks(&dev, ranges, std::io::stdout().lock(), &opts, &Progress::hidden()).unwrap();
//! eprintln!("{} records", stats.records);
//! ```
//!
//! [`Device`]: blkpipe_dev::Device

pub mod apply;
pub mod chain;
pub mod chunks;
pub mod diff;
pub mod digest;
pub mod direct;
mod error;
pub mod hash;
pub mod input;
pub mod keyfile;
mod lz4frame;
pub mod merge;
pub mod patch_out;
pub mod progress;
pub mod ranges;
pub mod scan;
pub mod state;
mod stats;
pub mod view;

pub use error::OpError;
pub use stats::Stats;

/// 16 random bytes from the kernel, for stream ids and seeds.
pub fn random_bytes() -> [u8; 16] {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    // No /dev/urandom: fall back to time and pid, which still differ between runs.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed =
        blkpipe_format::xxh3::xxh3_128_with_seed(&t.to_le_bytes(), std::process::id() as u64);
    mixed.to_le_bytes()
}

/// A writer that counts the bytes written through it.
#[derive(Debug)]
pub struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: std::io::Write> CountingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
