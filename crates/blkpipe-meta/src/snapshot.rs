//! The dm-snapshot persistent exception store, as `drivers/md/dm-snap-persistent.c` writes it.
//!
//! Layout of a COW device, in chunks of `chunk_size` sectors:
//!
//! - chunk 0: the header, four little-endian u32: magic `0x70416e53` ("SnAp"), valid (0 once
//!   the kernel invalidated the snapshot), version (1), chunk size in sectors.
//! - metadata area `a` at chunk `1 + a * (E + 1)`, where `E = chunk_bytes / 16` is the number of
//!   exceptions per area, followed by the `E` data chunks that area's exceptions allocate.
//! - an exception is two little-endian u64: `old_chunk` (the origin chunk) and `new_chunk` (the
//!   COW chunk holding the snapshot's copy of it).
//! - inside an area the exceptions end at the first entry whose `new_chunk` is 0 (chunk 0 is
//!   the header, so no real exception points there). An area with no such entry is full and the
//!   store continues in the next area (the kernel zeroes that next area before it commits the
//!   last entry of a full one). So the store ends at the first area that is not full.
//!
//! [`read_header`] reads and checks the header, [`walk_store`] visits every exception with its
//! [`EntryPos`] after checking it lies inside the COW device and the origin, [`ChangeList`] is the
//! sorted, coalesced list of origin chunks for a range list, and [`SnapshotView`] maps origin
//! chunks to COW chunks for [`write_view_patch`]. [`image`] builds COW images for tests.
//!
//! Metadata is read through [`BlockSource`]; on a block device [`open_cow`] opens with
//! `O_DIRECT`, so every read bypasses the page cache, which matters because the kernel keeps
//! writing the areas of a live snapshot below it. Areas are read whole (at most [`MAX_READ`]
//! bytes per request), with several requests in flight on a block device and with read-ahead
//! hints through the page cache on an image file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::patch::{PatchHeader, PatchWriter};
use blkpipe_format::range::{write_header, Range, RangeHeader};
use blkpipe_format::MAX_RECORD_LEN;
use blkpipe_ops::chunks::emit_piece;
use blkpipe_ops::progress::Progress;

use crate::{EntryPos, MetaError};

/// Header magic, "SnAp" read as a little-endian u32.
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
/// The on-disk version the kernel writes and this module reads.
pub const DISK_VERSION: u32 = 1;
/// Bytes per sector (chunk sizes are in sectors).
pub const SECTOR_BYTES: u64 = 512;
/// Bytes per on-disk exception.
pub const EXCEPTION_BYTES: u64 = 16;
/// Largest chunk size accepted, in sectors (1 GiB; LVM uses 4 KiB to 512 KiB).
pub const MAX_CHUNK_SECTORS: u32 = 1 << 21;
/// Largest single metadata read request, in bytes.
pub const MAX_READ: usize = 1 << 20;
/// Most bytes of metadata buffers in flight at once.
const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;
/// Bytes read for the header (one page, aligned for `O_DIRECT` on any device).
const HEADER_READ: usize = 4096;

/// The store header (chunk 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHeader {
    /// False once the kernel invalidated the snapshot (overflow, I/O error).
    pub valid: bool,
    /// On-disk version (always [`DISK_VERSION`] once parsed).
    pub version: u32,
    /// Chunk size in 512-byte sectors: a power of two.
    pub chunk_sectors: u32,
}

impl StoreHeader {
    /// Parse and check the first 16 bytes of chunk 0. An invalidated header parses; callers
    /// decide (see [`MetaError::Invalidated`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, MetaError> {
        if bytes.len() < 16 {
            return Err(MetaError::TooShort {
                size: bytes.len() as u64,
            });
        }
        let le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (magic, valid, version, chunk_sectors) = (le(0), le(4), le(8), le(12));
        if magic == 0 {
            return Err(MetaError::Uninitialised);
        }
        if magic != SNAP_MAGIC {
            return Err(MetaError::BadMagic { found: magic });
        }
        if version != DISK_VERSION {
            return Err(MetaError::UnsupportedVersion { found: version });
        }
        let bad = |reason| MetaError::BadChunkSize {
            sectors: chunk_sectors,
            reason,
        };
        if chunk_sectors == 0 || !chunk_sectors.is_power_of_two() {
            return Err(bad("not a power of two"));
        }
        if chunk_sectors > MAX_CHUNK_SECTORS {
            return Err(bad("larger than 1 GiB"));
        }
        Ok(StoreHeader {
            valid: valid != 0,
            version,
            chunk_sectors,
        })
    }

    /// Chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_sectors as u64 * SECTOR_BYTES
    }

    /// Exceptions per metadata area (`chunk_bytes / 16`).
    pub fn exceptions_per_area(&self) -> u64 {
        self.chunk_bytes() / EXCEPTION_BYTES
    }

    /// The chunk holding metadata area `area`, or `None` if that overflows.
    pub fn area_chunk(&self, area: u64) -> Option<u64> {
        area.checked_mul(self.exceptions_per_area() + 1)?
            .checked_add(1)
    }

    /// Whether COW chunk `chunk` is the header or a metadata area.
    pub fn is_metadata_chunk(&self, chunk: u64) -> bool {
        chunk == 0 || (chunk - 1) % (self.exceptions_per_area() + 1) == 0
    }

    /// The COW chunk the kernel allocates for the `n`-th exception (from 0) when it commits
    /// them in order: the data chunks in order, skipping the header and the metadata areas.
    pub fn data_chunk(&self, n: u64) -> Option<u64> {
        let e = self.exceptions_per_area();
        self.area_chunk(n / e)?.checked_add(1 + n % e)
    }
}

/// One exception: origin chunk `old_chunk` is held in COW chunk `new_chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Exception {
    /// Chunk number on the origin.
    pub old_chunk: u64,
    /// Chunk number on the COW device.
    pub new_chunk: u64,
}

/// Something metadata can be read from: a [`Device`] or, for tests, bytes in memory.
pub trait BlockSource: Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Read into `buf` at `offset`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError>;
    /// A name for error messages.
    fn name(&self) -> &Path;
    /// Hint that `len` bytes at `offset` will be read soon (start reading them in the
    /// background). Advisory; the default does nothing.
    fn will_need(&self, _offset: u64, _len: usize) {}
}

impl BlockSource for Device {
    fn size(&self) -> u64 {
        Device::size(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError> {
        Ok(Device::read_at(self, buf, offset)?)
    }
    fn name(&self) -> &Path {
        self.path()
    }
    fn will_need(&self, offset: u64, len: usize) {
        self.fadvise_willneed(offset, len as u64);
    }
}

impl BlockSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError> {
        let start = offset.min(self.len() as u64) as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn name(&self) -> &Path {
        Path::new("<memory>")
    }
}

/// Open a COW device or image for reading metadata. A block device is read with `O_DIRECT`:
/// the kernel writes a live store with bios that bypass the device's page cache, so cached
/// pages of it can be stale. A regular file (a saved image, or the backing file of a loop
/// device) is read through the page cache, which the kernel keeps coherent with writes to a
/// file (buffered, or direct writes that invalidate the cached range), with random-access
/// advice so the data chunks between the areas are not read ahead. `O_DIRECT` falls back to
/// buffered reads where the device refuses it. Returns the device and whether reads are direct.
pub fn open_cow(path: &Path) -> Result<(Device, bool), MetaError> {
    let buffered = Device::open_source(path, false)?;
    if !buffered.is_block_device() || buffered.nbd().is_some() {
        buffered.fadvise_random();
        return Ok((buffered, false));
    }
    match Device::open_source(path, true) {
        Ok(d) => Ok((d, true)),
        Err(e) if e.io_error().and_then(|e| e.raw_os_error()) == Some(libc::EINVAL) => {
            Ok((buffered, false))
        }
        Err(e) => Err(e.into()),
    }
}

fn read_full<S: BlockSource + ?Sized>(
    src: &S,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), MetaError> {
    let n = src.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(MetaError::Read {
            path: src.name().to_owned(),
            offset,
            len: buf.len(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("device ended after {n} bytes"),
            ),
        });
    }
    Ok(())
}

/// Read and check the header in chunk 0.
pub fn read_header<S: BlockSource + ?Sized>(src: &S) -> Result<StoreHeader, MetaError> {
    let size = src.size();
    if size < 16 {
        return Err(MetaError::TooShort { size });
    }
    let mut buf = AlignedBuf::new(HEADER_READ);
    let want = (size.min(HEADER_READ as u64) as usize).next_multiple_of(512);
    let n = src.read_at(&mut buf[..want.min(HEADER_READ)], 0)?;
    if n < 16 {
        return Err(MetaError::TooShort { size: n as u64 });
    }
    StoreHeader::parse(&buf[..n])
}

/// How to read a store.
#[derive(Clone, Default)]
pub struct ReadOptions {
    /// Origin size in bytes; every `old_chunk` is checked against it when known.
    pub origin_size: Option<u64>,
    /// Metadata read requests kept in flight (0 or 1: one at a time, on the calling thread).
    pub read_ahead: usize,
    /// With one request at a time: how many segments ahead to announce with
    /// [`BlockSource::will_need`], so the kernel reads them in the background (page-cache
    /// reads; useless with `O_DIRECT`). 0: none.
    pub prefetch: usize,
    /// Counts metadata bytes read.
    pub progress: Option<Progress>,
    /// Largest read request in bytes, rounded up to a power of two of at least 512 (0:
    /// [`MAX_READ`]). Areas larger than this are read in parts.
    pub max_read: usize,
}

impl ReadOptions {
    /// Options for reading a device with `O_DIRECT`: 16 requests in flight on worker threads.
    pub fn device(origin_size: Option<u64>) -> Self {
        ReadOptions {
            origin_size,
            read_ahead: 16,
            ..ReadOptions::default()
        }
    }

    /// Options for reading through the page cache: one thread, which asks the kernel to read
    /// the next 64 segments in the background. Cheaper than threads when the areas are cached.
    pub fn cached(origin_size: Option<u64>) -> Self {
        ReadOptions {
            origin_size,
            prefetch: 64,
            ..ReadOptions::default()
        }
    }
}

/// What a walk over the store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSummary {
    /// The header.
    pub header: StoreHeader,
    /// COW device size in bytes.
    pub cow_size: u64,
    /// Origin size in bytes, when known.
    pub origin_size: Option<u64>,
    /// Exceptions in the store.
    pub exceptions: u64,
    /// Metadata areas in use (the last one is not full).
    pub areas: u64,
    /// Metadata bytes read.
    pub metadata_bytes_read: u64,
}

impl StoreSummary {
    /// Chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.header.chunk_bytes()
    }
}

/// Visit every exception of the store in `src` in on-disk order (area by area), after checking
/// the header (an invalidated snapshot is refused) and that the exception points inside the COW
/// device, not at metadata, and inside the origin when its size is known.
pub fn walk_store<S, F>(
    src: &S,
    opts: &ReadOptions,
    mut visit: F,
) -> Result<StoreSummary, MetaError>
where
    S: BlockSource + ?Sized,
    F: FnMut(EntryPos, Exception) -> Result<(), MetaError>,
{
    let header = read_header(src)?;
    if !header.valid {
        return Err(MetaError::Invalidated);
    }
    let chunk_bytes = header.chunk_bytes();
    let cow_size = src.size();
    let cow_chunks = cow_size / chunk_bytes;
    let origin_chunks = opts.origin_size.map(|s| s.div_ceil(chunk_bytes));
    let max_read = match opts.max_read {
        0 => MAX_READ,
        n => n.next_power_of_two().clamp(512, MAX_READ),
    };
    let seg_len = (chunk_bytes as usize).min(max_read);
    let segs_per_area = chunk_bytes / seg_len as u64;
    let entries_per_seg = seg_len as u64 / EXCEPTION_BYTES;

    // Segment s is part k of area a; None when it lies past the end of the COW device.
    let locate = |s: u64| -> Option<(u64, u64)> {
        let (area, k) = (s / segs_per_area, s % segs_per_area);
        let chunk = header.area_chunk(area)?;
        if chunk >= cow_chunks {
            return None;
        }
        Some((area, chunk * chunk_bytes + k * seg_len as u64))
    };
    let offset_of = |s: u64| locate(s).map(|(_, off)| off);

    let mut summary = StoreSummary {
        header,
        cow_size,
        origin_size: opts.origin_size,
        exceptions: 0,
        areas: 0,
        metadata_bytes_read: 0,
    };
    let depth = opts.read_ahead.min(MAX_IN_FLIGHT_BYTES / seg_len).max(1);
    let prefetch = opts.prefetch.min(MAX_IN_FLIGHT_BYTES / seg_len);
    for_each_segment(src, seg_len, depth, prefetch, &offset_of, |s, data| {
        let area = s / segs_per_area;
        let Some(data) = data else {
            return Err(MetaError::StorePastEnd {
                area,
                next_chunk: header.area_chunk(area).unwrap_or(u64::MAX),
                cow_chunks,
            });
        };
        summary.metadata_bytes_read += data.len() as u64;
        summary.areas = area + 1;
        if let Some(p) = &opts.progress {
            p.inc(data.len() as u64);
        }
        let first_index = (s % segs_per_area) * entries_per_seg;
        for (i, entry) in data.chunks_exact(EXCEPTION_BYTES as usize).enumerate() {
            let old_chunk = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let new_chunk = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            if new_chunk == 0 {
                return Ok(false);
            }
            let pos = EntryPos {
                area,
                index: (first_index + i as u64) as u32,
            };
            let corrupt = |reason: String| Err(MetaError::Corrupt { pos, reason });
            if new_chunk >= cow_chunks {
                return corrupt(format!(
                    "new_chunk {new_chunk} (old_chunk {old_chunk}) lies past the end of the COW device ({cow_chunks} chunks of {chunk_bytes} bytes)"
                ));
            }
            if header.is_metadata_chunk(new_chunk) {
                return corrupt(format!(
                    "new_chunk {new_chunk} (old_chunk {old_chunk}) points at a metadata area"
                ));
            }
            match origin_chunks {
                Some(n) if old_chunk >= n => {
                    return corrupt(format!(
                        "old_chunk {old_chunk} (new_chunk {new_chunk}) lies past the end of the origin ({n} chunks of {chunk_bytes} bytes)"
                    ))
                }
                None if old_chunk.checked_mul(chunk_bytes).is_none() => {
                    return corrupt(format!(
                        "old_chunk {old_chunk} is beyond any device size"
                    ))
                }
                _ => {}
            }
            summary.exceptions += 1;
            visit(
                pos,
                Exception {
                    old_chunk,
                    new_chunk,
                },
            )?;
        }
        // A full area continues in the next one.
        Ok(true)
    })?;
    Ok(summary)
}

/// Call `consume(s, data)` for segments s = 0, 1, 2, ... until it returns `Ok(false)` or an
/// error; `data` is `None` for a segment `offset_of` places outside the device. With `depth` >
/// 1, up to `depth` segments are read ahead on worker threads (speculatively: the store may end
/// before them). With `depth` <= 1, the next `prefetch` segments are announced to the source
/// with [`BlockSource::will_need`] instead.
fn for_each_segment<S, C>(
    src: &S,
    seg_len: usize,
    depth: usize,
    prefetch: usize,
    offset_of: &(dyn Fn(u64) -> Option<u64> + Sync),
    mut consume: C,
) -> Result<(), MetaError>
where
    S: BlockSource + ?Sized,
    C: FnMut(u64, Option<&[u8]>) -> Result<bool, MetaError>,
{
    if depth <= 1 {
        let mut buf = AlignedBuf::new(seg_len);
        let mut announced = 0u64;
        for s in 0.. {
            // Keep `prefetch` segments announced ahead, topping up in batches of a quarter.
            if prefetch > 0 && announced < s + prefetch as u64 / 4 + 1 {
                announced = announced.max(s);
                while announced < s + prefetch as u64 {
                    let Some(off) = offset_of(announced) else {
                        break;
                    };
                    src.will_need(off, seg_len);
                    announced += 1;
                }
            }
            let data = match offset_of(s) {
                Some(off) => {
                    read_full(src, &mut buf, off)?;
                    Some(&buf[..])
                }
                None => None,
            };
            if !consume(s, data)? {
                break;
            }
        }
        return Ok(());
    }
    type Done = (u64, AlignedBuf, Result<(), MetaError>);
    let (job_tx, job_rx) = mpsc::channel::<(u64, u64, AlignedBuf)>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..depth.min(8) {
            let done_tx = done_tx.clone();
            let job_rx = &job_rx;
            scope.spawn(move || loop {
                let job = job_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((s, off, mut buf))) = job else {
                    return;
                };
                let r = read_full(src, &mut buf, off);
                if done_tx.send((s, buf, r)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut free: Vec<AlignedBuf> = (0..depth).map(|_| AlignedBuf::new(seg_len)).collect();
        let mut ready: BTreeMap<u64, (AlignedBuf, Result<(), MetaError>)> = BTreeMap::new();
        let mut next_issue = 0u64;
        let mut issue_ended = false;
        let mut s = 0u64;
        let result = loop {
            while !issue_ended && !free.is_empty() {
                match offset_of(next_issue) {
                    Some(off) => {
                        let buf = free.pop().expect("not empty");
                        if job_tx.send((next_issue, off, buf)).is_err() {
                            issue_ended = true;
                        }
                        next_issue += 1;
                    }
                    None => issue_ended = true,
                }
            }
            if s >= next_issue {
                // Past the device end (or the workers are gone, which cannot happen).
                match consume(s, None) {
                    Ok(true) => unreachable!("consume must stop at a missing segment"),
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            let (buf, read) = loop {
                if let Some(r) = ready.remove(&s) {
                    break r;
                }
                match done_rx.recv() {
                    Ok((i, b, r)) => {
                        ready.insert(i, (b, r));
                    }
                    Err(_) => unreachable!("workers outlive the jobs they were sent"),
                }
            };
            if let Err(e) = read {
                break Err(e);
            }
            let more = consume(s, Some(&buf));
            free.push(buf);
            match more {
                Ok(true) => s += 1,
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(job_tx);
        result
    })
}

/// Which field of an exception a duplicate was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Old,
    New,
}

/// Find the first two entries of the store whose `field` equals `chunk` (for naming both
/// entries of a duplicate).
fn find_chunk<S: BlockSource + ?Sized>(
    src: &S,
    opts: &ReadOptions,
    field: Field,
    chunk: u64,
) -> Result<Vec<EntryPos>, MetaError> {
    let mut found = Vec::new();
    let opts = ReadOptions {
        progress: None,
        ..opts.clone()
    };
    walk_store(src, &opts, |pos, e| {
        let value = match field {
            Field::Old => e.old_chunk,
            Field::New => e.new_chunk,
        };
        if value == chunk && found.len() < 2 {
            found.push(pos);
        }
        Ok(())
    })?;
    Ok(found)
}

/// The error for a chunk number found twice in `field`, naming both entries. An origin chunk
/// mapped twice, or one COW chunk holding two origin chunks, means the store is corrupt.
fn duplicate_error<S: BlockSource + ?Sized>(
    src: &S,
    opts: &ReadOptions,
    field: Field,
    chunk: u64,
) -> MetaError {
    let what = match field {
        Field::Old => format!("old_chunk {chunk} is already mapped by"),
        Field::New => format!("new_chunk {chunk} already holds the copy of"),
    };
    let rule = match field {
        Field::Old => "a store never maps an origin chunk twice",
        Field::New => "a store never puts two origin chunks in one COW chunk",
    };
    match find_chunk(src, opts, field, chunk) {
        Ok(found) if found.len() == 2 => MetaError::Corrupt {
            pos: found[1],
            reason: format!("{what} {}; {rule}", found[0]),
        },
        // The store changed between the two reads (a live snapshot): report what is known.
        Ok(_) => MetaError::Corrupt {
            pos: EntryPos { area: 0, index: 0 },
            reason: format!("{what} another entry; {rule}"),
        },
        Err(e) => e,
    }
}

/// Check that no COW chunk holds two exceptions: `cow_chunks` are the `new_chunk`s of the store
/// `summary` describes, in any order. A repeat is an error naming both entries.
fn check_cow_chunks_unique<S: BlockSource + ?Sized>(
    src: &S,
    opts: &ReadOptions,
    summary: &StoreSummary,
    mut cow_chunks: Vec<u64>,
) -> Result<(), MetaError> {
    let bound = summary.cow_size / summary.chunk_bytes();
    match sort_unique(&mut cow_chunks, bound) {
        Some(c) => Err(duplicate_error(src, opts, Field::New, c)),
        None => Ok(()),
    }
}

/// Sort `v` (values below `bound`) ascending and return a value that occurs twice, if any.
/// When a bitmap of `bound` bits is no larger than `v` itself, the values are marked in it and
/// read back in order (no sort, and a repeat is seen as it is marked); otherwise
/// [`sort_chunks`]. Memory stays within twice `v`'s size either way.
pub fn sort_unique(v: &mut Vec<u64>, bound: u64) -> Option<u64> {
    let sorted = v.windows(2).all(|w| w[0] <= w[1]);
    if sorted {
        return v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    }
    if bound.div_ceil(64) <= v.len() as u64 {
        let mut bits = vec![0u64; bound.div_ceil(64) as usize];
        for &x in v.iter() {
            let (word, bit) = ((x / 64) as usize, 1u64 << (x % 64));
            if bits[word] & bit != 0 {
                return Some(x);
            }
            bits[word] |= bit;
        }
        v.clear();
        for (i, &word) in bits.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                v.push(i as u64 * 64 + w.trailing_zeros() as u64);
                w &= w - 1;
            }
        }
        return None;
    }
    sort_chunks(v);
    v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Sort `v` ascending. Radix sort for large unsorted inputs (the store's allocation order is
/// often random), so a million exceptions sort in a few milliseconds.
pub fn sort_chunks(v: &mut Vec<u64>) {
    if v.windows(2).all(|w| w[0] <= w[1]) {
        return;
    }
    if v.len() < 1 << 14 {
        v.sort_unstable();
        return;
    }
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    let max = v.iter().copied().max().unwrap_or(0);
    let passes = (64 - max.leading_zeros()).div_ceil(BITS);
    let mut counts = vec![[0usize; BUCKETS]; passes as usize];
    for &x in v.iter() {
        for (p, c) in counts.iter_mut().enumerate() {
            c[((x >> (p as u32 * BITS)) as usize) & (BUCKETS - 1)] += 1;
        }
    }
    let mut scratch = vec![0u64; v.len()];
    for (p, c) in counts.iter_mut().enumerate() {
        if c.contains(&v.len()) {
            continue; // every key has the same digit here
        }
        let mut sum = 0;
        for n in c.iter_mut() {
            let here = *n;
            *n = sum;
            sum += here;
        }
        let shift = p as u32 * BITS;
        for &x in v.iter() {
            let d = ((x >> shift) as usize) & (BUCKETS - 1);
            scratch[c[d]] = x;
            c[d] += 1;
        }
        std::mem::swap(v, &mut scratch);
    }
}

/// The origin chunks a snapshot's store lists, sorted and unique: what changed since the
/// snapshot was taken (see the crate docs for writable snapshots). Memory: 8 bytes per
/// exception, plus the same again while sorting.
#[derive(Debug, Clone)]
pub struct ChangeList {
    /// What the walk found.
    pub summary: StoreSummary,
    chunks: Vec<u64>,
}

impl ChangeList {
    /// Read the store in `src`. A duplicate origin chunk, or a COW chunk used twice, is an
    /// error naming both entries.
    pub fn read<S: BlockSource + ?Sized>(src: &S, opts: &ReadOptions) -> Result<Self, MetaError> {
        let mut chunks = Vec::new();
        let mut cow_chunks = Vec::new();
        let summary = walk_store(src, opts, |_, e| {
            chunks.push(e.old_chunk);
            cow_chunks.push(e.new_chunk);
            Ok(())
        })?;
        check_cow_chunks_unique(src, opts, &summary, cow_chunks)?;
        // walk_store checked every old_chunk * chunk_bytes fits in a u64.
        let origin_bound = match summary.origin_size {
            Some(size) => size.div_ceil(summary.chunk_bytes()),
            None => u64::MAX / summary.chunk_bytes() + 1,
        };
        if let Some(c) = sort_unique(&mut chunks, origin_bound) {
            return Err(duplicate_error(src, opts, Field::Old, c));
        }
        Ok(ChangeList { summary, chunks })
    }

    /// The changed origin chunks, ascending.
    pub fn chunks(&self) -> &[u64] {
        &self.chunks
    }

    /// The changed bytes of the origin: runs of consecutive chunks, clipped to the origin size.
    pub fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        chunk_runs(
            &self.chunks,
            self.summary.chunk_bytes(),
            self.summary.origin_size,
        )
    }

    /// Total bytes in [`ChangeList::ranges`].
    pub fn bytes(&self) -> u64 {
        self.ranges().map(|r| r.length).sum()
    }

    /// Write the range list: the header comment, then one line per range.
    pub fn write_range_list<W: Write>(&self, out: W) -> io::Result<()> {
        write_ranges(
            out,
            self.summary.origin_size,
            self.summary.chunk_bytes(),
            self.ranges(),
        )
    }
}

/// Write a range list with its header comment. Lines are formatted by hand into a fixed
/// buffer: a million ranges through `write!` cost more than reading the store.
pub fn write_ranges<W: Write>(
    mut out: W,
    size: Option<u64>,
    chunk: u64,
    ranges: impl Iterator<Item = Range>,
) -> io::Result<()> {
    write_header(
        &mut out,
        &RangeHeader {
            size,
            chunk: Some(chunk),
        },
    )?;
    // The longest line: two 20-digit numbers, a space and a newline.
    const LINE_MAX: usize = 42;
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0;
    for r in ranges {
        if len + LINE_MAX > buf.len() {
            out.write_all(&buf[..len])?;
            len = 0;
        }
        len = put_decimal(&mut buf, len, r.offset);
        buf[len] = b' ';
        len = put_decimal(&mut buf, len + 1, r.length);
        buf[len] = b'\n';
        len += 1;
    }
    out.write_all(&buf[..len])?;
    out.flush()
}

/// Write `n` in decimal into `buf` at `at`, returning the index after its last digit.
fn put_decimal(buf: &mut [u8], at: usize, mut n: u64) -> usize {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let end = at + n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut i = end;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i] = PAIRS[pair];
        buf[i + 1] = PAIRS[pair + 1];
    }
    if n >= 10 {
        buf[i - 2] = PAIRS[n as usize * 2];
        buf[i - 1] = PAIRS[n as usize * 2 + 1];
    } else {
        buf[i - 1] = b'0' + n as u8;
    }
    end
}

/// Runs of consecutive chunks in sorted, unique `chunks`, as byte ranges clipped to `size`.
fn chunk_runs(
    chunks: &[u64],
    chunk_bytes: u64,
    size: Option<u64>,
) -> impl Iterator<Item = Range> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < chunks.len() {
            let start = chunks[i];
            let mut end = start + 1;
            i += 1;
            while i < chunks.len() && chunks[i] == end {
                end += 1;
                i += 1;
            }
            // walk_store checked start * chunk_bytes fits; the end may pass a known size.
            let offset = start * chunk_bytes;
            let mut stop = end.saturating_mul(chunk_bytes);
            if let Some(size) = size {
                stop = stop.min(size);
            }
            if stop > offset {
                return Some(Range {
                    offset,
                    length: stop - offset,
                });
            }
        }
        None
    })
}

/// The snapshot's exceptions sorted by origin chunk: where the snapshot's view of each changed
/// chunk lives on the COW device. Memory: 16 bytes per exception.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    /// What the walk found.
    pub summary: StoreSummary,
    exceptions: Vec<Exception>,
}

impl SnapshotView {
    /// Read the store in `src`; a duplicate origin chunk, or a COW chunk used twice, is an
    /// error naming both entries.
    pub fn read<S: BlockSource + ?Sized>(src: &S, opts: &ReadOptions) -> Result<Self, MetaError> {
        let mut exceptions = Vec::new();
        let summary = walk_store(src, opts, |_, e| {
            exceptions.push(e);
            Ok(())
        })?;
        let cow_chunks = exceptions.iter().map(|e| e.new_chunk).collect();
        check_cow_chunks_unique(src, opts, &summary, cow_chunks)?;
        exceptions.sort_unstable_by_key(|e| e.old_chunk);
        if let Some(w) = exceptions
            .windows(2)
            .find(|w| w[0].old_chunk == w[1].old_chunk)
        {
            return Err(duplicate_error(src, opts, Field::Old, w[0].old_chunk));
        }
        Ok(SnapshotView {
            summary,
            exceptions,
        })
    }

    /// The exceptions, by ascending origin chunk.
    pub fn exceptions(&self) -> &[Exception] {
        &self.exceptions
    }

    /// Bytes of the origin the view covers (clipped to the origin size).
    pub fn bytes(&self) -> u64 {
        let cb = self.summary.chunk_bytes();
        self.exceptions
            .iter()
            .map(|e| {
                let start = e.old_chunk * cb;
                let end = (start + cb).min(self.summary.origin_size.unwrap_or(u64::MAX));
                end.saturating_sub(start)
            })
            .sum()
    }
}

/// What [`write_view_patch`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    /// Patch records.
    pub records: u64,
    /// Bytes read from the COW device.
    pub bytes_read: u64,
    /// Bytes in data records.
    pub data_bytes: u64,
    /// Bytes in zero records.
    pub zero_bytes: u64,
}

/// Write a patch stream of the snapshot's view: for every exception, the COW chunk's bytes at
/// the origin chunk's offset, ascending, for a device of `origin_size` bytes. Applied to the
/// origin, it gives back the snapshot's contents.
pub fn write_view_patch<S: BlockSource + ?Sized, W: Write>(
    src: &S,
    view: &SnapshotView,
    origin_size: u64,
    out: W,
    creator: &str,
    progress: &Progress,
) -> Result<ViewStats, MetaError> {
    write_view_patch_sealed(src, view, origin_size, out, creator, progress, None)
}

/// [`write_view_patch`], sealed with `key` when one is given (`cowlist --data --key`).
pub fn write_view_patch_sealed<S: BlockSource + ?Sized, W: Write>(
    src: &S,
    view: &SnapshotView,
    origin_size: u64,
    out: W,
    creator: &str,
    progress: &Progress,
    key: Option<&blkpipe_format::seal::SealKey>,
) -> Result<ViewStats, MetaError> {
    let cb = view.summary.chunk_bytes();
    let total = view.bytes();
    progress.set_total(total);
    let header = PatchHeader {
        source_size: origin_size,
        total_payload: total,
        stream_id: blkpipe_ops::random_bytes(),
        creator: creator.to_owned(),
    };
    let mut writer =
        PatchWriter::start(out, header, false, false, key).map_err(MetaError::Output)?;
    let mut stats = ViewStats::default();
    let piece_max = if cb >= MAX_RECORD_LEN {
        MAX_RECORD_LEN
    } else {
        MAX_RECORD_LEN / cb * cb
    };
    let mut buf = AlignedBuf::new(piece_max as usize);
    let ex = &view.exceptions;
    let mut i = 0;
    while i < ex.len() {
        // A run of exceptions consecutive on both devices is one read.
        let first = ex[i];
        let mut n = 1;
        while i + n < ex.len()
            && ex[i + n].old_chunk == first.old_chunk + n as u64
            && ex[i + n].new_chunk == first.new_chunk + n as u64
        {
            n += 1;
        }
        i += n;
        let origin_start = first.old_chunk * cb;
        let origin_end = (origin_start + n as u64 * cb).min(origin_size);
        let cow_start = first.new_chunk * cb;
        let mut at = origin_start;
        while at < origin_end {
            let len = (origin_end - at).min(piece_max);
            // Read whole sectors (the chunk lies inside the COW device); emit the clipped part.
            let read_len = len.next_multiple_of(SECTOR_BYTES).min(piece_max) as usize;
            read_full(src, &mut buf[..read_len], cow_start + (at - origin_start))?;
            emit_piece(&mut writer, at, &buf[..len as usize]).map_err(MetaError::Output)?;
            stats.bytes_read += read_len as u64;
            progress.inc(len);
            at += len;
        }
    }
    stats.records = writer.record_count();
    stats.data_bytes = writer.data_bytes();
    stats.zero_bytes = writer.zero_bytes();
    writer.finish(None).map_err(MetaError::Output)?;
    progress.finish();
    Ok(stats)
}

/// The `cow_store` fuzz target's body, shared with the test that replays its findings
/// (`tests/fuzz_regressions.rs`): read `data[1..]` as a COW image with the options `data[0]`
/// picks (origin size checked or not, read-ahead, request size). Errors are fine; a panic, or
/// more exceptions than the image can hold, is a finding.
#[doc(hidden)]
pub fn fuzz_cow_store(data: &[u8]) {
    let Some((&mode, img)) = data.split_first() else {
        return;
    };
    let opts = ReadOptions {
        origin_size: (mode & 1 == 1).then_some(u64::from(mode) << 16),
        read_ahead: usize::from(mode >> 6),
        max_read: 512 << (mode >> 1 & 3),
        ..ReadOptions::default()
    };
    if let Ok(list) = ChangeList::read(img, &opts) {
        assert!(list.chunks().len() <= img.len() / 16);
        let _ = list.ranges().count();
    }
    if let Ok(view) = SnapshotView::read(img, &opts) {
        assert!(view.exceptions().len() <= img.len() / 16);
    }
}

pub mod image {
    //! Build COW images laid out exactly as the kernel writes them: for tests, fuzz seeds,
    //! and the benchmark's generator.

    use super::{StoreHeader, DISK_VERSION, EXCEPTION_BYTES, SNAP_MAGIC};

    /// The header chunk's first 16 bytes.
    pub fn header_bytes(valid: bool, chunk_sectors: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&SNAP_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&(valid as u32).to_le_bytes());
        h[8..12].copy_from_slice(&DISK_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&chunk_sectors.to_le_bytes());
        h
    }

    /// Chunks a COW device needs to hold `n` exceptions allocated in kernel order: every data
    /// chunk used, and the zeroed next area after a full one.
    pub fn min_chunks(chunk_sectors: u32, n: u64) -> u64 {
        let h = header(chunk_sectors);
        let area = h.area_chunk(n / h.exceptions_per_area()).expect("fits u64") + 1;
        if n == 0 {
            return area;
        }
        area.max(h.data_chunk(n - 1).expect("fits u64") + 1)
    }

    fn header(chunk_sectors: u32) -> StoreHeader {
        StoreHeader {
            valid: true,
            version: DISK_VERSION,
            chunk_sectors,
        }
    }

    /// Write a store holding `entries` (pairs `(old_chunk, new_chunk)` in on-disk order) through
    /// `write_at(offset, bytes)`: the header, then each metadata area, then the zeroed area after
    /// the last one if that is full. Data chunks are not written.
    pub fn write_store<E>(
        chunk_sectors: u32,
        valid: bool,
        entries: &[(u64, u64)],
        mut write_at: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let h = header(chunk_sectors);
        let cb = h.chunk_bytes();
        let per_area = h.exceptions_per_area() as usize;
        write_at(0, &header_bytes(valid, chunk_sectors))?;
        let mut area_buf = vec![0u8; cb as usize];
        let areas = entries.len() / per_area + 1;
        for a in 0..areas {
            area_buf.fill(0);
            let part = &entries
                [(a * per_area).min(entries.len())..((a + 1) * per_area).min(entries.len())];
            for (i, &(old, new)) in part.iter().enumerate() {
                let at = i * EXCEPTION_BYTES as usize;
                area_buf[at..at + 8].copy_from_slice(&old.to_le_bytes());
                area_buf[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
            }
            let chunk = h.area_chunk(a as u64).expect("fits u64");
            write_at(chunk * cb, &area_buf)?;
        }
        Ok(())
    }

    /// Fills a data chunk given its origin chunk number.
    pub type ChunkFill<'a> = &'a dyn Fn(u64, &mut [u8]);

    /// An in-memory COW image of `chunks` chunks holding `old_chunks` as exceptions, allocated
    /// in kernel order; each data chunk is filled with `fill(old_chunk)`'s byte pattern when
    /// given.
    pub fn build(
        chunk_sectors: u32,
        old_chunks: &[u64],
        chunks: Option<u64>,
        fill: Option<ChunkFill<'_>>,
    ) -> Vec<u8> {
        let h = header(chunk_sectors);
        let cb = h.chunk_bytes();
        let n = old_chunks.len() as u64;
        let chunks = chunks.unwrap_or_else(|| min_chunks(chunk_sectors, n));
        let mut img = vec![0u8; (chunks * cb) as usize];
        let entries: Vec<(u64, u64)> = old_chunks
            .iter()
            .enumerate()
            .map(|(i, &old)| (old, h.data_chunk(i as u64).expect("fits u64")))
            .collect();
        write_store::<()>(chunk_sectors, true, &entries, |off, b| {
            let off = off as usize;
            if off + b.len() <= img.len() {
                img[off..off + b.len()].copy_from_slice(b);
            }
            Ok(())
        })
        .expect("infallible");
        if let Some(fill) = fill {
            for &(old, new) in &entries {
                let at = (new * cb) as usize;
                if at + cb as usize <= img.len() {
                    fill(old, &mut img[at..at + cb as usize]);
                }
            }
        }
        img
    }
}

#[cfg(test)]
mod tests;
