//! The dm-snapshot exception store reader on arbitrary COW images: errors, never panics, and
//! never more exceptions than the image can hold. The first byte picks the read-ahead and
//! whether an origin size is checked.
#![no_main]

use blkpipe_meta::snapshot::{ChangeList, ReadOptions, SnapshotView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, img)) = data.split_first() else { return };
    let opts = ReadOptions {
        origin_size: (mode & 1 == 1).then_some(u64::from(mode) << 16),
        read_ahead: usize::from(mode >> 6),
        max_read: 512 << (mode >> 1 & 3),
        ..ReadOptions::default()
    };
    if let Ok(list) = ChangeList::read(img, &opts) {
        assert!(list.chunks().len() <= img.len() / 16);
        let _ = list.ranges().count();
    }
    if let Ok(view) = SnapshotView::read(img, &opts) {
        assert!(view.exceptions().len() <= img.len() / 16);
    }
});
