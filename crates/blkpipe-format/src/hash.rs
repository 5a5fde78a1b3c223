//! The hash stream: a header, one fixed-size hash per block in groups that each carry a
//! checksum, and an end record.
//!
//! A reader hands out hashes one verified group at a time ([`HashReader::next_group`]), so a
//! consumer never acts on a hash whose group checksum has not been checked.

use std::io::{self, Read, Write};

use crate::xxh3::{xxh3_64_with_seed, Xxh3_128 as Xxh3};

use crate::end::HASH_END;
use crate::seal::key_for;
use crate::seal::{SealKey, Sealer, CTX_HASH, MAC_LEN, SEAL_LEN, TAG_GROUP};
use crate::{le_u128, le_u16, le_u32, le_u64, read_full, FormatError};

/// The first eight bytes of every hash stream.
pub const MAGIC: &[u8; 8] = b"BLKHASH\0";
/// The first eight bytes of the hash stream's end record.
pub const END_MAGIC: &[u8; 8] = b"BLKHEND\0";
/// The major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The minor version this crate writes when no header flag is set (1 when one is).
pub const VERSION_MINOR: u16 = 0;
/// Header flag bit 0: the stream holds hashes only for the blocks of a range list, and a
/// [`RangeBinding`] extension follows the header.
pub const FLAG_RANGES: u32 = 1;
/// The header flags this crate knows.
const KNOWN_FLAGS: u32 = FLAG_RANGES | FLAG_KEYED;
/// Header flag bit 1: the stream is keyed (FORMAT.md 6): a key id and header MAC follow the
/// header (and its range extension), every group and the end record carry a MAC.
pub const FLAG_KEYED: u32 = 0x02;
/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Hashes per checksummed group written by blkhash for 4 KiB blocks (see [`group_blocks_for`]).
pub const GROUP_BLOCKS: u16 = 1024;
/// Device bytes a group covers at most, for blocks of 16 KiB and more.
const GROUP_SPAN: u64 = 16 << 20;

/// The group size blkhash writes for `block_size`: [`GROUP_BLOCKS`], but no more than 16 MiB
/// of the device per group (at least one block). A reader acts on a group only once it is
/// complete, so a group of 1024 blocks of 1 MiB would make it wait for a whole GiB of the
/// writer's reading before its own work could overlap.
pub fn group_blocks_for(block_size: u32) -> u16 {
    (GROUP_SPAN / block_size.max(1) as u64).clamp(1, GROUP_BLOCKS as u64) as u16
}
/// Largest group a reader accepts.
pub const MAX_GROUP_BLOCKS: u16 = 4096;

const HEADER_LEN: usize = 56;
const END_LEN: usize = 56;
/// Bytes of the range extension that follows the header when [`FLAG_RANGES`] is set.
pub const RANGE_EXT_LEN: usize = 40;

/// Which hash is stored per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// Low 64 bits of the block's xxh3-128 (id 1).
    Xxh3_64,
    /// The block's full xxh3-128 (id 2).
    Xxh3_128,
}

impl HashKind {
    /// Bytes per stored hash.
    #[allow(clippy::len_without_is_empty)] // a size in bytes, not a container
    pub fn len(self) -> usize {
        match self {
            HashKind::Xxh3_64 => 8,
            HashKind::Xxh3_128 => 16,
        }
    }
    fn id(self) -> u8 {
        match self {
            HashKind::Xxh3_64 => 1,
            HashKind::Xxh3_128 => 2,
        }
    }
    /// Reduce a block's 128-bit hash to what this kind stores.
    #[inline]
    pub fn reduce(self, h: u128) -> u128 {
        match self {
            HashKind::Xxh3_64 => h as u64 as u128,
            HashKind::Xxh3_128 => h,
        }
    }
}

/// The hash stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashHeader {
    /// Bytes per block: a power of two from [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`].
    pub block_size: u32,
    /// Which hash each block carries.
    pub kind: HashKind,
    /// Hashes per checksummed group.
    pub group_blocks: u16,
    /// Size of the hashed device in bytes.
    pub device_size: u64,
    /// Seed of every hash in the stream.
    pub seed: u64,
    /// Offset of the first hashed block (a multiple of the block size; 0 for a whole device).
    pub start_offset: u64,
    /// Set for a range-restricted stream (header flag bit 0): which blocks it holds.
    pub ranges: Option<RangeBinding>,
}

/// What binds a range-restricted hash stream to its range list (FORMAT.md 3.5): the digest of
/// the list in canonical form, the number of its ranges and the number of blocks they cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeBinding {
    /// `xxh3-128(0, u64 offset ++ u64 length of each canonical range)`.
    pub list_digest: u128,
    /// Number of canonical ranges.
    pub range_count: u64,
    /// Number of blocks the canonical ranges cover: the hashes in the stream.
    pub block_count: u64,
}

/// Builds a [`RangeBinding`] from the canonical ranges (block-aligned, sorted, coalesced, see
/// [`crate::range::BlockAligned`]) of a list, in order.
#[derive(Clone)]
pub struct RangeBindingBuilder {
    block_size: u64,
    hasher: Xxh3,
    ranges: u64,
    blocks: u64,
}

impl RangeBindingBuilder {
    /// A builder for blocks of `block_size` bytes.
    pub fn new(block_size: u32) -> Self {
        RangeBindingBuilder {
            block_size: block_size.max(1) as u64,
            hasher: Xxh3::new(),
            ranges: 0,
            blocks: 0,
        }
    }

    /// Add the next canonical range.
    pub fn push(&mut self, offset: u64, length: u64) {
        self.hasher.update(&offset.to_le_bytes());
        self.hasher.update(&length.to_le_bytes());
        self.ranges += 1;
        self.blocks += length.div_ceil(self.block_size);
    }

    /// The binding of the ranges pushed.
    pub fn finish(&self) -> RangeBinding {
        RangeBinding {
            list_digest: self.hasher.digest(),
            range_count: self.ranges,
            block_count: self.blocks,
        }
    }
}

impl HashHeader {
    /// Number of blocks the stream holds hashes for.
    pub fn block_count(&self) -> u64 {
        if let Some(r) = &self.ranges {
            return r.block_count;
        }
        let bs = self.block_size as u64;
        self.device_size
            .saturating_sub(self.start_offset)
            .div_ceil(bs)
    }

    /// Offset and length of block `i` (0 = the block at `start_offset`) of a stream that is
    /// not range-restricted.
    pub fn block_range(&self, i: u64) -> (u64, u64) {
        let off = self.start_offset + i * self.block_size as u64;
        (off, (self.device_size - off).min(self.block_size as u64))
    }

    fn validate(&self) -> Result<(), String> {
        if !self.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
        {
            return Err(format!(
                "block size {} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.group_blocks == 0 || self.group_blocks > MAX_GROUP_BLOCKS {
            return Err(format!(
                "group of {} hashes outside 1..={MAX_GROUP_BLOCKS}",
                self.group_blocks
            ));
        }
        if self.start_offset % self.block_size as u64 != 0 || self.start_offset > self.device_size {
            return Err(format!(
                "start offset {} is not a block boundary inside the device",
                self.start_offset
            ));
        }
        if let Some(r) = &self.ranges {
            if self.start_offset != 0 {
                return Err(format!(
                    "a range-restricted stream must start at offset 0, not {}",
                    self.start_offset
                ));
            }
            let most = self.device_size.div_ceil(self.block_size as u64);
            if r.block_count > most || r.range_count > r.block_count {
                return Err(format!(
                    "range extension: {} blocks in {} ranges, but the device has {most} blocks",
                    r.block_count, r.range_count
                ));
            }
        }
        Ok(())
    }

    /// The header flags (FORMAT.md 3.1, offset 20) a stream of this header has unkeyed.
    pub fn flags(&self) -> u32 {
        if self.ranges.is_some() {
            FLAG_RANGES
        } else {
            0
        }
    }

    /// Serialise the header and its extension, checksums included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode(0)
    }

    /// [`HashHeader::to_bytes`] with `extra` flags set too ([`FLAG_KEYED`]).
    fn encode(&self, extra: u32) -> Vec<u8> {
        let flags = self.flags() | extra;
        let mut b = vec![0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        let minor = if flags != 0 { 1 } else { VERSION_MINOR };
        b[10..12].copy_from_slice(&minor.to_le_bytes());
        b[20..24].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16] = self.kind.id();
        b[18..20].copy_from_slice(&self.group_blocks.to_le_bytes());
        b[20..24].copy_from_slice(&flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.device_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.seed.to_le_bytes());
        b[40..48].copy_from_slice(&self.start_offset.to_le_bytes());
        let sum = xxh3_64_with_seed(&b[..48], 0);
        b[48..56].copy_from_slice(&sum.to_le_bytes());
        if let Some(r) = &self.ranges {
            b.extend_from_slice(&r.list_digest.to_le_bytes());
            b.extend_from_slice(&r.range_count.to_le_bytes());
            b.extend_from_slice(&r.block_count.to_le_bytes());
            let sum = xxh3_64_with_seed(&b[..HEADER_LEN + 32], 0);
            b.extend_from_slice(&sum.to_le_bytes());
        }
        b
    }
}

/// The hash stream's end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashEnd {
    /// Number of hashes in the stream.
    pub block_count: u64,
    /// xxh3-128 over every stored hash byte in order.
    pub hashes_digest: u128,
    /// Whole-device digest of the hashed range (see [`crate::digest`]).
    pub device_digest: u128,
}

fn group_checksum(bytes: &[u8], group: u64) -> u64 {
    xxh3_64_with_seed(bytes, group)
}

/// Writes a hash stream. Hashes are pushed in block order.
pub struct HashWriter<W: Write> {
    out: W,
    header: HashHeader,
    group: Vec<u8>,
    in_group: u16,
    group_index: u64,
    count: u64,
    all: Xxh3,
    seal: Option<Sealer>,
}

impl<W: Write> HashWriter<W> {
    /// Validate and write the header.
    pub fn new(out: W, header: HashHeader) -> io::Result<Self> {
        Self::start(out, header, None)
    }

    /// [`HashWriter::new`]; with a `key`, the stream is keyed (header flag bit 1, FORMAT.md
    /// 6): the key id and header MAC follow the header, every group and the end record carry
    /// a MAC. The hashes pushed must then be keyed block hashes
    /// ([`crate::digest::BlockHasher::new`] with the key and the header's seed).
    pub fn start(mut out: W, header: HashHeader, key: Option<&SealKey>) -> io::Result<Self> {
        header
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bytes = header.encode(if key.is_some() { FLAG_KEYED } else { 0 });
        out.write_all(&bytes)?;
        let seal = match key {
            Some(k) => {
                let (sealer, trailer) = Sealer::start(k, CTX_HASH, &bytes);
                out.write_all(&trailer)?;
                Some(sealer)
            }
            None => None,
        };
        Ok(HashWriter {
            seal,
            out,
            group: Vec::with_capacity(header.group_blocks as usize * header.kind.len() + 8),
            header,
            in_group: 0,
            group_index: 0,
            count: 0,
            all: Xxh3::new(),
        })
    }

    /// The header written.
    pub fn header(&self) -> &HashHeader {
        &self.header
    }

    /// Append the hash of the next block (its full 128-bit hash; reduced as the header says).
    pub fn push(&mut self, block_hash: u128) -> io::Result<()> {
        if self.count >= self.header.block_count() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more hashes than the device has blocks",
            ));
        }
        let bytes = block_hash.to_le_bytes();
        self.group
            .extend_from_slice(&bytes[..self.header.kind.len()]);
        self.in_group += 1;
        self.count += 1;
        if self.in_group == self.header.group_blocks || self.count == self.header.block_count() {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> io::Result<()> {
        let sum = group_checksum(&self.group, self.group_index);
        self.all.update(&self.group);
        self.group.extend_from_slice(&sum.to_le_bytes());
        if let Some(seal) = self.seal.as_mut() {
            let mac = seal.mac(TAG_GROUP, self.group_index, &[&self.group]);
            self.group.extend_from_slice(mac.as_bytes());
        }
        self.out.write_all(&self.group)?;
        self.group.clear();
        self.in_group = 0;
        self.group_index += 1;
        Ok(())
    }

    /// Pass the complete groups written so far on to the reader (flush the inner writer); a
    /// group still being filled stays here until it is complete and sealed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Write the end record with the device digest and return the inner writer.
    pub fn finish(mut self, device_digest: u128) -> io::Result<W> {
        if self.count != self.header.block_count() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} hashes pushed for {} blocks",
                    self.count,
                    self.header.block_count()
                ),
            ));
        }
        let end = HashEnd {
            block_count: self.count,
            hashes_digest: self.all.digest(),
            device_digest,
        };
        crate::end::write_end(&mut self.out, &encode_end(&end), self.seal.as_ref())?;
        Ok(self.out)
    }
}

fn encode_end(end: &HashEnd) -> [u8; END_LEN] {
    let mut b = [0u8; END_LEN];
    b[..8].copy_from_slice(END_MAGIC);
    b[8..16].copy_from_slice(&end.block_count.to_le_bytes());
    b[16..32].copy_from_slice(&end.hashes_digest.to_le_bytes());
    b[32..48].copy_from_slice(&end.device_digest.to_le_bytes());
    crate::end::put_sum(&mut b);
    b
}

/// Reads and verifies a hash stream one group at a time.
pub struct HashReader<R: Read> {
    input: R,
    header: HashHeader,
    pos: u64,
    buf: Vec<u8>,
    group_index: u64,
    done_blocks: u64,
    all: Xxh3,
    end: Option<HashEnd>,
    seal: Option<Sealer>,
}

impl<R: Read> HashReader<R> {
    /// Read and verify the header of a stream that is not keyed.
    pub fn new(input: R) -> Result<Self, FormatError> {
        Self::with_key(input, None)
    }

    /// Read and verify the header of a stream that must be keyed with `key` (with `None`,
    /// one that must not be). A keyed stream without a key, an unkeyed one with a key and a
    /// stream keyed with another key are refused here; then every group is handed out only
    /// after its MAC has been verified.
    pub fn with_key(mut input: R, key: Option<&SealKey>) -> Result<Self, FormatError> {
        let mut b = [0u8; HEADER_LEN];
        let got = read_full(&mut input, &mut b)?;
        if b[..got.min(8)] != MAGIC[..got.min(8)] {
            return Err(FormatError::BadMagic {
                stream: "hash",
                found: b[..got.min(8)].to_vec(),
            });
        }
        if got >= 12 && le_u16(&b, 8) != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                stream: "hash",
                found_major: le_u16(&b, 8),
                found_minor: le_u16(&b, 10),
                supported: VERSION_MAJOR,
            });
        }
        if got < HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "hash header",
                record: 0,
                at: got as u64,
            });
        }
        if xxh3_64_with_seed(&b[..48], 0) != le_u64(&b, 48) {
            return Err(FormatError::Checksum {
                what: "hash header",
                record: 0,
                offset: 0,
            });
        }
        let kind = match b[16] {
            1 => HashKind::Xxh3_64,
            2 => HashKind::Xxh3_128,
            id => {
                return Err(FormatError::invalid(
                    0,
                    16,
                    format!("hash header: unknown hash id {id}"),
                ))
            }
        };
        if b[17] != 0 {
            return Err(FormatError::invalid(
                0,
                17,
                "hash header: reserved byte is not zero",
            ));
        }
        let flags = le_u32(&b, 20);
        if flags != 0 && le_u16(&b, 10) == 0 {
            return Err(FormatError::invalid(
                0,
                20,
                format!("hash header: flags {flags:#x} in a minor version 0 header"),
            ));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::invalid(
                0,
                20,
                format!(
                    "hash header: unknown flags {:#x} (this blkpipe knows {KNOWN_FLAGS:#x})",
                    flags & !KNOWN_FLAGS
                ),
            ));
        }
        let mut pos = HEADER_LEN as u64;
        // The header's bytes as written, extension included: a keyed stream's subkey and
        // header MAC are over all of them.
        let mut header_bytes = b.to_vec();
        let ranges = if flags & FLAG_RANGES != 0 {
            let mut e = [0u8; HEADER_LEN + RANGE_EXT_LEN];
            e[..HEADER_LEN].copy_from_slice(&b);
            let got = read_full(&mut input, &mut e[HEADER_LEN..])?;
            if got < RANGE_EXT_LEN {
                return Err(FormatError::Truncated {
                    what: "hash range extension",
                    record: 0,
                    at: pos + got as u64,
                });
            }
            if xxh3_64_with_seed(&e[..HEADER_LEN + 32], 0) != le_u64(&e, HEADER_LEN + 32) {
                return Err(FormatError::Checksum {
                    what: "hash range extension",
                    record: 0,
                    offset: pos,
                });
            }
            pos += RANGE_EXT_LEN as u64;
            header_bytes.extend_from_slice(&e[HEADER_LEN..]);
            Some(RangeBinding {
                list_digest: le_u128(&e, HEADER_LEN),
                range_count: le_u64(&e, HEADER_LEN + 16),
                block_count: le_u64(&e, HEADER_LEN + 24),
            })
        } else {
            None
        };
        let header = HashHeader {
            block_size: le_u32(&b, 12),
            kind,
            group_blocks: le_u16(&b, 18),
            device_size: le_u64(&b, 24),
            seed: le_u64(&b, 32),
            start_offset: le_u64(&b, 40),
            ranges,
        };
        header
            .validate()
            .map_err(|e| FormatError::invalid(0, 0, format!("hash header: {e}")))?;
        let seal = match key_for(flags & FLAG_KEYED != 0, key, "hash")? {
            Some(key) => {
                Some(Sealer::read_verify(&mut input, key, CTX_HASH, "hash", &header_bytes)?.0)
            }
            None => None,
        };
        let mac_len = if seal.is_some() { MAC_LEN } else { 0 };
        Ok(HashReader {
            input,
            pos: pos + if seal.is_some() { SEAL_LEN as u64 } else { 0 },
            seal,
            buf: Vec::with_capacity(header.group_blocks as usize * kind.len() + 8 + mac_len),
            header,
            group_index: 0,
            done_blocks: 0,
            all: Xxh3::new(),
            end: None,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &HashHeader {
        &self.header
    }

    /// Whether the stream is keyed (its block hashes are keyed BLAKE3, its groups MACed).
    pub fn is_keyed(&self) -> bool {
        self.seal.is_some()
    }

    /// The end record, once [`next_group`](Self::next_group) has returned `None`.
    pub fn end(&self) -> Option<&HashEnd> {
        self.end.as_ref()
    }

    /// The next verified group: the index of its first block and its hashes (each
    /// `kind.len()` bytes, little-endian). `None` after a valid end record and end of input.
    pub fn next_group(&mut self) -> Result<Option<(u64, &[u8])>, FormatError> {
        let total = self.header.block_count();
        if self.done_blocks == total {
            if self.end.is_none() {
                self.end = Some(self.read_end()?);
            }
            return Ok(None);
        }
        let n = (total - self.done_blocks).min(self.header.group_blocks as u64) as usize;
        let hl = self.header.kind.len();
        let mac_len = if self.seal.is_some() { MAC_LEN } else { 0 };
        self.buf.resize(n * hl + 8 + mac_len, 0);
        let got = read_full(&mut self.input, &mut self.buf)?;
        let first = self.done_blocks;
        // Where the group's first block is on the device (its index in a range-restricted
        // stream, whose reader does not know the list).
        let block_offset = if self.header.ranges.is_some() {
            first
        } else {
            self.header.block_range(first).0
        };
        if got < self.buf.len() {
            return Err(FormatError::Truncated {
                what: "hash group",
                record: self.group_index,
                at: self.pos + got as u64,
            });
        }
        let body = n * hl;
        if let Some(seal) = self.seal.as_mut() {
            let (group, mac) = self.buf.split_at(body + 8);
            if seal
                .check(TAG_GROUP, self.group_index, &[group], mac)
                .is_err()
            {
                return Err(FormatError::Mac {
                    what: "hash group",
                    record: self.group_index,
                    offset: block_offset,
                });
            }
        }
        if group_checksum(&self.buf[..body], self.group_index) != le_u64(&self.buf, body) {
            return Err(FormatError::Checksum {
                what: "hash group",
                record: self.group_index,
                offset: block_offset,
            });
        }
        self.all.update(&self.buf[..body]);
        self.pos += self.buf.len() as u64;
        self.group_index += 1;
        self.done_blocks += n as u64;
        Ok(Some((first, &self.buf[..body])))
    }

    fn read_end(&mut self) -> Result<HashEnd, FormatError> {
        let mut b = [0u8; END_LEN];
        let got = read_full(&mut self.input, &mut b)?;
        let (rec, at) = (self.group_index, self.pos);
        if got < END_LEN {
            return Err(FormatError::Truncated {
                what: "hash end record",
                record: rec,
                at: at + got as u64,
            });
        }
        let check = HASH_END.at(rec, at);
        check.check(&b[..8] == END_MAGIC, || {
            "hash stream: bad end record magic".into()
        })?;
        self.pos += check.verify(&mut self.input, &b, self.seal.as_ref())?;
        let end = HashEnd {
            block_count: le_u64(&b, 8),
            hashes_digest: le_u128(&b, 16),
            device_digest: le_u128(&b, 32),
        };
        check.count("blocks", end.block_count, self.done_blocks)?;
        check.digest("digest", end.hashes_digest, self.all.digest())?;
        check.expect_eof(&mut self.input, self.pos)?;
        Ok(end)
    }
}

/// Hash `i` of a verified group as a `u128` (zero-extended for 64-bit hashes).
#[inline]
pub fn hash_at(group: &[u8], kind: HashKind, i: usize) -> u128 {
    match kind {
        HashKind::Xxh3_64 => le_u64(group, i * 8) as u128,
        HashKind::Xxh3_128 => le_u128(group, i * 16),
    }
}
