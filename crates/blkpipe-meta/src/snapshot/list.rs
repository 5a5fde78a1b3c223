//! The change list and its range-list output.

use super::*;

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
    pub fn read(src: &Device, opts: &ReadOptions) -> Result<Self, MetaError> {
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
