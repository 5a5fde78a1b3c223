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
    /// With a key: bind the stream to this place in a backup chain (FORMAT.md 6.6).
    pub chain: Option<blkpipe_format::chain::ChainBlock>,
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
            chain: None,
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
        chain: opts.chain,
    };
    let mut writer = PatchWriter::start(out, header, opts.lz4, false, opts.key.as_ref())
        .map_err(OpError::Output)?;
    let link = writer.link();

    // Reader threads keep the device busy while this thread writes the stream. An NBD export
    // that allows several connections gets two readers, taking pieces in turn, so requests
    // stay in flight across pieces (one reader leaves the server idle between its reads);
    // the client gives the second its own connection. The pieces still arrive in order.
    let readers = if dev.nbd().is_some_and(|c| c.can_multi_conn()) {
        2
    } else {
        1
    };
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(2 + readers);
    // With O_DIRECT, reads cover the whole blocks of this size around a piece.
    let align = dev
        .is_direct()
        .then(|| dev.logical_block_size().max(ZERO_BLOCK));
    let slack = align.map_or(0, |a| 2 * a);
    for _ in 0..2 + readers {
        empty_tx
            .send(AlignedBuf::new((MAX_RECORD_LEN + slack) as usize))
            .expect("channel has room");
    }
    let mut stats = Stats::default();
    std::thread::scope(|s| {
        let mut work = Vec::new();
        let mut full = Vec::new();
        for _ in 0..readers {
            let (work_tx, work_rx) = sync_channel::<Result<Piece, OpError>>(1);
            let (full_tx, full_rx) = sync_channel::<Result<Piece, OpError>>(2);
            s.spawn(move || read_pieces(dev, work_rx, full_tx));
            work.push(work_tx);
            full.push(full_rx);
        }
        s.spawn(move || plan_pieces(align, range_iter, work, empty_rx));
        // The channels are moved in, so an early return closes them and the readers stop.
        write_pieces(full, empty_tx, &mut writer, &mut stats, progress)
    })?;
    stats.records = writer.record_count();
    stats.data_bytes = writer.data_bytes();
    stats.zero_bytes = writer.zero_bytes();
    writer.finish(None).map_err(OpError::Output)?;
    progress.finish();
    stats.elapsed = started.elapsed();
    stats.link = link;
    Ok(stats)
}

fn write_pieces<W: Write>(
    full: Vec<Receiver<Result<Piece, OpError>>>,
    empty: SyncSender<AlignedBuf>,
    writer: &mut PatchWriter<W>,
    stats: &mut Stats,
    progress: &Progress,
) -> Result<(), OpError> {
    // Piece k comes from reader k mod n; the first closed channel in turn is the end.
    for rx in full.iter().cycle() {
        let Ok(piece) = rx.recv() else { break };
        let piece = piece?;
        let bytes = &piece.buf[piece.skip..piece.skip + piece.len];
        emit_piece(writer, piece.offset, bytes).map_err(OpError::Output)?;
        stats.bytes_read += piece.len as u64;
        progress.inc(piece.len as u64);
        // The readers may have quit after an error; then this buffer is not needed.
        let _ = empty.send(piece.buf);
    }
    Ok(())
}

/// Cut the ranges into pieces, give each an empty buffer and hand them to the readers in
/// turn (an error too, so it reaches the writer in its place).
fn plan_pieces(
    align: Option<u64>,
    ranges: RangeIter<'_>,
    work: Vec<SyncSender<Result<Piece, OpError>>>,
    empty: Receiver<AlignedBuf>,
) {
    let mut turn = work.iter().cycle();
    for r in ranges {
        let to = turn.next().expect("at least one reader");
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = to.send(Err(e));
                return;
            }
        };
        let mut offset = r.offset;
        let mut to = Some(to);
        while offset < r.end() {
            let to = to
                .take()
                .unwrap_or_else(|| turn.next().expect("at least one reader"));
            // Pieces end on MAX_RECORD_LEN boundaries of the device, so reads stay aligned.
            let boundary = (offset / MAX_RECORD_LEN + 1) * MAX_RECORD_LEN;
            let len = (r.end().min(boundary) - offset) as usize;
            let Ok(buf) = empty.recv() else { return };
            // `skip` is where the piece starts within the (aligned) read.
            let skip = align.map_or(0, |a| (offset - offset / a * a) as usize);
            if to
                .send(Ok(Piece {
                    offset,
                    buf,
                    skip,
                    len,
                }))
                .is_err()
            {
                return;
            }
            offset += len as u64;
        }
    }
}

/// Read the pieces given to this reader, in the order given, and pass them on.
fn read_pieces(
    dev: &Device,
    work: Receiver<Result<Piece, OpError>>,
    full: SyncSender<Result<Piece, OpError>>,
) {
    for piece in work.iter() {
        let Ok(mut piece) = piece else {
            let _ = full.send(piece);
            return;
        };
        let (offset, len, skip) = (piece.offset, piece.len, piece.skip);
        let start = offset - skip as u64;
        let aligned = dev.is_direct();
        let want = if aligned {
            let a = dev.logical_block_size().max(ZERO_BLOCK);
            ((offset + len as u64).next_multiple_of(a) - start) as usize
        } else {
            len
        };
        // Through the page cache (sequential read-ahead) without keeping what this read
        // brought in: a whole-device copy does not evict the host's cached data. With
        // O_DIRECT nothing is cached anyway.
        let read = if aligned {
            dev.read_at(&mut piece.buf[..want], start)
        } else {
            dev.read_at_drop_behind(&mut piece.buf[..want], start)
        };
        let msg = match read {
            Ok(n) if n >= skip + len => Ok(piece),
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
