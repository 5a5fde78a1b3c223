//! The change list and its range-list output.

use super::*;

/// The origin chunks a snapshot's store lists, sorted and unique: what changed since the
/// snapshot was taken (see the crate docs for writable snapshots). Memory is bounded whatever
/// the number of exceptions: the origin and COW chunk numbers go through a [`ChunkSorter`]
/// each (sorted runs spilled to a temporary file past [`super::RUN_LEN`] values), and the
/// list is read back by merging them.
#[derive(Debug)]
pub struct ChangeList {
    /// What the walk found.
    pub summary: StoreSummary,
    chunks: SortedChunks,
    ranges: u64,
    bytes: u64,
}

impl ChangeList {
    /// Read the store in `src`. A duplicate origin chunk, or a COW chunk used twice, is an
    /// error naming both entries.
    pub fn read(src: &Device, opts: &ReadOptions) -> Result<Self, MetaError> {
        // walk_store checks every new_chunk lies in the COW device and old_chunk in the origin.
        let cb = read_header(src)?.chunk_bytes();
        let origin_bound = opts.origin_size.map_or(u64::MAX, |s| s.div_ceil(cb));
        let mut chunks = ChunkSorter::new(origin_bound);
        let mut cow_chunks = ChunkSorter::new(src.size().div_ceil(cb));
        let summary = walk_store(src, opts, |_, e| {
            chunks.push(e.old_chunk)?;
            cow_chunks.push(e.new_chunk)
        })?;
        let cow_chunks = cow_chunks.finish()?;
        if let Some(c) = cow_chunks.first_repeat()? {
            return Err(duplicate_error(src, opts, Field::New, c));
        }
        drop(cow_chunks);
        let chunks = chunks.finish()?;
        if let Some(c) = chunks.first_repeat()? {
            return Err(duplicate_error(src, opts, Field::Old, c));
        }
        let mut list = ChangeList {
            summary,
            chunks,
            ranges: 0,
            bytes: 0,
        };
        let (mut ranges, mut bytes) = (0, 0);
        for r in list.ranges()? {
            ranges += 1;
            bytes += r?.length;
        }
        (list.ranges, list.bytes) = (ranges, bytes);
        Ok(list)
    }

    /// How many origin chunks changed.
    pub fn len(&self) -> u64 {
        self.chunks.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The changed origin chunks, ascending, all in memory (8 bytes each: for small lists).
    pub fn chunks(&self) -> Result<Vec<u64>, MetaError> {
        self.chunks.iter()?.collect()
    }

    /// The changed bytes of the origin: runs of consecutive chunks, clipped to the origin size.
    pub fn ranges(&self) -> Result<impl Iterator<Item = Result<Range, MetaError>> + '_, MetaError> {
        Ok(chunk_runs(
            self.chunks.iter()?.peekable(),
            self.summary.chunk_bytes(),
            self.summary.origin_size,
        ))
    }

    /// How many ranges [`ChangeList::ranges`] gives.
    pub fn range_count(&self) -> u64 {
        self.ranges
    }

    /// Total bytes in [`ChangeList::ranges`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Write the range list: the header comment, then one line per range. An error reading
    /// back the temporary file comes as an I/O error naming it.
    pub fn write_range_list<W: Write>(&self, out: W) -> io::Result<()> {
        let mut failed = None;
        let ranges = self.ranges().map_err(io::Error::other)?;
        let ranges = ranges.map_while(|r| r.map_err(|e| failed = Some(e)).ok());
        write_ranges(
            out,
            self.summary.origin_size,
            self.summary.chunk_bytes(),
            ranges,
        )?;
        match failed {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
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
fn chunk_runs<I>(
    mut chunks: std::iter::Peekable<I>,
    chunk_bytes: u64,
    size: Option<u64>,
) -> impl Iterator<Item = Result<Range, MetaError>>
where
    I: Iterator<Item = Result<u64, MetaError>>,
{
    std::iter::from_fn(move || loop {
        let start = match chunks.next()? {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let mut end = start + 1;
        while let Some(Ok(c)) = chunks.peek() {
            if *c != end {
                break;
            }
            end += 1;
            chunks.next();
        }
        // walk_store checked start * chunk_bytes fits; the end may pass a known size.
        let offset = start * chunk_bytes;
        let mut stop = end.saturating_mul(chunk_bytes);
        if let Some(size) = size {
            stop = stop.min(size);
        }
        if stop > offset {
            return Some(Ok(Range {
                offset,
                length: stop - offset,
            }));
        }
    })
}
