//! Sealed streams: patch and hash streams that nobody without the key can forge, reorder,
//! splice, truncate or replay piecewise (`docs/FORMAT.md` section 6).
//!
//! A [`SealKey`] is 32 secret bytes. Each stream gets its own subkey, derived with BLAKE3's
//! key derivation from the key and the stream's whole header (which holds its random stream
//! id), so a record of one stream never verifies in another. Every record then carries a
//! BLAKE3 keyed MAC over a tag, its index, its header and its payload as stored on the wire,
//! and the end record carries a MAC over the header MAC, every record MAC in order and the end
//! record itself. Keyed hash streams store keyed BLAKE3 block hashes
//! ([`SealKey::block_hasher_key`]), so no data can be crafted to collide with another block.
//!
//! MACs are compared as [`blake3::Hash`] values, whose `==` is constant-time. Key bytes are
//! wiped from memory when a [`SealKey`] (or a stream's subkey) is dropped.

use zeroize::Zeroize;

use crate::FormatError;

/// Bytes in a key file.
pub const KEY_LEN: usize = 32;
/// Bytes of every MAC on the wire.
pub const MAC_LEN: usize = 32;
/// Bytes of the key id written after a sealed header.
pub const KEY_ID_LEN: usize = 8;
/// Bytes that follow the header of a sealed stream: the key id and the header MAC.
pub const SEAL_LEN: usize = KEY_ID_LEN + MAC_LEN;

/// BLAKE3 key derivation contexts (globally unique, hard-coded, per BLAKE3's guidance).
pub(crate) const CTX_PATCH: &str = "blkpipe 2026-11-30 sealed patch stream subkey";
pub(crate) const CTX_HASH: &str = "blkpipe 2026-11-30 keyed hash stream subkey";
const CTX_BLOCK: &str = "blkpipe 2026-11-30 keyed block hash key";
const CTX_KEY_ID: &str = "blkpipe 2026-11-30 key id";
const CTX_TEXT: &str = "blkpipe 2026-11-30 text MAC";

/// MAC input tags (the first byte of every MAC input), so no MAC can stand for another.
pub(crate) const TAG_HEADER: u8 = b'H';
pub(crate) const TAG_RECORD: u8 = b'R';
pub(crate) const TAG_GROUP: u8 = b'G';
pub(crate) const TAG_END: u8 = b'E';

/// A stream key: 32 secret bytes, wiped from memory when dropped.
#[derive(Clone)]
pub struct SealKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey(id {})", hex(&self.id()))
    }
}

impl Drop for SealKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl SealKey {
    /// A key from exactly [`KEY_LEN`] bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(SealKey {
            bytes: bytes.try_into().ok()?,
        })
    }

    /// The key's public id: the first 8 bytes of `derive_key(CTX_KEY_ID, key)`. It names the
    /// key in errors ("sealed with key id X") and reveals nothing about it.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let k = blake3::derive_key(CTX_KEY_ID, &self.bytes);
        k[..KEY_ID_LEN].try_into().expect("8 bytes")
    }

    /// The key of the keyed block hashes of a keyed hash stream (and of the source digest of
    /// a sealed patch stream) with hash seed `seed`: `derive_key(CTX_BLOCK, key ++ seed)`.
    pub fn block_hasher_key(&self, seed: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(CTX_BLOCK);
        h.update(&self.bytes);
        h.update(&seed.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// The MAC of a text file (lvbackup's chain index, FORMAT.md 6.6):
    /// `keyed(derive_key(CTX_TEXT, key), bytes)`.
    pub fn text_mac(&self, bytes: &[u8]) -> blake3::Hash {
        let mut k = blake3::derive_key(CTX_TEXT, &self.bytes);
        let mac = blake3::keyed_hash(&k, bytes);
        k.zeroize();
        mac
    }

    fn subkey(&self, context: &str, header: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.bytes);
        h.update(header);
        *h.finalize().as_bytes()
    }
}

/// Lowercase hex of bytes (key ids in messages).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The key to check a stream with, whose header says whether it is `sealed`: a sealed stream
/// without a key and an unsealed one with a key are refused (`stream` names it).
pub(crate) fn key_for<'k>(
    sealed: bool,
    key: Option<&'k SealKey>,
    stream: &'static str,
) -> Result<Option<&'k SealKey>, FormatError> {
    match (sealed, key) {
        (true, None) => Err(FormatError::KeyNeeded { stream }),
        (false, Some(_)) => Err(FormatError::NotSealed { stream }),
        (_, key) => Ok(key),
    }
}

/// One stream's sealing state: its subkey and the running chain of MACs for the end record.
pub(crate) struct Sealer {
    subkey: [u8; 32],
    chain: blake3::Hasher,
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.subkey.zeroize();
    }
}

impl Sealer {
    /// The sealer of a stream whose header bytes (checksum included) are `header`, and the
    /// [`SEAL_LEN`] bytes to write after them: the key id and the header MAC.
    pub(crate) fn start(key: &SealKey, context: &str, header: &[u8]) -> (Self, [u8; SEAL_LEN]) {
        let subkey = key.subkey(context, header);
        let id = key.id();
        let mac = header_mac(&subkey, header, &id);
        let mut trailer = [0u8; SEAL_LEN];
        trailer[..KEY_ID_LEN].copy_from_slice(&id);
        trailer[KEY_ID_LEN..].copy_from_slice(mac.as_bytes());
        (Self::with(subkey, &mac), trailer)
    }

    /// Read the [`SEAL_LEN`] bytes after a sealed header, `header` being all the bytes
    /// before them, and check them: the key id first (another key is a refusal, not damage),
    /// then the header MAC. Returns the sealer and those bytes.
    pub(crate) fn read_verify<R: std::io::Read>(
        input: &mut R,
        key: &SealKey,
        context: &str,
        stream: &'static str,
        header: &[u8],
    ) -> Result<(Self, [u8; SEAL_LEN]), FormatError> {
        let what = if stream == "patch" {
            "patch header"
        } else {
            "hash header"
        };
        let mut trailer = [0u8; SEAL_LEN];
        let got = crate::read_full(input, &mut trailer)?;
        if got < SEAL_LEN {
            return Err(FormatError::Truncated {
                what,
                record: 0,
                at: (header.len() + got) as u64,
            });
        }
        let id = key.id();
        if trailer[..KEY_ID_LEN] != id {
            return Err(FormatError::WrongKey {
                stream,
                sealed_with: hex(&trailer[..KEY_ID_LEN]),
                given: hex(&id),
            });
        }
        let subkey = key.subkey(context, header);
        let mac = header_mac(&subkey, header, &id);
        if mac != blake3::Hash::from_bytes(mac_bytes(&trailer[KEY_ID_LEN..])) {
            return Err(FormatError::Mac {
                what,
                record: 0,
                offset: 0,
            });
        }
        Ok((Self::with(subkey, &mac), trailer))
    }

    fn with(subkey: [u8; 32], header_mac: &blake3::Hash) -> Self {
        let mut chain = blake3::Hasher::new_keyed(&subkey);
        chain.update(&[TAG_END]);
        chain.update(header_mac.as_bytes());
        Sealer { subkey, chain }
    }

    /// The MAC of record (or group) `index`: `keyed(subkey, tag ++ u64 index ++ parts...)`.
    /// It joins the chain the end record's MAC covers.
    pub(crate) fn mac(&mut self, tag: u8, index: u64, parts: &[&[u8]]) -> blake3::Hash {
        let mac = self.compute(tag, index, parts);
        self.chain.update(mac.as_bytes());
        mac
    }

    /// `keyed(subkey, tag ++ u64 index ++ parts...)`, without joining the chain.
    fn compute(&self, tag: u8, index: u64, parts: &[&[u8]]) -> blake3::Hash {
        let mut h = self.hasher(tag, index);
        for p in parts {
            h.update(p);
        }
        h.finalize()
    }

    /// The keyed hasher of a MAC, `tag ++ u64 index` already in: a reader feeds it the rest
    /// of the MAC input piece by piece as it arrives (while it is still in the CPU cache) and
    /// gives it to [`Sealer::check_hasher`].
    pub(crate) fn hasher(&self, tag: u8, index: u64) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.subkey);
        h.update(&[tag]);
        h.update(&index.to_le_bytes());
        h
    }

    /// [`Sealer::check`] for a MAC whose input went into `hasher` (from [`Sealer::hasher`]).
    pub(crate) fn check_hasher(&mut self, hasher: &blake3::Hasher, wire: &[u8]) -> Result<(), ()> {
        let mac = hasher.finalize();
        if mac != blake3::Hash::from_bytes(mac_bytes(wire)) {
            return Err(());
        }
        self.chain.update(mac.as_bytes());
        Ok(())
    }

    /// Check a record MAC read from the wire (it joins the chain only if it matches).
    pub(crate) fn check(
        &mut self,
        tag: u8,
        index: u64,
        parts: &[&[u8]],
        wire: &[u8],
    ) -> Result<(), ()> {
        let mac = self.compute(tag, index, parts);
        if mac != blake3::Hash::from_bytes(mac_bytes(wire)) {
            return Err(());
        }
        self.chain.update(mac.as_bytes());
        Ok(())
    }

    /// The end record's MAC: the chain (header MAC, every record MAC) and the end record.
    pub(crate) fn end_mac(&self, end: &[u8]) -> blake3::Hash {
        let mut chain = self.chain.clone();
        chain.update(end);
        chain.finalize()
    }
}

fn header_mac(subkey: &[u8; 32], header: &[u8], id: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(subkey);
    h.update(&[TAG_HEADER]);
    h.update(header);
    h.update(id);
    h.finalize()
}

/// The 32 MAC bytes of a wire slice of [`MAC_LEN`] bytes.
pub(crate) fn mac_bytes(wire: &[u8]) -> [u8; MAC_LEN] {
    wire[..MAC_LEN].try_into().expect("32 bytes")
}

/// Compare a computed MAC with one from the wire, in constant time.
pub(crate) fn mac_eq(mac: &blake3::Hash, wire: &[u8]) -> bool {
    *mac == blake3::Hash::from_bytes(mac_bytes(wire))
}
