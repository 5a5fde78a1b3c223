//! `blkread-chunks`: read a list of ranges from a device and emit them as a patch stream.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::patch::{PatchHeader, PatchWriter};
use blkpipe_format::seal::SealKey;
use blkpipe_format::MAX_RECORD_LEN;

use crate::progress::Progress;
use crate::ranges::{RangeIter, RangeLimits, SortedRanges};
use crate::{OpError, Stats};

/// Granularity of zero detection: a 4 KiB block (aligned to the device) that is all zeros
/// becomes part of a zero record.
pub const ZERO_BLOCK: u64 = 4096;

/// Options of [`read_chunks`].
#[derive(Debug, Clone)]
pub struct ChunkOptions {
    /// Compress data payloads with lz4.
    pub lz4: bool,
    /// Skip everything below this device offset (resume).
    pub from_offset: u64,
    /// Creator string for the header.
    pub creator: String,
    /// Stream id; random when `None`.
    pub stream_id: Option<[u8; 16]>,
    /// Accept a range list whose header names a different device size.
    pub ignore_size: bool,
    /// Seal the stream with this key.
    pub key: Option<SealKey>,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            lz4: false,
            from_offset: 0,
            creator: format!("blkread-chunks {}", env!("CARGO_PKG_VERSION")),
            stream_id: None,
            ignore_size: false,
            key: None,
        }
    }
}

/// One piece read from the device: the `len` bytes at `buf[skip..]` are the device's bytes at
/// `offset`, at most [`MAX_RECORD_LEN`] of them.
struct Piece {
    offset: u64,
    buf: AlignedBuf,
    skip: usize,
    len: usize,
}

/// Read ranges from `dev` (list on `ranges`) and write a patch stream to `out`.
pub fn read_chunks<R: Read, W: Write>(
    dev: &Device,
    ranges: R,
    out: W,
    opts: &ChunkOptions,
    progress: &Progress,
) -> Result<Stats, OpError> {
    let started = Instant::now();
    let ranges = SortedRanges::load(
        ranges,
        dev.size(),
        opts.ignore_size,
        opts.from_offset,
        RangeLimits::default(),
    )?;
    let total = ranges.total();
    let range_iter = ranges.iter()?;
    progress.set_total(total);
    let header = PatchHeader {
        source_size: dev.size(),
        total_payload: total,
        stream_id: opts.stream_id.unwrap_or_else(crate::random_bytes),
        creator: opts.creator.clone(),
    };
    let mut writer = PatchWriter::start(out, header, opts.lz4, false, opts.key.as_ref())
        .map_err(OpError::Output)?;

    // A reader thread keeps the device busy while this thread writes the stream.
    let (full_tx, full_rx) = sync_channel::<Result<Piece, OpError>>(2);
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(3);
    // With O_DIRECT, reads cover the whole blocks of this size around a piece.
    let align = dev
        .is_direct()
        .then(|| dev.logical_block_size().max(ZERO_BLOCK));
    let slack = align.map_or(0, |a| 2 * a);
    for _ in 0..3 {
        empty_tx
            .send(AlignedBuf::new((MAX_RECORD_LEN + slack) as usize))
            .expect("channel has room");
    }
    let mut stats = Stats::default();
    std::thread::scope(|s| {
        s.spawn(|| read_pieces(dev, align, range_iter, full_tx, empty_rx));
        // The channels are moved in, so an early return closes them and the reader stops.
        write_pieces(full_rx, empty_tx, &mut writer, &mut stats, progress)
    })?;
    stats.records = writer.record_count();
    stats.data_bytes = writer.data_bytes();
    stats.zero_bytes = writer.zero_bytes();
    writer.finish(None).map_err(OpError::Output)?;
    progress.finish();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

fn write_pieces<W: Write>(
    full: Receiver<Result<Piece, OpError>>,
    empty: SyncSender<AlignedBuf>,
    writer: &mut PatchWriter<W>,
    stats: &mut Stats,
    progress: &Progress,
) -> Result<(), OpError> {
    for piece in full.iter() {
        let piece = piece?;
        let bytes = &piece.buf[piece.skip..piece.skip + piece.len];
        emit_piece(writer, piece.offset, bytes).map_err(OpError::Output)?;
        stats.bytes_read += piece.len as u64;
        progress.inc(piece.len as u64);
        // The reader may have quit after an error; then this buffer is not needed.
        let _ = empty.send(piece.buf);
    }
    Ok(())
}

fn read_pieces(
    dev: &Device,
    align: Option<u64>,
    ranges: RangeIter<'_>,
    full: SyncSender<Result<Piece, OpError>>,
    empty: Receiver<AlignedBuf>,
) {
    for r in ranges {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        };
        let mut offset = r.offset;
        while offset < r.end() {
            // Pieces end on MAX_RECORD_LEN boundaries of the device, so reads stay aligned.
            let boundary = (offset / MAX_RECORD_LEN + 1) * MAX_RECORD_LEN;
            let len = (r.end().min(boundary) - offset) as usize;
            let Ok(mut buf) = empty.recv() else { return };
            let (start, want) = match align {
                Some(a) => {
                    let start = offset / a * a;
                    let end = (offset + len as u64).next_multiple_of(a);
                    (start, (end - start) as usize)
                }
                None => (offset, len),
            };
            // Through the page cache (sequential read-ahead) without keeping what this read
            // brought in: a whole-device copy does not evict the host's cached data. With
            // O_DIRECT nothing is cached anyway.
            let read = match align {
                Some(_) => dev.read_at(&mut buf[..want], start),
                None => dev.read_at_drop_behind(&mut buf[..want], start),
            };
            let skip = (offset - start) as usize;
            let msg = match read {
                Ok(n) if n >= skip + len => Ok(Piece {
                    offset,
                    buf,
                    skip,
                    len,
                }),
                Ok(n) => Err(OpError::Refused(format!(
                    "{}: device ended at {} while reading {len} bytes at offset {offset}",
                    dev.path().display(),
                    start + n as u64
                ))),
                Err(e) => Err(e.into()),
            };
            let failed = msg.is_err();
            if full.send(msg).is_err() || failed {
                return;
            }
            offset += len as u64;
        }
    }
}

/// Write `buf` (device bytes at `offset`) as data and zero records, zero detection per
/// [`ZERO_BLOCK`] aligned to the device.
pub fn emit_piece<W: Write>(
    writer: &mut PatchWriter<W>,
    offset: u64,
    buf: &[u8],
) -> std::io::Result<()> {
    let end = offset + buf.len() as u64;
    let mut run_start = offset;
    let mut run_zero = None;
    let mut at = offset;
    while at < end {
        let block_end = ((at / ZERO_BLOCK + 1) * ZERO_BLOCK).min(end);
        let block = &buf[(at - offset) as usize..(block_end - offset) as usize];
        let zero = is_zero(block);
        if run_zero.is_some_and(|z| z != zero) {
            emit_run(writer, offset, buf, run_start, at, run_zero == Some(true))?;
            run_start = at;
        }
        run_zero = Some(zero);
        at = block_end;
    }
    if let Some(z) = run_zero {
        emit_run(writer, offset, buf, run_start, end, z)?;
    }
    Ok(())
}

fn emit_run<W: Write>(
    writer: &mut PatchWriter<W>,
    base: u64,
    buf: &[u8],
    start: u64,
    end: u64,
    zero: bool,
) -> std::io::Result<()> {
    if zero {
        writer.write_zero(start, end - start)
    } else {
        writer.write_data(start, &buf[(start - base) as usize..(end - base) as usize])
    }
}

/// Whether every byte is zero.
#[inline]
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the middle part.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0)
}
