//! The walk over every metadata area, checking each exception, and the errors naming entries.

use super::*;

/// A progress callback: called with the bytes of each metadata read as it completes.
pub type ReadProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to read a store.
#[derive(Clone, Default)]
pub struct ReadOptions {
    /// Origin size in bytes; every `old_chunk` is checked against it when known.
    pub origin_size: Option<u64>,
    /// Metadata read requests kept in flight (0 or 1: one at a time, on the calling thread).
    pub read_ahead: usize,
    /// With one request at a time: how many segments ahead to announce with
    /// [`Device::fadvise_willneed`], so the kernel reads them in the background (page-cache
    /// reads; useless with `O_DIRECT`). 0: none.
    pub prefetch: usize,
    /// Called with the byte count of each metadata read, for progress reports.
    pub progress: Option<ReadProgress>,
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
pub fn walk_store<F>(
    src: &Device,
    opts: &ReadOptions,
    mut visit: F,
) -> Result<StoreSummary, MetaError>
where
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
            p(data.len() as u64);
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
/// with [`Device::fadvise_willneed`] instead.
fn for_each_segment<C>(
    src: &Device,
    seg_len: usize,
    depth: usize,
    prefetch: usize,
    offset_of: &(dyn Fn(u64) -> Option<u64> + Sync),
    mut consume: C,
) -> Result<(), MetaError>
where
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
                    src.fadvise_willneed(off, seg_len as u64);
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
pub(super) enum Field {
    Old,
    New,
}

/// Find the first two entries of the store whose `field` equals `chunk` (for naming both
/// entries of a duplicate).
pub(super) fn find_chunk(
    src: &Device,
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
pub(super) fn duplicate_error(
    src: &Device,
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
pub(super) fn check_cow_chunks_unique(
    src: &Device,
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
