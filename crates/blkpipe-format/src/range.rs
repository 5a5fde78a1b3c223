//! The range list: text, one `OFFSET LENGTH` per line in decimal bytes.
//!
//! `#` lines and blank lines are ignored, except an optional first line
//! `# blkranges v1 size=BYTES chunk=BYTES` that carries the device size and chunk size.
//! Lines longer than [`MAX_LINE_LEN`] are an error, so a stream without newlines cannot make a
//! reader buffer it all.

use std::io::{self, BufRead, Write};

use crate::FormatError;

/// Longest accepted line, in bytes, newline excluded.
pub const MAX_LINE_LEN: usize = 4096;
/// The range list version this crate reads and writes.
pub const VERSION: u32 = 1;

/// One byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Number of bytes (never 0 in a parsed list).
    pub length: u64,
}

impl Range {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// What the optional header line says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeHeader {
    /// Size of the device the ranges refer to.
    pub size: Option<u64>,
    /// Chunk size the ranges were derived from.
    pub chunk: Option<u64>,
}

/// Write the header line.
pub fn write_header<W: Write>(out: &mut W, header: &RangeHeader) -> io::Result<()> {
    write!(out, "# blkranges v{VERSION}")?;
    if let Some(size) = header.size {
        write!(out, " size={size}")?;
    }
    if let Some(chunk) = header.chunk {
        write!(out, " chunk={chunk}")?;
    }
    writeln!(out)
}

/// Write one range line.
pub fn write_range<W: Write>(out: &mut W, r: &Range) -> io::Result<()> {
    writeln!(out, "{} {}", r.offset, r.length)
}

/// Sort ranges and merge the overlapping and adjacent ones.
pub fn coalesce(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => {
                last.length = last.end().max(r.end()) - last.offset;
            }
            _ => out.push(r),
        }
    }
    out
}

/// The canonical form of a sorted, coalesced range list for blocks of `block_size` bytes on a
/// device of `size` bytes (FORMAT.md 3.5): each range widened to whole blocks (its start
/// rounded down, its end rounded up to a multiple of the block size, then cut at `size`), and
/// ranges that then touch or overlap merged. Ranges at or past `size` are dropped. Items are
/// passed through as `Result`s so a reader's error stops the iteration where it happened.
pub struct BlockAligned<I> {
    inner: I,
    block_size: u64,
    size: u64,
    pending: Option<Range>,
    done: bool,
}

impl<I> BlockAligned<I> {
    /// Canonical ranges of `inner` (sorted and coalesced) for the given block and device size.
    pub fn new(inner: I, block_size: u32, size: u64) -> Self {
        BlockAligned {
            inner,
            block_size: block_size.max(1) as u64,
            size,
            pending: None,
            done: false,
        }
    }
}

impl<I, E> Iterator for BlockAligned<I>
where
    I: Iterator<Item = Result<Range, E>>,
{
    type Item = Result<Range, E>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some(item) = self.inner.next() else {
                self.done = true;
                break;
            };
            let r = match item {
                Ok(r) => r,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            let bs = self.block_size;
            let start = r.offset - r.offset % bs;
            if start >= self.size {
                continue;
            }
            let end = r.end().div_ceil(bs).saturating_mul(bs).min(self.size);
            match &mut self.pending {
                Some(p) if start <= p.end() => p.length = p.end().max(end) - p.offset,
                Some(_) => {
                    let out = self.pending.replace(Range {
                        offset: start,
                        length: end - start,
                    });
                    return out.map(Ok);
                }
                None => {
                    self.pending = Some(Range {
                        offset: start,
                        length: end - start,
                    })
                }
            }
        }
        self.pending.take().map(Ok)
    }
}

/// Reads a range list line by line.
pub struct RangeReader<R: BufRead> {
    input: R,
    line_no: u64,
    header: Option<RangeHeader>,
    line: Vec<u8>,
}

impl<R: BufRead> RangeReader<R> {
    /// A reader over `input`.
    pub fn new(input: R) -> Self {
        RangeReader {
            input,
            line_no: 0,
            header: None,
            line: Vec::new(),
        }
    }

    /// The header, once the first line has been read.
    pub fn header(&self) -> Option<&RangeHeader> {
        self.header.as_ref()
    }

    /// Line number of the last line read (1-based).
    pub fn line_number(&self) -> u64 {
        self.line_no
    }

    /// Read one line into `self.line`, without its newline. `false` at end of input.
    fn read_line(&mut self) -> Result<bool, FormatError> {
        self.line.clear();
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(false);
                }
                self.line_no += 1;
                return Ok(true);
            }
            let (take, found) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_LINE_LEN {
                return Err(FormatError::BadLine {
                    line: self.line_no + 1,
                    reason: format!("line longer than {MAX_LINE_LEN} bytes"),
                });
            }
            self.line.extend_from_slice(&buf[..take]);
            self.input.consume(take + found as usize);
            if found {
                self.line_no += 1;
                return Ok(true);
            }
        }
    }

    /// The next range, with its line number; `None` at end of input.
    pub fn next_range(&mut self) -> Result<Option<(u64, Range)>, FormatError> {
        while self.read_line()? {
            let line_no = self.line_no;
            let bad = |reason: String| FormatError::BadLine {
                line: line_no,
                reason,
            };
            let text = std::str::from_utf8(&self.line).map_err(|_| bad("not UTF-8".into()))?;
            let text = text.trim();
            if line_no == 1 && text.starts_with("# blkranges") {
                self.header = Some(parse_header(text).map_err(bad)?);
                continue;
            }
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let mut fields = text.split_ascii_whitespace();
            let (Some(off), Some(len), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad(format!("expected `OFFSET LENGTH`, found {text:?}")));
            };
            let offset = parse_u64(off).map_err(|e| bad(format!("offset {off:?}: {e}")))?;
            let length = parse_u64(len).map_err(|e| bad(format!("length {len:?}: {e}")))?;
            if length == 0 {
                return Err(bad("zero length".into()));
            }
            if offset.checked_add(length).is_none() {
                return Err(bad("offset + length overflows 64 bits".into()));
            }
            return Ok(Some((line_no, Range { offset, length })));
        }
        Ok(None)
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal number".into());
    }
    s.parse().map_err(|_| "does not fit 64 bits".into())
}

fn parse_header(text: &str) -> Result<RangeHeader, String> {
    let mut words = text.split_ascii_whitespace().skip(2);
    match words.next() {
        Some("v1") => {}
        Some(v) => {
            return Err(format!(
                "range list version {v} is not supported (this build reads v{VERSION})"
            ))
        }
        None => return Err("header line without a version".into()),
    }
    let mut h = RangeHeader::default();
    for w in words {
        let Some((key, value)) = w.split_once('=') else {
            return Err(format!("header field {w:?} is not KEY=VALUE"));
        };
        let slot = match key {
            "size" => &mut h.size,
            "chunk" => &mut h.chunk,
            _ => continue, // unknown keys are for later minor additions
        };
        *slot = Some(parse_u64(value).map_err(|e| format!("header {key}={value:?}: {e}"))?);
    }
    Ok(h)
}
