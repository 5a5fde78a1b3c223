//! Read and hash a range of a device in parallel: the one engine behind `blkhash`, `blkdiff`'s
//! local side and `blkpatch --verify`.
//!
//! The range is cut into chunks of [`CHUNK_BYTES`] (or one block, if blocks are larger), aligned
//! to multiples of the chunk size on the device. Worker threads each take a free buffer from a
//! fixed pool, claim the next chunk, read it with one large positional read, and hash its
//! blocks. Reads through the page cache are taken in turn, in device order, so the kernel sees
//! one sequential reader and reads ahead; they keep nothing they brought into the cache and
//! leave what was cached before ([`Device::read_at_drop_behind`]). With `O_DIRECT` the reads
//! run in parallel.
//! So reads of one worker overlap the hashing of the others, and the device always has requests
//! queued. The calling thread receives the chunks back in device order, with their data and
//! block hashes, and then returns the buffer to the pool. Memory is the pool and nothing else:
//! at most [`POOL_BYTES`] (a little more for blocks over 8 MiB), whatever the device size.
//!
//! ```no_run
//! use blkpipe_dev::Device;
//! use blkpipe_ops::scan::{scan, ScanOptions};
//! let dev = Device::open_source("disk.img".as_ref(), false).unwrap();
//! let mut blocks = 0;
//! scan(&dev, 0, dev.size(), 4096, 7, &ScanOptions::default(), |chunk| {
//!     blocks += chunk.hashes.len();
//!     Ok(())
//! })
//! .unwrap();
//! ```

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::digest::BlockHasher;

use crate::OpError;

/// Bytes per read request (and per chunk handed to the consumer), unless a block is larger.
pub const CHUNK_BYTES: u64 = 4 << 20;
/// Upper bound of the buffer pool, in bytes (at least three chunks are always allocated).
pub const POOL_BYTES: u64 = 40 << 20;

/// How to read.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// The device was opened with `O_DIRECT`: read whole aligned blocks, skip fadvise.
    pub direct: bool,
    /// Drop each chunk from the page cache after reading it.
    pub drop_cache: bool,
    /// Do not read what the device says reads as zeros (holes of a sparse file, found with
    /// `SEEK_DATA`), nor hash it: it is handed on as zeros, and each whole block in a hole
    /// (also inside a chunk that holds data) takes the hash of a zero block, made once.
    pub skip_holes: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            threads: 0,
            direct: false,
            drop_cache: true,
            skip_holes: true,
        }
    }
}

impl ScanOptions {
    /// The number of worker threads to use.
    pub fn worker_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// One chunk of the device, handed to the consumer in device order.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// Device offset of the first byte.
    pub offset: u64,
    /// The bytes read.
    pub data: &'a [u8],
    /// The 128-bit hash of each block in `data` (the last block may be short).
    pub hashes: &'a [u128],
}

struct Slot {
    buf: AlignedBuf,
    hashes: Vec<u128>,
    /// The parts of `buf` that may hold something other than zeros (ascending): the next
    /// chunk with holes clears only these, not the whole buffer.
    dirty: Vec<Range<usize>>,
    /// The parts of the chunk just read that are holes (ascending, relative to the chunk):
    /// zeros in `buf` that were not read, whose whole blocks take the zero block's hash
    /// without being hashed.
    holes: Vec<Range<usize>>,
}

impl Slot {
    fn new(len: usize, blocks: usize) -> Slot {
        Slot {
            buf: AlignedBuf::new(len),
            hashes: Vec::with_capacity(blocks),
            dirty: Vec::new(),
            holes: Vec::new(),
        }
    }

    /// Zero what may not be zeros, so the whole buffer is.
    fn clear(&mut self) {
        for r in self.dirty.drain(..) {
            self.buf[r].fill(0);
        }
    }

    /// The whole buffer may hold anything (after a read of it all).
    fn all_dirty(&mut self) {
        self.dirty.clear();
        self.dirty.push(0..self.buf.len());
    }

    /// Hash the `len` bytes of the chunk in blocks of `bs`: the whole blocks inside a hole
    /// take `zero` (the hash of a block of zeros, made once), the others are hashed.
    fn hash_blocks(
        &mut self,
        len: usize,
        bs: usize,
        hasher: &BlockHasher,
        zero: &std::sync::OnceLock<u128>,
    ) {
        self.hashes.clear();
        let data = &self.buf[..len];
        let mut holes = self.holes.iter().peekable();
        for (i, block) in data.chunks(bs).enumerate() {
            let at = i * bs;
            while holes.next_if(|h| h.end <= at).is_some() {}
            let in_hole = block.len() == bs
                && holes
                    .peek()
                    .is_some_and(|h| h.start <= at && at + bs <= h.end);
            self.hashes.push(if in_hole {
                *zero.get_or_init(|| hasher.hash(&vec![0u8; bs]))
            } else {
                hasher.hash(block)
            });
        }
    }
}

/// Free buffers, shared by the workers and the consumer.
struct Pool {
    state: Mutex<(Vec<Slot>, bool)>,
    ready: Condvar,
}

impl Pool {
    /// A free slot, or `None` once the scan is stopping.
    fn take(&self) -> Option<Slot> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.1 {
                return None;
            }
            if let Some(s) = st.0.pop() {
                return Some(s);
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, slot: Slot) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(slot);
        self.ready.notify_one();
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.ready.notify_all();
    }
}

/// Read `dev` from `start` to `end` in blocks of `block_size` (`start` a multiple of it),
/// hash every block with `seed`, and call `consume` with each chunk in device order.
///
/// An error from `consume` stops the scan and is returned; so is a read error or a device
/// that ends before `end`.
pub fn scan<F>(
    dev: &Device,
    start: u64,
    end: u64,
    block_size: u32,
    seed: u64,
    opts: &ScanOptions,
    consume: F,
) -> Result<(), OpError>
where
    F: FnMut(&Chunk<'_>) -> Result<(), OpError>,
{
    scan_with(
        dev,
        start,
        end,
        block_size,
        &BlockHasher::Xxh3 { seed },
        opts,
        consume,
    )
}

/// [`scan`] with block hashes made by `hasher` (keyed BLAKE3 for keyed hash streams).
pub fn scan_with<F>(
    dev: &Device,
    start: u64,
    end: u64,
    block_size: u32,
    hasher: &BlockHasher,
    opts: &ScanOptions,
    consume: F,
) -> Result<(), OpError>
where
    F: FnMut(&Chunk<'_>) -> Result<(), OpError>,
{
    let whole = std::iter::once(Ok::<_, OpError>((start, end))).filter(|_| start < end);
    scan_ranges(dev, whole, block_size, hasher, opts, consume)
}

/// A boxed source of `(start, end)` ranges for [`scan_ranges`].
pub type RangeSource<'a> = Box<dyn Iterator<Item = Result<(u64, u64), OpError>> + Send + 'a>;

/// Like [`scan`], over several ranges `(start, end)` in ascending order, each `start` a
/// multiple of `block_size` (ranges as [`blkpipe_format::range::BlockAligned`] gives them).
/// Chunks never cross a range's end; an `Err` from `ranges` stops the scan and is returned.
pub fn scan_ranges<I, F>(
    dev: &Device,
    ranges: I,
    block_size: u32,
    hasher: &BlockHasher,
    opts: &ScanOptions,
    mut consume: F,
) -> Result<(), OpError>
where
    I: Iterator<Item = Result<(u64, u64), OpError>> + Send,
    F: FnMut(&Chunk<'_>) -> Result<(), OpError>,
{
    scan_ranges_while(dev, ranges, block_size, hasher, opts, |c| {
        consume(c).map(|()| ControlFlow::Continue(()))
    })
}

/// Like [`scan_ranges`], but `consume` may end the scan early with [`ControlFlow::Break`]:
/// no later chunk is handed to it and the readers stop (a chunk or two they already read
/// ahead is dropped).
pub fn scan_ranges_while<I, F>(
    dev: &Device,
    ranges: I,
    block_size: u32,
    hasher: &BlockHasher,
    opts: &ScanOptions,
    mut consume: F,
) -> Result<(), OpError>
where
    I: Iterator<Item = Result<(u64, u64), OpError>> + Send,
    F: FnMut(&Chunk<'_>) -> Result<ControlFlow<()>, OpError>,
{
    let bs = block_size as u64;
    let chunk = CHUNK_BYTES.max(bs);
    let mut ranges = ranges.peekable();
    if ranges.peek().is_none() {
        return Ok(());
    }
    let slots = ((POOL_BYTES / chunk).max(3) as usize)
        .min(opts.worker_count() + 2)
        .max(3);
    let workers = opts.worker_count().min(slots - 1).max(1);
    let pool = Pool {
        state: Mutex::new((
            (0..slots)
                .map(|_| Slot::new(chunk as usize, (chunk / bs) as usize))
                .collect(),
            false,
        )),
        ready: Condvar::new(),
    };
    let how = read_mode(opts);
    // The hash of an all-zero block, made once, for the blocks in holes.
    let zero_hash = std::sync::OnceLock::new();
    let extents = Extents::default();
    // The chunk source: the next chunk's number and place, taken in turn under this lock.
    let pieces = Mutex::new(Pieces {
        ranges,
        current: None,
        chunk,
        next: 0,
    });
    let (tx, rx) = mpsc::channel::<(u64, Result<(u64, u64, Slot), OpError>)>();

    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (pool, pieces, zero_hash, extents) = (&pool, &pieces, &zero_hash, &extents);
            s.spawn(move || {
                // Take the buffer before claiming a chunk, so every claimed chunk can finish
                // and the consumer never waits on a chunk that waits for a buffer.
                while let Some(mut slot) = pool.take() {
                    let mut turn = pieces.lock().unwrap_or_else(|e| e.into_inner());
                    let (k, piece) = turn.claim();
                    let (off, len) = match piece {
                        None => {
                            drop(turn);
                            pool.put(slot);
                            return;
                        }
                        Some(Err(e)) => {
                            drop(turn);
                            let _ = tx.send((k, Err(e)));
                            pool.stop();
                            return;
                        }
                        Some(Ok(p)) => p,
                    };
                    // Reads through the page cache are made one at a time in device order,
                    // so the kernel sees one sequential reader and reads ahead for it (two
                    // interleaved readers of one file defeat read-ahead and contend on the
                    // cache); direct reads are independent requests and run in parallel.
                    let turn = match how {
                        ReadMode::Direct => {
                            drop(turn);
                            None
                        }
                        ReadMode::Buffered | ReadMode::BufferedDropBehind => Some(turn),
                    };
                    let res = if opts.skip_holes {
                        read_sparse(dev, extents, &mut slot, off, len as usize, how)
                    } else {
                        slot.all_dirty();
                        slot.holes.clear();
                        read_chunk(dev, &mut slot.buf, off, len as usize, how)
                    };
                    drop(turn);
                    let msg = res.map(|()| {
                        slot.hash_blocks(len as usize, bs as usize, hasher, zero_hash);
                        (off, len, slot)
                    });
                    let failed = msg.is_err();
                    if tx.send((k, msg)).is_err() || failed {
                        pool.stop();
                        return;
                    }
                }
            });
        }
        drop(tx);

        let mut pending: BTreeMap<u64, (u64, u64, Slot)> = BTreeMap::new();
        let mut want = 0u64;
        let result = (|| {
            loop {
                if let Some((off, len, slot)) = pending.remove(&want) {
                    let chunk = Chunk {
                        offset: off,
                        data: &slot.buf[..len as usize],
                        hashes: &slot.hashes,
                    };
                    if consume(&chunk)?.is_break() {
                        return Ok(());
                    }
                    pool.put(slot);
                    want += 1;
                    continue;
                }
                match rx.recv() {
                    Ok((k, Ok(piece))) => {
                        pending.insert(k, piece);
                    }
                    Ok((_, Err(e))) => return Err(e),
                    // Every worker is gone: all claimed chunks were delivered, or one is lost.
                    Err(_) if pending.is_empty() => return Ok(()),
                    Err(_) => {
                        return Err(OpError::Refused(
                            "internal error: device readers stopped early".into(),
                        ))
                    }
                }
            }
        })();
        pool.stop();
        result
    })
}

/// Cuts ranges into chunks aligned to multiples of the chunk size on the device, numbered in
/// order.
struct Pieces<I> {
    ranges: I,
    current: Option<(u64, u64)>,
    chunk: u64,
    next: u64,
}

impl<I: Iterator<Item = Result<(u64, u64), OpError>>> Pieces<I> {
    /// The next chunk's number and `(offset, length)`, `None` at the end.
    #[allow(clippy::type_complexity)]
    fn claim(&mut self) -> (u64, Option<Result<(u64, u64), OpError>>) {
        let k = self.next;
        loop {
            match self.current {
                Some((at, end)) if at < end => {
                    let stop = ((at / self.chunk + 1) * self.chunk).min(end);
                    self.current = Some((stop, end));
                    self.next += 1;
                    return (k, Some(Ok((at, stop - at))));
                }
                _ => match self.ranges.next() {
                    None => return (k, None),
                    Some(Err(e)) => {
                        self.current = None;
                        return (k, Some(Err(e)));
                    }
                    Some(Ok(r)) => self.current = Some(r),
                },
            }
        }
    }
}

/// How one chunk is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Through the page cache, leaving it as it is.
    Buffered,
    /// Through the page cache without keeping what this read brought in.
    BufferedDropBehind,
    /// With `O_DIRECT` (the device was opened that way).
    Direct,
}

fn read_mode(opts: &ScanOptions) -> ReadMode {
    if opts.direct {
        ReadMode::Direct
    } else if opts.drop_cache {
        ReadMode::BufferedDropBehind
    } else {
        ReadMode::Buffered
    }
}

/// The last answer of [`Device::next_data`] in a scan, so the chunks that one extent (or one
/// hole) spans ask once: `lseek(SEEK_HOLE)` can cost time in proportion to the data after the
/// offset (tmpfs walks its pages: 11 ms per call at 2 GiB, so 18 s of system time for a
/// dense 2 GiB image asked once per 4 MiB chunk).
#[derive(Default)]
struct Extents(Mutex<Option<(u64, (u64, u64))>>);

impl Extents {
    /// [`Device::next_data`] at `offset`, answered from the last call when that covers it:
    /// `(from, (start, end))` says `from..start` is a hole and `start..end` data. "No data
    /// to the end" is not kept: asked again, the device notices a file that shrank.
    fn next_data(&self, dev: &Device, offset: u64) -> Result<Option<(u64, u64)>, OpError> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, (s, e))) = *last {
            if from <= offset && offset < e {
                return Ok(Some((s.max(offset), e)));
            }
        }
        let found = dev.next_data(offset)?;
        if let Some(extent) = found {
            *last = Some((offset, extent));
        }
        Ok(found)
    }
}

/// Read `len` bytes at `off` into the slot's buffer, reading only the extents the device
/// says may hold data ([`Device::next_data`]) and zeroing the rest; the slot's `holes` say
/// which parts were not read. With `O_DIRECT` only whole-chunk holes are skipped; a chunk
/// with any data is read whole.
fn read_sparse(
    dev: &Device,
    extents: &Extents,
    slot: &mut Slot,
    off: u64,
    len: usize,
    how: ReadMode,
) -> Result<(), OpError> {
    let end = off + len as u64;
    slot.holes.clear();
    // A range past the device's end is read, so the short read is found and reported.
    let first = if end > dev.size() {
        Some((off, end))
    } else {
        extents.next_data(dev, off)?
    };
    match first {
        None => {
            slot.clear();
            slot.holes.push(0..len);
            return Ok(());
        }
        Some((s, _)) if s >= end => {
            slot.clear();
            slot.holes.push(0..len);
            return Ok(());
        }
        Some((s, e)) if how == ReadMode::Direct || (s <= off && e >= end) => {
            slot.all_dirty();
            return read_chunk(dev, &mut slot.buf, off, len, how);
        }
        Some(_) => {}
    }
    // Part data, part holes: clear what an earlier chunk left, read the data extents.
    slot.clear();
    let mut at = off;
    let mut next = first;
    while at < end {
        let (s, e) = match next {
            Some((s, e)) if s < end => (s.max(at), e.min(end)),
            _ => (end, end),
        };
        let (a, b) = ((s - off) as usize, (e - off) as usize);
        if at < s {
            slot.holes.push((at - off) as usize..a);
        }
        if s < e {
            read_chunk(dev, &mut slot.buf[a..], s, b - a, how)?;
            slot.dirty.push(a..b);
        }
        at = e.max(s);
        if at < end {
            next = extents.next_data(dev, at)?;
        }
    }
    Ok(())
}

/// Read `len` bytes at `off` into `buf` (with `O_DIRECT`, see [`Device::read_at_direct`]: the
/// buffer has room for whole aligned blocks).
fn read_chunk(
    dev: &Device,
    buf: &mut [u8],
    off: u64,
    len: usize,
    how: ReadMode,
) -> Result<(), OpError> {
    let got = if how == ReadMode::Direct {
        dev.read_at_direct(buf, off, len)?
    } else if how == ReadMode::BufferedDropBehind {
        dev.read_at_drop_behind(&mut buf[..len], off)?
    } else {
        dev.read_at(&mut buf[..len], off)?
    };
    if got < len {
        return Err(OpError::Refused(format!(
            "{}: device ended at {} while reading {len} bytes at offset {off} (did it shrink?)",
            dev.path().display(),
            off + got as u64
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
