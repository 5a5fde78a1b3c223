//! Range lists of any length in bounded memory.
//!
//! [`SortedRanges::load`] reads a range list, checks every range against the device, and
//! hands the ranges back sorted and coalesced. Up to [`RangeLimits::run_len`] ranges are kept
//! in memory. A longer list is spilled to a temporary file (created `O_EXCL` in `$TMPDIR`, or
//! `/tmp`, and unlinked at once, so nothing is left behind): in sorted runs of `run_len`
//! ranges, which are merged while they are read back. A sorted list (as cowlist and blkdiff
//! write it) stays a single run whatever its length; an unsorted one may take up to
//! [`RangeLimits::max_runs`] runs and is refused beyond that, with a message naming the limit.
//! The list is read to its end before anything is returned, so a bad line anywhere is
//! reported before the first byte of output.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use blkpipe_dev::DevError;
use blkpipe_format::hash::{RangeBinding, RangeBindingBuilder};
use blkpipe_format::range::{BlockAligned, Range, RangeReader};
use blkpipe_format::FormatError;

use crate::OpError;

/// Bytes one range takes in the spill file.
const RECORD: usize = 16;

/// How much memory a range list may take.
#[derive(Debug, Clone, Copy)]
pub struct RangeLimits {
    /// Ranges kept in memory (16 bytes each) before spilling a sorted run.
    pub run_len: usize,
    /// Most sorted runs merged at once (each read through a buffer of `merge_buf` bytes).
    pub max_runs: usize,
    /// Read buffer per run while merging.
    pub merge_buf: usize,
}

impl Default for RangeLimits {
    /// 8 MiB of ranges in memory, 512 runs of 32 KiB buffers: at most about 24 MiB, and an
    /// unsorted list of up to 268 million ranges.
    fn default() -> Self {
        RangeLimits {
            run_len: 1 << 19,
            max_runs: 512,
            merge_buf: 32 << 10,
        }
    }
}

impl RangeLimits {
    /// The longest unsorted list accepted.
    pub fn max_unsorted(&self) -> u64 {
        self.run_len as u64 * self.max_runs as u64
    }
}

/// One sorted run in the spill file: `count` ranges from byte `start`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    count: u64,
    /// Offset of the last range, to see whether the next buffer continues this run.
    last_offset: u64,
}

/// A range list, sorted and coalesced, in memory or spilled to a temporary file.
#[derive(Debug)]
pub struct SortedRanges {
    mem: Vec<Range>,
    spill: Option<Spill>,
    runs: Vec<Run>,
    merge_buf: usize,
    total: u64,
    count: u64,
    lines: u64,
}

#[derive(Debug)]
struct Spill {
    file: File,
    path: PathBuf,
}

impl Spill {
    fn err(&self, op: &str, source: io::Error) -> OpError {
        OpError::Dev(DevError::Io {
            path: self.path.clone(),
            op: op.to_string(),
            source,
        })
    }
}

impl SortedRanges {
    /// Read a range list from `input` for a device of `size` bytes. A range past `size` is bad
    /// input; a header naming another device size is refused unless `ignore_size`. Ranges
    /// below `from` are cut off.
    pub fn load<R: Read>(
        input: R,
        size: u64,
        ignore_size: bool,
        from: u64,
        limits: RangeLimits,
    ) -> Result<Self, OpError> {
        let mut reader = RangeReader::new(io::BufReader::new(input));
        let mut me = SortedRanges {
            mem: Vec::new(),
            spill: None,
            runs: Vec::new(),
            merge_buf: limits.merge_buf.max(RECORD),
            total: 0,
            count: 0,
            lines: 0,
        };
        let run_len = limits.run_len.max(1);
        while let Some((line, r)) = reader.next_range().map_err(|e| match e {
            FormatError::Io(io) => OpError::Input(io),
            e => e.into(),
        })? {
            if r.end() > size {
                return Err(OpError::BadRange(format!(
                    "line {line}: range {} {} ends at {}, past the end of the device ({size} bytes)",
                    r.offset,
                    r.length,
                    r.end()
                )));
            }
            if me.lines == 0 && !ignore_size {
                if let Some(listed) = reader.header().and_then(|h| h.size) {
                    if listed != size {
                        return Err(OpError::Refused(format!(
                            "the range list is for a device of {listed} bytes, but this one has {size} bytes (--ignore-size to proceed)"
                        )));
                    }
                }
            }
            me.lines += 1;
            if r.end() <= from {
                continue;
            }
            let r = clip(r, from);
            if me.mem.len() == run_len {
                me.spill_run(&limits)?;
            }
            me.mem.push(r);
        }
        if me.spill.is_some() && !me.mem.is_empty() {
            me.spill_run(&limits)?;
        } else {
            me.mem = coalesce_sorted(sort(std::mem::take(&mut me.mem)));
        }
        // One pass to count what the merged list holds: the patch header wants the total.
        let (mut total, mut count) = (0, 0);
        for r in me.iter()? {
            let r = r?;
            total += r.length;
            count += 1;
        }
        me.total = total;
        me.count = count;
        Ok(me)
    }

    /// Sort the ranges in memory and append them to the spill file, as a new run or as the
    /// continuation of the last one when they come after it.
    fn spill_run(&mut self, limits: &RangeLimits) -> Result<(), OpError> {
        let ranges = coalesce_sorted(sort(std::mem::take(&mut self.mem)));
        if self.spill.is_none() {
            self.spill = Some(spill_file()?);
        }
        let spill = self.spill.as_ref().expect("just created");
        let start = match self.runs.last() {
            Some(r) => r.start + r.count * RECORD as u64,
            None => 0,
        };
        let mut out = BufWriter::with_capacity(1 << 16, &spill.file);
        for r in &ranges {
            let mut rec = [0u8; RECORD];
            rec[..8].copy_from_slice(&r.offset.to_le_bytes());
            rec[8..].copy_from_slice(&r.length.to_le_bytes());
            out.write_all(&rec)
                .map_err(|e| spill.err("write spill file", e))?;
        }
        out.flush().map_err(|e| spill.err("write spill file", e))?;
        drop(out);
        let first = ranges.first().map_or(0, |r| r.offset);
        let last = ranges.last().map_or(0, |r| r.offset);
        match self.runs.last_mut() {
            Some(run) if first >= run.last_offset => {
                run.count += ranges.len() as u64;
                run.last_offset = last;
            }
            _ => {
                if self.runs.len() == limits.max_runs {
                    return Err(OpError::Refused(format!(
                        "the range list is not sorted and longer than {} ranges, the most this tool sorts ({} runs of {} in memory); sort it first (sort -n -k1,1)",
                        limits.max_unsorted(),
                        limits.max_runs,
                        limits.run_len
                    )));
                }
                self.runs.push(Run {
                    start,
                    count: ranges.len() as u64,
                    last_offset: last,
                });
            }
        }
        self.mem = ranges;
        self.mem.clear();
        Ok(())
    }

    /// Sum of the lengths of the coalesced ranges.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of coalesced ranges.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when no range is listed (above `from`).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Range lines read.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Whether the list went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// The canonical ranges for blocks of `block_size` on a device of `size` bytes
    /// (FORMAT.md 3.5): widened to whole blocks, cut at `size`, merged.
    pub fn blocks(
        &self,
        block_size: u32,
        size: u64,
    ) -> Result<BlockAligned<RangeIter<'_>>, OpError> {
        Ok(BlockAligned::new(self.iter()?, block_size, size))
    }

    /// The binding of a range-restricted hash stream over this list (FORMAT.md 3.5), and the
    /// bytes its blocks cover.
    pub fn binding(&self, block_size: u32, size: u64) -> Result<(RangeBinding, u64), OpError> {
        let mut b = RangeBindingBuilder::new(block_size);
        let mut bytes = 0;
        for r in self.blocks(block_size, size)? {
            let r = r?;
            b.push(r.offset, r.length);
            bytes += r.length;
        }
        Ok((b.finish(), bytes))
    }

    /// The ranges in order, coalesced (overlapping and adjacent ones merged).
    pub fn iter(&self) -> Result<RangeIter<'_>, OpError> {
        let mut heads = BinaryHeap::new();
        let mut readers = Vec::new();
        if let Some(spill) = &self.spill {
            for (i, run) in self.runs.iter().enumerate() {
                let mut reader = RunReader {
                    file: &spill.file,
                    pos: run.start,
                    end: run.start + run.count * RECORD as u64,
                    buf: vec![0; self.merge_buf / RECORD * RECORD],
                    at: 0,
                    filled: 0,
                };
                if let Some(r) = reader.next().map_err(|e| spill.err("read spill file", e))? {
                    heads.push(std::cmp::Reverse((r, i)));
                }
                readers.push(reader);
            }
        }
        Ok(RangeIter {
            mem: self.mem.iter(),
            spill: self.spill.as_ref(),
            readers,
            heads,
            pending: None,
        })
    }
}

fn clip(r: Range, from: u64) -> Range {
    let offset = r.offset.max(from);
    Range {
        offset,
        length: r.end() - offset,
    }
}

fn sort(mut v: Vec<Range>) -> Vec<Range> {
    if !v.windows(2).all(|w| w[0] <= w[1]) {
        v.sort_unstable();
    }
    v
}

/// Merge overlapping and adjacent ranges of a sorted list, in place.
fn coalesce_sorted(mut v: Vec<Range>) -> Vec<Range> {
    let mut w = 0;
    for i in 0..v.len() {
        let r = v[i];
        if w > 0 && r.offset <= v[w - 1].end() {
            let last = &mut v[w - 1];
            last.length = last.end().max(r.end()) - last.offset;
        } else {
            v[w] = r;
            w += 1;
        }
    }
    v.truncate(w);
    v
}

/// Reads one run of the spill file (positional reads: the runs share one file).
#[derive(Debug)]
struct RunReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
    filled: usize,
}

impl RunReader<'_> {
    fn next(&mut self) -> io::Result<Option<Range>> {
        if self.at == self.filled {
            if self.pos == self.end {
                return Ok(None);
            }
            let want = (self.end - self.pos).min(self.buf.len() as u64) as usize;
            self.file.read_exact_at(&mut self.buf[..want], self.pos)?;
            self.pos += want as u64;
            self.at = 0;
            self.filled = want;
        }
        let rec = &self.buf[self.at..self.at + RECORD];
        self.at += RECORD;
        let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
        Ok(Some(Range {
            offset: word(0),
            length: word(8),
        }))
    }
}

/// Iterator over a [`SortedRanges`]: the ranges in order, coalesced.
#[derive(Debug)]
pub struct RangeIter<'a> {
    mem: std::slice::Iter<'a, Range>,
    spill: Option<&'a Spill>,
    readers: Vec<RunReader<'a>>,
    heads: BinaryHeap<std::cmp::Reverse<(Range, usize)>>,
    pending: Option<Range>,
}

impl RangeIter<'_> {
    /// The next range of the merged runs, not yet coalesced.
    fn next_raw(&mut self) -> Result<Option<Range>, OpError> {
        let Some(spill) = self.spill else {
            return Ok(self.mem.next().copied());
        };
        let Some(std::cmp::Reverse((r, i))) = self.heads.pop() else {
            return Ok(None);
        };
        if let Some(next) = self.readers[i]
            .next()
            .map_err(|e| spill.err("read spill file", e))?
        {
            self.heads.push(std::cmp::Reverse((next, i)));
        }
        Ok(Some(r))
    }
}

impl Iterator for RangeIter<'_> {
    type Item = Result<Range, OpError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = match self.next_raw() {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            match (self.pending, raw) {
                (None, None) => return None,
                (None, Some(r)) => self.pending = Some(r),
                (Some(p), None) => {
                    self.pending = None;
                    return Some(Ok(p));
                }
                (Some(p), Some(r)) if r.offset <= p.end() => {
                    self.pending = Some(Range {
                        offset: p.offset,
                        length: p.end().max(r.end()) - p.offset,
                    });
                }
                (Some(p), Some(r)) => {
                    self.pending = Some(r);
                    return Some(Ok(p));
                }
            }
        }
    }
}

fn spill_file() -> Result<Spill, OpError> {
    let (file, path) = blkpipe_dev::guard::create_unlinked_temp("ranges")?;
    Ok(Spill { file, path })
}

#[cfg(test)]
mod tests;
