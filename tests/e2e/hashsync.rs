//! End-to-end tests of the hash-compare path: `blkhash DST | blkdiff SRC | blkpatch DST`, run as
//! real processes joined by real pipes, on image files and loop devices.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{bin, pattern, require_loop, run, spawn, stdout_ok, Loop, Rng};

const MIB: usize = 1 << 20;
const BS: usize = 4096;

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut s);
    s
}

/// `blkhash HASH_ARGS DST | blkdiff DIFF_ARGS SRC`, process to process; returns the patch.
fn hash_diff(dst: &Path, src: &Path, hash_args: &[&str], diff_args: &[&str]) -> Vec<u8> {
    let mut ha = hash_args.to_vec();
    ha.push(dst.to_str().unwrap());
    let mut hash = spawn("blkhash", &ha, Stdio::null());
    let mut da = diff_args.to_vec();
    da.push(src.to_str().unwrap());
    let diff = spawn("blkdiff", &da, Stdio::from(hash.stdout.take().unwrap()));
    let out = diff.wait_with_output().unwrap();
    let hs = hash.wait().unwrap();
    let herr = stderr_of(&mut hash);
    assert!(hs.success(), "blkhash: {herr}");
    assert!(
        out.status.success(),
        "blkdiff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `blkpatch --list` lines of a patch: (kind, offset, length).
fn list(patch: &[u8]) -> Vec<(String, u64, u64)> {
    let out = run("blkpatch", &["--list"], patch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The records a correct blkdiff writes: blocks (of `bs`) whose bytes differ, cut into 4 KiB
/// units classed zero or data, same-class neighbours merged, split at 4 MiB boundaries.
fn expected_records(src: &[u8], dst: &[u8], bs: usize) -> Vec<(String, u64, u64)> {
    let mut units: Vec<(usize, usize, bool)> = Vec::new();
    for off in (0..src.len()).step_by(bs) {
        let s = &src[off..(off + bs).min(src.len())];
        let d = dst.get(off..(off + bs).min(dst.len())).unwrap_or(&[]);
        if s == d {
            continue;
        }
        for u in (off..off + s.len()).step_by(BS) {
            let e = (u + BS).min(src.len());
            units.push((u, e, src[u..e].iter().all(|&b| b == 0)));
        }
    }
    let mut recs: Vec<(String, u64, u64)> = Vec::new();
    let mut prev: Option<(usize, bool)> = None;
    for (s, e, zero) in units {
        let kind = if zero { "zero" } else { "data" };
        match (prev, recs.last_mut()) {
            (Some((pe, pz)), Some(last)) if pe == s && pz == zero && s % (4 * MIB) != 0 => {
                last.2 += (e - s) as u64;
            }
            _ => recs.push((kind.to_owned(), s as u64, (e - s) as u64)),
        }
        prev = Some((e, zero));
    }
    recs
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    File,
    Loop,
}

/// `sync_case` with both sides image files.
fn sync_files(name: &str, src: &[u8], dst: &[u8], extra: &[&str]) {
    sync_case(name, src, dst, Side::File, Side::File, extra)
}

/// Sync `src` onto `dst` through the whole pipeline and check the result and the records.
fn sync_case(name: &str, src: &[u8], dst: &[u8], src_on: Side, dst_on: Side, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (src_file, dst_file) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    fs::write(&src_file, src).unwrap();
    fs::write(&dst_file, dst).unwrap();
    let src_loop = (src_on == Side::Loop).then(|| require_loop(Loop::attach(&src_file)));
    let dst_loop = (dst_on == Side::Loop).then(|| require_loop(Loop::attach(&dst_file)));
    let src_path: PathBuf = src_loop
        .as_ref()
        .map_or(src_file.clone(), |l| l.path().into());
    let dst_path: PathBuf = dst_loop
        .as_ref()
        .map_or(dst_file.clone(), |l| l.path().into());

    let bs_arg = extra
        .windows(2)
        .find(|w| w[0] == "--block-size")
        .map(|w| w[1].parse::<usize>().unwrap());
    let hash_args: Vec<&str> = extra.iter().copied().filter(|a| *a != "--lz4").collect();
    let diff_args: Vec<&str> = extra.iter().copied().filter(|a| *a == "--lz4").collect();
    let patch = hash_diff(&dst_path, &src_path, &hash_args, &diff_args);

    let want = expected_records(src, dst, bs_arg.unwrap_or(BS));
    assert_eq!(list(&patch), want, "{name}: records");
    let out = run(
        "blkpatch",
        &["--verify", "--stats", dst_path.to_str().unwrap()],
        &patch,
    );
    assert!(
        out.status.success(),
        "{name}: blkpatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut result = fs::read(&dst_path).unwrap();
    if dst_loop.is_some() {
        // A block device keeps its tail past the source's end.
        assert!(result.len() >= src.len());
        assert_eq!(&result[src.len()..], &dst[src.len()..], "{name}: tail");
        result.truncate(src.len());
    }
    assert!(result == src, "{name}: target differs from source");
}

fn scatter(data: &mut [u8], percent: usize, seed: u64) -> usize {
    let blocks = data.len() / BS;
    let mut rng = Rng(seed);
    let mut changed = std::collections::BTreeSet::new();
    while changed.len() < blocks * percent / 100 {
        changed.insert(rng.below(blocks));
    }
    for &b in &changed {
        data[b * BS + rng.below(BS)] ^= 0x5a;
    }
    changed.len()
}

#[test]
fn identical_images_send_nothing() {
    let a = pattern(9 * MIB + 1234, 1);
    sync_case("identical", &a, &a, Side::File, Side::File, &[]);
}

#[test]
fn scattered_changes_onto_a_loop_device() {
    let dst = pattern(12 * MIB, 2);
    let mut src = dst.clone();
    assert!(scatter(&mut src, 1, 3) > 0);
    sync_case("scattered", &src, &dst, Side::File, Side::Loop, &[]);
}

#[test]
fn clustered_changes_from_a_loop_device() {
    let dst = pattern(10 * MIB, 4);
    let mut src = dst.clone();
    // Clusters, one across the 4 MiB boundary, one at the very start and end.
    for (first, n) in [(0usize, 3usize), (200, 50), (1000, 60), (2555, 5)] {
        for b in first..first + n {
            src[b * BS + 100] ^= 1;
        }
    }
    sync_case("clustered", &src, &dst, Side::Loop, Side::File, &[]);
}

#[test]
fn fully_different_with_lz4_and_128_bit_hashes() {
    let src = pattern(6 * MIB + 512, 5);
    let dst = pattern(6 * MIB + 512, 6);
    sync_files("different", &src, &dst, &["--lz4", "--hash-bits", "128"]);
}

/// The first `len` bytes of `of`, with one bit of byte `at` flipped.
fn shorter_and_changed(of: &[u8], len: usize, at: usize) -> Vec<u8> {
    let mut v = of[..len].to_vec();
    v[at] ^= 1;
    v
}

#[test]
fn target_smaller() {
    let src = pattern(8 * MIB + 7, 7);
    let dst = shorter_and_changed(&src, 5 * MIB + 100, 12345);
    sync_case("smaller", &src, &dst, Side::File, Side::File, &[]);
}

#[test]
fn target_larger_file_is_truncated() {
    let dst = pattern(9 * MIB, 8);
    let src = shorter_and_changed(&dst, 6 * MIB + 3000, 70000);
    sync_case("larger file", &src, &dst, Side::File, Side::File, &[]);
}

#[test]
fn target_larger_loop_device_keeps_its_tail() {
    let dst = pattern(10 * MIB, 9);
    let mut src = shorter_and_changed(&dst, 7 * MIB + 512, 7 * MIB + 100);
    src[MIB..MIB + 3 * BS].fill(7);
    sync_case("larger device", &src, &dst, Side::File, Side::Loop, &[]);
}

#[test]
fn sizes_not_multiples_of_the_block_size() {
    for (sl, dl, bs) in [
        (3 * BS + 1, 3 * BS + 1, "4096"),
        (5 * BS + 17, 2 * BS + 5, "4096"),
        (300_001, 200_003, "65536"),
        (200_003, 300_001, "65536"),
        (1, 0, "4096"),
        (0, 5000, "4096"),
    ] {
        let src = pattern(sl, 10);
        let mut dst = pattern(dl, 10);
        if dl > 3 {
            dst[dl / 2] ^= 1;
        }
        let name = format!("sizes {sl}/{dl}/{bs}");
        sync_files(&name, &src, &dst, &["--block-size", bs]);
    }
}

#[test]
fn zero_filled_regions() {
    let mut dst = pattern(8 * MIB, 11);
    let mut src = dst.clone();
    src[MIB..2 * MIB].fill(0); // data -> zeros: zero records
    dst[3 * MIB..4 * MIB + 8192].fill(0); // zeros -> data: data records
    src[5 * MIB..5 * MIB + 64 * 1024].fill(0); // zeros on both sides: nothing
    dst[5 * MIB..5 * MIB + 64 * 1024].fill(0);
    src[6 * MIB + 4096 + 10] = 0xff; // a data block next to zero blocks in one 64 KiB block
    src[6 * MIB + 8192..6 * MIB + 65536].fill(0);
    for bs in ["4096", "65536"] {
        sync_files("zeros", &src, &dst, &["--block-size", bs]);
    }
}

#[test]
fn three_processes_in_one_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let dst_file = dir.path().join("dst.img");
    let src_file = dir.path().join("src.img");
    let dst = pattern(5 * MIB + 100, 12);
    let mut src = dst.clone();
    scatter(&mut src, 5, 13);
    fs::write(&dst_file, &dst).unwrap();
    fs::write(&src_file, &src).unwrap();
    let mut hash = spawn("blkhash", &[dst_file.to_str().unwrap()], Stdio::null());
    let mut diff = spawn(
        "blkdiff",
        &["--stats", src_file.to_str().unwrap()],
        Stdio::from(hash.stdout.take().unwrap()),
    );
    let patch = spawn(
        "blkpatch",
        &["--verify", dst_file.to_str().unwrap()],
        Stdio::from(diff.stdout.take().unwrap()),
    );
    let p = patch.wait_with_output().unwrap();
    assert!(hash.wait().unwrap().success());
    assert!(diff.wait().unwrap().success());
    let stats = stderr_of(&mut diff);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert!(fs::read(&dst_file).unwrap() == src);
    let different = (5 * MIB / BS) * 5 / 100;
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("blkdiff: blocks different:")
                && l.ends_with(&format!(" {different}"))),
        "{stats}"
    );
}

#[test]
fn verify_catches_a_target_that_is_not_the_hashed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (src, hashed, other) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let b = pattern(MIB, 2);
    let mut a = b.clone();
    a[5] ^= 1;
    let mut c = b.clone();
    c[600_000] ^= 1;
    fs::write(&src, &a).unwrap();
    fs::write(&hashed, &b).unwrap();
    fs::write(&other, &c).unwrap();
    let patch = hash_diff(&hashed, &src, &["--block-size", "64K"], &[]);
    // Applied to a device other than the hashed one, the patch leaves it different: exit 6.
    let out = run("blkpatch", &["--verify", other.to_str().unwrap()], &patch);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("xxh3-128:"));
    let out = run("blkpatch", &["--verify", hashed.to_str().unwrap()], &patch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(&hashed).unwrap() == a);
}

/// Geometry of the hash stream used by the fault tests: 8 B hashes, 1024 per group.
const HEADER_LEN: usize = 56;
const GROUP_LEN: usize = 1024 * 8 + 8;
const END_LEN: usize = 56;

struct FaultFixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    src_bytes: Vec<u8>,
    dst_bytes: Vec<u8>,
    hashes: Vec<u8>,
}

/// Every block of dst differs from src, so every verified block gets a record.
fn fault_fixture() -> FaultFixture {
    let dir = tempfile::tempdir().unwrap();
    let src_bytes = pattern(9 * MIB, 20);
    let dst_bytes = pattern(9 * MIB, 21);
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    fs::write(&src, &src_bytes).unwrap();
    fs::write(&dst, &dst_bytes).unwrap();
    let hashes = stdout_ok(
        Command::new(bin("blkhash"))
            .args(["--seed", "77"])
            .arg(&dst),
        "blkhash",
    );
    assert_eq!(
        hashes.len(),
        HEADER_LEN + 2 * GROUP_LEN + (256 * 8 + 8) + END_LEN
    );
    FaultFixture {
        dir,
        src,
        src_bytes,
        dst_bytes,
        hashes,
    }
}

impl FaultFixture {
    /// Feed `stream` to `blkdiff | blkpatch` on a fresh copy of dst; both must fail, and the
    /// target may differ from its old contents only inside the first `verified_blocks`.
    fn expect_failure(&self, stream: Vec<u8>, verified_blocks: usize, what: &str) {
        let target = self.dir.path().join("target.img");
        fs::write(&target, &self.dst_bytes).unwrap();
        let mut diff = spawn("blkdiff", &[self.src.to_str().unwrap()], Stdio::piped());
        let mut w = diff.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = w.write_all(&stream);
        });
        let patch = spawn(
            "blkpatch",
            &[target.to_str().unwrap()],
            Stdio::from(diff.stdout.take().unwrap()),
        );
        let p = patch.wait_with_output().unwrap();
        let d = diff.wait().unwrap();
        feeder.join().unwrap();
        let derr = stderr_of(&mut diff);
        assert_eq!(d.code(), Some(3), "{what}: blkdiff: {derr}");
        assert!(!p.status.success(), "{what}: blkpatch succeeded");
        let got = fs::read(&target).unwrap();
        assert_eq!(got.len(), self.dst_bytes.len(), "{what}: target resized");
        for (i, block) in got.chunks(BS).enumerate() {
            let old = &self.dst_bytes[i * BS..(i + 1) * BS];
            let new = &self.src_bytes[i * BS..(i + 1) * BS];
            if i < verified_blocks {
                assert!(block == old || block == new, "{what}: block {i} is garbage");
            } else {
                assert!(
                    block == old,
                    "{what}: block {i} written past the verified ones"
                );
            }
        }
    }
}

/// Blocks whose group is complete in the first `len` bytes of the stream (groups of 1024,
/// 1024 and 256 hashes).
fn verified_blocks(len: usize) -> usize {
    let mut end = HEADER_LEN;
    let mut blocks = 0;
    for n in [1024, 1024, 256] {
        end += n * 8 + 8;
        if len < end {
            break;
        }
        blocks += n;
    }
    blocks
}

#[test]
fn every_truncation_of_the_hash_stream_fails_safely() {
    let f = fault_fixture();
    let n = f.hashes.len();
    // Every point in the header, around every group boundary and in the end record; a stride
    // through the group bodies.
    let mut cuts: Vec<usize> = (0..=HEADER_LEN + 2).collect();
    for g in 1..=3 {
        let b = HEADER_LEN + (g * GROUP_LEN).min(2 * GROUP_LEN + 256 * 8 + 8);
        cuts.extend(b.saturating_sub(9)..=b + 1);
    }
    cuts.extend((n - END_LEN - 1)..n);
    cuts.extend((HEADER_LEN..n).step_by(997));
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        f.expect_failure(
            f.hashes[..cut].to_vec(),
            verified_blocks(cut),
            &format!("cut at {cut} of {n}"),
        );
    }
}

#[test]
fn a_flipped_byte_anywhere_in_the_hash_stream_fails_safely() {
    let f = fault_fixture();
    let n = f.hashes.len();
    let last_group = HEADER_LEN + 2 * GROUP_LEN;
    let spots = [
        (0, 0, "magic"),
        (9, 0, "version"),
        (12, 0, "block size"),
        (16, 0, "hash id"),
        (24, 0, "device size"),
        (32, 0, "seed"),
        (40, 0, "start offset"),
        (50, 0, "header checksum"),
        (HEADER_LEN, 0, "first hash"),
        (HEADER_LEN + GROUP_LEN - 1, 0, "group 0 checksum"),
        (HEADER_LEN + GROUP_LEN + 4000, 1024, "group 1 body"),
        (last_group + 3, 2048, "last group body"),
        (n - END_LEN - 1, 2048, "last group checksum"),
        (n - END_LEN, 2304, "end magic"),
        (n - END_LEN + 8, 2304, "end block count"),
        (n - END_LEN + 20, 2304, "end hashes digest"),
        (n - END_LEN + 40, 2304, "end device digest"),
        (n - 1, 2304, "end checksum"),
    ];
    for (at, verified, what) in spots {
        let mut bad = f.hashes.clone();
        bad[at] ^= 0x04;
        f.expect_failure(bad, verified, what);
    }
    // Trailing garbage after the end record is a fault too.
    let mut long = f.hashes.clone();
    long.push(0);
    f.expect_failure(long, 2304, "trailing byte");
}

#[test]
fn digest_agrees_between_file_loop_device_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    fs::write(&file, pattern(7 * MIB + 512, 30)).unwrap();
    let digest = |p: &Path, extra: &[&str]| -> String {
        let mut cmd = Command::new(bin("blkhash"));
        let out = stdout_ok(cmd.arg("--digest").args(extra).arg(p), "blkhash --digest");
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            format!("{}  {}\n", line.split("  ").next().unwrap(), p.display())
        );
        line.split("  ").next().unwrap().to_owned()
    };
    let d = digest(&file, &[]);
    assert!(d.starts_with("xxh3-128:") && d.len() == 9 + 32, "{d}");
    assert_eq!(digest(&file, &["--threads", "1"]), d);
    assert_eq!(digest(&file, &["--seed", "0"]), d);
    assert_ne!(digest(&file, &["--seed", "1"]), d);
    assert_ne!(digest(&file, &["--block-size", "64K"]), d);
    let l = require_loop(Loop::attach(&file));
    assert_eq!(digest(l.path(), &[]), d);
    assert_eq!(digest(l.path(), &["--direct", "--threads", "3"]), d);
    assert_eq!(
        digest(l.path(), &["--seed", "1"]),
        digest(&file, &["--seed", "1"])
    );
}

#[test]
fn text_output_and_from_offset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    fs::write(&file, pattern(5 * BS + 10, 31)).unwrap();
    // blkhash --text --seed 9 --from FROM FILE
    let text_from = |from: &str| {
        let mut cmd = Command::new(bin("blkhash"));
        cmd.args(["--text", "--seed", "9", "--from", from])
            .arg(&file);
        String::from_utf8(stdout_ok(&mut cmd, "blkhash --text")).unwrap()
    };
    let text = text_from("8192");
    let offsets: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(offsets, ["8192", "12288", "16384", "20480"]);
    assert!(text
        .lines()
        .all(|l| l.split(' ').nth(1).unwrap().len() == 16));
    // A stream that starts at 8192 and blkdiff --from 8192 leave everything below it alone
    // (blkdiff without --from refuses such a stream: tests/hostile.rs).
    let src = dir.path().join("src.img");
    fs::write(&src, pattern(5 * BS + 10, 32)).unwrap();
    let patch = hash_diff(&file, &src, &["--from", "8192"], &["--from", "8192"]);
    assert_eq!(
        list(&patch),
        [("data".to_owned(), 8192, (3 * BS + 10) as u64)]
    );
    // An offset inside a block is rounded down to it (resume offsets are record ends); one
    // past the end of the device is refused.
    assert!(text_from("8193").starts_with("8192 "));
    let patch = hash_diff(&file, &src, &["--from", "8193"], &["--from", "8193"]);
    assert_eq!(
        list(&patch),
        [("data".to_owned(), 8192, (3 * BS + 10) as u64)]
    );
    let bad = Command::new(bin("blkhash"))
        .args(["--from", &(5 * BS + 11).to_string(), "--digest"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
}

#[test]
fn contract_bad_input_and_broken_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    fs::write(&file, pattern(8 * MIB, 40)).unwrap();
    let f = file.to_str().unwrap();
    for tool in ["blkhash", "blkdiff"] {
        let help = run(tool, &["--help"], b"");
        assert!(
            help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Exit codes")
        );
        assert_eq!(run(tool, &["--bogus", f], b"").status.code(), Some(2));
        let missing = run(tool, &["/nonexistent/disk"], b"");
        assert_eq!(missing.status.code(), Some(4), "{tool}");
        let err = String::from_utf8_lossy(&missing.stderr);
        assert!(
            err.starts_with(&format!("{tool}: ")) && err.lines().count() == 1,
            "{tool}: {err}"
        );
        let d = run(tool, &[dir.path().to_str().unwrap()], b"");
        assert_ne!(d.status.code(), Some(0), "{tool}: directory accepted");
        let err = String::from_utf8_lossy(&d.stderr);
        assert!(
            err.contains("not a regular file or block device"),
            "{tool}: {err}"
        );
    }
    for bs in ["2048", "5000", "32M"] {
        let out = run("blkhash", &["--block-size", bs, f], b"");
        assert_eq!(out.status.code(), Some(3), "--block-size {bs}");
    }
    // Not a hash stream, empty, a patch stream: bad input, no end record written.
    for input in [&b""[..], b"BLKPATCH", &pattern(100, 1)] {
        let out = run("blkdiff", &[f], input);
        assert_eq!(out.status.code(), Some(3));
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    // A reader that goes away: non-zero exit, nothing on stderr. A sparse 1 GiB file makes a
    // stream larger than the pipe and stdout buffers together.
    let sparse = dir.path().join("sparse.img");
    fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let mut hash = spawn("blkhash", &[sparse.to_str().unwrap()], Stdio::null());
    let mut out = hash.stdout.take().unwrap();
    let mut first = [0u8; 100];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let status = hash.wait().unwrap();
    assert_eq!(status.code(), Some(141));
    assert_eq!(stderr_of(&mut hash), "");
}
