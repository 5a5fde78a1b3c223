use proptest::prelude::*;

use super::*;
use blkpipe_format::range::{coalesce, write_range};

fn text(ranges: &[Range]) -> Vec<u8> {
    let mut t = Vec::new();
    for r in ranges {
        write_range(&mut t, r).unwrap();
    }
    t
}

fn small(run_len: usize, max_runs: usize) -> RangeLimits {
    RangeLimits {
        run_len,
        max_runs,
        merge_buf: 48,
    }
}

fn collect(s: &SortedRanges) -> Vec<Range> {
    s.iter().unwrap().map(|r| r.unwrap()).collect()
}

proptest! {
    #[test]
    fn same_as_in_memory_coalesce(
        ranges in prop::collection::vec((0u64..4000, 1u64..300), 0..200),
        run_len in 1usize..20,
        from in 0u64..500,
    ) {
        let ranges: Vec<Range> = ranges.into_iter().map(|(offset, length)| Range { offset, length }).collect();
        let want: Vec<Range> = coalesce(ranges.iter().filter(|r| r.end() > from).map(|r| clip(*r, from)).collect());
        let got = SortedRanges::load(&text(&ranges)[..], 1 << 20, false, from, small(run_len, 1000)).unwrap();
        prop_assert_eq!(collect(&got), want.clone());
        prop_assert_eq!(got.total(), want.iter().map(|r| r.length).sum::<u64>());
        prop_assert_eq!(got.len(), want.len() as u64);
        prop_assert_eq!(got.spilled(), ranges.iter().filter(|r| r.end() > from).count() > run_len);
    }
}

#[test]
fn sorted_list_of_any_length_is_one_run() {
    let ranges: Vec<Range> = (0..1000)
        .map(|i| Range {
            offset: i * 8192,
            length: 4096,
        })
        .collect();
    let got = SortedRanges::load(&text(&ranges)[..], 1 << 30, false, 0, small(10, 1)).unwrap();
    assert!(got.spilled());
    assert_eq!(got.runs.len(), 1);
    assert_eq!(collect(&got), ranges);
}

#[test]
fn unsorted_list_past_the_limit_is_refused_naming_it() {
    let ranges: Vec<Range> = (0..100u64)
        .rev()
        .map(|i| Range {
            offset: i * 8192,
            length: 4096,
        })
        .collect();
    let e = SortedRanges::load(&text(&ranges)[..], 1 << 30, false, 0, small(10, 4)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OpError::Refused(_)), "{msg}");
    assert!(msg.contains("longer than 40 ranges"), "{msg}");
    // Within the limit it sorts.
    let got = SortedRanges::load(&text(&ranges)[..], 1 << 30, false, 0, small(10, 10)).unwrap();
    assert_eq!(got.runs.len(), 10);
    assert_eq!(collect(&got), coalesce(ranges));
}

#[test]
fn bad_line_after_a_spill_is_reported() {
    let mut t = text(
        &(0..50)
            .map(|i| Range {
                offset: i * 4096,
                length: 4096,
            })
            .collect::<Vec<_>>(),
    );
    t.extend_from_slice(b"12 x\n");
    let e = SortedRanges::load(&t[..], 1 << 30, false, 0, small(4, 100)).unwrap_err();
    assert!(e.to_string().contains("line 51"), "{e}");
}
