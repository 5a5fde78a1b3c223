//! Reading patch streams: every record checked (checksum, and MAC when sealed) before it is
//! handed out.

use super::*;
use crate::end::PATCH_END;
use crate::seal::key_for;

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
    /// Sealed: the verified header MAC (the stream's link in a chain, FORMAT.md 6.6).
    link: Option<Link>,
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
        let mut sum = crate::xxh3::Xxh3_64::with_seed(0);
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
            HEADER_FLAG_DIGEST | HEADER_FLAG_SEALED | HEADER_FLAG_CHAIN
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
        let chained = flags & HEADER_FLAG_CHAIN != 0;
        if chained && flags & HEADER_FLAG_SEALED == 0 {
            return Err(FormatError::invalid(
                0,
                12,
                "patch header: a chain block (flag bit 2) in a stream that is not sealed",
            ));
        }
        let mut chain = None;
        let mut link = None;
        let seal = match key_for(flags & HEADER_FLAG_SEALED != 0, key, "patch")? {
            None => None,
            Some(key) => {
                let mut bytes = Vec::with_capacity(header_len + CHAIN_LEN);
                bytes.extend_from_slice(&fixed);
                bytes.extend_from_slice(&rest);
                if chained {
                    let mut cb = [0u8; CHAIN_LEN];
                    let got = read_full(&mut input, &mut cb)?;
                    if got < CHAIN_LEN {
                        return Err(FormatError::Truncated {
                            what: "chain block",
                            record: 0,
                            at: (header_len + got) as u64,
                        });
                    }
                    chain = Some(ChainBlock::from_bytes(&cb, header_len as u64)?);
                    bytes.extend_from_slice(&cb);
                }
                let (sealer, trailer) =
                    Sealer::read_verify(&mut input, key, CTX_PATCH, "patch", &bytes)?;
                link = Some(trailer[SEAL_LEN - MAC_LEN..].try_into().expect("32 bytes"));
                Some(sealer)
            }
        };
        let chain_len = if chain.is_some() { CHAIN_LEN } else { 0 };
        let pos = (header_len + chain_len + if seal.is_some() { SEAL_LEN } else { 0 }) as u64;
        let header = PatchHeader {
            source_size: le_u64(&fixed, 16),
            total_payload: le_u64(&fixed, 24),
            stream_id: fixed[32..48].try_into().expect("16 bytes"),
            creator: String::from_utf8_lossy(&rest[..creator_len]).into_owned(),
            chain,
        };
        Ok(PatchReader {
            input,
            header,
            announced_digest: flags & HEADER_FLAG_DIGEST != 0,
            seal,
            link,
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

    /// A sealed stream's link: its verified header MAC (FORMAT.md 6.6).
    pub fn link(&self) -> Option<Link> {
        self.link
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

    /// Read a plain payload of `len` bytes for record `idx` with header `h`, hashing each
    /// slice as it arrives: its record checksum and, when sealed, its MAC hasher (to be
    /// finalised once the MAC is read).
    fn read_hashing(
        &mut self,
        idx: u64,
        h: &[u8; RECORD_HEADER],
        len: usize,
    ) -> Result<(u64, Option<blake3::Hasher>), FormatError> {
        /// Bytes read and hashed at a time: small enough to stay in the L2 cache between
        /// the two hashes.
        const SLICE: usize = 256 << 10;
        let mut sum = record_hasher(idx, &h[..24]);
        let mut mac = self.seal.as_ref().map(|s| {
            let mut m = s.hasher(TAG_RECORD, idx);
            m.update(h);
            m
        });
        let buf = self.stored.prepare(len);
        let mut at = 0;
        while at < len {
            let end = (at + SLICE).min(len);
            let got = read_full(&mut self.input, &mut buf[at..end])?;
            if got < end - at {
                return Err(FormatError::Truncated {
                    what: "record payload",
                    record: idx,
                    at: self.pos + (RECORD_HEADER + at + got) as u64,
                });
            }
            sum.update(&buf[at..end]);
            if let Some(m) = mac.as_mut() {
                m.update(&buf[at..end]);
            }
            at = end;
        }
        Ok((sum.digest(), mac))
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
            self.end = Some(self.read_end()?);
            return Ok(None);
        }
        let mut h = [0u8; RECORD_HEADER];
        self.read_after_kind(kind[0], &mut h, "record header")?;
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
        // A plain payload is hashed slice by slice as it is read (checksum and MAC in one pass
        // over each slice while it is in the CPU cache, and while the writer refills the pipe);
        // other payloads after they are read.
        let plain_sums = if flags == 0 {
            Some(self.read_hashing(idx, &h, stored_len as usize)?)
        } else {
            self.read_exact_or(stored_len as usize, "record payload")
                .map_err(|e| match e {
                    FormatError::Truncated { what, record, at } => FormatError::Truncated {
                        what,
                        record,
                        at: at + RECORD_HEADER as u64,
                    },
                    e => e,
                })?;
            None
        };
        let (plain_sum, plain_mac) = match plain_sums {
            Some((sum, mac)) => (Some(sum), mac),
            None => (None, None),
        };
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
            let checked = match &plain_mac {
                Some(hasher) => seal.check_hasher(hasher, &self.mac),
                None => seal.check(TAG_RECORD, idx, &[&h, self.stored.bytes()], &self.mac),
            };
            if checked.is_err() {
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
        let sum = plain_sum.unwrap_or_else(|| record_checksum(&h[..24], plain, idx));
        if sum != le_u64(&h, 24) {
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

    /// Fill `b` with the record whose kind byte, `kind`, was just read at `self.pos`: the
    /// kind, then the rest from the input (`what` names the part in a truncation error).
    #[inline]
    fn read_after_kind(
        &mut self,
        kind: u8,
        b: &mut [u8],
        what: &'static str,
    ) -> Result<(), FormatError> {
        b[0] = kind;
        let got = read_full(&mut self.input, &mut b[1..])?;
        if got < b.len() - 1 {
            return Err(FormatError::Truncated {
                what,
                record: self.count,
                at: self.pos + 1 + got as u64,
            });
        }
        Ok(())
    }

    fn read_end(&mut self) -> Result<PatchEnd, FormatError> {
        let mut b = [0u8; END_LEN];
        self.read_after_kind(KIND_END, &mut b, "end record")?;
        let check = PATCH_END.at(self.count, self.pos);
        self.pos += check.verify(&mut self.input, &b, self.seal.as_ref())?;
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
        check.count("records", end.record_count, self.count)?;
        check.count("data bytes", end.data_bytes, self.data_bytes)?;
        check.count("zero bytes", end.zero_bytes, self.zero_bytes)?;
        check.check(
            !self.announced_digest || end.source_digest.is_some(),
            || "end record: no source digest, though the header announced one".into(),
        )?;
        check.digest("stream digest", end.stream_digest, self.digest.digest())?;
        check.expect_eof(&mut self.input, self.pos)?;
        Ok(end)
    }
}
