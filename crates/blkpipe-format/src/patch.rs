//! The patch stream: a header, data and zero records in ascending offset order, an end record.
//!
//! See `docs/FORMAT.md` for the byte layout. [`PatchWriter`] produces it, [`PatchReader`]
//! consumes it and returns a record only once its checksum has been verified, so a caller that
//! applies records as they come never applies a byte that the stream did not vouch for.

use std::io::{self, Read, Write};

use crate::xxh3::{xxh3_64_with_seed, Xxh3_128 as Xxh3, Xxh3_64};

use crate::chain::{ChainBlock, Link, CHAIN_LEN};
use crate::seal::{SealKey, Sealer, CTX_PATCH, MAC_LEN, SEAL_LEN, TAG_RECORD};
use crate::{le_u128, le_u16, le_u32, le_u64, read_full, FormatError, MAX_RECORD_LEN};

/// The first eight bytes of every patch stream.
pub const MAGIC: &[u8; 8] = b"BLKPATCH";
/// The major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The minor version this crate writes: 1 when the header announces a source digest (header
/// flag bit 0, added in 1.1), 0 otherwise.
pub const VERSION_MINOR: u16 = 1;
/// Longest creator string.
pub const MAX_CREATOR_LEN: usize = 255;
/// `total_payload` value meaning "not known when the header was written".
pub const UNKNOWN_TOTAL: u64 = u64::MAX;

const HEADER_FIXED: usize = 50;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 32;
const END_LEN: usize = 80;

/// Record kinds on the wire.
const KIND_DATA: u8 = 0x01;
const KIND_ZERO: u8 = 0x02;
const KIND_END: u8 = 0xEE;
/// Data record flag: the payload is an lz4 block.
const FLAG_LZ4: u8 = 0x01;
/// End record flag: a source digest is present.
const FLAG_SOURCE_DIGEST: u8 = 0x01;
/// Header flag (minor version 1): the end record will carry a source digest.
const HEADER_FLAG_DIGEST: u32 = 0x01;
/// Header flag (minor version 1): the stream is sealed (FORMAT.md 6).
const HEADER_FLAG_SEALED: u32 = 0x02;
/// Header flag (minor version 1, only with [`HEADER_FLAG_SEALED`]): a chain block follows the
/// header (FORMAT.md 6.6).
const HEADER_FLAG_CHAIN: u32 = 0x04;

/// The patch stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchHeader {
    /// Size of the source device in bytes; the target is made this size.
    pub source_size: u64,
    /// Sum of the lengths of all data and zero records, or [`UNKNOWN_TOTAL`].
    pub total_payload: u64,
    /// Random identity of this stream (used to match a resume state to its stream).
    pub stream_id: [u8; 16],
    /// Free text naming the tool that wrote the stream.
    pub creator: String,
    /// Where the stream stands in a backup chain (sealed streams only, FORMAT.md 6.6).
    pub chain: Option<ChainBlock>,
}

impl PatchHeader {
    /// A header for a source of `source_size` bytes with an unknown total.
    pub fn new(source_size: u64, stream_id: [u8; 16]) -> Self {
        PatchHeader {
            source_size,
            total_payload: UNKNOWN_TOTAL,
            stream_id,
            creator: String::new(),
            chain: None,
        }
    }

    /// Serialise the header, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode(0)
    }

    fn encode(&self, flags: u32) -> Vec<u8> {
        let minor = if flags == 0 { 0 } else { VERSION_MINOR };
        let creator = truncate_utf8(&self.creator, MAX_CREATOR_LEN);
        let mut b = Vec::with_capacity(HEADER_FIXED + creator.len() + 8);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        b.extend_from_slice(&minor.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.source_size.to_le_bytes());
        b.extend_from_slice(&self.total_payload.to_le_bytes());
        b.extend_from_slice(&self.stream_id);
        b.extend_from_slice(&(creator.len() as u16).to_le_bytes());
        b.extend_from_slice(creator.as_bytes());
        let sum = xxh3_64_with_seed(&b, 0);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A whole-source digest carried by the end record (see [`crate::digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceDigest {
    /// Block size the digest was computed with.
    pub block_size: u32,
    /// Seed the digest was computed with.
    pub seed: u64,
    /// The digest.
    pub digest: u128,
}

/// The end record's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchEnd {
    /// Number of data and zero records.
    pub record_count: u64,
    /// Sum of the lengths of the data records.
    pub data_bytes: u64,
    /// Sum of the lengths of the zero records.
    pub zero_bytes: u64,
    /// xxh3-128 of the stream header, every record header and every lz4 payload
    /// (FORMAT.md 2.3).
    pub stream_digest: u128,
    /// Digest of the whole source device, when the writer knew it.
    pub source_digest: Option<SourceDigest>,
}

/// What a record carries.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordData<'a> {
    /// These bytes (already decompressed and verified) belong at the record's offset.
    Data(&'a [u8]),
    /// The record's range is all zeros.
    Zero,
}

/// One verified record.
#[derive(Debug)]
pub struct Record<'a> {
    /// Record number, from 0.
    pub index: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether the payload came as an lz4 block (then [`PatchReader::swap_payload`] hands over
    /// the compressed bytes, not `data`).
    pub lz4: bool,
    /// Contents.
    pub data: RecordData<'a>,
}

/// What goes around a record's payload on the wire (see [`PatchWriter::frame_data`]).
#[derive(Debug, Clone, Copy)]
pub struct RecordFrame {
    /// The 32-byte record header, written before the payload.
    pub head: [u8; RECORD_HEADER],
    /// The record MAC of a sealed stream, written after the payload.
    pub mac: Option<[u8; MAC_LEN]>,
}

/// What a record written carries: its kind and flags follow from it.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// A zero record: no payload.
    Zero,
    /// A data record, its payload stored as it is.
    Data(&'a [u8]),
    /// A data record whose payload is stored as the lz4 block `stored` of `plain`.
    Lz4 { stored: &'a [u8], plain: &'a [u8] },
}

impl<'a> Body<'a> {
    /// The payload as written on the wire.
    fn stored(self) -> &'a [u8] {
        match self {
            Body::Zero => &[],
            Body::Data(d) => d,
            Body::Lz4 { stored, .. } => stored,
        }
    }

    /// The bytes the record stands for (what its checksum covers).
    fn plain(self) -> &'a [u8] {
        match self {
            Body::Zero => &[],
            Body::Data(d) | Body::Lz4 { plain: d, .. } => d,
        }
    }
}

/// Writes a patch stream. Records must come in ascending, non-overlapping order.
pub struct PatchWriter<W: Write> {
    out: W,
    lz4: bool,
    /// The header announced a source digest: [`PatchWriter::finish`] must be given one.
    announced_digest: bool,
    /// Sealed: the stream's subkey and MAC chain.
    seal: Option<Sealer>,
    /// Sealed: the header MAC (the stream's link in a chain).
    link: Option<Link>,
    digest: Xxh3,
    source_size: u64,
    next_min_offset: u64,
    count: u64,
    data_bytes: u64,
    zero_bytes: u64,
    scratch: Vec<u8>,
}

impl<W: Write> PatchWriter<W> {
    /// Write the header and return a writer. With `lz4`, data payloads are compressed whenever
    /// that makes them smaller.
    pub fn new(out: W, header: PatchHeader, lz4: bool) -> io::Result<Self> {
        Self::start(out, header, lz4, false, None)
    }

    /// [`PatchWriter::new`] for a stream whose end record will carry a source digest: the
    /// header says so (flag bit 0, minor version 1), so a reader can tell before the first
    /// record (`blkpatch --verify` refuses a stream without one before writing anything).
    pub fn announcing_digest(out: W, header: PatchHeader, lz4: bool) -> io::Result<Self> {
        Self::start(out, header, lz4, true, None)
    }

    /// The general constructor: `announce` as [`PatchWriter::announcing_digest`]; with a
    /// `key`, the stream is sealed (header flag bit 1, FORMAT.md 6): the key id and header
    /// MAC follow the header, and every record and the end record carry a MAC. A header with
    /// a chain block (flag bit 2) must be sealed: the block follows the header, and the
    /// subkey and header MAC cover both.
    pub fn start(
        mut out: W,
        header: PatchHeader,
        lz4: bool,
        announce: bool,
        key: Option<&SealKey>,
    ) -> io::Result<Self> {
        let mut flags = if announce { HEADER_FLAG_DIGEST } else { 0 };
        if key.is_some() {
            flags |= HEADER_FLAG_SEALED;
        }
        if header.chain.is_some() {
            if key.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a chain block needs a sealed stream (a key)",
                ));
            }
            flags |= HEADER_FLAG_CHAIN;
        }
        let bytes = header.encode(flags);
        out.write_all(&bytes)?;
        let (seal, link) = match key {
            Some(k) => {
                let mut sealed = bytes.clone();
                if let Some(c) = &header.chain {
                    let cb = c.to_bytes();
                    out.write_all(&cb)?;
                    sealed.extend_from_slice(&cb);
                }
                let (sealer, trailer) = Sealer::start(k, CTX_PATCH, &sealed);
                out.write_all(&trailer)?;
                let link: Link = trailer[SEAL_LEN - MAC_LEN..].try_into().expect("32 bytes");
                (Some(sealer), Some(link))
            }
            None => (None, None),
        };
        let mut digest = Xxh3::new();
        digest.update(&bytes);
        Ok(PatchWriter {
            out,
            lz4,
            announced_digest: announce,
            seal,
            link,
            digest,
            source_size: header.source_size,
            next_min_offset: 0,
            count: 0,
            data_bytes: 0,
            zero_bytes: 0,
            scratch: Vec::new(),
        })
    }

    /// The inner writer (for flushing or syncing between records).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// A sealed stream's link (its header MAC, FORMAT.md 6.6); `None` unsealed.
    pub fn link(&self) -> Option<Link> {
        self.link
    }

    /// Number of records written so far.
    pub fn record_count(&self) -> u64 {
        self.count
    }

    /// Sum of data record lengths so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Sum of zero record lengths so far.
    pub fn zero_bytes(&self) -> u64 {
        self.zero_bytes
    }

    fn check(&self, offset: u64, length: u64) -> io::Result<()> {
        let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        if length == 0 || length > MAX_RECORD_LEN {
            return bad(format!(
                "record length {length} outside 1..={MAX_RECORD_LEN}"
            ));
        }
        if offset < self.next_min_offset {
            return bad(format!(
                "record at offset {offset} overlaps or precedes the previous record ending at {}",
                self.next_min_offset
            ));
        }
        match offset.checked_add(length) {
            Some(end) if end <= self.source_size => Ok(()),
            _ => bad(format!(
                "record at offset {offset} length {length} ends past the source size {}",
                self.source_size
            )),
        }
    }

    fn emit(&mut self, offset: u64, length: u64, body: Body<'_>) -> io::Result<()> {
        let frame = self.frame(offset, length, body);
        self.out.write_all(&frame.head)?;
        self.out.write_all(body.stored())?;
        if let Some(mac) = frame.mac {
            self.out.write_all(&mac)?;
        }
        Ok(())
    }

    /// A data record's header and MAC for `data` at `offset`, written by the caller (not
    /// through this writer): `head`, then `data` itself as the payload, then `mac` if any, to
    /// the same output, before anything else is written through this writer. It counts as
    /// written. The payload is never compressed, so the caller can write it from its own
    /// buffer (from another thread) without a copy.
    pub fn frame_data(&mut self, offset: u64, data: &[u8]) -> io::Result<RecordFrame> {
        let length = data.len() as u64;
        self.check(offset, length)?;
        let frame = self.frame(offset, length, Body::Data(data));
        self.data_bytes += length;
        Ok(frame)
    }

    /// Header and MAC of the next record; it counts as written.
    fn frame(&mut self, offset: u64, length: u64, body: Body<'_>) -> RecordFrame {
        let (stored, plain) = (body.stored(), body.plain());
        let (kind, flags) = match body {
            Body::Zero => (KIND_ZERO, 0),
            Body::Data(_) => (KIND_DATA, 0),
            Body::Lz4 { .. } => (KIND_DATA, FLAG_LZ4),
        };
        let mut h = [0u8; RECORD_HEADER];
        h[0] = kind;
        h[1] = flags;
        h[4..8].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[16..24].copy_from_slice(&length.to_le_bytes());
        let sum = record_checksum(&h[..24], plain, self.count);
        h[24..32].copy_from_slice(&sum.to_le_bytes());
        // The MAC is computed before the record is written, not after its payload: the reader
        // needs the MAC right behind the payload, and would otherwise wait for this hashing
        // with nothing to do (both sides' hashing would run one after the other).
        let mac = self
            .seal
            .as_mut()
            .map(|seal| *seal.mac(TAG_RECORD, self.count, &[&h, stored]).as_bytes());
        // A plain payload is covered by the record checksum in `h` (FORMAT.md 2.3).
        self.digest.update(&h);
        if flags == FLAG_LZ4 {
            self.digest.update(stored);
        }
        self.count += 1;
        self.next_min_offset = offset + length;
        RecordFrame { head: h, mac }
    }

    /// Write a data record holding `data` at `offset`.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let length = data.len() as u64;
        self.check(offset, length)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut compressed = None;
        if self.lz4 {
            let bound = lz4::block::compress_bound(data.len())?;
            scratch.resize(bound, 0);
            let n = lz4::block::compress_to_buffer(data, None, false, &mut scratch)?;
            if n < data.len() {
                compressed = Some(n);
            }
        }
        let res = match compressed {
            Some(n) => {
                let stored = &scratch[..n];
                self.emit(
                    offset,
                    length,
                    Body::Lz4 {
                        stored,
                        plain: data,
                    },
                )
            }
            None => self.emit(offset, length, Body::Data(data)),
        };
        self.scratch = scratch;
        res?;
        self.data_bytes += length;
        Ok(())
    }

    /// Write a zero record for `length` bytes at `offset`.
    pub fn write_zero(&mut self, offset: u64, length: u64) -> io::Result<()> {
        self.check(offset, length)?;
        self.emit(offset, length, Body::Zero)?;
        self.zero_bytes += length;
        Ok(())
    }

    /// Write the end record, flush, and return the inner writer.
    pub fn finish(mut self, source_digest: Option<SourceDigest>) -> io::Result<W> {
        if self.announced_digest && source_digest.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the header announced a source digest but none was given for the end record",
            ));
        }
        let end = PatchEnd {
            record_count: self.count,
            data_bytes: self.data_bytes,
            zero_bytes: self.zero_bytes,
            stream_digest: self.digest.digest(),
            source_digest,
        };
        crate::end::write_end(&mut self.out, &encode_end(&end), self.seal.as_ref())?;
        Ok(self.out)
    }
}

fn record_checksum(header24: &[u8], plain: &[u8], index: u64) -> u64 {
    let mut h = record_hasher(index, header24);
    h.update(plain);
    h.digest()
}

/// The record checksum's xxh3-64 (seeded with the record number), header bytes 0..24 in: the
/// payload follows.
fn record_hasher(index: u64, header24: &[u8]) -> Xxh3_64 {
    let mut h = Xxh3_64::with_seed(index);
    h.update(header24);
    h
}

fn encode_end(end: &PatchEnd) -> [u8; END_LEN] {
    let mut b = [0u8; END_LEN];
    b[0] = KIND_END;
    if let Some(sd) = end.source_digest {
        b[1] = FLAG_SOURCE_DIGEST;
        b[4..8].copy_from_slice(&sd.block_size.to_le_bytes());
        b[32..40].copy_from_slice(&sd.seed.to_le_bytes());
        b[40..56].copy_from_slice(&sd.digest.to_le_bytes());
    }
    b[8..16].copy_from_slice(&end.record_count.to_le_bytes());
    b[16..24].copy_from_slice(&end.data_bytes.to_le_bytes());
    b[24..32].copy_from_slice(&end.zero_bytes.to_le_bytes());
    b[56..72].copy_from_slice(&end.stream_digest.to_le_bytes());
    crate::end::put_sum(&mut b);
    b
}

mod read;
pub use read::*;
