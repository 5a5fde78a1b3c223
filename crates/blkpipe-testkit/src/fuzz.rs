//! The body of the `cow_store` fuzz target.

use blkpipe_dev::Device;
use blkpipe_meta::snapshot::{ChangeList, ReadOptions, SnapshotView};

/// The `cow_store` fuzz target's body, shared with the test that replays its findings
/// (`tests/fuzz_regressions.rs`): read `data[1..]` as a COW image with the options `data[0]`
/// picks (origin size checked or not, read-ahead, request size). Errors are fine; a panic, or
/// more exceptions than the image can hold, is a finding.
#[doc(hidden)]
pub fn fuzz_cow_store(data: &[u8]) {
    let Some((&mode, img)) = data.split_first() else {
        return;
    };
    let opts = ReadOptions {
        origin_size: (mode & 1 == 1).then_some(u64::from(mode) << 16),
        read_ahead: usize::from(mode >> 6),
        max_read: 512 << (mode >> 1 & 3),
        ..ReadOptions::default()
    };
    let dev = Device::in_memory(img.to_vec());
    if let Ok(list) = ChangeList::read(&dev, &opts) {
        assert!(list.len() <= img.len() as u64 / 16);
        let _ = list.ranges().map(|r| r.count());
    }
    if let Ok(view) = SnapshotView::read(&dev, &opts) {
        assert!(view.exceptions().len() <= img.len() / 16);
    }
}
