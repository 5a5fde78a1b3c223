//! Sorting any number of chunk numbers in bounded memory.
//!
//! When the values are known to lie below a bound whose bitmap takes at most [`BITMAP_MAX`]
//! bytes, [`ChunkSorter`] marks them in that bitmap (a repeat is seen as it is marked, and
//! the set bits read back in order). Otherwise it keeps up to `run_len` values in memory; when that fills, it sorts them
//! ([`sort_chunks`]) and appends them as one sorted run to a temporary file (from
//! [`blkpipe_dev::guard::create_unlinked_temp`]: `O_EXCL` in `$TMPDIR`, unlinked at once).
//! [`SortedChunks::iter`] merges the runs back in ascending order through a small buffer per
//! run, keeping repeats, so a caller sees a repeated value as two equal neighbours. Memory:
//! `run_len` values plus the same again while sorting a run, and [`MERGE_BUF`] bytes per run
//! while merging, whatever the number of values.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use blkpipe_dev::DevError;

use super::sort_chunks;
use crate::MetaError;

/// Values kept in memory before a sorted run is spilled (4 MiB).
pub const RUN_LEN: usize = 1 << 19;
/// Read buffer per run while merging.
pub const MERGE_BUF: usize = 32 << 10;
/// Values waiting to be marked in a bitmap.
const MARK_BATCH: usize = 1 << 16;
/// The largest bitmap a sorter uses instead of sorting (8 MiB: 64 M values).
pub const BITMAP_MAX: u64 = 8 << 20;

/// Collects chunk numbers, spilling sorted runs to a temporary file past `run_len`.
#[derive(Debug)]
pub struct ChunkSorter {
    bits: Option<Bitmap>,
    mem: Vec<u64>,
    run_len: usize,
    spill: Option<(File, PathBuf)>,
    /// Each run's first value's index in the spill file and its length, in values.
    runs: Vec<(u64, u64)>,
    len: u64,
}

/// The values a [`ChunkSorter`] collected, sorted (in memory or in runs to merge).
#[derive(Debug)]
pub struct SortedChunks {
    bits: Option<Bitmap>,
    mem: Vec<u64>,
    spill: Option<(File, PathBuf)>,
    runs: Vec<(u64, u64)>,
    len: u64,
}

fn spill_err(path: &std::path::Path, op: &str, source: io::Error) -> MetaError {
    MetaError::Dev(DevError::Io {
        path: path.to_owned(),
        op: op.into(),
        source,
    })
}

/// Values below a bound, as bits, and the first value seen twice.
#[derive(Debug)]
struct Bitmap {
    words: Vec<u64>,
    repeat: Option<u64>,
}

impl ChunkSorter {
    /// A sorter for values below `bound`: a bitmap if it takes at most [`BITMAP_MAX`] bytes,
    /// else runs of [`RUN_LEN`] values (spilled past that).
    pub fn new(bound: u64) -> Self {
        let mut s = Self::with_run_len(RUN_LEN);
        if bound.div_ceil(64).saturating_mul(8) <= BITMAP_MAX {
            s.bits = Some(Bitmap {
                words: vec![0; bound.div_ceil(64) as usize],
                repeat: None,
            });
        }
        s
    }

    /// A sorter that keeps `run_len` values in memory (at least 1), never a bitmap.
    pub fn with_run_len(run_len: usize) -> Self {
        ChunkSorter {
            bits: None,
            mem: Vec::new(),
            run_len: run_len.max(1),
            spill: None,
            runs: Vec::new(),
            len: 0,
        }
    }

    /// Add one value.
    pub fn push(&mut self, v: u64) -> Result<(), MetaError> {
        if let Some(b) = &self.bits {
            if v / 64 < b.words.len() as u64 {
                // Marked in batches: a tight loop over scattered bits overlaps the cache misses.
                if self.mem.len() == MARK_BATCH {
                    self.mark_pending();
                }
                self.mem.push(v);
                self.len += 1;
                return Ok(());
            }
            // Past the bound after all: keep what is marked as sorted values instead.
            self.unmark()?;
        }
        if self.mem.len() == self.run_len {
            self.spill_run()?;
        }
        self.mem.push(v);
        self.len += 1;
        Ok(())
    }

    /// Mark the values waiting in `mem` in the bitmap.
    fn mark_pending(&mut self) {
        let Some(b) = &mut self.bits else {
            return;
        };
        for &v in &self.mem {
            let (w, bit) = (&mut b.words[(v / 64) as usize], 1u64 << (v % 64));
            if *w & bit != 0 && b.repeat.is_none() {
                b.repeat = Some(v);
            }
            *w |= bit;
        }
        self.mem.clear();
    }

    /// Leave the bitmap: its values (and a repeat) become values to sort.
    fn unmark(&mut self) -> Result<(), MetaError> {
        self.mark_pending();
        let Some(b) = self.bits.take() else {
            return Ok(());
        };
        // The count stays that of the values pushed (a value seen three times is kept twice).
        let len = self.len;
        for v in bits_of(&b.words).chain(b.repeat) {
            self.push(v)?;
        }
        self.len = len;
        Ok(())
    }

    fn spill_run(&mut self) -> Result<(), MetaError> {
        sort_chunks(&mut self.mem);
        if self.spill.is_none() {
            self.spill = Some(blkpipe_dev::guard::create_unlinked_temp("chunks")?);
        }
        let (file, path) = self.spill.as_ref().expect("just created");
        let start = self.runs.last().map_or(0, |&(s, n)| s + n);
        let mut bytes = Vec::with_capacity(MERGE_BUF);
        let mut at = start * 8;
        for part in self.mem.chunks(MERGE_BUF / 8) {
            bytes.clear();
            bytes.extend(part.iter().flat_map(|v| v.to_le_bytes()));
            file.write_all_at(&bytes, at)
                .map_err(|e| spill_err(path, "write temporary file", e))?;
            at += bytes.len() as u64;
        }
        self.runs.push((start, self.mem.len() as u64));
        self.mem.clear();
        Ok(())
    }

    /// Sort what was pushed.
    pub fn finish(mut self) -> Result<SortedChunks, MetaError> {
        if self.bits.is_some() {
            self.mark_pending();
        } else if self.spill.is_some() && !self.mem.is_empty() {
            self.spill_run()?;
        } else {
            sort_chunks(&mut self.mem);
        }
        self.mem.shrink_to_fit();
        Ok(SortedChunks {
            bits: self.bits,
            mem: self.mem,
            spill: self.spill,
            runs: self.runs,
            len: self.len,
        })
    }
}

/// The set bits of `words`, ascending.
fn bits_of(words: &[u64]) -> impl Iterator<Item = u64> + '_ {
    words.iter().enumerate().flat_map(|(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            (w != 0).then(|| {
                let b = w.trailing_zeros();
                w &= w - 1;
                i as u64 * 64 + u64::from(b)
            })
        })
    })
}

/// One run being merged: its buffer of values and where it continues in the file.
struct RunReader {
    buf: Vec<u64>,
    pos: usize,
    next: u64,
    end: u64,
}

/// The values of a [`SortedChunks`] in ascending order, repeats kept (a bitmap keeps only
/// the first repeat, in [`SortedChunks::first_repeat`]).
pub struct ChunkIter<'a> {
    src: &'a SortedChunks,
    bits: Option<Box<dyn Iterator<Item = u64> + 'a>>,
    mem_pos: usize,
    runs: Vec<RunReader>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
}

impl SortedChunks {
    /// How many values there are (repeats counted).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the values went through a temporary file.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// The values in ascending order. Each call starts a new merge.
    pub fn iter(&self) -> Result<ChunkIter<'_>, MetaError> {
        let mut it = ChunkIter {
            src: self,
            bits: self
                .bits
                .as_ref()
                .map(|b| Box::new(bits_of(&b.words)) as Box<dyn Iterator<Item = u64>>),
            mem_pos: 0,
            runs: self
                .runs
                .iter()
                .map(|&(s, n)| RunReader {
                    buf: Vec::new(),
                    pos: 0,
                    next: s,
                    end: s + n,
                })
                .collect(),
            heap: BinaryHeap::new(),
        };
        for i in 0..it.runs.len() {
            if let Some(v) = it.refill(i)? {
                it.heap.push(Reverse((v, i)));
            }
        }
        Ok(it)
    }

    /// A value that occurs twice, if any (the smallest, unless a bitmap saw another first).
    pub fn first_repeat(&self) -> Result<Option<u64>, MetaError> {
        if let Some(b) = &self.bits {
            return Ok(b.repeat);
        }
        let mut prev = None;
        for v in self.iter()? {
            let v = v?;
            if prev == Some(v) {
                return Ok(Some(v));
            }
            prev = Some(v);
        }
        Ok(None)
    }
}

impl ChunkIter<'_> {
    /// The next value of run `i`, reading its next buffer when the last one is used up.
    fn refill(&mut self, i: usize) -> Result<Option<u64>, MetaError> {
        let r = &mut self.runs[i];
        if r.pos == r.buf.len() {
            if r.next == r.end {
                return Ok(None);
            }
            let n = (r.end - r.next).min((MERGE_BUF / 8) as u64) as usize;
            let (file, path) = self
                .src
                .spill
                .as_ref()
                .expect("runs live in the spill file");
            let mut bytes = vec![0u8; n * 8];
            file.read_exact_at(&mut bytes, r.next * 8)
                .map_err(|e| spill_err(path, "read temporary file", e))?;
            r.buf.clear();
            r.buf.extend(
                bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
            );
            r.pos = 0;
            r.next += n as u64;
        }
        r.pos += 1;
        Ok(Some(r.buf[r.pos - 1]))
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<u64, MetaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(b) = &mut self.bits {
            return b.next().map(Ok);
        }
        if self.src.spill.is_none() {
            let v = self.src.mem.get(self.mem_pos).copied();
            self.mem_pos += 1;
            return v.map(Ok);
        }
        let Reverse((v, i)) = self.heap.pop()?;
        match self.refill(i) {
            Ok(Some(n)) => self.heap.push(Reverse((n, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Push every value of `v` into `s` and finish it; returns it and the values it gives
    /// back, in order.
    fn sort_all(mut s: ChunkSorter, v: &[u64]) -> (SortedChunks, Vec<u64>) {
        for &x in v {
            s.push(x).unwrap();
        }
        let sorted = s.finish().unwrap();
        assert_eq!(sorted.len(), v.len() as u64);
        let got = sorted.iter().unwrap().map(|x| x.unwrap()).collect();
        (sorted, got)
    }

    proptest! {
        /// Spilled or not, the values come back sorted with every repeat, and the first
        /// repeat is found.
        #[test]
        fn sorts_in_runs_and_keeps_repeats(
            mut v in proptest::collection::vec(0u64..5000, 0..3000),
            run_len in 1usize..700,
        ) {
            let (sorted, got) = sort_all(ChunkSorter::with_run_len(run_len), &v);
            prop_assert_eq!(sorted.spilled(), v.len() > run_len);
            v.sort_unstable();
            prop_assert_eq!(&got, &v);
            let repeat = v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
            prop_assert_eq!(sorted.first_repeat().unwrap(), repeat);
        }

        /// A bitmap sorter gives the distinct values in order and finds a repeat, also when a
        /// value past its bound turns it into a run sorter.
        #[test]
        fn bitmap_sorts_and_finds_a_repeat(
            v in proptest::collection::vec(0u64..5000, 0..3000),
            bound in 1u64..6000,
        ) {
            let (sorted, got) = sort_all(ChunkSorter::new(bound), &v);
            let mut want = v.clone();
            want.sort_unstable();
            let has_repeat = want.windows(2).any(|w| w[0] == w[1]);
            prop_assert_eq!(sorted.first_repeat().unwrap().is_some(), has_repeat);
            if let Some(r) = sorted.first_repeat().unwrap() {
                prop_assert!(v.iter().filter(|&&x| x == r).count() >= 2);
            }
            if !has_repeat {
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
