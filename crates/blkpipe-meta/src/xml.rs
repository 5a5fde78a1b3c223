//! `thin_delta` and `era_invalidate` XML as byte ranges.
//!
//! `thin_delta` (thin-provisioning-tools) prints
//!
//! ```text
//! <superblock uuid="" time="1" transaction="2" version="2" data_block_size="128" nr_data_blocks="16384">
//!   <diff left="1" right="2">
//!     <different begin="0" length="4"/>
//!     <right_only begin="10" length="5"/>
//!     <same begin="15" length="100"/>
//!   </diff>
//! </superblock>
//! ```
//!
//! with `begin`/`length` in data blocks of `data_block_size` sectors; with `--verbose` each kind
//! is an element holding `<range begin=".." length=".." .../>` children instead. Everything but
//! `same` has to move: `different` and `right_only` hold new data, `left_only` was unmapped
//! (reads as zeros now).
//!
//! `era_invalidate` prints `<blocks>` holding `<range begin="B" end="E"/>` (end exclusive) and
//! `<block block="B"/>`, in era blocks; the XML carries no block size, so it comes from the
//! caller (the era target's block size, e.g. from `dmsetup table`).
//!
//! The parser is small and strict: well-formed tags only (matching end tags, quoted
//! attributes), known elements where they decide the result, decimal numbers that fit, no
//! zero-length or overflowing range. It tolerates the XML declaration, comments, whitespace,
//! attribute order and unknown attributes. Tags, attribute counts, nesting and the number of
//! ranges are capped, and errors give the line, column and byte offset.

use std::io::{BufRead, ErrorKind};

use blkpipe_format::range::{coalesce, Range};

use crate::MetaError;

/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 4096;
/// Most attributes on one element.
pub const MAX_ATTRS: usize = 32;
/// Deepest element nesting.
pub const MAX_DEPTH: usize = 16;
/// Most ranges kept before coalescing (ranges that touch the previous one are merged as they
/// arrive, so sorted input needs one slot per gap).
pub const MAX_RANGES: usize = 1 << 25;
/// Bytes per sector.
const SECTOR: u64 = 512;

/// Ranges parsed from XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRanges {
    /// Block size in bytes that the ranges were converted with.
    pub block_bytes: u64,
    /// Byte ranges, sorted and coalesced.
    pub ranges: Vec<Range>,
    /// Blocks listed (before coalescing), for statistics.
    pub blocks: u64,
}

impl BlockRanges {
    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.length).sum()
    }
}

/// One tag.
#[derive(Debug)]
struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
    /// `</name>`
    end: bool,
    /// `<name/>`
    empty: bool,
    line: u64,
    column: u64,
    offset: u64,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A position for error messages.
#[derive(Debug, Clone, Copy)]
struct Pos {
    line: u64,
    column: u64,
    offset: u64,
}

/// A tag tokenizer over a byte stream that keeps line and column.
struct Lexer<R: BufRead> {
    input: R,
    pos: Pos,
}

impl<R: BufRead> Lexer<R> {
    fn new(input: R) -> Self {
        Lexer {
            input,
            pos: Pos {
                line: 1,
                column: 1,
                offset: 0,
            },
        }
    }

    fn err_at(pos: Pos, reason: impl Into<String>) -> MetaError {
        MetaError::Xml {
            line: pos.line,
            column: pos.column,
            offset: pos.offset,
            reason: reason.into(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> MetaError {
        Self::err_at(self.pos, reason)
    }

    fn peek(&mut self) -> Result<Option<u8>, MetaError> {
        loop {
            match self.input.fill_buf() {
                Ok(b) => return Ok(b.first().copied()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(MetaError::Input(e)),
            }
        }
    }

    fn bump(&mut self) -> Result<Option<u8>, MetaError> {
        let b = self.peek()?;
        if let Some(c) = b {
            self.input.consume(1);
            self.pos.offset += 1;
            if c == b'\n' {
                self.pos.line += 1;
                self.pos.column = 1;
            } else {
                self.pos.column += 1;
            }
        }
        Ok(b)
    }

    /// Skip text up to the next `<`. Only whitespace may appear between tags.
    fn skip_text(&mut self) -> Result<bool, MetaError> {
        loop {
            // Fast path over a buffered run of whitespace.
            match self.peek()? {
                None => return Ok(false),
                Some(b'<') => return Ok(true),
                Some(c) if c.is_ascii_whitespace() => {
                    self.bump()?;
                }
                Some(c) => {
                    return Err(self.err(format!(
                        "unexpected text {:?} between elements",
                        char::from(c)
                    )))
                }
            }
        }
    }

    /// Read bytes up to and including `end`, into `out`, with a length cap.
    fn read_until(&mut self, end: &[u8], out: &mut Vec<u8>, what: &str) -> Result<(), MetaError> {
        let start = self.pos;
        loop {
            let Some(c) = self.bump()? else {
                return Err(Self::err_at(
                    start,
                    format!("{what} not closed before end of input"),
                ));
            };
            out.push(c);
            if out.ends_with(end) {
                out.truncate(out.len() - end.len());
                return Ok(());
            }
            if out.len() > MAX_TAG_LEN {
                return Err(Self::err_at(
                    start,
                    format!("{what} longer than {MAX_TAG_LEN} bytes"),
                ));
            }
        }
    }

    /// The next element tag, skipping the declaration, comments and processing instructions.
    fn next_tag(&mut self) -> Result<Option<Tag>, MetaError> {
        loop {
            if !self.skip_text()? {
                return Ok(None);
            }
            let start = self.pos;
            self.bump()?; // '<'
            let mut raw = Vec::new();
            match self.peek()? {
                Some(b'?') => {
                    self.read_until(b"?>", &mut raw, "processing instruction")?;
                    continue;
                }
                Some(b'!') => {
                    self.read_until(b">", &mut raw, "markup declaration")?;
                    if raw.starts_with(b"!--") {
                        // A comment may contain '>': read on to "-->".
                        while !(raw.len() >= 5 && raw.ends_with(b"--")) {
                            raw.push(b'>');
                            self.read_until(b">", &mut raw, "comment")?;
                        }
                        continue;
                    }
                    return Err(Self::err_at(
                        start,
                        "DOCTYPE and CDATA are not expected here",
                    ));
                }
                _ => {}
            }
            self.read_tag_body(&mut raw)?;
            return parse_tag(&raw, start).map(Some);
        }
    }

    /// Read a tag's bytes up to its closing `>`, honouring quotes.
    fn read_tag_body(&mut self, raw: &mut Vec<u8>) -> Result<(), MetaError> {
        let start = self.pos;
        let mut quote = None;
        loop {
            let Some(c) = self.bump()? else {
                return Err(Self::err_at(start, "tag not closed before end of input"));
            };
            match (quote, c) {
                (None, b'>') => return Ok(()),
                (None, b'"' | b'\'') => quote = Some(c),
                (Some(q), _) if q == c => quote = None,
                (None, b'<') => return Err(self.err("'<' inside a tag")),
                _ => {}
            }
            raw.push(c);
            if raw.len() > MAX_TAG_LEN {
                return Err(Self::err_at(
                    start,
                    format!("tag longer than {MAX_TAG_LEN} bytes"),
                ));
            }
        }
    }
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
}

/// Parse the inside of `<...>`.
fn parse_tag(raw: &[u8], pos: Pos) -> Result<Tag, MetaError> {
    let err = |reason: String| {
        Err(MetaError::Xml {
            line: pos.line,
            column: pos.column,
            offset: pos.offset,
            reason,
        })
    };
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(_) => return err("tag is not UTF-8".into()),
    };
    let mut rest = text;
    let end = rest.starts_with('/');
    if end {
        rest = &rest[1..];
    }
    let empty = !end && rest.ends_with('/');
    if empty {
        rest = &rest[..rest.len() - 1];
    }
    let name_len = rest.bytes().take_while(|&c| is_name_byte(c)).count();
    if name_len == 0 {
        return err(format!("malformed tag <{text}>"));
    }
    let name = rest[..name_len].to_owned();
    rest = &rest[name_len..];
    let mut attrs = Vec::new();
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return err(format!("<{name}>: expected whitespace before {trimmed:?}"));
        }
        if end {
            return err(format!("</{name}>: an end tag has no attributes"));
        }
        rest = trimmed;
        let key_len = rest.bytes().take_while(|&c| is_name_byte(c)).count();
        if key_len == 0 {
            return err(format!("<{name}>: malformed attribute at {rest:?}"));
        }
        let key = &rest[..key_len];
        rest = rest[key_len..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            return err(format!("<{name}>: attribute {key} has no value"));
        };
        rest = after_eq.trim_start();
        let Some(q) = rest.chars().next().filter(|&c| c == '"' || c == '\'') else {
            return err(format!("<{name}>: value of {key} is not quoted"));
        };
        let Some(close) = rest[1..].find(q) else {
            return err(format!("<{name}>: value of {key} is not closed"));
        };
        let value = &rest[1..1 + close];
        rest = &rest[close + 2..];
        if attrs.iter().any(|(k, _)| k == key) {
            return err(format!("<{name}>: attribute {key} given twice"));
        }
        if attrs.len() == MAX_ATTRS {
            return err(format!("<{name}>: more than {MAX_ATTRS} attributes"));
        }
        attrs.push((key.to_owned(), value.to_owned()));
    }
    Ok(Tag {
        name,
        attrs,
        end,
        empty,
        line: pos.line,
        column: pos.column,
        offset: pos.offset,
    })
}

fn tag_err(tag: &Tag, reason: impl Into<String>) -> MetaError {
    MetaError::Xml {
        line: tag.line,
        column: tag.column,
        offset: tag.offset,
        reason: reason.into(),
    }
}

fn num_attr(tag: &Tag, key: &str) -> Result<u64, MetaError> {
    let Some(v) = tag.attr(key) else {
        return Err(tag_err(
            tag,
            format!("<{}> lacks attribute {key}", tag.name),
        ));
    };
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(tag_err(
            tag,
            format!("<{}> {key}={v:?} is not a decimal number", tag.name),
        ));
    }
    v.parse().map_err(|_| {
        tag_err(
            tag,
            format!("<{}> {key}={v} does not fit 64 bits", tag.name),
        )
    })
}

/// Collects block ranges, merging each with the previous one when they touch.
struct Collector {
    block_bytes: u64,
    ranges: Vec<Range>,
    blocks: u64,
}

impl Collector {
    fn push(&mut self, tag: &Tag, begin: u64, blocks: u64) -> Result<(), MetaError> {
        if blocks == 0 {
            return Err(tag_err(tag, format!("<{}> covers no blocks", tag.name)));
        }
        let end = begin
            .checked_add(blocks)
            .ok_or_else(|| tag_err(tag, "block range overflows 64 bits"))?;
        let offset = begin.checked_mul(self.block_bytes);
        let stop = end.checked_mul(self.block_bytes);
        let (Some(offset), Some(stop)) = (offset, stop) else {
            return Err(tag_err(
                tag,
                format!(
                    "blocks {begin}..{end} of {} bytes lie beyond any device size",
                    self.block_bytes
                ),
            ));
        };
        self.blocks += blocks;
        if let Some(last) = self.ranges.last_mut() {
            if offset >= last.offset && offset <= last.end() {
                last.length = last.end().max(stop) - last.offset;
                return Ok(());
            }
        }
        if self.ranges.len() == MAX_RANGES {
            return Err(tag_err(
                tag,
                format!("more than {MAX_RANGES} separate ranges"),
            ));
        }
        self.ranges.push(Range {
            offset,
            length: stop - offset,
        });
        Ok(())
    }

    fn finish(self) -> BlockRanges {
        BlockRanges {
            block_bytes: self.block_bytes,
            ranges: coalesce(self.ranges),
            blocks: self.blocks,
        }
    }
}

/// Tracks open elements so end tags must match.
struct Nesting(Vec<String>);

impl Nesting {
    fn enter(&mut self, tag: &Tag) -> Result<(), MetaError> {
        if tag.empty {
            return Ok(());
        }
        if self.0.len() == MAX_DEPTH {
            return Err(tag_err(
                tag,
                format!("elements nested deeper than {MAX_DEPTH}"),
            ));
        }
        self.0.push(tag.name.clone());
        Ok(())
    }

    fn leave(&mut self, tag: &Tag) -> Result<(), MetaError> {
        match self.0.pop() {
            Some(open) if open == tag.name => Ok(()),
            Some(open) => Err(tag_err(tag, format!("</{}> closes <{open}>", tag.name))),
            None => Err(tag_err(
                tag,
                format!("</{}> without an open element", tag.name),
            )),
        }
    }

    fn path(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// Walk the elements of one XML document: `open(path, tag)` is called for every start (or
/// empty) tag, with the names of the elements around it. Nesting, end tags, anything after
/// the root element and an input that ends inside an element are checked here. Returns the
/// lexer, for errors about the document as a whole.
fn walk_document<R: BufRead>(
    input: R,
    mut open: impl FnMut(&[&str], &Tag) -> Result<(), MetaError>,
) -> Result<Lexer<R>, MetaError> {
    let mut lex = Lexer::new(input);
    let mut nest = Nesting(Vec::new());
    let mut closed_root = false;
    while let Some(tag) = lex.next_tag()? {
        if closed_root {
            return Err(tag_err(
                &tag,
                format!("<{}> after the document ended", tag.name),
            ));
        }
        if tag.end {
            nest.leave(&tag)?;
            closed_root = nest.0.is_empty();
            continue;
        }
        open(&nest.path(), &tag)?;
        nest.enter(&tag)?;
        if nest.0.is_empty() && tag.empty {
            closed_root = true;
        }
    }
    if let Some(open) = nest.0.last() {
        return Err(lex.err(format!("input ended inside <{open}>")));
    }
    Ok(lex)
}

/// The error for `tag` where it may not stand: inside `path`.
fn unexpected(tag: &Tag, path: &[&str]) -> MetaError {
    tag_err(
        tag,
        format!("unexpected <{}> inside <{}>", tag.name, path.join("><")),
    )
}

/// Parse `thin_delta` output. The block size comes from `<superblock data_block_size=...>`
/// (sectors) or, if the XML lacks it, from `block_bytes`; when both are present they must agree.
pub fn parse_thin_delta<R: BufRead>(
    input: R,
    block_bytes: Option<u64>,
) -> Result<BlockRanges, MetaError> {
    let mut collector: Option<Collector> = None;
    let mut saw_diff = false;
    let lex = walk_document(input, |path, tag| {
        match (path, tag.name.as_str()) {
            ([], "superblock") => {
                let from_xml = match tag.attr("data_block_size") {
                    Some(_) => {
                        let sectors = num_attr(tag, "data_block_size")?;
                        if sectors == 0 {
                            return Err(tag_err(tag, "data_block_size is 0"));
                        }
                        Some(sectors.checked_mul(SECTOR).ok_or_else(|| {
                            tag_err(tag, "data_block_size does not fit 64 bits in bytes")
                        })?)
                    }
                    None => None,
                };
                let bytes = match (from_xml, block_bytes) {
                    (Some(x), Some(o)) if x != o => {
                        return Err(tag_err(
                            tag,
                            format!("data_block_size is {x} bytes but --block-size says {o}"),
                        ))
                    }
                    (Some(x), _) => x,
                    (None, Some(o)) => o,
                    (None, None) => {
                        return Err(tag_err(
                            tag,
                            "<superblock> has no data_block_size; give the pool's block size",
                        ))
                    }
                };
                collector = Some(Collector {
                    block_bytes: bytes,
                    ranges: Vec::new(),
                    blocks: 0,
                });
            }
            ([], other) => {
                return Err(tag_err(
                    tag,
                    format!("expected <superblock> (thin_delta output), found <{other}>"),
                ))
            }
            (["superblock"], "diff") => saw_diff = true,
            (
                ["superblock", "diff"],
                kind @ ("different" | "left_only" | "right_only" | "same"),
            ) => {
                if tag.empty {
                    if kind != "same" {
                        let c = collector.as_mut().expect("set with <superblock>");
                        c.push(tag, num_attr(tag, "begin")?, num_attr(tag, "length")?)?;
                    } else {
                        num_attr(tag, "begin")?;
                        num_attr(tag, "length")?;
                    }
                }
            }
            (["superblock", "diff", kind], "range") if tag.empty => {
                let (begin, length) = (num_attr(tag, "begin")?, num_attr(tag, "length")?);
                if *kind != "same" {
                    let c = collector.as_mut().expect("set with <superblock>");
                    c.push(tag, begin, length)?;
                }
            }
            (path, _) => return Err(unexpected(tag, path)),
        }
        Ok(())
    })?;
    let Some(collector) = collector else {
        return Err(lex.err("no <superblock> element: is this thin_delta output?"));
    };
    if !saw_diff {
        return Err(lex.err("<superblock> holds no <diff> element"));
    }
    Ok(collector.finish())
}

/// Parse `era_invalidate` output with era blocks of `block_bytes` bytes.
pub fn parse_era_invalidate<R: BufRead>(
    input: R,
    block_bytes: u64,
) -> Result<BlockRanges, MetaError> {
    if block_bytes == 0 {
        return Err(MetaError::Usage("the era block size must not be 0".into()));
    }
    let mut collector = Collector {
        block_bytes,
        ranges: Vec::new(),
        blocks: 0,
    };
    let mut saw_root = false;
    let lex = walk_document(input, |path, tag| {
        match (path, tag.name.as_str()) {
            ([], "blocks") => saw_root = true,
            ([], other) => {
                return Err(tag_err(
                    tag,
                    format!("expected <blocks> (era_invalidate output), found <{other}>"),
                ))
            }
            (["blocks"], "range") if tag.empty => {
                let (begin, end) = (num_attr(tag, "begin")?, num_attr(tag, "end")?);
                if end <= begin {
                    return Err(tag_err(
                        tag,
                        format!("<range begin=\"{begin}\" end=\"{end}\">: end must exceed begin (end is exclusive)"),
                    ));
                }
                collector.push(tag, begin, end - begin)?;
            }
            (["blocks"], "block") if tag.empty => {
                collector.push(tag, num_attr(tag, "block")?, 1)?;
            }
            (path, _) => return Err(unexpected(tag, path)),
        }
        Ok(())
    })?;
    if !saw_root {
        return Err(lex.err("no <blocks> element: is this era_invalidate output?"));
    }
    Ok(collector.finish())
}

#[cfg(test)]
mod tests;
