//! Replays every input the fuzzers kept (fuzz/regressions/cow_store/) through the same calls as
//! the `cow_store` fuzz target, so a fixed finding stays fixed.

use blkpipe_meta::snapshot::{ChangeList, ReadOptions, SnapshotView};

#[test]
fn cow_store_regressions() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/cow_store"
    );
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("regression directory") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let Some((&mode, img)) = data.split_first() else {
            continue;
        };
        let opts = ReadOptions {
            origin_size: (mode & 1 == 1).then_some(u64::from(mode) << 16),
            read_ahead: usize::from(mode >> 6),
            max_read: 512 << (mode >> 1 & 3),
            ..ReadOptions::default()
        };
        if let Ok(list) = ChangeList::read(img, &opts) {
            assert!(list.chunks().len() <= img.len() / 16);
        }
        if let Ok(view) = SnapshotView::read(img, &opts) {
            assert!(view.exceptions().len() <= img.len() / 16);
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs found in {dir}");
}
