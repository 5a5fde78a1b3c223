use super::*;
use crate::hash::{hash_device, hash_device_ranges, HashOptions, HashOutput};
use crate::ranges::RangeLimits;
use blkpipe_format::hash::HashKind;
use blkpipe_format::patch::{PatchEnd, PatchReader, RecordData};

/// A malformed, corrupted or truncated hash stream (exit 3), not an I/O error.
fn bad_stream(e: &OpError) -> bool {
    matches!(e, OpError::Format(f) if !matches!(f, blkpipe_format::FormatError::Io(_)))
        || matches!(e, OpError::BadRange(_))
}

fn file(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f
}

fn hashes_of(data: &[u8], bs: u32, kind: HashKind, from: u64) -> Vec<u8> {
    let f = file(data);
    let dev = Device::open_source(f.path(), false).unwrap();
    let mut out = Vec::new();
    let opts = HashOptions {
        block_size: bs,
        seed: 11,
        kind,
        from_offset: from,
        ..fine_opts()
    };
    hash_device(&dev, &mut out, &opts, &Progress::hidden()).unwrap();
    out
}

/// Hash options for a stream of 4 KiB blocks, 64-bit hashes, seed 5.
fn fine_opts() -> HashOptions {
    HashOptions {
        block_size: 4096,
        seed: 5,
        kind: HashKind::Xxh3_64,
        from_offset: 0,
        output: HashOutput::Stream,
        scan: ScanOptions::default(),
        key: None,
    }
}

/// The range-restricted hash stream of `dev` over `list` ([`fine_opts`]).
fn fine_hashes(dev: &Device, list: &[u8]) -> Vec<u8> {
    let limits = RangeLimits::default();
    let sorted = SortedRanges::load(list, dev.size(), false, 0, limits).unwrap();
    let mut fine = Vec::new();
    hash_device_ranges(dev, &sorted, &mut fine, &fine_opts(), &Progress::hidden()).unwrap();
    fine
}

/// `dst` with the patch stream `patch` applied, in memory; its records (offset, length,
/// whether zero) and its end record.
fn apply_in_memory(patch: &[u8], dst: &[u8]) -> (Vec<u8>, Vec<(u64, u64, bool)>, PatchEnd) {
    let mut r = PatchReader::new(patch).unwrap();
    let mut out = dst.to_vec();
    out.resize(r.header().source_size as usize, 0);
    let mut recs = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        let (o, l) = (rec.offset as usize, rec.length as usize);
        match rec.data {
            RecordData::Data(d) => {
                out[o..o + l].copy_from_slice(d);
                recs.push((rec.offset, rec.length, false));
            }
            RecordData::Zero => {
                out[o..o + l].fill(0);
                recs.push((rec.offset, rec.length, true));
            }
        }
    }
    let end = *r.end().unwrap();
    (out, recs, end)
}

/// `diff_device` of `dev` against `hashes` into a new buffer: the result and what it wrote.
fn diff_to_vec(
    dev: &Device,
    hashes: &[u8],
    opts: &DiffOptions,
) -> (Result<Stats, OpError>, Vec<u8>) {
    let mut patch = Vec::new();
    let r = diff_device(dev, hashes, &mut patch, opts, &Progress::hidden());
    (r, patch)
}

/// Diff `src` against hashes of `dst`, apply the patch in memory, return the result and
/// the records.
fn sync(src: &[u8], dst: &[u8], bs: u32, kind: HashKind) -> (Vec<u8>, Vec<(u64, u64, bool)>) {
    let hashes = hashes_of(dst, bs, kind, 0);
    let f = file(src);
    let dev = Device::open_source(f.path(), false).unwrap();
    let (r, patch) = diff_to_vec(&dev, &hashes, &DiffOptions::default());
    r.unwrap();
    let (out, recs, end) = apply_in_memory(&patch, dst);
    let sd = end.source_digest.unwrap();
    assert_eq!(
        sd.digest,
        blkpipe_format::digest::digest_of(src, bs as usize, sd.seed)
    );
    (out, recs)
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 4096) as u8).wrapping_mul(13) ^ (i as u8) ^ salt)
        .collect()
}

#[test]
fn only_differing_blocks_are_sent_and_runs_merge() {
    let len = 10 << 20;
    let dst = pattern(len, 0);
    let mut src = dst.clone();
    // Two isolated blocks, a run crossing a 4 MiB boundary, a zeroed block.
    src[4096 * 3] ^= 1;
    src[4096 * 100 + 5] ^= 1;
    for b in 1020..1030 {
        src[b * 4096 + 7] ^= 0xff;
    }
    src[4096 * 2000..4096 * 2001].fill(0);
    for kind in [HashKind::Xxh3_64, HashKind::Xxh3_128] {
        let (out, recs) = sync(&src, &dst, 4096, kind);
        assert_eq!(out, src);
        assert_eq!(
            recs,
            vec![
                (4096 * 3, 4096, false),
                (4096 * 100, 4096, false),
                (4096 * 1020, 4096 * 4, false),
                (4096 * 1024, 4096 * 6, false),
                (4096 * 2000, 4096, true),
            ]
        );
    }
}

/// Source and target contents whose sizes differ and are not block multiples (the target's
/// byte 5 flipped where it has one), with their sizes: what a sync must still make equal.
fn odd_sized_pairs() -> impl Iterator<Item = (usize, usize, Vec<u8>, Vec<u8>)> {
    let sizes = [
        (50_000usize, 30_000usize),
        (30_000, 50_000),
        (200_000, 70_000),
        (12_289, 12_288),
        (0, 9000),
        (9000, 0),
    ];
    sizes.into_iter().map(|(sl, dl)| {
        let mut dst = pattern(dl, 1);
        if let Some(b) = dst.get_mut(5) {
            *b ^= 1;
        }
        (sl, dl, pattern(sl, 1), dst)
    })
}

#[test]
fn sizes_differ_and_are_not_block_multiples() {
    for (sl, dl, src, dst) in odd_sized_pairs() {
        for bs in [4096u32, 65536] {
            let (out, _) = sync(&src, &dst, bs, HashKind::Xxh3_64);
            assert_eq!(out, src, "src {sl} dst {dl} bs {bs}");
        }
    }
}

#[test]
fn large_blocks_split_into_records_of_at_most_the_cap() {
    let dst = pattern(20 << 20, 0);
    let src = pattern(20 << 20, 9);
    let (out, recs) = sync(&src, &dst, 16 << 20, HashKind::Xxh3_64);
    assert_eq!(out, src);
    assert!(recs.iter().all(|r| r.1 <= MAX_RECORD_LEN));
    assert_eq!(recs.len(), 5);
}

#[test]
fn from_offset_skips_blocks_below_it_but_digests_everything() {
    let dst = pattern(64 << 10, 0);
    let src = pattern(64 << 10, 3);
    let f = file(&src);
    let dev = Device::open_source(f.path(), false).unwrap();
    // The patch of `hashes` with --from `from`: its records and end record.
    let diff_from = |hashes: &[u8], from: u64| {
        let opts = DiffOptions {
            from_offset: from,
            ..DiffOptions::default()
        };
        let (r, patch) = diff_to_vec(&dev, hashes, &opts);
        r.map(|_| {
            let (_, recs, end) = apply_in_memory(&patch, &dst);
            (recs, end)
        })
    };
    let whole = hashes_of(&dst, 4096, HashKind::Xxh3_64, 0);
    let (recs, end) = diff_from(&whole, 32 << 10).unwrap();
    assert_eq!(recs, [(32 << 10, 32 << 10, false)]);
    let sd = end.source_digest.unwrap();
    assert_eq!(sd.digest, blkpipe_format::digest::digest_of(&src, 4096, 11));
    // A stream that itself starts later is refused without the same --from (the blocks
    // below its start would never be compared), and honoured with it.
    let later = hashes_of(&dst, 4096, HashKind::Xxh3_64, 48 << 10);
    let (refused, patch) = diff_to_vec(&dev, &later, &DiffOptions::default());
    assert!(matches!(refused, Err(OpError::Refused(_))), "{refused:?}");
    assert!(patch.is_empty(), "nothing written before the refusal");
    let (recs, _) = diff_from(&later, 48 << 10).unwrap();
    assert_eq!(recs, [(48 << 10, 16 << 10, false)]);
    // An offset inside a block (the end of a record, from `blkpatch --print-state`) is
    // rounded down to the block's start.
    let (recs, _) = diff_from(&whole, (40 << 10) + 100).unwrap();
    assert_eq!(recs, [(40 << 10, 24 << 10, false)]);
}

#[test]
fn a_bad_hash_stream_never_gets_an_end_record() {
    let len = 5 << 20;
    let dst = pattern(len, 0);
    let src = pattern(len, 1);
    let hashes = hashes_of(&dst, 4096, HashKind::Xxh3_64, 0);
    let f = file(&src);
    let dev = Device::open_source(f.path(), false).unwrap();
    let cuts = [
        0,
        10,
        56,
        57,
        56 + 8200,
        hashes.len() - 56,
        hashes.len() - 1,
    ];
    for cut in cuts {
        let (r, patch) = diff_to_vec(&dev, &hashes[..cut], &DiffOptions::default());
        let e = r.expect_err("truncated stream accepted");
        assert!(bad_stream(&e), "cut {cut}: {e}");
        assert_no_end(&patch);
    }
    for flip in [20, 60, 56 + 8192 + 3, hashes.len() - 30] {
        let mut bad = hashes.clone();
        bad[flip] ^= 0x10;
        let (r, patch) = diff_to_vec(&dev, &bad, &DiffOptions::default());
        let e = r.expect_err("corrupt stream accepted");
        assert!(bad_stream(&e), "flip {flip}: {e}");
        assert_no_end(&patch);
    }
}

/// Pass 1 with coarse blocks, pass 2 over its list with 4 KiB blocks; returns the target
/// after applying, the list and the pass-2 hash stream.
fn two_pass(src: &[u8], dst: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let coarse = hashes_of(dst, 65536, HashKind::Xxh3_64, 0);
    let (fs, fd) = (file(src), file(dst));
    let sdev = Device::open_source(fs.path(), false).unwrap();
    let ddev = Device::open_source(fd.path(), false).unwrap();
    let mut list = Vec::new();
    let opts = DiffOptions {
        list_differing: true,
        ..DiffOptions::default()
    };
    diff_device(&sdev, &coarse[..], &mut list, &opts, &Progress::hidden()).unwrap();
    let fine = fine_hashes(&ddev, &list);
    let mut patch = Vec::new();
    diff_device_ranges(
        &sdev,
        &fine[..],
        Some(&list[..]),
        RangeLimits::default(),
        &mut patch,
        &DiffOptions::default(),
        &Progress::hidden(),
    )
    .unwrap();
    let (out, _, end) = apply_in_memory(&patch, dst);
    assert!(end.source_digest.is_none());
    (out, list, fine)
}

#[test]
fn two_pass_sends_only_the_fine_blocks_that_differ() {
    let dst = pattern(3 << 20, 0);
    let mut src = dst.clone();
    src[4096 * 3] ^= 1;
    src[4096 * 17 + 9] ^= 1;
    src[(2 << 20) + 5] ^= 1;
    let (out, list, fine) = two_pass(&src, &dst);
    assert_eq!(out, src);
    let text = String::from_utf8(list).unwrap();
    assert_eq!(
        text,
        format!(
            "# blkranges v1 size={} chunk=65536
0 131072
2097152 65536
",
            3 << 20
        )
    );
    // 48 fine hashes of 8 bytes, one group, header, extension and end record.
    assert_eq!(fine.len(), 56 + 40 + 48 * 8 + 8 + 56);
    // Sizes that differ and are not block multiples.
    for (sl, dl, src, dst) in odd_sized_pairs() {
        let (out, _, _) = two_pass(&src, &dst);
        assert_eq!(out, src, "src {sl} dst {dl}");
    }
}

#[test]
fn a_stream_from_another_list_or_none_is_refused() {
    let dst = pattern(1 << 20, 0);
    let src = pattern(1 << 20, 1);
    let (fs, fd) = (file(&src), file(&dst));
    let sdev = Device::open_source(fs.path(), false).unwrap();
    let ddev = Device::open_source(fd.path(), false).unwrap();
    let list = b"0 4096\n65536 10\n".to_vec();
    let fine = fine_hashes(&ddev, &list);
    let run = |hashes: &[u8], list: Option<&[u8]>| {
        let mut patch = Vec::new();
        let r = diff_device_ranges(
            &sdev,
            hashes,
            list,
            RangeLimits::default(),
            &mut patch,
            &DiffOptions::default(),
            &Progress::hidden(),
        );
        (r, patch)
    };
    // The same blocks listed otherwise: accepted (the canonical form is compared).
    let (r, _) = run(&fine, Some(b"# x\n65540 1\n0 4096\n0 100\n"));
    assert!(r.is_ok(), "{r:?}");
    for other in [&b"0 4096\n"[..], b"0 4096\n69632 1\n", b""] {
        let (r, patch) = run(&fine, Some(other));
        assert!(matches!(r, Err(OpError::Refused(_))), "{r:?}");
        assert!(patch.is_empty(), "nothing written before the refusal");
    }
    let (r, patch) = run(&fine, None);
    assert!(matches!(r, Err(OpError::Refused(_))), "{r:?}");
    assert!(patch.is_empty());
    let whole = hashes_of(&dst, 4096, HashKind::Xxh3_64, 0);
    let (r, patch) = run(&whole, Some(&list));
    assert!(matches!(r, Err(OpError::Refused(_))), "{r:?}");
    assert!(patch.is_empty());
    // A range past the remote's end is bad input.
    let (r, patch) = run(&fine, Some(b"1048000 1000\n"));
    assert!(matches!(r, Err(OpError::BadRange(_))), "{r:?}");
    assert!(patch.is_empty());
}

fn assert_no_end(patch: &[u8]) {
    if patch.is_empty() {
        return;
    }
    let mut r = PatchReader::new(patch).unwrap();
    loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("patch has an end record"),
            Err(_) => return,
        }
    }
}

#[test]
fn the_stop_rule_judges_from_its_minimum_and_stops_only_above_the_percentage() {
    // 64 blocks at least; 1/64 of the device when that is more.
    assert_eq!(StopRule::new(10, 100).min_blocks, 64);
    assert_eq!(StopRule::new(10, 8192).min_blocks, 128);
    assert_eq!(StopRule::new(10, 8193).min_blocks, 129);
    let r = StopRule::new(10, 1000);
    assert!(!r.stops(63, 63), "not before 64 blocks");
    assert!(r.stops(64, 7), "7 of 64 is above 10%");
    assert!(!r.stops(70, 7), "exactly 10% is not above it");
    assert!(r.stops(70, 8));
    assert!(
        !StopRule::new(100, 1000).stops(1000, 1000),
        "100% never stops"
    );
}

#[test]
fn a_stopped_first_pass_lists_what_differed_and_the_rest_and_pass_2_syncs() {
    // 128 coarse blocks of 64 KiB; blocks 1, 3 and 5 differ, then every other one.
    let dst = pattern(8 << 20, 0);
    let mut src = dst.clone();
    for b in [1usize, 3, 5] {
        src[b * 65536 + 100] ^= 1;
    }
    for b in (70..128).step_by(2) {
        src[b * 65536] ^= 1;
    }
    let coarse = hashes_of(&dst, 65536, HashKind::Xxh3_64, 0);
    let (fs, fd) = (file(&src), file(&dst));
    let sdev = Device::open_source(fs.path(), false).unwrap();
    let ddev = Device::open_source(fd.path(), false).unwrap();
    let mut list = Vec::new();
    let opts = DiffOptions {
        list_differing: true,
        stop_above: Some(5),
        ..DiffOptions::default()
    };
    let stats = diff_device(&sdev, &coarse[..], &mut list, &opts, &Progress::hidden()).unwrap();
    // 3 of 64 is 4.7%; block 70 makes it 4 of 71 (5.6%): stop after it.
    assert_eq!(
        String::from_utf8(list.clone()).unwrap(),
        "# blkranges v1 size=8388608 chunk=65536\n65536 65536\n196608 65536\n327680 65536\n\
         4587520 3801088\n# stopped at 4653056: 4 of 71 blocks compared differ (more than 5%); \
         the rest is listed whole\n"
    );
    assert_eq!((stats.blocks_same, stats.blocks_different), (67, 4));
    // Only whole 4 MiB chunks up to the stop were handed over: two of them.
    assert_eq!(stats.bytes_read, 8 << 20);
    let fine = fine_hashes(&ddev, &list);
    let mut patch = Vec::new();
    diff_device_ranges(
        &sdev,
        &fine[..],
        Some(&list[..]),
        RangeLimits::default(),
        &mut patch,
        &DiffOptions::default(),
        &Progress::hidden(),
    )
    .unwrap();
    assert_eq!(apply_in_memory(&patch, &dst).0, src);
}

#[test]
fn a_first_pass_that_would_stop_at_the_remotes_last_block_finishes_instead() {
    // 64 blocks, all different: the rule first speaks at the last one, where nothing is left.
    let dst = pattern(4 << 20, 0);
    let src = pattern(4 << 20, 1);
    let coarse = hashes_of(&dst, 65536, HashKind::Xxh3_64, 0);
    let fs = file(&src);
    let sdev = Device::open_source(fs.path(), false).unwrap();
    let mut list = Vec::new();
    let opts = DiffOptions {
        list_differing: true,
        stop_above: Some(10),
        ..DiffOptions::default()
    };
    diff_device(&sdev, &coarse[..], &mut list, &opts, &Progress::hidden()).unwrap();
    assert_eq!(
        String::from_utf8(list).unwrap(),
        "# blkranges v1 size=4194304 chunk=65536\n0 4194304\n"
    );
}
