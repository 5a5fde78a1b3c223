//! The patch stream: a header, data and zero records in ascending offset order, an end record.
//!
//! See `docs/FORMAT.md` for the byte layout. [`PatchWriter`] produces it, [`PatchReader`]
//! consumes it and returns a record only once its checksum has been verified, so a caller that
//! applies records as they come never applies a byte that the stream did not vouch for.

use std::io::{self, Read, Write};

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use crate::seal::{mac_eq, SealKey, Sealer, CTX_PATCH, MAC_LEN, SEAL_LEN, TAG_RECORD};
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
const RECORD_HEADER: usize = 32;
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
}

impl PatchHeader {
    /// A header for a source of `source_size` bytes with an unknown total.
    pub fn new(source_size: u64, stream_id: [u8; 16]) -> Self {
        PatchHeader {
            source_size,
            total_payload: UNKNOWN_TOTAL,
            stream_id,
            creator: String::new(),
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

/// Writes a patch stream. Records must come in ascending, non-overlapping order.
pub struct PatchWriter<W: Write> {
    out: W,
    lz4: bool,
    /// The header announced a source digest: [`PatchWriter::finish`] must be given one.
    announced_digest: bool,
    /// Sealed: the stream's subkey and MAC chain.
    seal: Option<Sealer>,
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
    /// MAC follow the header, and every record and the end record carry a MAC.
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
        let bytes = header.encode(flags);
        out.write_all(&bytes)?;
        let seal = match key {
            Some(k) => {
                let (sealer, trailer) = Sealer::start(k, CTX_PATCH, &bytes);
                out.write_all(&trailer)?;
                Some(sealer)
            }
            None => None,
        };
        let mut digest = Xxh3::new();
        digest.update(&bytes);
        Ok(PatchWriter {
            out,
            lz4,
            announced_digest: announce,
            seal,
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

    fn emit(
        &mut self,
        kind: u8,
        flags: u8,
        offset: u64,
        length: u64,
        stored: &[u8],
        plain: &[u8],
    ) -> io::Result<()> {
        let mut h = [0u8; RECORD_HEADER];
        h[0] = kind;
        h[1] = flags;
        h[4..8].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[16..24].copy_from_slice(&length.to_le_bytes());
        let sum = record_checksum(&h[..24], plain, self.count);
        h[24..32].copy_from_slice(&sum.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(stored)?;
        if let Some(seal) = self.seal.as_mut() {
            let mac = seal.mac(TAG_RECORD, self.count, &[&h, stored]);
            self.out.write_all(mac.as_bytes())?;
        }
        // A plain payload is covered by the record checksum in `h` (FORMAT.md 2.3).
        self.digest.update(&h);
        if flags == FLAG_LZ4 {
            self.digest.update(stored);
        }
        self.count += 1;
        self.next_min_offset = offset + length;
        Ok(())
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
            Some(n) => self.emit(KIND_DATA, FLAG_LZ4, offset, length, &scratch[..n], data),
            None => self.emit(KIND_DATA, 0, offset, length, data, data),
        };
        self.scratch = scratch;
        res?;
        self.data_bytes += length;
        Ok(())
    }

    /// Write a zero record for `length` bytes at `offset`.
    pub fn write_zero(&mut self, offset: u64, length: u64) -> io::Result<()> {
        self.check(offset, length)?;
        self.emit(KIND_ZERO, 0, offset, length, &[], &[])?;
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
            stream_digest: self.digest.digest128(),
            source_digest,
        };
        let bytes = encode_end(&end);
        self.out.write_all(&bytes)?;
        if let Some(seal) = &self.seal {
            self.out.write_all(seal.end_mac(&bytes).as_bytes())?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn record_checksum(header24: &[u8], plain: &[u8], index: u64) -> u64 {
    let mut h = Xxh3::with_seed(index);
    h.update(header24);
    h.update(plain);
    h.digest()
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
    let sum = xxh3_64_with_seed(&b[..72], 0);
    b[72..80].copy_from_slice(&sum.to_le_bytes());
    b
}

/// The most payload bytes one record can carry on the wire: an lz4 block of a record of
/// [`MAX_RECORD_LEN`] bytes that did not compress (`LZ4_compressBound`).
pub const MAX_STORED_LEN: usize = MAX_RECORD_LEN as usize + MAX_RECORD_LEN as usize / 255 + 16;

/// Where a [`PatchReader`] puts the payloads it reads. `Vec<u8>` is the usual one; a caller
/// that writes payloads with `O_DIRECT` supplies aligned buffers and takes each filled one
/// with [`PatchReader::swap_payload`], so a payload is never copied after it is read.
pub trait PayloadBuf {
    /// Make the buffer `len` bytes long (`len` <= [`MAX_STORED_LEN`]; contents unspecified)
    /// and return those bytes to be filled.
    fn prepare(&mut self, len: usize) -> &mut [u8];
    /// The bytes of the last [`prepare`](Self::prepare).
    fn bytes(&self) -> &[u8];
}

impl PayloadBuf for Vec<u8> {
    fn prepare(&mut self, len: usize) -> &mut [u8] {
        self.resize(len, 0);
        self
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Reads and verifies a patch stream record by record.
pub struct PatchReader<R: Read, B: PayloadBuf = Vec<u8>> {
    input: R,
    header: PatchHeader,
    /// Header flag bit 0: the end record must carry a source digest.
    announced_digest: bool,
    /// Sealed: the stream's subkey and MAC chain; every record's MAC is checked with it.
    seal: Option<Sealer>,
    mac: [u8; MAC_LEN],
    pos: u64,
    digest: Xxh3,
    next_min_offset: u64,
    count: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored: B,
    plain: Vec<u8>,
    end: Option<PatchEnd>,
}

impl<R: Read> PatchReader<R> {
    /// Read and verify the header.
    pub fn new(input: R) -> Result<Self, FormatError> {
        Self::with_buffer(input, Vec::new())
    }
}

impl<R: Read, B: PayloadBuf> PatchReader<R, B> {
    /// Read and verify the header; payloads will be read into `stored`.
    pub fn with_buffer(input: R, stored: B) -> Result<Self, FormatError> {
        Self::with_key(input, stored, None)
    }

    /// [`PatchReader::with_buffer`] for a stream that must be sealed with `key` (with
    /// `None`, one that must not be sealed). A sealed stream without a key, an unsealed one
    /// with a key and a stream sealed with another key are refused here, at the header;
    /// then every record is returned only after its MAC has been verified.
    pub fn with_key(mut input: R, stored: B, key: Option<&SealKey>) -> Result<Self, FormatError> {
        let mut fixed = [0u8; HEADER_FIXED];
        let got = read_full(&mut input, &mut fixed)?;
        if got >= 8 && &fixed[..8] != MAGIC || got < 8 && fixed[..got] != MAGIC[..got] {
            return Err(FormatError::BadMagic {
                stream: "patch",
                found: fixed[..got.min(8)].to_vec(),
            });
        }
        if got >= 12 {
            let (major, minor) = (le_u16(&fixed, 8), le_u16(&fixed, 10));
            if major != VERSION_MAJOR {
                return Err(FormatError::UnsupportedVersion {
                    stream: "patch",
                    found_major: major,
                    found_minor: minor,
                    supported: VERSION_MAJOR,
                });
            }
        }
        let truncated = |at: u64| FormatError::Truncated {
            what: "patch header",
            record: 0,
            at,
        };
        if got < HEADER_FIXED {
            return Err(truncated(got as u64));
        }
        let creator_len = le_u16(&fixed, 48) as usize;
        if creator_len > MAX_CREATOR_LEN {
            return Err(FormatError::invalid(
                0,
                48,
                format!("patch header: creator length {creator_len} exceeds {MAX_CREATOR_LEN}"),
            ));
        }
        let mut rest = vec![0u8; creator_len + 8];
        let got2 = read_full(&mut input, &mut rest)?;
        if got2 < rest.len() {
            return Err(truncated((HEADER_FIXED + got2) as u64));
        }
        let mut digest = Xxh3::new();
        digest.update(&fixed);
        digest.update(&rest);
        let mut sum = Xxh3::with_seed(0);
        sum.update(&fixed);
        sum.update(&rest[..creator_len]);
        if sum.digest() != le_u64(&rest, creator_len) {
            return Err(FormatError::Checksum {
                what: "patch header",
                record: 0,
                offset: 0,
            });
        }
        let flags = le_u32(&fixed, 12);
        let known = if le_u16(&fixed, 10) >= 1 {
            HEADER_FLAG_DIGEST | HEADER_FLAG_SEALED
        } else {
            0
        };
        if flags & !known != 0 {
            return Err(FormatError::invalid(
                0,
                12,
                format!("patch header: unknown flags 0x{flags:x} set"),
            ));
        }
        let header_len = HEADER_FIXED + creator_len + 8;
        let seal = match (flags & HEADER_FLAG_SEALED != 0, key) {
            (true, None) => return Err(FormatError::KeyNeeded { stream: "patch" }),
            (false, Some(_)) => return Err(FormatError::NotSealed { stream: "patch" }),
            (false, None) => None,
            (true, Some(key)) => {
                let mut trailer = [0u8; SEAL_LEN];
                let got = read_full(&mut input, &mut trailer)?;
                if got < SEAL_LEN {
                    return Err(truncated((header_len + got) as u64));
                }
                let mut bytes = Vec::with_capacity(header_len);
                bytes.extend_from_slice(&fixed);
                bytes.extend_from_slice(&rest);
                Some(Sealer::verify(key, CTX_PATCH, "patch", &bytes, &trailer)?)
            }
        };
        let pos = (header_len + if seal.is_some() { SEAL_LEN } else { 0 }) as u64;
        let header = PatchHeader {
            source_size: le_u64(&fixed, 16),
            total_payload: le_u64(&fixed, 24),
            stream_id: fixed[32..48].try_into().expect("16 bytes"),
            creator: String::from_utf8_lossy(&rest[..creator_len]).into_owned(),
        };
        Ok(PatchReader {
            input,
            header,
            announced_digest: flags & HEADER_FLAG_DIGEST != 0,
            seal,
            mac: [0u8; MAC_LEN],
            pos,
            digest,
            next_min_offset: 0,
            count: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stored,
            plain: Vec::new(),
            end: None,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &PatchHeader {
        &self.header
    }

    /// Whether the header announces a source digest in the end record (a stream whose end
    /// record then lacks it is refused as damaged).
    pub fn announces_source_digest(&self) -> bool {
        self.announced_digest
    }

    /// Whether the stream is sealed (then every record returned passed its MAC).
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The end record, once [`next_record`](Self::next_record) has returned `None`.
    pub fn end(&self) -> Option<&PatchEnd> {
        self.end.as_ref()
    }

    /// Number of records returned so far.
    pub fn records_read(&self) -> u64 {
        self.count
    }

    /// Stream bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn read_exact_or(&mut self, buf_len: usize, what: &'static str) -> Result<(), FormatError> {
        let got = read_full(&mut self.input, self.stored.prepare(buf_len))?;
        if got < buf_len {
            return Err(FormatError::Truncated {
                what,
                record: self.count,
                at: self.pos + got as u64,
            });
        }
        Ok(())
    }

    /// The next verified record, or `None` after a valid end record followed by end of input.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, FormatError> {
        if self.end.is_some() {
            return Ok(None);
        }
        let idx = self.count;
        let mut kind = [0u8; 1];
        if read_full(&mut self.input, &mut kind)? == 0 {
            return Err(FormatError::Truncated {
                what: "stream ends before the end record",
                record: idx,
                at: self.pos,
            });
        }
        if kind[0] == KIND_END {
            return self.read_end().map(|()| None);
        }
        let mut h = [0u8; RECORD_HEADER];
        h[0] = kind[0];
        let got = read_full(&mut self.input, &mut h[1..])?;
        if got < RECORD_HEADER - 1 {
            return Err(FormatError::Truncated {
                what: "record header",
                record: idx,
                at: self.pos + 1 + got as u64,
            });
        }
        let (flags, stored_len) = (h[1], le_u32(&h, 4) as u64);
        let (offset, length) = (le_u64(&h, 8), le_u64(&h, 16));
        let bad = |why: String| Err(FormatError::invalid(idx, offset, why));
        if kind[0] != KIND_DATA && kind[0] != KIND_ZERO {
            return bad(format!(
                "unknown record kind 0x{:02x} at byte {}",
                kind[0], self.pos
            ));
        }
        if length == 0 || length > MAX_RECORD_LEN {
            return bad(format!(
                "record length {length} outside 1..={MAX_RECORD_LEN}"
            ));
        }
        let max_stored = match (kind[0], flags) {
            (KIND_ZERO, 0) => 0,
            (KIND_DATA, 0) => length,
            (KIND_DATA, FLAG_LZ4) => lz4::block::compress_bound(length as usize)? as u64,
            _ => return bad(format!("bad record flags 0x{flags:02x}")),
        };
        if le_u16(&h, 2) != 0 {
            return bad("reserved record bytes are not zero".into());
        }
        if stored_len > max_stored || (flags == 0 && stored_len != max_stored) {
            return bad(format!(
                "payload size {stored_len} does not fit a record of length {length}"
            ));
        }
        self.read_exact_or(stored_len as usize, "record payload")
            .map_err(|e| match e {
                FormatError::Truncated { what, record, at } => FormatError::Truncated {
                    what,
                    record,
                    at: at + RECORD_HEADER as u64,
                },
                e => e,
            })?;
        if let Some(seal) = self.seal.as_mut() {
            let got = read_full(&mut self.input, &mut self.mac)?;
            if got < MAC_LEN {
                return Err(FormatError::Truncated {
                    what: "record MAC",
                    record: idx,
                    at: self.pos + RECORD_HEADER as u64 + stored_len + got as u64,
                });
            }
            // The MAC covers the wire bytes: checked before the payload is even decompressed.
            if seal
                .check(TAG_RECORD, idx, &[&h, self.stored.bytes()], &self.mac)
                .is_err()
            {
                return Err(FormatError::Mac {
                    what: "record",
                    record: idx,
                    offset,
                });
            }
            self.pos += MAC_LEN as u64;
        }
        let plain: &[u8] = if flags == FLAG_LZ4 {
            self.plain.resize(length as usize, 0);
            match lz4::block::decompress_to_buffer(
                self.stored.bytes(),
                Some(length as i32),
                &mut self.plain,
            ) {
                Ok(n) if n as u64 == length => &self.plain,
                _ => return bad("lz4 payload does not decompress to the record length".into()),
            }
        } else {
            self.stored.bytes()
        };
        if record_checksum(&h[..24], plain, idx) != le_u64(&h, 24) {
            return Err(FormatError::Checksum {
                what: "record",
                record: idx,
                offset,
            });
        }
        // Order and bounds are checked only after the checksum, so a corrupted offset is
        // reported as corruption rather than as a misordered record.
        if offset < self.next_min_offset {
            return bad(format!(
                "record overlaps or precedes the previous record ending at {}",
                self.next_min_offset
            ));
        }
        match offset.checked_add(length) {
            Some(end) if end <= self.header.source_size => {}
            _ => {
                return bad(format!(
                    "record of length {length} ends past the source size {}",
                    self.header.source_size
                ))
            }
        }
        // Every wire byte is covered: plain payloads by the record checksum, the rest by the
        // stream digest (FORMAT.md 2.3).
        self.digest.update(&h);
        if flags == FLAG_LZ4 {
            self.digest.update(self.stored.bytes());
        }
        self.pos += RECORD_HEADER as u64 + stored_len;
        self.next_min_offset = offset + length;
        self.count += 1;
        let data = if kind[0] == KIND_DATA {
            self.data_bytes += length;
            RecordData::Data(if flags == FLAG_LZ4 {
                &self.plain
            } else {
                self.stored.bytes()
            })
        } else {
            self.zero_bytes += length;
            RecordData::Zero
        };
        Ok(Some(Record {
            index: idx,
            offset,
            length,
            lz4: flags == FLAG_LZ4,
            data,
        }))
    }

    /// Hand over the buffer holding the payload of the record just returned, as it came on
    /// the wire (for a record that is not [`Record::lz4`], exactly its data), and read on into
    /// `spare`.
    pub fn swap_payload(&mut self, spare: B) -> B {
        std::mem::replace(&mut self.stored, spare)
    }

    fn read_end(&mut self) -> Result<(), FormatError> {
        let idx = self.count;
        let mut b = [0u8; END_LEN];
        b[0] = KIND_END;
        let got = read_full(&mut self.input, &mut b[1..])?;
        if got < END_LEN - 1 {
            return Err(FormatError::Truncated {
                what: "end record",
                record: idx,
                at: self.pos + 1 + got as u64,
            });
        }
        let at = self.pos;
        if xxh3_64_with_seed(&b[..72], 0) != le_u64(&b, 72) {
            return Err(FormatError::Checksum {
                what: "end record",
                record: idx,
                offset: at,
            });
        }
        if let Some(seal) = &self.seal {
            let got = read_full(&mut self.input, &mut self.mac)?;
            if got < MAC_LEN {
                return Err(FormatError::Truncated {
                    what: "end record MAC",
                    record: idx,
                    at: at + (END_LEN + got) as u64,
                });
            }
            if !mac_eq(&seal.end_mac(&b), &self.mac) {
                return Err(FormatError::Mac {
                    what: "end record",
                    record: idx,
                    offset: at,
                });
            }
            self.pos += MAC_LEN as u64;
        }
        let end = PatchEnd {
            record_count: le_u64(&b, 8),
            data_bytes: le_u64(&b, 16),
            zero_bytes: le_u64(&b, 24),
            stream_digest: le_u128(&b, 56),
            source_digest: (b[1] & FLAG_SOURCE_DIGEST != 0).then(|| SourceDigest {
                block_size: le_u32(&b, 4),
                seed: le_u64(&b, 32),
                digest: le_u128(&b, 40),
            }),
        };
        let mismatch = |what: &str, found: u64, counted: u64| {
            Err(FormatError::invalid(
                idx,
                at,
                format!("end record says {found} {what} but the stream held {counted}"),
            ))
        };
        if end.record_count != self.count {
            return mismatch("records", end.record_count, self.count);
        }
        if end.data_bytes != self.data_bytes {
            return mismatch("data bytes", end.data_bytes, self.data_bytes);
        }
        if end.zero_bytes != self.zero_bytes {
            return mismatch("zero bytes", end.zero_bytes, self.zero_bytes);
        }
        if self.announced_digest && end.source_digest.is_none() {
            return Err(FormatError::invalid(
                idx,
                at,
                "end record: no source digest, though the header announced one",
            ));
        }
        if end.stream_digest != self.digest.digest128() {
            return Err(FormatError::invalid(
                idx,
                at,
                "end record: stream digest mismatch",
            ));
        }
        self.pos += END_LEN as u64;
        let mut extra = [0u8; 1];
        if read_full(&mut self.input, &mut extra)? != 0 {
            return Err(FormatError::invalid(
                idx,
                self.pos,
                format!("unexpected data after the end record at byte {}", self.pos),
            ));
        }
        self.end = Some(end);
        Ok(())
    }
}
