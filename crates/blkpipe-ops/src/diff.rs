//! `blkdiff`: compare a local device with a remote hash stream and write a patch stream of
//! the blocks that differ.
//!
//! The local device is read and hashed by [`crate::scan`] (parallel workers, large reads)
//! while this thread reads the remote hash stream one verified group at a time and compares.
//! A block's record is written only after the group holding its remote hash passed its
//! checksum, and blocks past the remote's end only after the remote's end record has been
//! verified. Adjacent differing blocks become one record (split at [`MAX_RECORD_LEN`]
//! boundaries of the device); all-zero 4 KiB blocks become zero records.
//!
//! The end record carries the local device's whole-device digest, built from the same block
//! hashes, so `blkpatch --verify` can prove the target equals the source. On any fault in the
//! hash stream no end record is written, so the `blkpatch` downstream fails as well.
//!
//! The whole local device is read even with a start offset: blocks below it are hashed for
//! the digest only.
//!
//! The first pass of a coarse-to-fine sync ([`DiffOptions::list_differing`]) may stop early
//! ([`DiffOptions::stop_above`]): once enough blocks have been compared and too many of them
//! differ, the rest of the device is listed whole and neither device is read further, so a
//! second pass over that list costs no more than a one-pass sync of the same device.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::time::Instant;

use blkpipe_dev::Device;
use blkpipe_format::digest::{BlockHasher, DigestBuilder};
use blkpipe_format::hash::{hash_at, HashHeader, HashReader};
use blkpipe_format::patch::{PatchWriter, SourceDigest, UNKNOWN_TOTAL};
use blkpipe_format::range::{write_header, write_range, BlockAligned, Range, RangeHeader};
use blkpipe_format::MAX_RECORD_LEN;

use crate::chunks::emit_piece;
use crate::digest::push_chunk;
use crate::patch_out::PatchOutput;
use crate::progress::Progress;
use crate::ranges::{RangeIter, RangeLimits, SortedRanges};
use crate::scan::{scan_ranges_while, Chunk, RangeSource, ScanOptions};
use crate::{CountingWriter, OpError, Stats};

/// Options of [`diff_device`].
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// How the patch stream is written; its key also keys the hash stream read.
    pub patch: PatchOutput,
    /// Write no records below this offset, rounded down to a multiple of the block size; the
    /// hash stream's own start offset applies too.
    pub from_offset: u64,
    /// How to read the local device.
    pub scan: ScanOptions,
    /// Write the range list of the remote's differing blocks (FORMAT.md 3.5) instead of a
    /// patch stream: the first pass of a coarse-to-fine sync.
    pub list_differing: bool,
    /// With `list_differing`: stop once more than this percentage of the blocks compared so
    /// far differ (judged from [`StopRule::min_blocks`] blocks on), and list the rest of the
    /// remote device whole.
    pub stop_above: Option<u32>,
}

/// When the first pass gives up comparing: see [`DiffOptions::stop_above`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRule {
    /// Stop when more than this percentage of the compared blocks differ.
    pub percent: u32,
    /// Judge only from this many compared blocks on.
    pub min_blocks: u64,
}

impl StopRule {
    /// The rule for a remote device of `blocks` blocks: judged from 64 blocks, or 1/64 of
    /// the device if that is more, on. With 1 MiB blocks that is 64 MiB, and 1/64 of a device
    /// above 4 GiB: a sample that several clusters of changes rarely fill by chance, and at
    /// most 1.6% of a large device read before the rule can stop.
    pub fn new(percent: u32, blocks: u64) -> Self {
        StopRule {
            percent,
            min_blocks: blocks.div_ceil(64).max(64),
        }
    }

    /// Whether to stop, after `compared` blocks of which `differing` differ.
    pub fn stops(&self, compared: u64, differing: u64) -> bool {
        compared >= self.min_blocks && differing * 100 > self.percent as u64 * compared
    }
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            patch: PatchOutput::new("blkdiff"),
            from_offset: 0,
            scan: ScanOptions::default(),
            list_differing: false,
            stop_above: None,
        }
    }
}

/// The remote hash stream, read one verified group at a time as the comparison needs it.
struct Remote<'l, R: Read> {
    reader: HashReader<R>,
    header: HashHeader,
    group_first: u64,
    group: Vec<u8>,
    group_blocks: u64,
    ended: bool,
    /// For a range-restricted stream: where its blocks are.
    cursor: Option<Cursor<'l>>,
}

/// Walks the canonical ranges of a range-restricted stream to map device offsets (in
/// ascending order) to the stream's block numbers.
struct Cursor<'l> {
    ranges: BlockAligned<RangeIter<'l>>,
    current: Option<Range>,
    base: u64,
    block_size: u64,
}

impl Cursor<'_> {
    /// The stream's block number of the block at `off`, or `None` if the list does not hold it.
    fn index_of(&mut self, off: u64) -> Result<Option<u64>, OpError> {
        loop {
            match self.current {
                Some(r) if off < r.offset => return Ok(None),
                Some(r) if off < r.end() => {
                    return Ok(Some(self.base + (off - r.offset) / self.block_size))
                }
                Some(r) => {
                    self.base += r.length.div_ceil(self.block_size);
                    self.current = None;
                }
                None => match self.ranges.next() {
                    Some(r) => self.current = Some(r?),
                    None => return Ok(None),
                },
            }
        }
    }
}

impl<R: Read> Remote<'_, R> {
    /// Whether the local block at `off` with hash `h` differs from the remote's, or `None`
    /// when the remote stream does not hold it (a range-restricted stream outside its list).
    fn differs(&mut self, off: u64, h: u128) -> Result<Option<bool>, OpError> {
        let bs = self.header.block_size as u64;
        let idx = match &mut self.cursor {
            Some(c) => match c.index_of(off)? {
                Some(i) => i,
                None => return Ok(None),
            },
            None => (off - self.header.start_offset) / bs,
        };
        Ok(Some(self.header.kind.reduce(h) != self.hash(idx)?))
    }

    /// The stored hash of remote block `idx`; groups before it are read and verified.
    fn hash(&mut self, idx: u64) -> Result<u128, OpError> {
        while idx >= self.group_first + self.group_blocks {
            match self.reader.next_group()? {
                Some((first, g)) => {
                    self.group_first = first;
                    self.group.clear();
                    self.group.extend_from_slice(g);
                    self.group_blocks = (g.len() / self.header.kind.len()) as u64;
                }
                None => {
                    return Err(OpError::Refused(format!(
                        "internal error: hash stream ended before block {idx}"
                    )))
                }
            }
        }
        Ok(hash_at(
            &self.group,
            self.header.kind,
            (idx - self.group_first) as usize,
        ))
    }

    /// Read and verify the rest of the stream, end record included.
    fn finish(&mut self) -> Result<(), OpError> {
        if !self.ended {
            while self.reader.next_group()?.is_some() {}
            self.ended = true;
        }
        Ok(())
    }
}

/// Where the differing blocks go: a patch stream, or the range list of the first pass.
enum Out<W: Write> {
    Patch(Box<PatchWriter<CountingWriter<W>>>),
    List {
        out: std::io::BufWriter<CountingWriter<W>>,
        pending: Option<Range>,
        /// The remote's size: ranges are cut there.
        limit: u64,
        ranges: u64,
        bytes: u64,
        /// When to stop early, and the blocks compared and differing so far.
        rule: Option<StopRule>,
        compared: u64,
        differing: u64,
    },
}

impl<W: Write> Out<W> {
    fn run(&mut self, chunk: &Chunk<'_>, start: u64, end: u64) -> Result<(), OpError> {
        match self {
            Out::Patch(w) => emit_run(w, chunk, start, end),
            Out::List { .. } => self.list(start, end),
        }
    }

    /// List `start..end` (cut at the remote's size), joined to the pending range if they
    /// touch.
    fn list(&mut self, start: u64, end: u64) -> Result<(), OpError> {
        let Out::List {
            out,
            pending,
            limit,
            ranges,
            bytes,
            ..
        } = self
        else {
            return Ok(());
        };
        let end = end.min(*limit);
        if start >= end {
            return Ok(());
        }
        match pending {
            Some(p) if p.end() == start => p.length += end - start,
            _ => {
                if let Some(p) = pending.replace(Range {
                    offset: start,
                    length: end - start,
                }) {
                    write_range(out, &p).map_err(OpError::Output)?;
                    *ranges += 1;
                    *bytes += p.length;
                }
            }
        }
        Ok(())
    }

    /// Count one compared block of the first pass; whether the stop rule now says stop.
    fn watch(&mut self, differs: bool) -> bool {
        match self {
            Out::List {
                rule: Some(rule),
                compared,
                differing,
                ..
            } => {
                *compared += 1;
                *differing += u64::from(differs);
                rule.stops(*compared, *differing)
            }
            _ => false,
        }
    }
}

/// Compare `dev` with the hash stream on `hashes` and write a patch stream to `out` that makes
/// the remote device equal to `dev` (or, with `list_differing`, the list of what differs).
pub fn diff_device<R: Read, W: Write>(
    dev: &Device,
    hashes: R,
    out: W,
    opts: &DiffOptions,
    progress: &Progress,
) -> Result<Stats, OpError> {
    diff_device_ranges(
        dev,
        hashes,
        None::<&[u8]>,
        RangeLimits::default(),
        out,
        opts,
        progress,
    )
}

/// Like [`diff_device`]; with `ranges`, the hash stream must be range-restricted (FORMAT.md
/// 3.5) and bound to this same list, which is read (for a device of the remote's size) only
/// after the stream's header has been checked. Only the listed blocks, and the blocks of `dev`
/// past the remote's end, are read and compared; the patch then carries no source digest.
pub fn diff_device_ranges<R: Read, L: Read, W: Write>(
    dev: &Device,
    hashes: R,
    ranges: Option<L>,
    limits: RangeLimits,
    out: W,
    opts: &DiffOptions,
    progress: &Progress,
) -> Result<Stats, OpError> {
    let started = Instant::now();
    let reader = HashReader::with_key(hashes, opts.patch.key.as_ref())?;
    let header = reader.header().clone();
    let bs = header.block_size as u64;
    // Rounded down to a block boundary, like blkhash's start offset, so an offset that
    // `blkpatch --print-state` recorded (the end of a record) can be passed as it is.
    let from = opts.from_offset - opts.from_offset % bs;
    // A hash stream that starts above where this diff starts would leave the blocks between
    // never compared, and the patch would look complete: refuse it.
    if header.start_offset > from {
        return Err(OpError::Refused(format!(
            "the hash stream starts at offset {} (blkhash --from), but blkdiff compares from offset {}: the blocks in between would never be compared; pass --from {} to blkdiff to resume from there, or hash the whole device",
            header.start_offset, from, header.start_offset
        )));
    }
    let list = match (ranges, &header.ranges) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(OpError::Refused(
                "the hash stream is range-restricted (blkhash --ranges LIST): give blkdiff the same list with --ranges LIST".into(),
            ))
        }
        (Some(_), None) => {
            return Err(OpError::Refused(
                "--ranges given, but the hash stream covers the whole device: hash with blkhash --ranges LIST, or drop --ranges".into(),
            ))
        }
        (Some(input), Some(binding)) => {
            if from != 0 {
                return Err(OpError::Refused(
                    "--from cannot be combined with --ranges".into(),
                ));
            }
            let list = SortedRanges::load(input, header.device_size, false, 0, limits)?;
            let (mine, _) = list.binding(header.block_size, header.device_size)?;
            if mine != *binding {
                return Err(OpError::Refused(format!(
                    "the range list does not match the one the hash stream was made from ({} ranges, {} blocks here; {} ranges, {} blocks in the stream; list digests {:032x} and {:032x}): pass blkdiff the list given to blkhash --ranges",
                    mine.range_count, mine.block_count, binding.range_count, binding.block_count, mine.list_digest, binding.list_digest
                )));
            }
            Some(list)
        }
    };
    let compare_from = from;
    let cursor = match &list {
        Some(l) => Some(Cursor {
            ranges: l.blocks(header.block_size, header.device_size)?,
            current: None,
            base: 0,
            block_size: bs,
        }),
        None => None,
    };
    let mut remote = Remote {
        reader,
        header: header.clone(),
        group_first: 0,
        group: Vec::new(),
        group_blocks: 0,
        ended: false,
        cursor,
    };
    let mut sink = if opts.list_differing {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, CountingWriter::new(out));
        write_header(
            &mut out,
            &RangeHeader {
                size: Some(header.device_size),
                chunk: Some(bs),
            },
        )
        .map_err(OpError::Output)?;
        let blocks = header.device_size.div_ceil(bs);
        Out::List {
            out,
            pending: None,
            limit: header.device_size,
            ranges: 0,
            bytes: 0,
            rule: opts.stop_above.map(|p| StopRule::new(p, blocks)),
            compared: 0,
            differing: 0,
        }
    } else {
        let out = CountingWriter::new(out);
        let w = opts
            .patch
            .start(out, dev.size(), UNKNOWN_TOTAL, None, list.is_none())?;
        Out::Patch(Box::new(w))
    };
    let size = dev.size();
    // What to read: the whole device, or the listed blocks and what lies past the remote's end.
    let (pieces, total): (RangeSource<'_>, u64) = match &list {
        None => (Box::new(std::iter::once(Ok((0, size)))), size),
        Some(l) => {
            let mut total = 0;
            let mut last_end = 0;
            for r in l.blocks(header.block_size, header.device_size)? {
                let r = r?;
                if r.offset < size {
                    total += r.end().min(size) - r.offset;
                    last_end = r.end().min(size);
                }
            }
            let tail = (header.device_size - header.device_size % bs).max(last_end);
            let tail = (tail < size).then_some((tail, size));
            total += tail.map_or(0, |(a, b)| b - a);
            let listed = l
                .blocks(header.block_size, header.device_size)?
                .map(move |r| r.map(|r| (r.offset, r.end().min(size))))
                .filter(move |r| r.as_ref().map_or(true, |&(a, _)| a < size));
            (Box::new(listed.chain(tail.map(Ok))), total)
        }
    };
    progress.set_total(total);
    let mut digest = DigestBuilder::new(bs, header.seed);
    let mut stats = Stats::default();
    // Keyed: local blocks are hashed as the keyed stream's were, and the source digest in
    // the sealed patch is built from keyed hashes too (FORMAT.md 6).
    let hasher = BlockHasher::new(header.seed, opts.patch.key.as_ref());
    let mut stopped_at = None;
    scan_ranges_while(
        dev,
        pieces,
        header.block_size,
        &hasher,
        &opts.scan,
        |chunk| {
            push_chunk(&mut digest, chunk.hashes, chunk.data.len(), bs as usize);
            stopped_at = compare_chunk(chunk, &mut remote, compare_from, &mut sink, &mut stats)?;
            stats.bytes_read += chunk.data.len() as u64;
            progress.inc(chunk.data.len() as u64);
            Ok(match stopped_at {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            })
        },
    )?;
    match stopped_at {
        // The rest of the remote device, listed whole; the rest of its hash stream unread.
        Some(at) => sink.list(at, header.device_size)?,
        // The remote may hold more blocks than we do: they must verify too before the end
        // record.
        None => remote.finish()?,
    }
    let written = match sink {
        Out::Patch(writer) => {
            stats.records = writer.record_count();
            stats.data_bytes = writer.data_bytes();
            stats.zero_bytes = writer.zero_bytes();
            // The digest of the whole device, unless only parts of it were read.
            let source_digest = list.is_none().then(|| SourceDigest {
                block_size: header.block_size,
                seed: header.seed,
                digest: digest.finish(),
            });
            writer
                .finish(source_digest)
                .map_err(OpError::Output)?
                .count()
        }
        Out::List {
            mut out,
            pending,
            mut ranges,
            mut bytes,
            rule,
            compared,
            differing,
            ..
        } => {
            if let Some(p) = pending {
                write_range(&mut out, &p).map_err(OpError::Output)?;
                ranges += 1;
                bytes += p.length;
            }
            if let (Some(at), Some(rule)) = (stopped_at, rule) {
                // Last, so that a list cut short by a failure never carries it.
                writeln!(
                    out,
                    "# stopped at {at}: {differing} of {compared} blocks compared differ (more than {}%); the rest is listed whole",
                    rule.percent
                )
                .map_err(OpError::Output)?;
            }
            stats.records = ranges;
            stats.data_bytes = bytes;
            let mut out = out
                .into_inner()
                .map_err(|e| OpError::Output(e.into_error()))?;
            out.flush().map_err(OpError::Output)?;
            out.count()
        }
    };
    stats.bytes_written = written;
    progress.finish();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// Compare one chunk's blocks with the remote's and write records for the runs that differ.
/// `Some(offset)` when the first pass's stop rule stopped it: the blocks below `offset` are
/// compared and listed, the rest is not.
fn compare_chunk<R: Read, W: Write>(
    chunk: &Chunk<'_>,
    remote: &mut Remote<'_, R>,
    compare_from: u64,
    sink: &mut Out<W>,
    stats: &mut Stats,
) -> Result<Option<u64>, OpError> {
    let bs = remote.header.block_size as u64;
    let remote_size = remote.header.device_size;
    let chunk_end = chunk.offset + chunk.data.len() as u64;
    let mut run: Option<u64> = None;
    for (i, h) in chunk.hashes.iter().enumerate() {
        let off = chunk.offset + i as u64 * bs;
        let mut stop = false;
        let differs = if off < compare_from {
            None
        } else if off < remote_size {
            // A block a range-restricted stream does not hold was read because it lies past
            // the remote's last whole block: send it.
            let d = remote.differs(off, *h)?.unwrap_or(true);
            // At the remote's last block nothing is left to list whole: finish as usual.
            stop = sink.watch(d) && off + bs < remote_size;
            Some(d)
        } else {
            remote.finish()?;
            Some(true)
        };
        if stop {
            let end = (off + bs).min(chunk_end);
            if differs == Some(true) {
                stats.blocks_different += 1;
                sink.run(chunk, run.unwrap_or(off), end)?;
            } else {
                stats.blocks_same += 1;
                if let Some(s) = run {
                    sink.run(chunk, s, off)?;
                }
            }
            return Ok(Some(end));
        }
        match differs {
            Some(true) => {
                stats.blocks_different += 1;
                run.get_or_insert(off);
            }
            Some(false) | None => {
                if differs.is_some() {
                    stats.blocks_same += 1;
                }
                if let Some(s) = run.take() {
                    sink.run(chunk, s, off)?;
                }
            }
        }
    }
    if let Some(s) = run {
        sink.run(chunk, s, chunk_end)?;
    }
    Ok(None)
}

/// Write `start..end` of `chunk` as records no longer than [`MAX_RECORD_LEN`], cut at its
/// multiples so records line up with the ones `blkread-chunks` writes.
fn emit_run<W: Write>(
    writer: &mut PatchWriter<W>,
    chunk: &Chunk<'_>,
    start: u64,
    end: u64,
) -> Result<(), OpError> {
    let mut at = start;
    while at < end {
        let piece_end = ((at / MAX_RECORD_LEN + 1) * MAX_RECORD_LEN).min(end);
        let data = &chunk.data[(at - chunk.offset) as usize..(piece_end - chunk.offset) as usize];
        emit_piece(writer, at, data).map_err(OpError::Output)?;
        at = piece_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
