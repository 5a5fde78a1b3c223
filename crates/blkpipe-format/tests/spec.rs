//! Decodes every example written in docs/FORMAT.md, so the spec and the code cannot drift.

use blkpipe_format::digest::{digest_of, format_digest, DigestBuilder};
use blkpipe_format::hash::{hash_at, HashKind, HashReader, RangeBindingBuilder};
use blkpipe_format::patch::{PatchReader, RecordData};
use blkpipe_format::range::{coalesce, BlockAligned, Range, RangeHeader, RangeReader};

const SPEC: &str = include_str!("../../../docs/FORMAT.md");

/// The body of every fenced block whose info string is `tag`.
fn blocks(tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in SPEC.lines() {
        match &mut cur {
            None if line.trim() == format!("```{tag}") => cur = Some(String::new()),
            Some(body) if line.trim() == "```" => {
                out.push(std::mem::take(body));
                cur = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(!out.is_empty(), "no ```{tag} block in FORMAT.md");
    out
}

/// The body of the one fenced block whose info string is `tag`.
fn one_block(tag: &str) -> String {
    let mut all = blocks(tag);
    assert_eq!(all.len(), 1, "one ```{tag} block expected in FORMAT.md");
    all.pop().unwrap()
}

/// The bytes of the one hex example whose info string is `hex TAG`.
fn example(tag: &str) -> Vec<u8> {
    unhex(&one_block(&format!("hex {tag}")))
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_ascii_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

#[test]
fn range_list_example() {
    for body in blocks("ranges") {
        let mut r = RangeReader::new(body.as_bytes());
        let mut got = Vec::new();
        while let Some((_, range)) = r.next_range().unwrap() {
            got.push(range);
        }
        assert_eq!(
            r.header(),
            Some(&RangeHeader {
                size: Some(67108864),
                chunk: Some(65536)
            })
        );
        let want = [(0, 65536), (1048576, 131072), (33554432, 65536)];
        let want: Vec<Range> = want
            .iter()
            .map(|&(offset, length)| Range { offset, length })
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn patch_example() {
    let bytes = example("patch");
    let mut r = PatchReader::new(&bytes[..]).unwrap();
    assert_eq!(r.header().source_size, 8192);
    assert_eq!(r.header().total_payload, 4160);
    assert_eq!(&r.header().stream_id, b"example-stream-1");
    assert_eq!(r.header().creator, "spec");
    let mut source = vec![0xffu8; 8192];
    while let Some(rec) = r.next_record().unwrap() {
        let range = rec.offset as usize..(rec.offset + rec.length) as usize;
        match rec.data {
            RecordData::Data(d) => source[range].copy_from_slice(d),
            RecordData::Zero => source[range].fill(0),
        }
    }
    let end = *r.end().unwrap();
    assert_eq!(
        (end.record_count, end.data_bytes, end.zero_bytes),
        (2, 64, 4096)
    );
    // Bytes 64..4096 are not covered by the stream; in the example source they are zero.
    source[64..4096].fill(0);
    assert_eq!(&source[..64], &b"blkpipe!".repeat(8)[..]);
    let sd = end.source_digest.unwrap();
    assert_eq!((sd.block_size, sd.seed), (4096, 42));
    assert_eq!(sd.digest, digest_of(&source, 4096, 42));
}

#[test]
fn hash_example() {
    let bytes = example("hash");
    let mut r = HashReader::new(&bytes[..]).unwrap();
    let h = r.header().clone();
    assert_eq!(
        (h.block_size, h.device_size, h.seed, h.group_blocks),
        (4096, 10000, 42, 2)
    );
    assert_eq!(h.kind, HashKind::Xxh3_64);
    let device = vec![0u8; 10000];
    let mut n = 0;
    while let Some((first, group)) = r.next_group().unwrap() {
        for i in 0..group.len() / 8 {
            let (off, len) = h.block_range(first + i as u64);
            let want =
                blkpipe_format::digest::block_hash(&device[off as usize..(off + len) as usize], 42);
            assert_eq!(hash_at(group, h.kind, i), HashKind::Xxh3_64.reduce(want));
            n += 1;
        }
    }
    assert_eq!(n, 3);
    let end = r.end().unwrap();
    assert_eq!(end.block_count, 3);
    assert_eq!(end.device_digest, digest_of(&device, 4096, 42));
    assert!(format_digest(end.device_digest).starts_with("xxh3-128:"));
}

fn example_key() -> blkpipe_format::seal::SealKey {
    let key: Vec<u8> = (0u8..32).collect();
    blkpipe_format::seal::SealKey::from_slice(&key).unwrap()
}

#[test]
fn sealed_patch_example() {
    let bytes = example("sealed-patch");
    let key = example_key();
    assert_eq!(&bytes[62..70], &key.id()[..], "key id after the header");
    // Without the key, or with another, it is refused at the header.
    assert!(matches!(
        PatchReader::new(&bytes[..]),
        Err(blkpipe_format::FormatError::KeyNeeded { .. })
    ));
    let other = blkpipe_format::seal::SealKey::from_slice(&[9u8; 32]).unwrap();
    assert!(matches!(
        PatchReader::with_key(&bytes[..], Vec::new(), Some(&other)),
        Err(blkpipe_format::FormatError::WrongKey { .. })
    ));
    let mut r = PatchReader::with_key(&bytes[..], Vec::new(), Some(&key)).unwrap();
    assert!(r.is_sealed());
    assert_eq!(&r.header().stream_id, b"example-stream-2");
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        let data = match rec.data {
            RecordData::Data(d) => Some(d.to_vec()),
            RecordData::Zero => None,
        };
        got.push((rec.offset, rec.length, data));
    }
    assert_eq!(
        got,
        vec![(0, 64, Some(b"blkpipe!".repeat(8))), (4096, 4096, None)]
    );
    // 62-byte header, 40 seal bytes, 32+64+32, 32+32, 80+32.
    assert_eq!(bytes.len(), 62 + 40 + 128 + 64 + 112);
    // The MAC of record 0, recomputed from the text of section 6.
    let header = &bytes[..62];
    let mut d = blake3::Hasher::new_derive_key("blkpipe 2026-11-30 sealed patch stream subkey");
    d.update(&(0u8..32).collect::<Vec<u8>>());
    d.update(header);
    let subkey = *d.finalize().as_bytes();
    let mut m = blake3::Hasher::new_keyed(&subkey);
    m.update(b"R");
    m.update(&0u64.to_le_bytes());
    m.update(&bytes[102..102 + 32 + 64]);
    assert_eq!(m.finalize().as_bytes(), &bytes[102 + 96..102 + 128]);
    let mut h = blake3::Hasher::new_keyed(&subkey);
    h.update(b"H");
    h.update(header);
    h.update(&bytes[62..70]);
    assert_eq!(h.finalize().as_bytes(), &bytes[70..102]);
}

#[test]
fn keyed_hash_example() {
    let bytes = example("keyed-hash");
    let key = example_key();
    assert!(HashReader::new(&bytes[..]).is_err());
    let mut r = HashReader::with_key(&bytes[..], Some(&key)).unwrap();
    assert!(r.is_keyed());
    let h = r.header().clone();
    let hasher = blkpipe_format::digest::BlockHasher::new(42, Some(&key));
    let device = vec![0u8; 10000];
    let mut n = 0;
    while let Some((first, group)) = r.next_group().unwrap() {
        for i in 0..group.len() / 8 {
            let (off, len) = h.block_range(first + i as u64);
            let want = hasher.hash(&device[off as usize..(off + len) as usize]);
            assert_eq!(hash_at(group, h.kind, i), HashKind::Xxh3_64.reduce(want));
            n += 1;
        }
    }
    assert_eq!(n, 3);
    // The keyed block hash, from the text: the first 16 bytes of keyed(block key, block).
    let mut d = blake3::Hasher::new_derive_key("blkpipe 2026-11-30 keyed block hash key");
    d.update(&(0u8..32).collect::<Vec<u8>>());
    d.update(&42u64.to_le_bytes());
    let bk = *d.finalize().as_bytes();
    let first = blake3::keyed_hash(&bk, &device[..4096]);
    assert_eq!(&bytes[96..104], &first.as_bytes()[..8]);
    let end = r.end().unwrap();
    assert_eq!(
        end.device_digest,
        blkpipe_format::digest::digest_with(&device, 4096, &hasher)
    );
}

#[test]
fn range_restricted_hash_example() {
    let list = one_block("ranges restricted-example");
    let bytes = example("ranged-hash");
    // The list, canonicalised for the stream's blocks, gives the binding in the header.
    let mut lr = RangeReader::new(list.as_bytes());
    let mut listed = Vec::new();
    while let Some((_, range)) = lr.next_range().unwrap() {
        listed.push(range);
    }
    let canonical: Vec<Range> =
        BlockAligned::new(coalesce(listed).into_iter().map(Ok::<_, ()>), 4096, 20000)
            .map(|r| r.unwrap())
            .collect();
    let want = [(4096, 4096), (16384, 3616)];
    let want: Vec<Range> = want
        .iter()
        .map(|&(offset, length)| Range { offset, length })
        .collect();
    assert_eq!(canonical, want);
    let mut binding = RangeBindingBuilder::new(4096);
    for r in &canonical {
        binding.push(r.offset, r.length);
    }
    assert_eq!(&bytes[20..24], &[1, 0, 0, 0], "flags: bit 0");
    let mut r = HashReader::new(&bytes[..]).unwrap();
    let h = r.header().clone();
    assert_eq!(h.ranges, Some(binding.finish()));
    assert_eq!(h.block_count(), 2);
    let device = vec![0u8; 20000];
    let mut hashes = Vec::new();
    while let Some((_, group)) = r.next_group().unwrap() {
        for i in 0..group.len() / 8 {
            hashes.push(hash_at(group, h.kind, i));
        }
    }
    let blocks_of = [&device[4096..8192], &device[16384..20000]];
    let mut d = DigestBuilder::new(4096, 42);
    for (got, block) in hashes.iter().zip(blocks_of) {
        let bh = blkpipe_format::digest::block_hash(block, 42);
        assert_eq!(*got, HashKind::Xxh3_64.reduce(bh));
        d.push(bh, block.len() as u64);
    }
    assert_eq!(hashes.len(), 2);
    assert_eq!(r.end().unwrap().device_digest, d.finish());
    // Any change of the header or extension is a checksum failure.
    for at in [20, 56, 80, 95] {
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        assert!(HashReader::new(&bad[..]).is_err(), "byte {at}");
    }
}

#[test]
fn chained_patch_example() {
    use blkpipe_format::chain::{ChainKind, NO_LINK};
    let bytes = example("chained-patch");
    let sealed = example("sealed-patch");
    let key = example_key();
    assert_eq!(&bytes[12..16], &[6, 0, 0, 0], "flags: sealed and chained");
    let mut r = PatchReader::with_key(&bytes[..], Vec::new(), Some(&key)).unwrap();
    let c = r.header().chain.expect("a chain block");
    assert_eq!(&c.chain_id, b"example-chain-01");
    assert_eq!((c.kind, c.first, c.last), (ChainKind::Forward, 2, 2));
    assert_eq!(
        &c.prev[..],
        &sealed[70..102],
        "prev = the 6.4 stream's header MAC"
    );
    assert_eq!(c.head, NO_LINK);
    assert!(!c.is_base());
    assert_eq!(
        &r.link().unwrap()[..],
        &bytes[182..214],
        "link = header MAC"
    );
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push((rec.offset, rec.length, matches!(rec.data, RecordData::Zero)));
    }
    assert_eq!(got, vec![(4096, 4096, true)]);
    // From the text: the chain block's checksum, then subkey and header MAC over header and
    // chain block together.
    let cb = &bytes[62..174];
    assert_eq!(
        blkpipe_format::xxh3::xxh3_64_with_seed(&cb[..104], 0).to_le_bytes(),
        cb[104..112]
    );
    assert_eq!(&bytes[174..182], &key.id()[..]);
    let mut d = blake3::Hasher::new_derive_key("blkpipe 2026-11-30 sealed patch stream subkey");
    d.update(&(0u8..32).collect::<Vec<u8>>());
    d.update(&bytes[..174]);
    let subkey = *d.finalize().as_bytes();
    let mut h = blake3::Hasher::new_keyed(&subkey);
    h.update(b"H");
    h.update(&bytes[..174]);
    h.update(&bytes[174..182]);
    assert_eq!(h.finalize().as_bytes(), &bytes[182..214]);
    // A flipped byte of `prev` with the block's xxh3 fixed is caught by the header MAC.
    let mut bad = bytes.clone();
    bad[62 + 50] ^= 1;
    let sum = blkpipe_format::xxh3::xxh3_64_with_seed(&bad[62..166], 0);
    bad[166..174].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        PatchReader::with_key(&bad[..], Vec::new(), Some(&key)),
        Err(blkpipe_format::FormatError::Mac { .. })
    ));
    // The text MAC of 6.6.
    let mut d = blake3::Hasher::new_derive_key("blkpipe 2026-11-30 text MAC");
    d.update(&(0u8..32).collect::<Vec<u8>>());
    let tk = *d.finalize().as_bytes();
    assert_eq!(
        key.text_mac(b"index\n"),
        blake3::keyed_hash(&tk, b"index\n")
    );
}
