//! The coarse-to-fine hash sync end to end, as real processes joined by real pipes:
//! pass 1 `blkhash --block-size 1M DST | blkdiff --list-differing SRC > LIST`, pass 2
//! `blkhash --ranges LIST DST | blkdiff --ranges LIST SRC | blkpatch DST`; a stream made from
//! another list is refused, and hostile lists and extensions are bad input.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{bin, pattern, run, spawn, stderr};

const MIB: usize = 1 << 20;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `blkhash HASH_ARGS DST | blkdiff DIFF_ARGS SRC [| blkpatch DST]`: the three (or two) exit
/// statuses and stderrs, the bytes between blkhash and blkdiff, and blkdiff's output (empty when
/// it went to blkpatch).
struct Piped {
    codes: Vec<i32>,
    errs: Vec<String>,
    hash_bytes: u64,
    out: Vec<u8>,
}

/// Pass 1, coarse: `blkhash --block-size 1M DST | blkdiff --list-differing SRC`, both exiting 0.
fn pass1(dst: &Path, src: &Path) -> Piped {
    let one = pipeline(
        dst,
        src,
        &["--block-size", "1M"],
        &["--list-differing"],
        false,
    );
    assert_eq!(one.codes, [0, 0], "{:?}", one.errs);
    one
}

/// The fine pass over `list`: blkhash --ranges LIST | blkdiff --ranges LIST [diff_extra] |
/// blkpatch, every stage exiting 0.
fn pass2(dst: &Path, src: &Path, list: &Path, diff_extra: &[&str]) -> Piped {
    let mut diff_args = vec!["--ranges", p(list)];
    diff_args.extend_from_slice(diff_extra);
    let two = pipeline(dst, src, &["--ranges", p(list)], &diff_args, true);
    assert_eq!(two.codes, [0, 0, 0], "{:?}", two.errs);
    two
}

fn pipeline(dst: &Path, src: &Path, hash_args: &[&str], diff_args: &[&str], patch: bool) -> Piped {
    let mut hash = spawn("blkhash", &[hash_args, &[p(dst)]].concat(), Stdio::null());
    let mut diff = spawn("blkdiff", &[diff_args, &[p(src)]].concat(), Stdio::piped());
    // Copy the hash stream through this process to count its bytes.
    let mut from = hash.stdout.take().unwrap();
    let mut to = diff.stdin.take().unwrap();
    let counter = std::thread::spawn(move || std::io::copy(&mut from, &mut to).unwrap_or(0));
    let mut patcher = patch.then(|| {
        Command::new(bin("blkpatch"))
            .arg(dst)
            .stdin(Stdio::from(diff.stdout.take().unwrap()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let mut out = Vec::new();
    if let Some(mut o) = diff.stdout.take() {
        o.read_to_end(&mut out).unwrap();
    }
    let mut codes = Vec::new();
    let mut errs = Vec::new();
    let mut children = vec![hash, diff];
    children.extend(patcher.take());
    for c in &mut children {
        codes.push(c.wait().unwrap().code().unwrap_or(-1));
        let mut e = String::new();
        c.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        errs.push(e);
    }
    Piped {
        codes,
        errs,
        hash_bytes: counter.join().unwrap(),
        out,
    }
}

/// A 32 MiB source and a target that differs from it in `clusters` runs of 8 blocks.
fn images(dir: &Path, clusters: &[usize]) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let data = pattern(32 * MIB, 3);
    let mut old = data.clone();
    for &c in clusters {
        old[c * 4096..(c + 8) * 4096].copy_from_slice(&pattern(8 * 4096, c as u64));
    }
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    fs::write(&src, &data).unwrap();
    fs::write(&dst, &old).unwrap();
    (src, dst, data)
}

#[test]
fn two_passes_send_only_the_fine_hashes_of_changed_regions() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = images(dir.path(), &[10, 300, 301 + 256 * 20, 8000]);
    let list = dir.path().join("regions");
    let one = pass1(&dst, &src);
    fs::write(&list, &one.out).unwrap();
    let text = String::from_utf8(one.out).unwrap();
    assert_eq!(
        text,
        "# blkranges v1 size=33554432 chunk=1048576\n0 2097152\n22020096 1048576\n32505856 1048576\n"
    );
    // 32 coarse hashes in two groups of 16 (16 MiB each): header, groups, end record.
    assert_eq!(one.hash_bytes, 56 + 32 * 8 + 2 * 8 + 56);
    let two = pass2(&dst, &src, &list, &[]);
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    // 4 MiB of regions: 1024 fine hashes instead of 8192 for the whole device.
    assert_eq!(two.hash_bytes, 56 + 40 + 1024 * 8 + 8 + 56);
    // Nothing differs any more: an empty list, and a second pass that sends nothing.
    let one = pass1(&dst, &src);
    assert_eq!(
        String::from_utf8(one.out.clone()).unwrap(),
        "# blkranges v1 size=33554432 chunk=1048576\n"
    );
    fs::write(&list, &one.out).unwrap();
    let two = pass2(&dst, &src, &list, &["--stats"]);
    assert!(
        two.errs[1].contains("bytes read from devices: 0"),
        "{}",
        two.errs[1]
    );
}

#[test]
fn a_bigger_or_smaller_source_is_followed_in_two_passes() {
    let dir = tempfile::tempdir().unwrap();
    for (sl, dl) in [(5 * MIB + 1000, 3 * MIB + 777), (2 * MIB + 5, 6 * MIB)] {
        let data = pattern(sl, 9);
        let mut old = pattern(dl, 9);
        old[4096 * 300] ^= 1;
        let (src, dst) = (dir.path().join("s"), dir.path().join("d"));
        fs::write(&src, &data).unwrap();
        fs::write(&dst, &old).unwrap();
        let list = dir.path().join("l");
        let one = pass1(&dst, &src);
        fs::write(&list, &one.out).unwrap();
        pass2(&dst, &src, &list, &[]);
        assert!(fs::read(&dst).unwrap() == data, "src {sl} dst {dl}");
    }
}

#[test]
fn a_stream_made_from_another_list_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, _) = images(dir.path(), &[10, 4000]);
    let before = fs::read(&dst).unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::write(&a, "0 1048576\n16777216 1048576\n").unwrap();
    fs::write(&b, "0 1048576\n").unwrap();
    let r = pipeline(&dst, &src, &["--ranges", p(&a)], &["--ranges", p(&b)], true);
    assert_eq!(r.codes[1], 5, "{:?}", r.errs);
    assert!(r.errs[1].contains("does not match"), "{}", r.errs[1]);
    assert_eq!(r.codes[2], 3, "blkpatch sees no stream: {:?}", r.errs);
    assert!(fs::read(&dst).unwrap() == before, "dst untouched");
    // A whole-device stream given a list, and a restricted stream without one.
    let r = pipeline(&dst, &src, &[], &["--ranges", p(&a)], false);
    assert_eq!(r.codes[1], 5, "{:?}", r.errs);
    assert!(r.out.is_empty());
    let r = pipeline(&dst, &src, &["--ranges", p(&a)], &[], false);
    assert_eq!(r.codes[1], 5, "{:?}", r.errs);
    assert!(r.errs[1].contains("range-restricted"), "{}", r.errs[1]);
    assert!(r.out.is_empty());
}

/// Run blkhash --ranges LIST (LIST from stdin) on `dev`.
fn hash_list(dev: &Path, list: &[u8]) -> Output {
    run("blkhash", &["--ranges", "-", "--force-tty", p(dev)], list)
}

#[test]
fn hostile_range_lists_are_bad_input_with_a_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("d");
    fs::write(&dev, pattern(MIB, 1)).unwrap();
    let long = format!("{}\n", "1".repeat(5000));
    let cases: [(&[u8], i32, &str); 8] = [
        (b"0 4096\n1048000 1000\n", 3, "line 2"),
        (b"18446744073709551615 1\n", 3, "line 1"),
        (b"0 0\n", 3, "line 1"),
        (b"-1 4096\n", 3, "line 1"),
        (b"0x10 4096\n", 3, "line 1"),
        (long.as_bytes(), 3, "line 1"),
        (b"# blkranges v1 size=4096\n0 4096\n", 5, "4096 bytes"),
        (b"BLKHASH\0 binary", 3, "hash stream"),
    ];
    for (list, code, says) in cases {
        let out = hash_list(&dev, list);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{list:?}: {err}");
        assert!(err.contains(says), "{list:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing written: {list:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // The same lists given to blkdiff --ranges, with a good restricted stream: refused before
    // the first byte of output.
    let good = hash_list(&dev, b"0 4096\n");
    assert!(good.status.success(), "{}", stderr(&good));
    for (list, code, says) in cases {
        let l = dir.path().join("l");
        fs::write(&l, list).unwrap();
        let out = run(
            "blkdiff",
            &["--ranges", p(&l), "--force-tty", p(&dev)],
            &good.stdout,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{list:?}: {err}");
        assert!(err.contains(says), "{list:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing written: {list:?}");
    }
}

#[test]
fn a_damaged_or_unknown_range_extension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("d");
    fs::write(&dev, pattern(MIB, 1)).unwrap();
    let l = dir.path().join("l");
    fs::write(&l, "8192 100\n").unwrap();
    let good = hash_list(&dev, b"8192 100\n");
    assert!(good.status.success());
    assert_eq!(good.stdout[20], 1, "flags bit 0");
    let ok = run(
        "blkdiff",
        &["--ranges", p(&l), "--force-tty", p(&dev)],
        &good.stdout,
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Every byte of header and extension is covered by a checksum; an unknown flag, or a flag
    // in a minor-0 header, is refused even with a valid checksum.
    for at in [10, 20, 22, 56, 72, 80, 95] {
        let mut bad = good.stdout.clone();
        bad[at] ^= 4;
        let out = run(
            "blkdiff",
            &["--ranges", p(&l), "--force-tty", p(&dev)],
            &bad,
        );
        assert_eq!(out.status.code(), Some(3), "byte {at}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    // The extension cut short.
    let out = run(
        "blkdiff",
        &["--ranges", p(&l), "--force-tty", p(&dev)],
        &good.stdout[..70],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
}
