//! How the tools that read a device into a patch stream (blkread-chunks, blkdiff) write it:
//! the options they share and the writer those options start.

use std::io::Write;

use blkpipe_format::chain::ChainBlock;
use blkpipe_format::patch::{PatchHeader, PatchWriter};
use blkpipe_format::seal::SealKey;

use crate::OpError;

/// The patch stream options of [`crate::chunks::ChunkOptions`] and
/// [`crate::diff::DiffOptions`].
#[derive(Debug, Clone)]
pub struct PatchOutput {
    /// Compress data payloads with lz4.
    pub lz4: bool,
    /// Creator string for the patch header.
    pub creator: String,
    /// Stream id; random when `None`.
    pub stream_id: Option<[u8; 16]>,
    /// Seal the patch stream with this key (blkdiff: the hash stream must be keyed with it).
    pub key: Option<SealKey>,
}

impl PatchOutput {
    /// Compression off, a random stream id, no key; the creator is `tool` and this version.
    pub fn new(tool: &str) -> Self {
        PatchOutput {
            lz4: false,
            creator: format!("{tool} {}", env!("CARGO_PKG_VERSION")),
            stream_id: None,
            key: None,
        }
    }

    /// Write the header of a stream from a source of `source_size` bytes to `out` (`total`:
    /// the sum of its record lengths, or `UNKNOWN_TOTAL`; `chain`: its chain block; with
    /// `announce`, the end record will carry a source digest) and return the writer.
    pub fn start<W: Write>(
        &self,
        out: W,
        source_size: u64,
        total: u64,
        chain: Option<ChainBlock>,
        announce: bool,
    ) -> Result<PatchWriter<W>, OpError> {
        let header = PatchHeader {
            source_size,
            total_payload: total,
            stream_id: self.stream_id.unwrap_or_else(crate::random_bytes),
            creator: self.creator.clone(),
            chain,
        };
        PatchWriter::start(out, header, self.lz4, announce, self.key.as_ref())
            .map_err(OpError::Output)
    }
}
