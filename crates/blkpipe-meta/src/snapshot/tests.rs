use super::*;
use blkpipe_testkit::image;
use proptest::prelude::*;

/// A device over `img` in memory.
fn mem(img: &[u8]) -> Device {
    Device::in_memory(img.to_vec())
}

fn opts(origin_size: Option<u64>) -> ReadOptions {
    ReadOptions {
        origin_size,
        ..ReadOptions::default()
    }
}

fn hdr(chunk_sectors: u32) -> StoreHeader {
    StoreHeader {
        valid: true,
        version: 1,
        chunk_sectors,
    }
}

fn set_entry(img: &mut [u8], chunk_sectors: u32, area: u64, index: u64, old: u64, new: u64) {
    let h = hdr(chunk_sectors);
    let at = (h.area_chunk(area).unwrap() * h.chunk_bytes() + index * 16) as usize;
    img[at..at + 8].copy_from_slice(&old.to_le_bytes());
    img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
}

#[test]
fn header_checks() {
    let ok = image::header_bytes(true, 8);
    assert_eq!(StoreHeader::parse(&ok).unwrap(), hdr(8));
    assert_eq!(&ok[..4], b"SnAp");
    assert!(
        !StoreHeader::parse(&image::header_bytes(false, 8))
            .unwrap()
            .valid
    );
    assert!(matches!(
        StoreHeader::parse(&[0u8; 16]),
        Err(MetaError::Uninitialised)
    ));
    let mut b = ok;
    b[0] = b'X';
    assert!(matches!(
        StoreHeader::parse(&b),
        Err(MetaError::BadMagic { .. })
    ));
    let mut b = ok;
    b[8] = 2;
    assert!(matches!(
        StoreHeader::parse(&b),
        Err(MetaError::UnsupportedVersion { found: 2 })
    ));
    for bad in [0u32, 3, 24, 1 << 22] {
        let mut b = ok;
        b[12..16].copy_from_slice(&bad.to_le_bytes());
        assert!(matches!(
            StoreHeader::parse(&b),
            Err(MetaError::BadChunkSize { .. })
        ));
    }
    assert!(matches!(
        StoreHeader::parse(&ok[..15]),
        Err(MetaError::TooShort { .. })
    ));
    assert!(matches!(
        read_header(&mem(&[0u8; 8])),
        Err(MetaError::TooShort { .. })
    ));
}

#[test]
fn layout_matches_kernel() {
    // 4 KiB chunks: 256 exceptions per area, areas at chunks 1, 258, 515, ...
    let h = hdr(8);
    assert_eq!(h.exceptions_per_area(), 256);
    assert_eq!(h.area_chunk(0), Some(1));
    assert_eq!(h.area_chunk(1), Some(258));
    assert_eq!(h.data_chunk(0), Some(2));
    assert_eq!(h.data_chunk(255), Some(257));
    assert_eq!(h.data_chunk(256), Some(259));
    assert!(h.is_metadata_chunk(0) && h.is_metadata_chunk(1) && h.is_metadata_chunk(258));
    assert!(!h.is_metadata_chunk(2) && !h.is_metadata_chunk(257));
    assert_eq!(image::min_chunks(8, 0), 2);
    assert_eq!(image::min_chunks(8, 1), 3);
    assert_eq!(image::min_chunks(8, 255), 257);
    // A full area is followed by a zeroed one.
    assert_eq!(image::min_chunks(8, 256), 259);
    assert_eq!(image::min_chunks(8, 257), 260);
}

fn check_roundtrip(chunk_sectors: u32, old: &[u64], o: &ReadOptions) {
    let img = image::build(chunk_sectors, old, None, None);
    let list = ChangeList::read(&mem(&img), o).unwrap();
    let mut want = old.to_vec();
    want.sort_unstable();
    assert_eq!(list.chunks().unwrap(), &want[..]);
    assert_eq!(list.summary.exceptions, old.len() as u64);
    let per_area = hdr(chunk_sectors).exceptions_per_area();
    assert_eq!(list.summary.areas, old.len() as u64 / per_area + 1);
}

#[test]
fn roundtrip_across_area_boundaries() {
    for chunk_sectors in [1u32, 8, 16] {
        let per_area = hdr(chunk_sectors).exceptions_per_area();
        for n in [
            0,
            1,
            per_area - 1,
            per_area,
            per_area + 1,
            3 * per_area,
            3 * per_area + 7,
        ] {
            // Reverse order, so sorting matters.
            let old: Vec<u64> = (0..n).rev().map(|i| i * 3).collect();
            check_roundtrip(chunk_sectors, &old, &opts(Some(1 << 40)));
            check_roundtrip(
                chunk_sectors,
                &old,
                &ReadOptions {
                    read_ahead: 4,
                    ..opts(None)
                },
            );
        }
    }
}

#[test]
fn areas_read_in_parts() {
    // 64 KiB chunks read 4 KiB at a time: the end marker in the middle of an area.
    let old: Vec<u64> = (0..5000).map(|i| i * 7 % 5003).collect();
    for read_ahead in [0, 3] {
        let o = ReadOptions {
            max_read: 4096,
            read_ahead,
            ..opts(None)
        };
        check_roundtrip(128, &old, &o);
    }
}

#[test]
fn ranges_are_coalesced_and_clipped() {
    let img = image::build(8, &[5, 1, 2, 3, 9, 10], None, None);
    // Origin of 10.5 chunks: chunk 10 is partial.
    let list = ChangeList::read(&mem(&img), &opts(Some(10 * 4096 + 2048))).unwrap();
    let r: Vec<(u64, u64)> = list
        .ranges()
        .unwrap()
        .map(|r| r.map(|r| (r.offset, r.length)).unwrap())
        .collect();
    assert_eq!(
        r,
        vec![(4096, 3 * 4096), (5 * 4096, 4096), (9 * 4096, 4096 + 2048)]
    );
    assert_eq!(list.bytes(), 5 * 4096 + 2048);
    let mut out = Vec::new();
    list.write_range_list(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "# blkranges v1 size=43008 chunk=4096\n4096 12288\n20480 4096\n36864 6144\n"
    );
    // Without an origin size the header has no size and nothing is clipped.
    let list = ChangeList::read(&mem(&img), &opts(None)).unwrap();
    let mut out = Vec::new();
    list.write_range_list(&mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .starts_with("# blkranges v1 chunk=4096\n"));
    assert_eq!(list.bytes(), 6 * 4096);
}

#[test]
fn invalid_snapshot_refused() {
    let mut img = image::build(8, &[1, 2], None, None);
    img[4..8].copy_from_slice(&0u32.to_le_bytes());
    let e = ChangeList::read(&mem(&img), &opts(None)).unwrap_err();
    assert!(matches!(e, MetaError::Invalidated));
    assert!(e.to_string().contains("full sync is needed"));
}

#[test]
fn entries_after_the_end_marker_are_ignored() {
    let mut img = image::build(8, &[1, 2], None, Some(&|_, _| {}));
    // Entry 2 is the end marker; entry 3 holds garbage that must not be read.
    set_entry(&mut img, 8, 0, 3, u64::MAX, u64::MAX);
    let list = ChangeList::read(&mem(&img), &opts(Some(1 << 20))).unwrap();
    assert_eq!(list.chunks().unwrap(), &[1, 2]);
}

#[test]
fn full_area_continues_and_must_fit() {
    let n = 256u64; // exactly one full area of 4 KiB chunks
    let old: Vec<u64> = (0..n).collect();
    let img = image::build(8, &old, None, None);
    let list = ChangeList::read(&mem(&img), &opts(None)).unwrap();
    assert_eq!(list.summary.areas, 2);
    assert_eq!(list.len(), 256);
    // Cut the device before the zeroed next area: the store runs off its end.
    let cut = &img[..(258 * 4096)];
    let e = ChangeList::read(&mem(cut), &opts(None)).unwrap_err();
    assert!(
        matches!(
            e,
            MetaError::StorePastEnd {
                area: 1,
                next_chunk: 258,
                cow_chunks: 258
            }
        ),
        "{e}"
    );
    // A device too small for area 0.
    let e = ChangeList::read(&mem(&img[..4096]), &opts(None)).unwrap_err();
    assert!(matches!(e, MetaError::StorePastEnd { area: 0, .. }), "{e}");
}

#[test]
fn corrupt_entries_are_named() {
    let base = || image::build(8, &[4, 5, 6], None, None);
    let msg = |img: &[u8], origin| {
        let e = ChangeList::read(&mem(img), &opts(origin)).unwrap_err();
        assert!(
            matches!(
                e,
                MetaError::Corrupt { .. }
                    | MetaError::StorePastEnd { .. }
                    | MetaError::BadChunkSize { .. }
                    | MetaError::BadMagic { .. }
                    | MetaError::TooShort { .. }
            ),
            "{e}"
        );
        e.to_string()
    };
    // new_chunk past the end of the COW device (5 chunks).
    let mut img = base();
    set_entry(&mut img, 8, 0, 1, 5, 99);
    let m = msg(&img, None);
    assert!(
        m.contains("area 0 entry 1") && m.contains("new_chunk 99") && m.contains("COW"),
        "{m}"
    );
    // new_chunk pointing at the header's neighbour, metadata area 0 (chunk 1).
    let mut img = base();
    set_entry(&mut img, 8, 0, 2, 6, 1);
    let m = msg(&img, None);
    assert!(
        m.contains("area 0 entry 2") && m.contains("metadata"),
        "{m}"
    );
    // old_chunk past the end of the origin (8 chunks).
    let mut img = base();
    set_entry(&mut img, 8, 0, 0, 8, 2);
    let m = msg(&img, Some(8 * 4096));
    assert!(
        m.contains("area 0 entry 0") && m.contains("old_chunk 8") && m.contains("origin"),
        "{m}"
    );
    // Same with a partial last chunk: chunk 8 exists in an origin of 8.5 chunks.
    assert!(ChangeList::read(&mem(&img), &opts(Some(8 * 4096 + 512))).is_ok());
    // An old_chunk whose byte offset cannot exist.
    let mut img = base();
    set_entry(&mut img, 8, 0, 0, u64::MAX / 2, 2);
    assert!(msg(&img, None).contains("beyond any device size"));
}

#[test]
fn duplicates_name_both_entries() {
    let old: Vec<u64> = (0..300).chain([17]).collect();
    let img = image::build(8, &old, None, None);
    for read in [
        |i: &[u8]| ChangeList::read(&mem(i), &opts(None)).map(|_| ()),
        |i: &[u8]| SnapshotView::read(&mem(i), &opts(None)).map(|_| ()),
    ] {
        let e = read(&img).unwrap_err().to_string();
        assert!(
            e.contains("area 1 entry 44") && e.contains("area 0 entry 17"),
            "{e}"
        );
    }
    // Two origin chunks copied into one COW chunk: entry 40 of area 1 reuses entry 3's chunk.
    let h = hdr(8);
    let old: Vec<u64> = (0..300).collect();
    let mut img = image::build(8, &old, None, None);
    set_entry(&mut img, 8, 1, 40, 1000, h.data_chunk(3).unwrap());
    let with_origin = opts(Some(2000 * 4096));
    for read in [
        |i: &[u8], o: &ReadOptions| ChangeList::read(&mem(i), o).map(|_| ()),
        |i: &[u8], o: &ReadOptions| SnapshotView::read(&mem(i), o).map(|_| ()),
    ] {
        let e = read(&img, &with_origin).unwrap_err().to_string();
        assert!(
            e.contains("area 1 entry 40")
                && e.contains("area 0 entry 3")
                && e.contains(&format!("new_chunk {}", h.data_chunk(3).unwrap())),
            "{e}"
        );
    }
}

#[test]
fn sort_matches_std() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for (n, bits) in [
        (0usize, 8u32),
        (10, 64),
        (20_000, 20),
        (100_000, 40),
        (70_000, 64),
    ] {
        let mut v: Vec<u64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if bits == 64 {
                    x
                } else {
                    x & ((1 << bits) - 1)
                }
            })
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        sort_chunks(&mut v);
        assert_eq!(v, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Both ways of sort_unique (bitmap when it is small, sort otherwise) sort, keep every
    /// value of a duplicate-free input, and find a repeated value when there is one.
    #[test]
    fn sort_unique_sorts_and_finds_repeats(
        bits in 1u32..20,
        raw in proptest::collection::vec(any::<u64>(), 0..3000),
        dup in any::<Option<prop::sample::Index>>(),
    ) {
        let bound = 1u64 << bits;
        let mut v: Vec<u64> = raw.iter().map(|x| x % bound).collect();
        v.sort_unstable();
        v.dedup();
        // Unsorted input, so neither way takes the already-sorted shortcut by chance alone.
        v.reverse();
        if let (Some(i), false) = (dup, v.is_empty()) {
            let x = v[i.index(v.len())];
            v.push(x);
            let mut got = v.clone();
            prop_assert_eq!(sort_unique(&mut got, bound), Some(x));
        } else {
            let mut want = v.clone();
            want.sort_unstable();
            prop_assert_eq!(sort_unique(&mut v, bound), None);
            prop_assert_eq!(v, want);
        }
    }

    /// Any set of origin chunks round-trips through an image, whatever the chunk size.
    #[test]
    fn any_exception_set_roundtrips(
        chunks in proptest::collection::btree_set(0u64..5000, 0..1200),
        chunk_pow in 0u32..4,
        read_ahead in 0usize..4,
        seed in any::<u64>(),
    ) {
        let chunk_sectors = 1u32 << chunk_pow;
        // Shuffle deterministically: the kernel allocates in write order, not origin order.
        let mut old: Vec<u64> = chunks.iter().copied().collect();
        let mut x = seed | 1;
        for i in (1..old.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            old.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let img = image::build(chunk_sectors, &old, None, None);
        let o = ReadOptions { read_ahead, ..opts(Some(5000 * 512 * chunk_sectors as u64)) };
        let list = ChangeList::read(&mem(&img), &o).unwrap();
        let want: Vec<u64> = chunks.iter().copied().collect();
        prop_assert_eq!(list.chunks().unwrap(), &want[..]);
        // Ranges cover exactly the chunks.
        let cb = 512 * chunk_sectors as u64;
        let covered: u64 = list.ranges().unwrap().map(|r| r.unwrap().length / cb).sum();
        prop_assert_eq!(covered, want.len() as u64);
        let v = SnapshotView::read(&mem(&img), &o).unwrap();
        prop_assert!(v.exceptions().windows(2).all(|w| w[0].old_chunk < w[1].old_chunk));
    }

    /// Random damage never panics, and never yields more exceptions than the image can hold.
    #[test]
    fn corruption_never_panics(
        n in 0usize..700,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..24),
        cut in proptest::option::of(any::<usize>()),
        origin in proptest::option::of(0u64..1 << 30),
    ) {
        let old: Vec<u64> = (0..n as u64).map(|i| i * 5).collect();
        let mut img = image::build(1, &old, None, None);
        for (at, v) in flips {
            // Mostly hit the metadata: the header and the first areas.
            let len = img.len().min(4 * 1024);
            let at = at % len;
            img[at] ^= v;
        }
        if let Some(c) = cut {
            img.truncate(c % (img.len() + 1));
        }
        for ra in [0, 3] {
            let o = ReadOptions { read_ahead: ra, ..opts(origin) };
            if let Ok(list) = ChangeList::read(&mem(&img), &o) {
                prop_assert!(list.len() <= img.len() as u64 / 16);
                let _ = list.ranges().unwrap().count();
            }
            if let Ok(v) = SnapshotView::read(&mem(&img), &o) {
                prop_assert!(v.exceptions().len() as u64 <= img.len() as u64 / 16);
            }
        }
    }
}

#[test]
fn hand_formatted_lines_match_the_format_crate() {
    let ranges = [(0u64, 1u64), (9, 10), (4096, 65536), (u64::MAX - 1, 1)];
    let mut ours = Vec::new();
    write_ranges(
        &mut ours,
        Some(7),
        512,
        ranges
            .iter()
            .map(|&(offset, length)| Range { offset, length }),
    )
    .unwrap();
    let mut theirs = Vec::new();
    write_header(
        &mut theirs,
        &RangeHeader {
            size: Some(7),
            chunk: Some(512),
        },
    )
    .unwrap();
    for &(offset, length) in &ranges {
        blkpipe_format::range::write_range(&mut theirs, &Range { offset, length }).unwrap();
    }
    assert_eq!(
        String::from_utf8(ours).unwrap(),
        String::from_utf8(theirs).unwrap()
    );
}
