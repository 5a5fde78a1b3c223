//! Build COW images laid out exactly as the kernel writes them: for tests, fuzz seeds,
//! and the benchmark's generator.

use blkpipe_meta::snapshot::{StoreHeader, DISK_VERSION, EXCEPTION_BYTES, SNAP_MAGIC};

/// The header chunk's first 16 bytes.
pub fn header_bytes(valid: bool, chunk_sectors: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SNAP_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(valid as u32).to_le_bytes());
    h[8..12].copy_from_slice(&DISK_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&chunk_sectors.to_le_bytes());
    h
}

/// Chunks a COW device needs to hold `n` exceptions allocated in kernel order: every data
/// chunk used, and the zeroed next area after a full one.
pub fn min_chunks(chunk_sectors: u32, n: u64) -> u64 {
    let h = header(chunk_sectors);
    let area = h.area_chunk(n / h.exceptions_per_area()).expect("fits u64") + 1;
    if n == 0 {
        return area;
    }
    area.max(h.data_chunk(n - 1).expect("fits u64") + 1)
}

fn header(chunk_sectors: u32) -> StoreHeader {
    StoreHeader {
        valid: true,
        version: DISK_VERSION,
        chunk_sectors,
    }
}

/// Write a store holding `entries` (pairs `(old_chunk, new_chunk)` in on-disk order) through
/// `write_at(offset, bytes)`: the header, then each metadata area, then the zeroed area after
/// the last one if that is full. Data chunks are not written.
pub fn write_store<E>(
    chunk_sectors: u32,
    valid: bool,
    entries: &[(u64, u64)],
    mut write_at: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let h = header(chunk_sectors);
    let cb = h.chunk_bytes();
    let per_area = h.exceptions_per_area() as usize;
    write_at(0, &header_bytes(valid, chunk_sectors))?;
    let mut area_buf = vec![0u8; cb as usize];
    let areas = entries.len() / per_area + 1;
    for a in 0..areas {
        area_buf.fill(0);
        let part =
            &entries[(a * per_area).min(entries.len())..((a + 1) * per_area).min(entries.len())];
        for (i, &(old, new)) in part.iter().enumerate() {
            let at = i * EXCEPTION_BYTES as usize;
            area_buf[at..at + 8].copy_from_slice(&old.to_le_bytes());
            area_buf[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
        }
        let chunk = h.area_chunk(a as u64).expect("fits u64");
        write_at(chunk * cb, &area_buf)?;
    }
    Ok(())
}

/// Fills a data chunk given its origin chunk number.
pub type ChunkFill<'a> = &'a dyn Fn(u64, &mut [u8]);

/// An in-memory COW image of `chunks` chunks holding `old_chunks` as exceptions, allocated
/// in kernel order; each data chunk is filled with `fill(old_chunk)`'s byte pattern when
/// given.
pub fn build(
    chunk_sectors: u32,
    old_chunks: &[u64],
    chunks: Option<u64>,
    fill: Option<ChunkFill<'_>>,
) -> Vec<u8> {
    let h = header(chunk_sectors);
    let cb = h.chunk_bytes();
    let n = old_chunks.len() as u64;
    let chunks = chunks.unwrap_or_else(|| min_chunks(chunk_sectors, n));
    let mut img = vec![0u8; (chunks * cb) as usize];
    let entries: Vec<(u64, u64)> = old_chunks
        .iter()
        .enumerate()
        .map(|(i, &old)| (old, h.data_chunk(i as u64).expect("fits u64")))
        .collect();
    write_store::<()>(chunk_sectors, true, &entries, |off, b| {
        let off = off as usize;
        if off + b.len() <= img.len() {
            img[off..off + b.len()].copy_from_slice(b);
        }
        Ok(())
    })
    .expect("infallible");
    if let Some(fill) = fill {
        for &(old, new) in &entries {
            let at = (new * cb) as usize;
            if at + cb as usize <= img.len() {
                fill(old, &mut img[at..at + cb as usize]);
            }
        }
    }
    img
}
