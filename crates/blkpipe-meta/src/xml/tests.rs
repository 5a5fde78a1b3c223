use super::*;
use proptest::prelude::*;

fn pairs(r: &BlockRanges) -> Vec<(u64, u64)> {
    r.ranges.iter().map(|r| (r.offset, r.length)).collect()
}

fn thin(xml: &str) -> Result<BlockRanges, MetaError> {
    parse_thin_delta(xml.as_bytes(), None)
}

fn era(xml: &str, block: u64) -> Result<BlockRanges, MetaError> {
    parse_era_invalidate(xml.as_bytes(), block)
}

// As thin_delta (thin-provisioning-tools 0.9 / 1.0) prints it.
const THIN_SIMPLE: &str = r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="16384">
  <diff left="1" right="2">
    <same begin="0" length="16"/>
    <different begin="16" length="4"/>
    <same begin="20" length="80"/>
    <right_only begin="100" length="5"/>
    <left_only begin="105" length="1"/>
    <same begin="106" length="10"/>
    <different begin="200" length="1"/>
  </diff>
</superblock>
"#;

#[test]
fn thin_delta_simple() {
    let r = thin(THIN_SIMPLE).unwrap();
    let b = 128 * 512;
    assert_eq!(r.block_bytes, b);
    assert_eq!(
        pairs(&r),
        vec![(16 * b, 4 * b), (100 * b, 6 * b), (200 * b, b)]
    );
    assert_eq!(r.blocks, 11);
    assert_eq!(r.bytes(), 11 * b);
}

#[test]
fn thin_delta_verbose() {
    let xml = r#"<?xml version="1.0"?>
<!-- thin_delta --verbose -->
<superblock uuid="" time="1" transaction="2" version="2" data_block_size="8" nr_data_blocks="100">
  <diff left="1" right="2">
    <different>
      <range begin="3" left_data_begin="10" right_data_begin="40" length="2"/>
    </different>
    <same>
      <range begin="5" data_begin="12" length="3"/>
    </same>
    <right_only>
      <range begin='9' data_begin='50' length='1'/>
    </right_only>
  </diff>
</superblock>"#;
    let r = thin(xml).unwrap();
    assert_eq!(pairs(&r), vec![(3 * 4096, 2 * 4096), (9 * 4096, 4096)]);
}

#[test]
fn thin_delta_block_size_option() {
    let no_size = r#"<superblock uuid=""><diff left="1" right="2"><different begin="1" length="1"/></diff></superblock>"#;
    assert!(thin(no_size)
        .unwrap_err()
        .to_string()
        .contains("data_block_size"));
    let r = parse_thin_delta(no_size.as_bytes(), Some(65536)).unwrap();
    assert_eq!(pairs(&r), vec![(65536, 65536)]);
    // Both given and different: refused.
    let e = parse_thin_delta(THIN_SIMPLE.as_bytes(), Some(4096)).unwrap_err();
    assert!(e.to_string().contains("--block-size"), "{e}");
    assert!(parse_thin_delta(THIN_SIMPLE.as_bytes(), Some(65536)).is_ok());
}

#[test]
fn thin_delta_empty_diff() {
    let xml = "<superblock data_block_size=\"128\">\n  <diff left=\"1\" right=\"2\">\n  </diff>\n</superblock>\n";
    let r = thin(xml).unwrap();
    assert!(r.ranges.is_empty());
}

// As era_invalidate prints it.
#[test]
fn era_invalidate_blocks() {
    let xml = "<blocks>\n  <range begin=\"0\" end=\"64\"/>\n  <block block=\"70\"/>\n  <block block=\"71\"/>\n  <range begin=\"100\" end=\"102\"/>\n</blocks>\n";
    let r = era(xml, 65536).unwrap();
    let b = 65536;
    assert_eq!(
        pairs(&r),
        vec![(0, 64 * b), (70 * b, 2 * b), (100 * b, 2 * b)]
    );
    assert_eq!(r.blocks, 68);
    let r = era("<blocks>\n</blocks>\n", 4096).unwrap();
    assert!(r.ranges.is_empty());
    let r = era("<blocks/>", 4096).unwrap();
    assert!(r.ranges.is_empty());
}

#[test]
fn errors_carry_positions() {
    let e = era(
        "<blocks>\n  <range begin=\"5\" end=\"5\"/>\n</blocks>",
        4096,
    )
    .unwrap_err();
    let MetaError::Xml {
        line,
        column,
        offset,
        ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!((line, column, offset), (2, 3, 11));
    let e = era("<blocks>\n  <block block=\"x\"/>\n</blocks>", 4096).unwrap_err();
    assert!(e.to_string().starts_with("line 2, column 3"), "{e}");
    assert!(matches!(e, MetaError::Xml { .. }), "{e}");
}

#[test]
fn malformed_input_is_refused() {
    let cases: &[(&str, &str)] = &[
        ("", "no <blocks>"),
        ("<blocks>", "ended inside <blocks>"),
        (
            "<blocks><range begin=\"1\" end=\"2\"/></block>",
            "closes <blocks>",
        ),
        (
            "<blocks></blocks><blocks></blocks>",
            "after the document ended",
        ),
        ("<blocks>junk</blocks>", "unexpected text"),
        (
            "<blocks><range begin=\"1\"/></blocks>",
            "lacks attribute end",
        ),
        ("<blocks><range begin=1 end=2/></blocks>", "not quoted"),
        (
            "<blocks><range begin=\"1\" begin=\"1\" end=\"2\"/></blocks>",
            "twice",
        ),
        (
            "<blocks><range begin=\"-1\" end=\"2\"/></blocks>",
            "not a decimal",
        ),
        (
            "<blocks><range begin=\"3\" end=\"2\"/></blocks>",
            "end must exceed",
        ),
        (
            "<blocks><range begin=\"0\" end=\"99999999999999999999\"/></blocks>",
            "64 bits",
        ),
        (
            "<blocks><block block=\"18446744073709551615\"/></blocks>",
            "overflows",
        ),
        (
            "<blocks><block block=\"1\"></block></blocks>",
            "unexpected <block>",
        ),
        ("<blocks><thing/></blocks>", "unexpected <thing>"),
        ("<superblock/>", "expected <blocks>"),
        ("<blocks><range begin=\"1\" end=\"2\"", "not closed"),
        ("<blocks><!-- never closed", "not closed"),
        ("<!DOCTYPE x><blocks/>", "DOCTYPE"),
    ];
    for (xml, want) in cases {
        let e = era(xml, 4096).unwrap_err().to_string();
        assert!(e.contains(want), "{xml:?}: {e}");
    }
    let thin_cases: &[(&str, &str)] = &[
        ("<blocks/>", "expected <superblock>"),
        ("<superblock data_block_size=\"8\"></superblock>", "no <diff>"),
        ("<superblock data_block_size=\"0\"><diff/></superblock>", "is 0"),
        (
            "<superblock data_block_size=\"8\"><diff><changed begin=\"1\" length=\"1\"/></diff></superblock>",
            "unexpected <changed>",
        ),
        (
            "<superblock data_block_size=\"8\"><diff><different begin=\"1\" length=\"0\"/></diff></superblock>",
            "covers no blocks",
        ),
        (
            "<superblock data_block_size=\"8\"><diff><different begin=\"1\"/></diff></superblock>",
            "lacks attribute length",
        ),
    ];
    for (xml, want) in thin_cases {
        let e = thin(xml).unwrap_err().to_string();
        assert!(e.contains(want), "{xml:?}: {e}");
    }
}

#[test]
fn caps() {
    let long = format!(
        "<blocks><block block=\"1\" x=\"{}\"/></blocks>",
        "a".repeat(MAX_TAG_LEN)
    );
    assert!(era(&long, 512)
        .unwrap_err()
        .to_string()
        .contains("longer than"));
    let deep = format!(
        "<superblock data_block_size=\"8\"><diff>{}</diff></superblock>",
        "<same>".repeat(3)
    );
    assert!(thin(&deep).is_err());
    let attrs: String = (0..=MAX_ATTRS).map(|i| format!(" a{i}=\"1\"")).collect();
    let many = format!("<blocks><block block=\"1\"{attrs}/></blocks>");
    assert!(era(&many, 512)
        .unwrap_err()
        .to_string()
        .contains("attributes"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// era block lists round-trip: the bytes covered are exactly the blocks listed.
    #[test]
    fn era_roundtrip(blocks in proptest::collection::btree_set(0u64..10_000, 0..300)) {
        let mut xml = String::from("<blocks>\n");
        let v: Vec<u64> = blocks.iter().copied().collect();
        let mut i = 0;
        while i < v.len() {
            let mut j = i + 1;
            while j < v.len() && v[j] == v[j - 1] + 1 { j += 1; }
            if j - i == 1 {
                xml += &format!("  <block block=\"{}\"/>\n", v[i]);
            } else {
                xml += &format!("  <range begin=\"{}\" end=\"{}\"/>\n", v[i], v[j - 1] + 1);
            }
            i = j;
        }
        xml += "</blocks>\n";
        let r = era(&xml, 4096).unwrap();
        let mut got = Vec::new();
        for range in &r.ranges {
            for b in range.offset / 4096..range.end() / 4096 { got.push(b); }
        }
        prop_assert_eq!(got, v);
    }

    /// Arbitrary bytes never panic either parser.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_thin_delta(&bytes[..], None);
        let _ = parse_era_invalidate(&bytes[..], 4096);
    }

    /// Damaged real output never panics.
    #[test]
    fn damaged_output_never_panics(at in 0usize..THIN_SIMPLE.len(), v in any::<u8>()) {
        let mut b = THIN_SIMPLE.as_bytes().to_vec();
        b[at] = v;
        let _ = parse_thin_delta(&b[..], None);
    }
}
