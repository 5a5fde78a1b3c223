//! `blkhash`: hash every block of a device into a hash stream, a text list or one digest.
//!
//! The device is read and hashed in parallel by [`crate::scan`]; this module only turns the
//! in-order block hashes into output. Each block's full 128-bit hash feeds the whole-device
//! digest (so `--hash-bits 64` streams still carry a 128-bit digest), and the stream stores the
//! hash reduced to the chosen width.

use std::io::Write;
use std::time::Instant;

use blkpipe_dev::Device;
use blkpipe_format::digest::{BlockHasher, DigestBuilder};
use blkpipe_format::hash::{group_blocks_for, HashHeader, HashKind, HashWriter};
use blkpipe_format::seal::SealKey;

use crate::digest::push_chunk;
use crate::progress::Progress;
use crate::ranges::SortedRanges;
use crate::scan::{scan_ranges, RangeSource, ScanOptions};
use crate::{CountingWriter, OpError, Stats};

/// What `blkhash` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashOutput {
    /// The binary hash stream.
    Stream,
    /// One line per block: decimal offset, a space, the stored hash in hex.
    Text,
    /// Nothing; only the digest is returned.
    Digest,
}

/// Options of [`hash_device`].
#[derive(Debug, Clone)]
pub struct HashOptions {
    /// Bytes per block.
    pub block_size: u32,
    /// Seed of every block hash.
    pub seed: u64,
    /// Width of the stored hashes.
    pub kind: HashKind,
    /// First byte to hash, rounded down to a multiple of the block size.
    pub from_offset: u64,
    /// What to write.
    pub output: HashOutput,
    /// How to read the device.
    pub scan: ScanOptions,
    /// Key the stream (and every block hash) with this key.
    pub key: Option<SealKey>,
}

/// What [`hash_device`] did.
#[derive(Debug)]
pub struct Hashed {
    /// The header of the stream (also for text and digest output).
    pub header: HashHeader,
    /// The digest of the hashed range.
    pub digest: u128,
    /// Counters.
    pub stats: Stats,
}

/// Hash `dev` from `opts.from_offset` to its end and write the result to `out`.
pub fn hash_device<W: Write>(
    dev: &Device,
    out: W,
    opts: &HashOptions,
    progress: &Progress,
) -> Result<Hashed, OpError> {
    hash_device_in(dev, None, out, opts, progress)
}

/// Hash only the blocks of `dev` that the range list `ranges` touches, into a range-restricted
/// hash stream (FORMAT.md 3.5) bound to the list. `opts.from_offset` must be 0.
pub fn hash_device_ranges<W: Write>(
    dev: &Device,
    ranges: &SortedRanges,
    out: W,
    opts: &HashOptions,
    progress: &Progress,
) -> Result<Hashed, OpError> {
    if opts.from_offset != 0 {
        return Err(OpError::BadRange(
            "a start offset cannot be combined with a range list (hash the listed ranges)".into(),
        ));
    }
    hash_device_in(dev, Some(ranges), out, opts, progress)
}

fn hash_device_in<W: Write>(
    dev: &Device,
    ranges: Option<&SortedRanges>,
    out: W,
    opts: &HashOptions,
    progress: &Progress,
) -> Result<Hashed, OpError> {
    let started = Instant::now();
    if opts.from_offset > dev.size() {
        return Err(OpError::BadRange(format!(
            "start offset {} is past the end of the device ({} bytes)",
            opts.from_offset,
            dev.size()
        )));
    }
    // Rounded down to a block boundary, so an offset `blkpatch --print-state` recorded
    // (the end of a record) can be passed as it is.
    let start = match opts.from_offset.checked_rem(u64::from(opts.block_size)) {
        Some(r) => opts.from_offset - r,
        None => opts.from_offset,
    };
    let header = HashHeader {
        block_size: opts.block_size,
        kind: opts.kind,
        group_blocks: group_blocks_for(opts.block_size),
        device_size: dev.size(),
        seed: opts.seed,
        start_offset: start,
        ranges: None,
    };
    check_header(&header)?;
    let mut header = header;
    let total = match ranges {
        Some(list) => {
            let (binding, bytes) = list.binding(opts.block_size, dev.size())?;
            header.ranges = Some(binding);
            bytes
        }
        None => dev.size() - start,
    };
    progress.set_total(total);
    let out = CountingWriter::new(out);
    let mut sink = match opts.output {
        HashOutput::Stream => Sink::Stream(Box::new(
            HashWriter::start(out, header.clone(), opts.key.as_ref()).map_err(OpError::Output)?,
        )),
        HashOutput::Text => Sink::Text(std::io::BufWriter::with_capacity(1 << 16, out)),
        HashOutput::Digest => Sink::Digest,
    };
    let bs = opts.block_size as usize;
    let mut digest = DigestBuilder::new(bs as u64, opts.seed);
    let mut stats = Stats::default();
    let pieces: RangeSource<'_> = match ranges {
        Some(list) => Box::new(
            list.blocks(opts.block_size, dev.size())?
                .map(|r| r.map(|r| (r.offset, r.end()))),
        ),
        None => Box::new(std::iter::once(Ok((start, dev.size())))),
    };
    let hasher = BlockHasher::new(opts.seed, opts.key.as_ref());
    scan_ranges(dev, pieces, opts.block_size, &hasher, &opts.scan, |chunk| {
        push_chunk(&mut digest, chunk.hashes, chunk.data.len(), bs);
        match &mut sink {
            Sink::Stream(w) => {
                for h in chunk.hashes {
                    w.push(*h).map_err(OpError::Output)?;
                }
                // Hand the sealed groups on now, so blkdiff on the other side compares
                // (and reads its own device) while this side is still reading.
                w.flush().map_err(OpError::Output)?;
            }
            Sink::Text(t) => write_text(t, chunk, opts.kind, bs)?,
            Sink::Digest => {}
        }
        stats.bytes_read += chunk.data.len() as u64;
        progress.inc(chunk.data.len() as u64);
        Ok(())
    })?;
    let digest = digest.finish();
    let written = match sink {
        Sink::Stream(w) => w.finish(digest).map_err(OpError::Output)?.count(),
        Sink::Text(t) => {
            let mut out = t
                .into_inner()
                .map_err(|e| OpError::Output(e.into_error()))?;
            out.flush().map_err(OpError::Output)?;
            out.count()
        }
        Sink::Digest => 0,
    };
    progress.finish();
    stats.records = header.block_count();
    stats.bytes_written = written;
    stats.elapsed = started.elapsed();
    Ok(Hashed {
        header,
        digest,
        stats,
    })
}

enum Sink<W: Write> {
    Stream(Box<HashWriter<CountingWriter<W>>>),
    Text(std::io::BufWriter<CountingWriter<W>>),
    Digest,
}

fn write_text<W: Write>(
    t: &mut W,
    chunk: &crate::scan::Chunk<'_>,
    kind: HashKind,
    bs: usize,
) -> Result<(), OpError> {
    for (i, h) in chunk.hashes.iter().enumerate() {
        let offset = chunk.offset + (i * bs) as u64;
        match kind {
            HashKind::Xxh3_64 => writeln!(t, "{offset} {:016x}", *h as u64),
            HashKind::Xxh3_128 => writeln!(t, "{offset} {h:032x}"),
        }
        .map_err(OpError::Output)?;
    }
    Ok(())
}

/// Refuse a block size or start offset the hash stream cannot describe, with a plain message.
fn check_header(h: &HashHeader) -> Result<(), OpError> {
    use blkpipe_format::hash::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
    if !h.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&h.block_size)
    {
        return Err(OpError::BadRange(format!(
            "block size {} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
            h.block_size
        )));
    }
    if h.start_offset > h.device_size {
        return Err(OpError::BadRange(format!(
            "start offset {} is past the end of the device ({} bytes)",
            h.start_offset, h.device_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkpipe_format::digest::{block_hash, digest_of};
    use blkpipe_format::hash::{hash_at, HashReader};

    fn opts(output: HashOutput, kind: HashKind, from: u64) -> HashOptions {
        HashOptions {
            block_size: 4096,
            seed: 5,
            kind,
            from_offset: from,
            output,
            scan: ScanOptions::default(),
            key: None,
        }
    }

    fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i / 4096 * 31 + i % 7) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    #[test]
    fn stream_round_trips_through_the_reader() {
        let len = (4 << 20) * 2 + 4096 * 5 + 17;
        let (f, data) = image(len);
        let dev = Device::open_source(f.path(), false).unwrap();
        for kind in [HashKind::Xxh3_64, HashKind::Xxh3_128] {
            let mut out = Vec::new();
            let h = hash_device(
                &dev,
                &mut out,
                &opts(HashOutput::Stream, kind, 8192),
                &Progress::hidden(),
            )
            .unwrap();
            assert_eq!(h.stats.bytes_written, out.len() as u64);
            let mut r = HashReader::new(&out[..]).unwrap();
            assert_eq!(r.header(), &h.header);
            let mut n = 0usize;
            while let Some((first, g)) = r.next_group().unwrap() {
                assert_eq!(first as usize, n);
                for i in 0..g.len() / kind.len() {
                    let off = 8192 + (n + i) * 4096;
                    let want = block_hash(&data[off..(off + 4096).min(len)], 5);
                    assert_eq!(hash_at(g, kind, i), kind.reduce(want));
                }
                n += g.len() / kind.len();
            }
            assert_eq!(n as u64, h.header.block_count());
            assert_eq!(
                r.end().unwrap().device_digest,
                digest_of(&data[8192..], 4096, 5)
            );
            assert_eq!(h.digest, digest_of(&data[8192..], 4096, 5));
        }
    }

    #[test]
    fn text_has_one_line_per_block() {
        let (f, data) = image(3 * 4096 + 1);
        let dev = Device::open_source(f.path(), false).unwrap();
        let mut out = Vec::new();
        hash_device(
            &dev,
            &mut out,
            &opts(HashOutput::Text, HashKind::Xxh3_64, 0),
            &Progress::hidden(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[3],
            format!("12288 {:016x}", block_hash(&data[12288..], 5) as u64)
        );
    }

    #[test]
    fn bad_block_size_and_offset_are_refused() {
        let (f, _) = image(8192);
        let dev = Device::open_source(f.path(), false).unwrap();
        let mut o = opts(HashOutput::Digest, HashKind::Xxh3_64, 0);
        o.block_size = 6000;
        assert!(matches!(
            hash_device(&dev, std::io::sink(), &o, &Progress::hidden()),
            Err(OpError::BadRange(_))
        ));
        let o = opts(HashOutput::Digest, HashKind::Xxh3_64, 8193);
        assert!(matches!(
            hash_device(&dev, std::io::sink(), &o, &Progress::hidden()),
            Err(OpError::BadRange(_))
        ));
    }

    #[test]
    fn start_offset_is_rounded_down_to_a_block() {
        // A resume offset from `blkpatch --print-state` is the end of a record: the end of the
        // device, or a 4 KiB boundary inside a larger block.
        let (f, data) = image(3 * 4096 + 1);
        let dev = Device::open_source(f.path(), false).unwrap();
        for (from, start) in [(4097, 4096), (3 * 4096 + 1, 3 * 4096), (8191, 4096)] {
            let mut out = Vec::new();
            let h = hash_device(
                &dev,
                &mut out,
                &opts(HashOutput::Stream, HashKind::Xxh3_64, from),
                &Progress::hidden(),
            )
            .unwrap();
            assert_eq!(h.header.start_offset, start, "--from {from}");
            assert_eq!(h.digest, digest_of(&data[start as usize..], 4096, 5));
            let r = HashReader::new(&out[..]).unwrap();
            assert_eq!(r.header().start_offset, start);
        }
    }
}
