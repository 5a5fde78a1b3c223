//! Property tests: round trips, and every truncation or flipped byte is an error that leaves
//! only already-verified records behind.

use blkpipe_format::hash::{HashHeader, HashKind, HashReader, HashWriter, RangeBinding};
use blkpipe_format::patch::{PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::range::{coalesce, write_range, BlockAligned, Range, RangeReader};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// Ascending, non-overlapping records with gaps, inside a computed source size.
fn records() -> impl Strategy<Value = (Vec<Rec>, u64)> {
    prop::collection::vec(
        (
            0u64..10_000,
            prop::bool::ANY,
            1usize..3000,
            any::<u8>(),
            prop::bool::ANY,
        ),
        0..12,
    )
    .prop_map(|items| {
        let mut at = 0;
        let mut recs = Vec::new();
        for (gap, zero, len, byte, compressible) in items {
            at += gap;
            if zero {
                recs.push(Rec::Zero(at, len as u64));
            } else {
                let data: Vec<u8> = if compressible {
                    vec![byte; len]
                } else {
                    (0..len)
                        .map(|i| (i as u8).wrapping_mul(byte | 1).wrapping_add(i as u8 >> 3))
                        .collect()
                };
                recs.push(Rec::Data(at, data));
            }
            at += len as u64;
        }
        (recs, at + 17)
    })
}

fn encode(recs: &[Rec], size: u64, lz4: bool) -> Vec<u8> {
    let mut w = PatchWriter::new(Vec::new(), PatchHeader::new(size, [3; 16]), lz4).unwrap();
    for r in recs {
        match r {
            Rec::Data(o, d) => w.write_data(*o, d).unwrap(),
            Rec::Zero(o, l) => w.write_zero(*o, *l).unwrap(),
        }
    }
    w.finish(None).unwrap()
}

/// Decode as far as possible: the records read and whether the stream was complete.
fn decode(bytes: &[u8]) -> (Vec<Rec>, bool) {
    let mut out = Vec::new();
    let Ok(mut r) = PatchReader::new(bytes) else {
        return (out, false);
    };
    loop {
        match r.next_record() {
            Ok(Some(rec)) => out.push(match rec.data {
                RecordData::Data(d) => Rec::Data(rec.offset, d.to_vec()),
                RecordData::Zero => Rec::Zero(rec.offset, rec.length),
            }),
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn patch_round_trip((recs, size) in records(), lz4 in prop::bool::ANY) {
        let bytes = encode(&recs, size, lz4);
        let (got, complete) = decode(&bytes);
        prop_assert!(complete);
        prop_assert_eq!(got, recs);
    }

    #[test]
    fn patch_truncation_is_an_error((recs, size) in records(), lz4 in prop::bool::ANY) {
        let bytes = encode(&recs, size, lz4);
        for cut in 0..bytes.len() {
            let (got, complete) = decode(&bytes[..cut]);
            prop_assert!(!complete, "truncated at {} of {} accepted", cut, bytes.len());
            prop_assert_eq!(&got[..], &recs[..got.len()]);
        }
    }

    #[test]
    fn patch_flipped_byte_is_an_error((recs, size) in records(), lz4 in prop::bool::ANY, bit in 0u8..8) {
        let bytes = encode(&recs, size, lz4);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            let (got, complete) = decode(&bad);
            prop_assert!(!complete, "flip at byte {} accepted", at);
            prop_assert_eq!(&got[..], &recs[..got.len()]);
        }
    }

    #[test]
    fn patch_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
        let mut with_magic = b"BLKPATCH\x01\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn hash_round_trip_and_damage(
        hashes in prop::collection::vec(any::<u128>(), 0..40),
        wide in prop::bool::ANY,
        group in 1u16..8,
        tail in 1u64..4096,
        restricted in prop::bool::ANY,
        list_digest in any::<u128>(),
        spare in 0u64..3,
    ) {
        let kind = if wide { HashKind::Xxh3_128 } else { HashKind::Xxh3_64 };
        let n = hashes.len() as u64;
        // A range-restricted stream may hold fewer blocks than the device has.
        let device_size = if n == 0 && !restricted { 0 } else { (n + if restricted { spare } else { 0 }).max(1) * 4096 - 4096 + tail };
        let ranges = restricted.then_some(RangeBinding { list_digest, range_count: n.min(1), block_count: n });
        let header = HashHeader { block_size: 4096, kind, group_blocks: group, device_size, seed: 9, start_offset: 0, ranges };
        let mut w = HashWriter::new(Vec::new(), header).unwrap();
        for h in &hashes { w.push(*h).unwrap(); }
        let bytes = w.finish(77).unwrap();
        let read = |b: &[u8]| -> (Vec<u128>, bool) {
            let mut got = Vec::new();
            let Ok(mut r) = HashReader::new(b) else { return (got, false) };
            loop {
                match r.next_group() {
                    Ok(Some((_, g))) => {
                        for i in 0..g.len() / kind.len() {
                            got.push(blkpipe_format::hash::hash_at(g, kind, i));
                        }
                    }
                    Ok(None) => return (got, r.end().map(|e| e.device_digest) == Some(77)),
                    Err(_) => return (got, false),
                }
            }
        };
        let reduced: Vec<u128> = hashes.iter().map(|h| kind.reduce(*h)).collect();
        let (got, ok) = read(&bytes);
        prop_assert!(ok);
        prop_assert_eq!(&got, &reduced);
        for cut in 0..bytes.len() {
            let (got, ok) = read(&bytes[..cut]);
            prop_assert!(!ok);
            prop_assert_eq!(&got[..], &reduced[..got.len()]);
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let (got, ok) = read(&bad);
            prop_assert!(!ok, "flip at {} accepted", at);
            prop_assert_eq!(&got[..], &reduced[..got.len()]);
        }
    }

    #[test]
    fn block_aligned_touches_exactly_the_listed_blocks(
        ranges in prop::collection::vec((0u64..70_000, 1u64..20_000), 0..12),
        size in 1u64..80_000,
        shift in 12u32..15,
    ) {
        let bs = 1u64 << shift;
        let ranges: Vec<Range> = ranges.into_iter().map(|(offset, length)| Range { offset, length }).collect();
        let canonical: Vec<Range> = BlockAligned::new(coalesce(ranges.clone()).into_iter().map(Ok::<_, ()>), bs as u32, size)
            .map(|r| r.unwrap())
            .collect();
        let blocks = size.div_ceil(bs);
        let mut want = vec![false; blocks as usize];
        for r in &ranges {
            for b in r.offset / bs..r.end().div_ceil(bs) {
                if b < blocks { want[b as usize] = true; }
            }
        }
        let mut got = vec![false; blocks as usize];
        for w in canonical.windows(2) {
            prop_assert!(w[0].end() < w[1].offset, "sorted, apart: {:?}", canonical);
        }
        for r in &canonical {
            prop_assert_eq!(r.offset % bs, 0);
            prop_assert!(r.end() % bs == 0 || r.end() == size);
            prop_assert!(r.end() <= size && r.length > 0);
            for b in r.offset / bs..r.end().div_ceil(bs) { got[b as usize] = true; }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn range_list_round_trip(ranges in prop::collection::vec((0u64..1 << 40, 1u64..1 << 30), 0..50)) {
        let ranges: Vec<Range> = ranges.into_iter().map(|(offset, length)| Range { offset, length }).collect();
        let mut text = Vec::new();
        for r in &ranges { write_range(&mut text, r).unwrap(); }
        let mut reader = RangeReader::new(&text[..]);
        let mut got = Vec::new();
        while let Some((_, r)) = reader.next_range().unwrap() { got.push(r); }
        prop_assert_eq!(&got, &ranges);
        // Coalescing covers exactly the same bytes, sorted and disjoint.
        let merged = coalesce(got);
        for w in merged.windows(2) { prop_assert!(w[0].end() < w[1].offset); }
        for r in &ranges {
            prop_assert!(merged.iter().any(|m| m.offset <= r.offset && r.end() <= m.end()));
        }
    }

    #[test]
    fn range_garbage_never_panics(text in "[0-9 #\\n\\tx=a-z-]{0,300}") {
        let mut reader = RangeReader::new(text.as_bytes());
        while let Ok(Some(_)) = reader.next_range() {}
    }
}

#[test]
fn range_errors_name_the_line() {
    let mut r = RangeReader::new(&b"0 4096\n\n# c\n12 x\n"[..]);
    r.next_range().unwrap();
    let e = r.next_range().unwrap_err().to_string();
    assert!(e.starts_with("line 4:"), "{e}");
    let long = vec![b'1'; 5000];
    let e = RangeReader::new(&long[..])
        .next_range()
        .unwrap_err()
        .to_string();
    assert!(e.contains("longer than 4096"), "{e}");
    let e = RangeReader::new(&b"# blkranges v2 size=1\n"[..])
        .next_range()
        .unwrap_err()
        .to_string();
    assert!(e.contains("v2 is not supported"), "{e}");
    let e = RangeReader::new(&b"5 0\n"[..])
        .next_range()
        .unwrap_err()
        .to_string();
    assert!(e.contains("zero length"), "{e}");
}

#[test]
fn unknown_major_version_names_both() {
    let mut bytes = PatchHeader::new(10, [0; 16]).to_bytes();
    bytes[8] = 2;
    let e = PatchReader::new(&bytes[..]).err().unwrap().to_string();
    assert!(
        e.contains("version 2.0 is not supported") && e.contains("1.x"),
        "{e}"
    );
}

proptest! {
    /// Any 112 bytes: the chain block parser returns a block or an error, never panics, and a
    /// block it returns encodes back to the same bytes.
    #[test]
    fn chain_block_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 112)) {
        use blkpipe_format::chain::ChainBlock;
        let b: [u8; 112] = bytes.clone().try_into().unwrap();
        if let Ok(c) = ChainBlock::from_bytes(&b, 0) {
            prop_assert_eq!(&c.to_bytes()[..], &bytes[..]);
        }
        // With a valid checksum, the fields decide.
        let mut fixed = b;
        let sum = blkpipe_format::xxh3::xxh3_64_with_seed(&fixed[..104], 0);
        fixed[104..].copy_from_slice(&sum.to_le_bytes());
        if let Ok(c) = ChainBlock::from_bytes(&fixed, 0) {
            prop_assert_eq!(c.to_bytes(), fixed);
            prop_assert!(c.first <= c.last);
        }
    }

    /// A sealed, chained stream cut anywhere or with any byte flipped is refused.
    #[test]
    fn chained_stream_damage_is_refused(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
        use blkpipe_format::chain::{ChainBlock, ChainKind, NO_LINK};
        let key = blkpipe_format::seal::SealKey::from_slice(&[4u8; 32]).unwrap();
        let mut header = PatchHeader::new(8192, [1; 16]);
        header.chain = Some(ChainBlock {
            chain_id: [2; 16],
            kind: ChainKind::Forward,
            first: 3,
            last: 3,
            prev: [5; 32],
            head: NO_LINK,
        });
        let mut w = PatchWriter::start(Vec::new(), header, false, false, Some(&key)).unwrap();
        w.write_data(0, &[7u8; 100]).unwrap();
        let good = w.finish(None).unwrap();
        let read = |b: &[u8]| -> Result<(), blkpipe_format::FormatError> {
            let mut r = PatchReader::with_key(b, Vec::new(), Some(&key))?;
            while r.next_record()?.is_some() {}
            Ok(())
        };
        prop_assert!(read(&good).is_ok());
        prop_assert!(read(&good[..cut.min(good.len() - 1)]).is_err());
        let mut bad = good.clone();
        let at = flip % good.len();
        bad[at] ^= 1 << bit;
        prop_assert!(read(&bad).is_err());
    }
}
