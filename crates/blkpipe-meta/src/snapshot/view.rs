//! The snapshot's view: where each changed origin chunk's copy lives on the COW device.

use super::*;

/// The snapshot's exceptions sorted by origin chunk: where the snapshot's view of each changed
/// chunk lives on the COW device. Memory: 16 bytes per exception.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    /// What the walk found.
    pub summary: StoreSummary,
    exceptions: Vec<Exception>,
}

impl SnapshotView {
    /// Read the store in `src`; a duplicate origin chunk, or a COW chunk used twice, is an
    /// error naming both entries.
    pub fn read(src: &Device, opts: &ReadOptions) -> Result<Self, MetaError> {
        let mut exceptions = Vec::new();
        let summary = walk_store(src, opts, |_, e| {
            exceptions.push(e);
            Ok(())
        })?;
        let cow_chunks = exceptions.iter().map(|e| e.new_chunk).collect();
        check_cow_chunks_unique(src, opts, &summary, cow_chunks)?;
        exceptions.sort_unstable_by_key(|e| e.old_chunk);
        if let Some(w) = exceptions
            .windows(2)
            .find(|w| w[0].old_chunk == w[1].old_chunk)
        {
            return Err(duplicate_error(src, opts, Field::Old, w[0].old_chunk));
        }
        Ok(SnapshotView {
            summary,
            exceptions,
        })
    }

    /// The exceptions, by ascending origin chunk.
    pub fn exceptions(&self) -> &[Exception] {
        &self.exceptions
    }

    /// Bytes of the origin the view covers (clipped to the origin size).
    pub fn bytes(&self) -> u64 {
        let cb = self.summary.chunk_bytes();
        self.exceptions
            .iter()
            .map(|e| {
                let start = e.old_chunk * cb;
                let end = (start + cb).min(self.summary.origin_size.unwrap_or(u64::MAX));
                end.saturating_sub(start)
            })
            .sum()
    }
}
