//! The snapshot's view as a patch stream (`cowlist --data`): for every exception the store
//! lists, the COW chunk's bytes at the origin chunk's offset. Applied to the origin, it rolls
//! the origin back to the snapshot.

use std::io::Write;

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::patch::{PatchHeader, PatchWriter};
use blkpipe_format::MAX_RECORD_LEN;
use blkpipe_meta::snapshot::{read_full, SnapshotView, SECTOR_BYTES};
use blkpipe_meta::MetaError;

use crate::chunks::emit_piece;
use crate::progress::Progress;

/// What [`write_view_patch_sealed`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    /// Patch records.
    pub records: u64,
    /// Bytes read from the COW device.
    pub bytes_read: u64,
    /// Bytes in data records.
    pub data_bytes: u64,
    /// Bytes in zero records.
    pub zero_bytes: u64,
    /// A sealed stream's link (header MAC, FORMAT.md 6.6).
    pub link: Option<[u8; 32]>,
}

/// Write a patch stream of the snapshot's view: for every exception, the COW chunk's bytes at
/// the origin chunk's offset, ascending, for a device of `origin_size` bytes. Applied to the
/// origin, it gives back the snapshot's contents. Sealed with the key when `seal` gives one
/// (`cowlist --data --key`), and bound to a place in a backup chain when it gives a chain
/// block too.
pub fn write_view_patch_sealed<W: Write>(
    src: &Device,
    view: &SnapshotView,
    origin_size: u64,
    out: W,
    creator: &str,
    progress: &Progress,
    seal: Option<(
        &blkpipe_format::seal::SealKey,
        Option<blkpipe_format::chain::ChainBlock>,
    )>,
) -> Result<ViewStats, MetaError> {
    let cb = view.summary.chunk_bytes();
    let total = view.bytes();
    progress.set_total(total);
    let header = PatchHeader {
        source_size: origin_size,
        total_payload: total,
        stream_id: crate::random_bytes(),
        creator: creator.to_owned(),
        chain: seal.and_then(|(_, c)| c),
    };
    let key = seal.map(|(k, _)| k);
    let mut writer =
        PatchWriter::start(out, header, false, false, key).map_err(MetaError::Output)?;
    let mut stats = ViewStats {
        link: writer.link(),
        ..ViewStats::default()
    };
    let piece_max = if cb >= MAX_RECORD_LEN {
        MAX_RECORD_LEN
    } else {
        MAX_RECORD_LEN / cb * cb
    };
    let mut buf = AlignedBuf::new(piece_max as usize);
    let ex = view.exceptions();
    let mut i = 0;
    while i < ex.len() {
        // A run of exceptions consecutive on both devices is one read.
        let first = ex[i];
        let mut n = 1;
        while i + n < ex.len()
            && ex[i + n].old_chunk == first.old_chunk + n as u64
            && ex[i + n].new_chunk == first.new_chunk + n as u64
        {
            n += 1;
        }
        i += n;
        let origin_start = first.old_chunk * cb;
        let origin_end = (origin_start + n as u64 * cb).min(origin_size);
        let cow_start = first.new_chunk * cb;
        let mut at = origin_start;
        while at < origin_end {
            let len = (origin_end - at).min(piece_max);
            // Read whole sectors (the chunk lies inside the COW device); emit the clipped part.
            let read_len = len.next_multiple_of(SECTOR_BYTES).min(piece_max) as usize;
            read_full(src, &mut buf[..read_len], cow_start + (at - origin_start))?;
            emit_piece(&mut writer, at, &buf[..len as usize]).map_err(MetaError::Output)?;
            stats.bytes_read += read_len as u64;
            progress.inc(len);
            at += len;
        }
    }
    stats.records = writer.record_count();
    stats.data_bytes = writer.data_bytes();
    stats.zero_bytes = writer.zero_bytes();
    writer.finish(None).map_err(MetaError::Output)?;
    progress.finish();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkpipe_format::patch::{PatchReader, RecordData};
    use blkpipe_meta::snapshot::ReadOptions;
    use blkpipe_testkit::image;

    fn opts(origin_size: Option<u64>) -> ReadOptions {
        ReadOptions {
            origin_size,
            ..ReadOptions::default()
        }
    }

    /// The snapshot's view as a patch stream, applied to the origin, gives the snapshot.
    #[test]
    fn view_patch_rolls_back() {
        let cs = 8u32;
        let cb = 4096usize;
        let origin_chunks = 40u64;
        let origin_size = origin_chunks * cb as u64 - 1000; // partial last chunk
        let changed = [39u64, 3, 4, 5, 20, 0, 7];
        // The snapshot saw pattern(chunk, 0); the origin now holds pattern(chunk, 1).
        let pattern = |chunk: u64, gen: u8, buf: &mut [u8]| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (chunk as u8).wrapping_mul(31) ^ (i as u8) ^ gen;
            }
            if chunk == 20 {
                buf.fill(0); // an all-zero chunk becomes a zero record
            }
        };
        let img = image::build(cs, &changed, None, Some(&|old, buf| pattern(old, 0, buf)));
        let cow = Device::in_memory(img);
        let mut snap = vec![0u8; origin_size as usize];
        let mut origin = vec![0u8; origin_size as usize];
        for c in 0..origin_chunks {
            let at = c as usize * cb;
            let end = (at + cb).min(snap.len());
            let mut full = vec![0u8; cb];
            pattern(c, 0, &mut full);
            snap[at..end].copy_from_slice(&full[..end - at]);
            if changed.contains(&c) {
                pattern(c, 1, &mut full);
            }
            origin[at..end].copy_from_slice(&full[..end - at]);
        }
        assert_ne!(snap, origin);
        let view = SnapshotView::read(&cow, &opts(Some(origin_size))).unwrap();
        let mut stream = Vec::new();
        let stats = write_view_patch_sealed(
            &cow,
            &view,
            origin_size,
            &mut stream,
            "test",
            &Progress::hidden(),
            None,
        )
        .unwrap();
        assert_eq!(stats.data_bytes + stats.zero_bytes, view.bytes());
        assert_eq!(stats.zero_bytes, 4096);
        let mut r = PatchReader::new(&stream[..]).unwrap();
        assert_eq!(r.header().source_size, origin_size);
        while let Some(rec) = r.next_record().unwrap() {
            let at = rec.offset as usize;
            match rec.data {
                RecordData::Data(d) => origin[at..at + d.len()].copy_from_slice(d),
                RecordData::Zero => origin[at..at + rec.length as usize].fill(0),
            }
        }
        assert!(r.end().is_some());
        assert_eq!(origin, snap);
    }
}
