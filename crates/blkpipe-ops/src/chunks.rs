//! `blkread-chunks`: read a list of ranges from a device and emit them as a patch stream.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::patch::PatchWriter;
use blkpipe_format::MAX_RECORD_LEN;

use crate::patch_out::PatchOutput;
use crate::progress::Progress;
use crate::ranges::{RangeIter, RangeLimits, SortedRanges};
use crate::{OpError, Stats};

/// Granularity of zero detection: a 4 KiB block (aligned to the device) that is all zeros
/// becomes part of a zero record.
pub const ZERO_BLOCK: u64 = 4096;

/// Options of [`read_chunks`].
#[derive(Debug, Clone)]
pub struct ChunkOptions {
    /// How the patch stream is written.
    pub patch: PatchOutput,
    /// Skip everything below this device offset (resume).
    pub from_offset: u64,
    /// Accept a range list whose header names a different device size.
    pub ignore_size: bool,
    /// With a key: bind the stream to this place in a backup chain (FORMAT.md 6.6).
    pub chain: Option<blkpipe_format::chain::ChainBlock>,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            patch: PatchOutput::new("blkread-chunks"),
            from_offset: 0,
            ignore_size: false,
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
    let writer = opts
        .patch
        .start(Outbox::default(), dev.size(), total, opts.chain, false)?;
    let link = writer.link();

    // Reader threads keep the device busy while a framing thread cuts what they read into
    // records and hashes them (checksum, MAC), and this thread writes the stream: so the
    // hashing of one piece overlaps the writing of the one before, which waits for the
    // consumer to drain the pipe. An NBD export that allows several connections gets two
    // readers, taking pieces in turn, so requests stay in flight across pieces (one reader
    // leaves the server idle between its reads); the client gives the second its own
    // connection. The pieces still arrive in order.
    let readers = if dev.nbd().is_some_and(|c| c.can_multi_conn()) {
        2
    } else {
        1
    };
    // One buffer being read per reader, one waiting for the framer, one being framed, one
    // queued for writing, one being written.
    let buffers = 3 + readers;
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(buffers);
    // With O_DIRECT, reads cover the whole blocks of this size around a piece.
    let align = dev
        .is_direct()
        .then(|| dev.logical_block_size().max(ZERO_BLOCK));
    let slack = align.map_or(0, |a| 2 * a);
    for _ in 0..buffers {
        empty_tx
            .send(AlignedBuf::new((MAX_RECORD_LEN + slack) as usize))
            .expect("channel has room");
    }
    let mut stats = Stats::default();
    let mut out = out;
    let counts = std::thread::scope(|s| {
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
        let (batch_tx, batch_rx) = sync_channel::<Batch>(1);
        let lz4 = opts.patch.lz4;
        let framer = s.spawn(move || frame_pieces(full, writer, lz4, batch_tx));
        // The channels are moved in, so an early return closes them and the other threads
        // stop.
        let written = write_batches(batch_rx, &mut out, empty_tx, &mut stats, progress);
        let framed = framer
            .join()
            .unwrap_or_else(|_| Err(OpError::Refused("the framing thread panicked".into())));
        written?;
        framed
    })?;
    (stats.records, stats.data_bytes, stats.zero_bytes) = counts;
    progress.finish();
    stats.elapsed = started.elapsed();
    stats.link = link;
    Ok(stats)
}

/// Part of the stream, in order: bytes, or a range of the batch's piece buffer.
enum Seg {
    Bytes(Vec<u8>),
    Piece(std::ops::Range<usize>),
}

/// What the framing thread hands to the writing thread: the stream bytes of one piece (its
/// records' headers, payloads straight from the piece's buffer, MACs), or the end.
struct Batch {
    segs: Vec<Seg>,
    /// The piece's buffer, back to the readers once written.
    buf: Option<AlignedBuf>,
    /// Device bytes the piece covers.
    len: u64,
}

/// The output of the framing thread's [`PatchWriter`]: it collects what the writer writes
/// (stream header, zero records, lz4 records, end record) and the payload ranges of plain
/// data records in stream order, to be handed over as a [`Batch`].
#[derive(Default)]
struct Outbox {
    segs: Vec<Seg>,
}

impl Write for Outbox {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self.segs.last_mut() {
            Some(Seg::Bytes(v)) => v.extend_from_slice(b),
            _ => self.segs.push(Seg::Bytes(b.to_vec())),
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Frame the pieces in device order (piece k comes from reader k mod n; the first closed
/// channel in turn is the end), then the end record. Returns the record, data and zero byte
/// counts.
fn frame_pieces(
    full: Vec<Receiver<Result<Piece, OpError>>>,
    mut writer: PatchWriter<Outbox>,
    lz4: bool,
    batches: SyncSender<Batch>,
) -> Result<(u64, u64, u64), OpError> {
    for rx in full.iter().cycle() {
        let Ok(piece) = rx.recv() else { break };
        let piece = piece?;
        let bytes = &piece.buf[piece.skip..piece.skip + piece.len];
        frame_piece(&mut writer, piece.offset, bytes, piece.skip, lz4).map_err(OpError::Output)?;
        let batch = Batch {
            segs: std::mem::take(&mut writer.get_mut().segs),
            buf: Some(piece.buf),
            len: piece.len as u64,
        };
        if batches.send(batch).is_err() {
            // The writing thread stopped at an error; it reports it.
            return Ok((0, 0, 0));
        }
    }
    let counts = (
        writer.record_count(),
        writer.data_bytes(),
        writer.zero_bytes(),
    );
    let end = writer.finish(None).map_err(OpError::Output)?;
    let _ = batches.send(Batch {
        segs: end.segs,
        buf: None,
        len: 0,
    });
    Ok(counts)
}

/// Write the batches to `out` in order, giving each piece buffer back once written.
fn write_batches<W: Write>(
    batches: Receiver<Batch>,
    out: &mut W,
    empty: SyncSender<AlignedBuf>,
    stats: &mut Stats,
    progress: &Progress,
) -> Result<(), OpError> {
    for batch in batches.iter() {
        for seg in &batch.segs {
            let bytes = match (seg, &batch.buf) {
                (Seg::Bytes(v), _) => &v[..],
                (Seg::Piece(r), Some(buf)) => &buf[r.clone()],
                (Seg::Piece(_), None) => {
                    return Err(OpError::Refused(
                        "internal error: a payload range without its buffer".into(),
                    ))
                }
            };
            out.write_all(bytes).map_err(OpError::Output)?;
        }
        stats.bytes_read += batch.len;
        progress.inc(batch.len);
        if let Some(buf) = batch.buf {
            // The readers may have quit after an error; then this buffer is not needed.
            let _ = empty.send(buf);
        }
    }
    out.flush().map_err(OpError::Output)
}

/// [`emit_piece`] into the framing thread's writer: plain data records are framed, their
/// payloads left in the piece buffer (`buf` starts at `skip` in it); with `lz4`, records are
/// written (compressed) through the writer.
fn frame_piece(
    writer: &mut PatchWriter<Outbox>,
    offset: u64,
    buf: &[u8],
    skip: usize,
    lz4: bool,
) -> std::io::Result<()> {
    for_each_run(offset, buf, |start, end, zero| {
        let (a, b) = ((start - offset) as usize, (end - offset) as usize);
        if zero {
            writer.write_zero(start, end - start)
        } else if lz4 {
            writer.write_data(start, &buf[a..b])
        } else {
            let frame = writer.frame_data(start, &buf[a..b])?;
            let out = writer.get_mut();
            out.write_all(&frame.head)?;
            out.segs.push(Seg::Piece(skip + a..skip + b));
            if let Some(mac) = frame.mac {
                out.write_all(&mac)?;
            }
            Ok(())
        }
    })
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
    for_each_run(offset, buf, |start, end, zero| {
        emit_run(writer, offset, buf, start, end, zero)
    })
}

/// Call `f(start, end, zero)` for each maximal run of all-zero or not-all-zero
/// [`ZERO_BLOCK`]s (aligned to the device) of `buf`, device bytes at `offset`, in order.
fn for_each_run(
    offset: u64,
    buf: &[u8],
    mut f: impl FnMut(u64, u64, bool) -> std::io::Result<()>,
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
            f(run_start, at, run_zero == Some(true))?;
            run_start = at;
        }
        run_zero = Some(zero);
        at = block_end;
    }
    if let Some(z) = run_zero {
        f(run_start, end, z)?;
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
