//! The on-disk layout: the header in chunk 0, exceptions, and where areas and data chunks lie.

use super::*;

/// Header magic, "SnAp" read as a little-endian u32.
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
/// The on-disk version the kernel writes and this module reads.
pub const DISK_VERSION: u32 = 1;
/// Bytes per sector (chunk sizes are in sectors).
pub const SECTOR_BYTES: u64 = 512;
/// Bytes per on-disk exception.
pub const EXCEPTION_BYTES: u64 = 16;
/// Largest chunk size accepted, in sectors (1 GiB; LVM uses 4 KiB to 512 KiB).
pub const MAX_CHUNK_SECTORS: u32 = 1 << 21;
/// Largest single metadata read request, in bytes.
pub const MAX_READ: usize = 1 << 20;
/// Most bytes of metadata buffers in flight at once.
pub(super) const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;
/// Bytes read for the header (one page, aligned for `O_DIRECT` on any device).
pub(super) const HEADER_READ: usize = 4096;

/// The store header (chunk 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHeader {
    /// False once the kernel invalidated the snapshot (overflow, I/O error).
    pub valid: bool,
    /// On-disk version (always [`DISK_VERSION`] once parsed).
    pub version: u32,
    /// Chunk size in 512-byte sectors: a power of two.
    pub chunk_sectors: u32,
}

impl StoreHeader {
    /// Parse and check the first 16 bytes of chunk 0. An invalidated header parses; callers
    /// decide (see [`MetaError::Invalidated`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, MetaError> {
        if bytes.len() < 16 {
            return Err(MetaError::TooShort {
                size: bytes.len() as u64,
            });
        }
        let le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (magic, valid, version, chunk_sectors) = (le(0), le(4), le(8), le(12));
        if magic == 0 {
            return Err(MetaError::Uninitialised);
        }
        if magic != SNAP_MAGIC {
            return Err(MetaError::BadMagic { found: magic });
        }
        if version != DISK_VERSION {
            return Err(MetaError::UnsupportedVersion { found: version });
        }
        let bad = |reason| MetaError::BadChunkSize {
            sectors: chunk_sectors,
            reason,
        };
        if chunk_sectors == 0 || !chunk_sectors.is_power_of_two() {
            return Err(bad("not a power of two"));
        }
        if chunk_sectors > MAX_CHUNK_SECTORS {
            return Err(bad("larger than 1 GiB"));
        }
        Ok(StoreHeader {
            valid: valid != 0,
            version,
            chunk_sectors,
        })
    }

    /// Chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_sectors as u64 * SECTOR_BYTES
    }

    /// Exceptions per metadata area (`chunk_bytes / 16`).
    pub fn exceptions_per_area(&self) -> u64 {
        self.chunk_bytes() / EXCEPTION_BYTES
    }

    /// The chunk holding metadata area `area`, or `None` if that overflows.
    pub fn area_chunk(&self, area: u64) -> Option<u64> {
        area.checked_mul(self.exceptions_per_area() + 1)?
            .checked_add(1)
    }

    /// Whether COW chunk `chunk` is the header or a metadata area.
    pub fn is_metadata_chunk(&self, chunk: u64) -> bool {
        chunk == 0 || (chunk - 1) % (self.exceptions_per_area() + 1) == 0
    }

    /// The COW chunk the kernel allocates for the `n`-th exception (from 0) when it commits
    /// them in order: the data chunks in order, skipping the header and the metadata areas.
    pub fn data_chunk(&self, n: u64) -> Option<u64> {
        let e = self.exceptions_per_area();
        self.area_chunk(n / e)?.checked_add(1 + n % e)
    }
}

/// One exception: origin chunk `old_chunk` is held in COW chunk `new_chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Exception {
    /// Chunk number on the origin.
    pub old_chunk: u64,
    /// Chunk number on the COW device.
    pub new_chunk: u64,
}
