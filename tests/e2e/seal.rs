//! The tampering suite for sealed streams (issue 15): random attacks on sealed patch and hash
//! streams, none of which may be accepted, with the target byte-identical, every time, to its
//! state before the first bad record: exactly the genuine records wholly before the first
//! altered byte are applied, nothing else.
//!
//! Most attacks run in-process against the library's reader applying to an in-memory target
//! (fast); a sample goes through `apply_patch` on small image files, and another through the
//! real `blkpatch` binary with real pipes.

use std::io::Write;
use std::process::{Command, Stdio};

use blkpipe_format::digest::BlockHasher;
use blkpipe_format::hash::{HashHeader, HashKind, HashReader, HashWriter};
use blkpipe_format::patch::{PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::seal::SealKey;
use blkpipe_format::FormatError;

use crate::common;

/// splitmix64: a small deterministic generator (the run is reproducible from its seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn key(seed: u8) -> SealKey {
    SealKey::from_slice(&[seed; 32]).unwrap()
}

/// A generated sealed stream: its bytes, where each record ends in them, and the records.
struct Stream {
    bytes: Vec<u8>,
    header_len: usize,
    /// Byte offset in `bytes` just past each record (its MAC included).
    record_ends: Vec<usize>,
    /// (offset, data or None for zeros, length).
    records: Vec<(u64, Option<Vec<u8>>, u64)>,
    size: u64,
}

impl Stream {
    fn record_span(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 {
            self.header_len
        } else {
            self.record_ends[i - 1]
        };
        start..self.record_ends[i]
    }
    fn end_span(&self) -> std::ops::Range<usize> {
        *self.record_ends.last().unwrap_or(&self.header_len)..self.bytes.len()
    }
}

const SIZE: u64 = 256 << 10;

/// A sealed stream of 3..12 records over a SIZE-byte source, with a random stream id.
fn gen_stream(rng: &mut Rng, key: Option<&SealKey>, lz4: bool) -> Stream {
    let mut header = PatchHeader::new(SIZE, rng.bytes(16).try_into().unwrap());
    header.creator = "seal test".into();
    let mut w = PatchWriter::start(Vec::new(), header, lz4, rng.below(2) == 0, key).unwrap();
    let header_len = w.get_mut().len();
    let n = 3 + rng.below(10);
    let mut off = rng.below(4096);
    let (mut records, mut record_ends) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let len = 1 + rng.below(12 << 10);
        if off + len > SIZE {
            break;
        }
        if rng.below(4) == 0 {
            w.write_zero(off, len).unwrap();
            records.push((off, None, len));
        } else {
            // Half compressible (so lz4 records appear), half random.
            let data = if rng.below(2) == 0 {
                vec![rng.next() as u8; len as usize]
            } else {
                rng.bytes(len as usize)
            };
            w.write_data(off, &data).unwrap();
            records.push((off, Some(data), len));
        }
        record_ends.push(w.get_mut().len());
        off += len + rng.below(8192);
    }
    let digest = blkpipe_format::patch::SourceDigest {
        block_size: 4096,
        seed: 1,
        digest: 7,
    };
    let bytes = w.finish(Some(digest)).unwrap();
    Stream {
        bytes,
        header_len,
        record_ends,
        records,
        size: SIZE,
    }
}

/// Apply `bytes` to `target` the way blkpatch does: each record the reader returns, at once.
/// Returns whether the stream was accepted (a valid end record and end of input).
fn apply_in_memory(
    bytes: &[u8],
    key: Option<&SealKey>,
    target: &mut [u8],
) -> Result<(), FormatError> {
    let mut r = PatchReader::with_key(bytes, Vec::new(), key)?;
    while let Some(rec) = r.next_record()? {
        let range = rec.offset as usize..(rec.offset + rec.length) as usize;
        match rec.data {
            RecordData::Data(d) => target[range].copy_from_slice(d),
            RecordData::Zero => target[range].fill(0),
        }
    }
    Ok(())
}

/// The target after applying the genuine records wholly before byte `cut` of the stream.
fn expected(initial: &[u8], s: &Stream, cut: usize) -> Vec<u8> {
    let mut t = initial.to_vec();
    for (i, (off, data, len)) in s.records.iter().enumerate() {
        if s.record_ends[i] > cut {
            break;
        }
        let range = *off as usize..(*off + *len) as usize;
        match data {
            Some(d) => t[range].copy_from_slice(d),
            None => t[range].fill(0),
        }
    }
    t
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Recompute the xxh3 checksum of the (uncompressed) record at `span` as record `index`, as a
/// forger who knows the format but not the key would, so only the MAC can catch the forgery.
fn fix_checksum(bytes: &mut [u8], span: std::ops::Range<usize>, index: u64) {
    let h = &bytes[span.start..span.start + 32];
    if h[1] != 0 {
        return; // lz4: left as it is (its MAC covers the compressed bytes anyway)
    }
    let stored = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let payload = span.start + 32..span.start + 32 + stored;
    let mut x = blkpipe_format::xxh3::Xxh3_64::with_seed(index);
    x.update(&bytes[span.start..span.start + 24]);
    x.update(&bytes[payload]);
    let sum = x.digest();
    bytes[span.start + 24..span.start + 32].copy_from_slice(&sum.to_le_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Attack {
    BitFlip,
    FlipAndFixChecksum,
    Drop,
    Duplicate,
    Swap,
    SpliceOtherStream,
    OtherHeader,
    Concatenate,
    Truncate,
    OtherKey,
    Unsealed,
    ForgedEnd,
}

const ATTACKS: [Attack; 12] = [
    Attack::BitFlip,
    Attack::FlipAndFixChecksum,
    Attack::Drop,
    Attack::Duplicate,
    Attack::Swap,
    Attack::SpliceOtherStream,
    Attack::OtherHeader,
    Attack::Concatenate,
    Attack::Truncate,
    Attack::OtherKey,
    Attack::Unsealed,
    Attack::ForgedEnd,
];

/// One attack on `s` (sealed with `k`); `None` when it happens to leave the stream as it was.
fn attack(rng: &mut Rng, s: &Stream, k: &SealKey, which: Attack) -> Option<Vec<u8>> {
    let b = &s.bytes;
    let n = s.records.len();
    let pick = |rng: &mut Rng| rng.below(n as u64) as usize;
    let mut out = b.clone();
    match which {
        Attack::BitFlip => {
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(out.len() as u64) as usize;
                out[at] ^= 1 << rng.below(8);
            }
        }
        Attack::FlipAndFixChecksum => {
            let i = pick(rng);
            let span = s.record_span(i);
            // A field of the header (offset, length bits) or a payload byte, then a valid xxh3.
            let at = span.start + 8 + rng.below((span.len() - 8 - 32) as u64) as usize;
            if (span.start + 24..span.start + 32).contains(&at) {
                out[at] ^= 1;
            } else {
                out[at] ^= 1 << rng.below(8);
                fix_checksum(&mut out, span, i as u64);
            }
        }
        Attack::Drop => {
            let span = s.record_span(pick(rng));
            out.drain(span);
        }
        Attack::Duplicate => {
            let span = s.record_span(pick(rng));
            let copy = b[span.clone()].to_vec();
            out.splice(span.end..span.end, copy);
        }
        Attack::Swap => {
            if n < 2 {
                return None;
            }
            let i = rng.below(n as u64 - 1) as usize;
            let (a, c) = (s.record_span(i), s.record_span(i + 1));
            let mut mid = b[c.clone()].to_vec();
            mid.extend_from_slice(&b[a.clone()]);
            out.splice(a.start..c.end, mid);
        }
        Attack::SpliceOtherStream => {
            // A valid record of another stream under the same key, at the same index.
            let lz4 = rng.below(2) == 0;
            let other = gen_stream(rng, Some(k), lz4);
            let i = pick(rng).min(other.records.len() - 1);
            let span = s.record_span(i);
            out.splice(span, other.bytes[other.record_span(i)].to_vec());
        }
        Attack::OtherHeader => {
            let other = gen_stream(rng, Some(k), false);
            out.splice(..s.header_len, other.bytes[..other.header_len].to_vec());
        }
        Attack::Concatenate => {
            let other = gen_stream(rng, Some(k), false);
            if rng.below(2) == 0 {
                out.extend_from_slice(&other.bytes);
            } else {
                // The other stream's records in place of this one's end record.
                let end = s.end_span();
                out.splice(end, other.bytes[other.header_len..].to_vec());
            }
        }
        Attack::Truncate => {
            out.truncate(rng.below(b.len() as u64) as usize);
        }
        Attack::OtherKey => {
            let other = key(200 + rng.below(50) as u8);
            let mut r = Rng(rng.next());
            return Some(gen_stream(&mut r, Some(&other), rng.below(2) == 0).bytes);
        }
        Attack::Unsealed => {
            // The same records, unsealed: nothing authenticates them.
            let mut r = Rng(rng.next());
            return Some(gen_stream(&mut r, None, false).bytes);
        }
        Attack::ForgedEnd => {
            // Change a count in the end record and fix its xxh3: only the MAC can tell.
            let e = s.end_span().start;
            out[e + 8] ^= 1 << rng.below(3);
            let sum = blkpipe_format::xxh3::xxh3_64_with_seed(&out[e..e + 72], 0);
            out[e + 72..e + 80].copy_from_slice(&sum.to_le_bytes());
        }
    }
    (out != *b).then_some(out)
}

/// Where the attacked stream first differs from the genuine one (all of it for a stream
/// that the genuine one is no prefix of... a prefix: its length).
fn divergence(genuine: &[u8], attacked: &[u8]) -> usize {
    common_prefix(genuine, attacked)
}

#[test]
fn ten_thousand_attacks_in_process_none_accepted() {
    let k = key(1);
    let mut rng = Rng(0x5ea1_0001);
    let mut count = common::Tally::default();
    let mut done = 0;
    while done < 12_000 {
        let lz4 = rng.below(2) == 0;
        let s = gen_stream(&mut rng, Some(&k), lz4);
        // The genuine stream applies.
        let initial = rng.bytes(s.size as usize);
        let mut t = initial.clone();
        apply_in_memory(&s.bytes, Some(&k), &mut t).unwrap();
        assert_eq!(t, expected(&initial, &s, s.bytes.len()));
        for _ in 0..8 {
            let which = ATTACKS[rng.below(ATTACKS.len() as u64) as usize];
            let Some(bad) = attack(&mut rng, &s, &k, which) else {
                continue;
            };
            let mut t = initial.clone();
            let r = apply_in_memory(&bad, Some(&k), &mut t);
            assert!(r.is_err(), "{which:?} accepted");
            let cut = match which {
                // Another stream altogether: refused at its header.
                Attack::OtherKey | Attack::Unsealed => 0,
                _ => divergence(&s.bytes, &bad),
            };
            let want = if matches!(which, Attack::OtherKey | Attack::Unsealed) {
                initial.clone()
            } else {
                expected(&initial, &s, cut)
            };
            assert!(
                t == want,
                "{which:?}: target differs from its state before the first bad record ({})",
                r.unwrap_err()
            );
            if matches!(which, Attack::OtherKey) {
                assert!(matches!(r, Err(FormatError::WrongKey { .. })), "{r:?}");
            }
            if matches!(which, Attack::Unsealed) {
                assert!(matches!(r, Err(FormatError::NotSealed { .. })), "{r:?}");
            }
            count.add(which);
            done += 1;
        }
    }
    count.assert_each_over(&ATTACKS, 300);
}

#[test]
fn a_forged_record_is_caught_by_its_mac_not_its_checksum() {
    let k = key(1);
    let mut rng = Rng(3);
    let s = gen_stream(&mut rng, Some(&k), false);
    let mut bad = s.bytes.clone();
    let span = s.record_span(0);
    bad[span.start + 40] ^= 0x80;
    fix_checksum(&mut bad, span, 0);
    let mut t = vec![0u8; SIZE as usize];
    let e = apply_in_memory(&bad, Some(&k), &mut t).unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::Mac {
                what: "record",
                record: 0,
                ..
            }
        ),
        "{e}"
    );
    assert!(t.iter().all(|&b| b == 0));
    // Without a key the sealed stream is refused at its header: nothing reaches the target.
    let e = apply_in_memory(&s.bytes, None, &mut t).unwrap_err();
    assert!(matches!(e, FormatError::KeyNeeded { .. }), "{e}");
}

/// Keyed hash streams: every attack on a group or the end record is refused before the group
/// is handed out; the block hashes are keyed (another key gives other hashes).
#[test]
fn keyed_hash_stream_attacks_are_refused() {
    let k = key(9);
    let mut rng = Rng(77);
    let dev = rng.bytes(200_000);
    let header = HashHeader {
        block_size: 4096,
        kind: HashKind::Xxh3_64,
        group_blocks: 4,
        device_size: dev.len() as u64,
        seed: 5,
        start_offset: 0,
        ranges: None,
    };
    let hasher = BlockHasher::new(5, Some(&k));
    assert_ne!(
        hasher.hash(&dev[..4096]),
        BlockHasher::new(5, Some(&key(8))).hash(&dev[..4096])
    );
    assert_ne!(
        hasher.hash(&dev[..4096]),
        BlockHasher::new(5, None).hash(&dev[..4096])
    );
    let mut w = HashWriter::start(Vec::new(), header.clone(), Some(&k)).unwrap();
    for b in dev.chunks(4096) {
        w.push(hasher.hash(b)).unwrap();
    }
    let good = w.finish(0).unwrap();
    let read_all = |bytes: &[u8], key: Option<&SealKey>| -> Result<usize, FormatError> {
        let mut r = HashReader::with_key(bytes, key)?;
        let mut n = 0;
        while let Some((_, g)) = r.next_group()? {
            n += g.len();
        }
        Ok(n)
    };
    assert_eq!(read_all(&good, Some(&k)).unwrap(), 49 * 8);
    assert!(matches!(
        read_all(&good, None),
        Err(FormatError::KeyNeeded { .. })
    ));
    assert!(matches!(
        read_all(&good, Some(&key(8))),
        Err(FormatError::WrongKey { .. })
    ));
    for i in 0..2000 {
        let mut bad = good.clone();
        match i % 3 {
            0 => {
                let at = rng.below(bad.len() as u64) as usize;
                bad[at] ^= 1 << rng.below(8);
            }
            1 => bad.truncate(rng.below(good.len() as u64) as usize),
            _ => {
                // Swap two groups (each 4*8 + 8 + 32 bytes after the 96-byte sealed header).
                let g = 72;
                let a = 96 + g * rng.below(11) as usize;
                let first = bad[a..a + g].to_vec();
                bad.copy_within(a + g..a + 2 * g, a);
                bad[a + g..a + 2 * g].copy_from_slice(&first);
            }
        }
        assert!(read_all(&bad, Some(&k)).is_err(), "attack {i} accepted");
    }
}

/// A sample of attacks through the real blkpatch binary with real pipes, on image files: exit
/// 3 or 5, and the image exactly as it was before the first bad record.
#[test]
fn attacks_through_blkpatch_are_refused_and_the_image_is_as_before_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, [1u8; 32]).unwrap();
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let k = key(1);
    let img = dir.path().join("t.img");
    let mut rng = Rng(0xb1c);
    let mut done = 0;
    while done < 300 {
        let lz4 = rng.below(2) == 0;
        let s = gen_stream(&mut rng, Some(&k), lz4);
        let initial = rng.bytes(s.size as usize);
        let which = ATTACKS[done % ATTACKS.len()];
        let Some(bad) = attack(&mut rng, &s, &k, which) else {
            continue;
        };
        std::fs::write(&img, &initial).unwrap();
        let mut child = Command::new(common::bin("blkpatch"))
            .args(["--key", key_path.to_str().unwrap(), img.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // blkpatch may stop reading at the first bad record: a broken pipe here is expected.
        let _ = child.stdin.take().unwrap().write_all(&bad);
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        assert!(
            matches!(code, Some(3 | 5)),
            "{which:?}: exit {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = if matches!(which, Attack::OtherKey | Attack::Unsealed) {
            initial.clone()
        } else {
            expected(&initial, &s, divergence(&s.bytes, &bad))
        };
        assert!(
            std::fs::read(&img).unwrap() == want,
            "{which:?}: image differs"
        );
        done += 1;
    }
}

/// blkpatch's three key refusals: distinct one-line messages, exit 5, the target untouched
/// (not even created); and a sealed --undo stream that only the same key restores.
#[test]
fn blkpatch_key_refusals_and_sealed_undo() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let keyfile = |name: &str, byte: u8| {
        std::fs::write(p(name), [byte; 32]).unwrap();
        std::fs::set_permissions(p(name), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        p(name).to_str().unwrap().to_owned()
    };
    let (k1, k2) = (keyfile("k1", 1), keyfile("k2", 2));
    let mut rng = Rng(11);
    let s = gen_stream(&mut rng, Some(&key(1)), false);
    let plain = gen_stream(&mut rng, None, false);
    let t = p("t.img");
    let tp = t.to_str().unwrap();
    for (args, stream, want) in [
        (vec![tp], &s.bytes, "is sealed: give the key"),
        (
            vec!["--key", &k1, tp],
            &plain.bytes,
            "is not sealed: refusing an unauthenticated stream",
        ),
        (vec!["--key", &k2, tp], &s.bytes, "wrong key"),
    ] {
        let out = common::run("blkpatch", &args, stream);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{err}");
        assert!(!t.exists(), "the target was created");
    }
    // Sealed undo: apply with --undo, restore with the undo stream and the same key.
    let initial = rng.bytes(SIZE as usize);
    std::fs::write(&t, &initial).unwrap();
    let undo = p("undo");
    let out = common::run(
        "blkpatch",
        &["--key", &k1, "--undo", undo.to_str().unwrap(), tp],
        &s.bytes,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        std::fs::read(&t).unwrap(),
        expected(&initial, &s, s.bytes.len())
    );
    let undo_bytes = std::fs::read(&undo).unwrap();
    let out = common::run("blkpatch", &[tp], &undo_bytes);
    assert_eq!(
        out.status.code(),
        Some(5),
        "an unsealed undo: {}",
        common::stderr(&out)
    );
    let out = common::run("blkpatch", &["--key", &k1, tp], &undo_bytes);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(std::fs::read(&t).unwrap(), initial);
}

/// Every tool with `--key`, end to end through real pipes: a keyed hash sync with
/// `blkpatch --verify` (the source digest built from keyed block hashes), blkread-chunks,
/// cowlist --data, and blkmerge of sealed streams; and each consumer refuses an unsealed
/// input with --key and a sealed one without (exit 5).
#[test]
fn every_tool_with_a_key() {
    use blkpipe_testkit::image;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    std::fs::write(p("key"), [5u8; 32]).unwrap();
    std::fs::set_permissions(
        p("key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let keyf = s(&p("key"));
    let size = 1 << 20;
    let src = common::pattern(size, 1);
    let mut dst = src.clone();
    for at in [0usize, 70_000, 500_000, size - 100] {
        dst[at] ^= 0xff;
    }
    std::fs::write(p("src"), &src).unwrap();
    std::fs::write(p("dst"), &dst).unwrap();

    // Keyed hash sync with --verify.
    let hashes = common::run("blkhash", &["--key", &keyf, &s(&p("dst"))], b"");
    assert!(hashes.status.success(), "{}", common::stderr(&hashes));
    let plain_diff = common::run("blkdiff", &[&s(&p("src"))], &hashes.stdout);
    assert_eq!(
        plain_diff.status.code(),
        Some(5),
        "{}",
        common::stderr(&plain_diff)
    );
    assert!(common::stderr(&plain_diff).contains("hash stream is sealed"));
    let patch = common::run("blkdiff", &["--key", &keyf, &s(&p("src"))], &hashes.stdout);
    assert!(patch.status.success(), "{}", common::stderr(&patch));
    let out = common::run("blkpatch", &["--verify", &s(&p("dst"))], &patch.stdout);
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    let out = common::run(
        "blkpatch",
        &["--key", &keyf, "--verify", &s(&p("dst"))],
        &patch.stdout,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(p("dst")).unwrap() == src);
    // An unkeyed hash stream is refused by blkdiff --key.
    let plain_hashes = common::run("blkhash", &[&s(&p("dst"))], b"");
    let out = common::run(
        "blkdiff",
        &["--key", &keyf, &s(&p("src"))],
        &plain_hashes.stdout,
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));

    // blkread-chunks --key, then blkmerge --key of two sealed streams.
    let a = common::run(
        "blkread-chunks",
        &["--key", &keyf, &s(&p("src"))],
        b"0 8192\n",
    );
    let b = common::run(
        "blkread-chunks",
        &["--key", &keyf, &s(&p("src"))],
        b"4096 65536\n",
    );
    assert!(a.status.success() && b.status.success());
    std::fs::write(p("a"), &a.stdout).unwrap();
    std::fs::write(p("b"), &b.stdout).unwrap();
    let merged = common::run("blkmerge", &["--key", &keyf, &s(&p("a")), &s(&p("b"))], b"");
    assert!(merged.status.success(), "{}", common::stderr(&merged));
    let mut r = PatchReader::with_key(&merged.stdout[..], Vec::new(), Some(&key(5))).unwrap();
    while r.next_record().unwrap().is_some() {}
    let out = common::run("blkmerge", &[&s(&p("a")), &s(&p("b"))], b"");
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));

    // cowlist --data --key: the sealed view patch rolls the origin back to the snapshot.
    let cow = image::build(8, &[1, 3], None, None);
    std::fs::write(p("cow"), &cow).unwrap();
    let origin = vec![0xabu8; 16 * 4096];
    std::fs::write(p("origin"), &origin).unwrap();
    let view = common::run(
        "cowlist",
        &[
            "--data",
            "--key",
            &keyf,
            "--cow",
            &s(&p("cow")),
            "--origin",
            &s(&p("origin")),
        ],
        b"",
    );
    assert!(view.status.success(), "{}", common::stderr(&view));
    let out = common::run(
        "blkpatch",
        &["--key", &keyf, &s(&p("origin"))],
        &view.stdout,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::run("cowlist", &["--key", &keyf, "--cow", &s(&p("cow"))], b"");
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
}

/// Encryption at rest is a pipeline stage: the README's age recipe, run as written (seal, then
/// encrypt to a recipient; decrypt, then apply with the key). The encrypted file holds none
/// of the source's bytes in the clear, and a tampered ciphertext is refused by age before
/// blkpatch sees a byte. Needs `age` (tests/install-deps installs it).
#[test]
fn age_encryption_at_rest_recipe() {
    assert!(
        Command::new("age").arg("--version").output().is_ok(),
        "age is not installed: apt-get install age (tests/install-deps)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("key"), [3u8; 32]).unwrap();
    std::fs::set_permissions(
        dir.path().join("key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let src = b"secret-block-contents!".repeat(3000);
    std::fs::write(dir.path().join("src.img"), &src).unwrap();
    let sh = |script: &str| {
        common::bash(script)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = sh(&format!(
        "age-keygen -o {d}/id 2>/dev/null
         echo \"0 {n}\" | blkread-chunks --key key src.img | age -r \"$(age-keygen -y {d}/id)\" > backup.patch.age
         age -d -i {d}/id backup.patch.age | blkpatch --key key dst.img",
        n = src.len()
    ));
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(dir.path().join("dst.img")).unwrap() == src);
    let enc = std::fs::read(dir.path().join("backup.patch.age")).unwrap();
    assert!(!enc.windows(22).any(|w| w == b"secret-block-contents!"));
    // A flipped ciphertext byte: age refuses it, blkpatch gets a cut stream and writes nothing
    // past the records that arrived intact.
    let mut bad = enc.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    std::fs::write(dir.path().join("bad.age"), &bad).unwrap();
    let out = sh(&format!(
        "age -d -i {d}/id bad.age | blkpatch --key key dst2.img"
    ));
    assert!(!out.status.success());
}
