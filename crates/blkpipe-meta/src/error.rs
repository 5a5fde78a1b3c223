use std::io;
use std::path::PathBuf;

use blkpipe_dev::DevError;

/// Where an exception sits in the store: metadata area number and entry index inside it,
/// both from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryPos {
    /// Metadata area, from 0 (area `a` is chunk `1 + a * (exceptions_per_area + 1)`).
    pub area: u64,
    /// Entry inside the area, from 0.
    pub index: u32,
}

impl std::fmt::Display for EntryPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "area {} entry {}", self.area, self.index)
    }
}

/// Everything that can go wrong reading device-mapper metadata. Each variant says where.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Reading the COW device or image failed.
    #[error("{path}: read of {len} bytes at offset {offset}: {source}")]
    Read {
        /// The device or file.
        path: PathBuf,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The OS error.
        source: io::Error,
    },
    /// Opening a device failed.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// Chunk 0 does not hold a dm-snapshot header.
    #[error("not a dm-snapshot exception store: magic {found:#010x} at byte 0, expected 0x70416e53 (\"SnAp\")")]
    BadMagic {
        /// The little-endian u32 found.
        found: u32,
    },
    /// Chunk 0 is all zeros: the kernel has not initialised this COW device.
    #[error("no dm-snapshot header (magic is 0): the COW device was never activated as a persistent snapshot")]
    Uninitialised,
    /// The device is shorter than the header.
    #[error("COW device or image is {size} bytes, too short for a dm-snapshot header")]
    TooShort {
        /// Its size.
        size: u64,
    },
    /// The on-disk version is not 1.
    #[error("dm-snapshot store version {found} is not supported (this build reads version 1)")]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The header's chunk size is unusable.
    #[error("dm-snapshot header: chunk size {sectors} sectors: {reason}")]
    BadChunkSize {
        /// Chunk size in sectors as found.
        sectors: u32,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The snapshot was invalidated (it overflowed, or the kernel dropped it after an I/O error).
    #[error("the snapshot is invalid (its COW device overflowed or the kernel dropped it): the list of changed chunks is incomplete, so a full sync is needed")]
    Invalidated,
    /// An entry of the store cannot be right.
    #[error("exception store corrupt: {pos}: {reason}")]
    Corrupt {
        /// Which entry.
        pos: EntryPos,
        /// What is wrong with it.
        reason: String,
    },
    /// The store continues past the end of the COW device.
    #[error("exception store corrupt: the store continues into metadata area {area} at chunk {next_chunk}, past the end of the COW device ({cow_chunks} whole chunks)")]
    StorePastEnd {
        /// The area that would come next (the one before it is full).
        area: u64,
        /// Chunk where that area would be.
        next_chunk: u64,
        /// Whole chunks in the COW device.
        cow_chunks: u64,
    },
    /// The origin size is needed but was not given.
    #[error("{0}")]
    Usage(String),
    /// The named device is not something cowlist can read, or the snapshot is in a state that
    /// makes its store meaningless.
    #[error("{0}")]
    Refused(String),
    /// Finding the snapshot's devices failed.
    #[error("{0}")]
    Resolve(String),
    /// thin_delta or era_invalidate XML is malformed.
    #[error("line {line}, column {column} (byte {offset}): {reason}")]
    Xml {
        /// 1-based line.
        line: u64,
        /// 1-based column, in bytes.
        column: u64,
        /// 0-based byte offset in the input.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// `nbdinfo --map --json` output is malformed.
    #[error("line {line}, column {column} (byte {offset}): {reason}")]
    Json {
        /// 1-based line.
        line: u64,
        /// 1-based column, in bytes.
        column: u64,
        /// 0-based byte offset in the input.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading XML input failed.
    #[error("reading input: {0}")]
    Input(io::Error),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(io::Error),
}
