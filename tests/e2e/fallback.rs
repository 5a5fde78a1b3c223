//! The coarse-to-fine sync that falls back by itself (issue 16): `blkdiff --list-differing
//! --stop-above PERCENT` gives up on scattered changes and lists the rest of the device whole,
//! and `blksync --two-pass` (auto) builds on it, so a scattered change costs about one read of
//! each device, a clustered one stays two-pass with few hashes, and a failing or killed stage
//! on either path still fails the run. Images of 32 MiB with 32 KiB coarse blocks: 1024
//! regions, judged from 64 on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{bin, pattern, stderr, tools_path, Rng};

const SIZE: usize = 32 << 20;
const COARSE: &str = "32768";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A source, and a target that differs from it in the 4 KiB blocks `changed` says.
fn images(dir: &Path, changed: impl Fn(usize) -> bool) -> (PathBuf, PathBuf, Vec<u8>) {
    let data = pattern(SIZE, 41);
    let mut old = data.clone();
    for b in (0..SIZE / 4096).filter(|&b| changed(b)) {
        old[b * 4096..(b + 1) * 4096].copy_from_slice(&pattern(4096, b as u64 + 7));
    }
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    fs::write(&src, &data).unwrap();
    fs::write(&dst, &old).unwrap();
    (src, dst, data)
}

/// 4% of the blocks, at random: about 28% of the 32 KiB regions differ.
fn scattered(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let mut rng = Rng(5);
    let picked: Vec<bool> = (0..SIZE / 4096).map(|_| rng.below(25) == 0).collect();
    images(dir, |b| picked[b])
}

/// Six runs of 16 blocks (64 KiB): at most 18 of the 1024 regions differ, five of them in the
/// first 64 (7.8%, below the 10% blksync stops above).
fn clustered(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let starts = [3usize, 40, 2000, 3001, 5555, 8000];
    images(dir, |b| starts.iter().any(|&s| (s..s + 16).contains(&b)))
}

/// `blkhash --block-size 32K DST | blkdiff --list-differing --stop-above PCT SRC`: the exit
/// statuses and the list.
fn pass1(dst: &Path, src: &Path, pct: &str) -> (i32, i32, String, String) {
    let mut hash = Command::new(bin("blkhash"))
        .args(["--block-size", COARSE, p(dst)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let diff = Command::new(bin("blkdiff"))
        .args(["--list-differing", "--stop-above", pct, p(src)])
        .stdin(Stdio::from(hash.stdout.take().unwrap()))
        .output()
        .unwrap();
    let h = hash.wait().unwrap().code().unwrap_or(-1);
    let err = stderr(&diff);
    (
        h,
        diff.status.code().unwrap_or(-1),
        String::from_utf8(diff.stdout).unwrap(),
        err,
    )
}

#[test]
fn blkdiff_stops_on_scattered_changes_and_lists_the_rest_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = scattered(dir.path());
    let (h, d, list, err) = pass1(&dst, &src, "10");
    assert_eq!(d, 0, "{err}");
    // blkhash may have written all 1024 coarse hashes into the pipe before blkdiff stopped.
    assert!(h == 0 || h == 141, "blkhash exited {h}");
    // Stopped at the 64th region (2 MiB): the rest, from there to the end, is one range,
    // and the comment comes last.
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "# blkranges v1 size=33554432 chunk=32768");
    let last = lines[lines.len() - 1];
    assert!(
        last.starts_with("# stopped at 2097152: ")
            && last.ends_with(
                " of 64 blocks compared differ (more than 10%); the rest is listed whole"
            ),
        "{list}"
    );
    let ranges: Vec<(u64, u64)> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            let mut f = l.split(' ').map(|n| n.parse::<u64>().unwrap());
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    let (a, n) = *ranges.last().unwrap();
    assert_eq!(a + n, SIZE as u64, "the rest runs to the end: {list}");
    assert!(a <= 2 << 20, "{list}");
    let listed: u64 = ranges.iter().map(|r| r.1).sum();
    assert!(
        listed < SIZE as u64,
        "regions below 2 MiB that did not differ are left out"
    );
    // Pass 2 over that list makes DST equal to SRC.
    let l = dir.path().join("list");
    fs::write(&l, &list).unwrap();
    let out = crate::common::bash(&format!(
        "blkhash --ranges {l} {dst} | blkdiff --ranges {l} {src} | blkpatch {dst}",
        l = p(&l),
        dst = p(&dst),
        src = p(&src)
    ))
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    // Clustered changes never cross 10%: the full list, no comment, blkhash read to the end.
    let (src, dst, _) = clustered(dir.path());
    let (h, d, list, err) = pass1(&dst, &src, "10");
    assert_eq!((h, d), (0, 0), "{err}");
    assert!(!list.contains("stopped"), "{list}");
    assert!(list.lines().count() <= 19, "{list}");
    // --stop-above wants --list-differing and a percentage.
    for args in [
        &["--stop-above", "10", p(&src)][..],
        &["--list-differing", "--stop-above", "101", p(&src)][..],
    ] {
        let out = Command::new(bin("blkdiff"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// shell/blksync ARGS with the built tools on PATH, after `wrap` (a directory of stand-ins
/// that fail on purpose, see [`failing_stand_ins`]) if given, with FAIL set to `fail`.
fn blksync(args: &[&str], wrap: Option<(&Path, &str)>) -> Output {
    let mut path = tools_path();
    let mut cmd = Command::new(repo().join("shell/blksync"));
    if let Some((dir, fail)) = wrap {
        path = format!("{}:{path}", dir.display());
        cmd.env("FAIL", fail);
    }
    cmd.args(args).env("PATH", path).output().unwrap()
}

/// The sum of every blkdiff's "bytes read from devices" in a --stats output.
fn src_bytes_read(err: &str) -> u64 {
    err.lines()
        .filter_map(|l| l.strip_prefix("blkdiff: bytes read from devices:"))
        .map(|n| n.trim().parse::<u64>().unwrap())
        .sum()
}

/// The fine hashes pass 2's blkdiff compared (blocks same + different of the last blkdiff).
fn last_blocks_compared(err: &str) -> u64 {
    let val = |key: &str| {
        err.lines()
            .filter_map(|l| l.strip_prefix(key))
            .next_back()
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    val("blkdiff: blocks same:") + val("blkdiff: blocks different:")
}

#[test]
fn blksync_two_pass_falls_back_on_scattered_changes_with_reads_bounded() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--verify"][..]] {
        let (src, dst, data) = scattered(dir.path());
        let mut args = vec!["--two-pass", "--coarse-block-size", COARSE, "--stats", "-v"];
        args.extend_from_slice(extra);
        args.extend([p(&src), p(&dst)]);
        let out = blksync(&args, None);
        let err = stderr(&out);
        assert!(out.status.success(), "{extra:?}: {err}");
        assert!(fs::read(&dst).unwrap() == data, "{extra:?}: dst equals src");
        assert!(err.contains("pass 1 stopped at byte 2097152"), "{err}");
        // SRC is read about once: pass 1's 2 MiB, then what differed in it and the rest
        // (or, with --verify, the whole device with its digest checked by blkpatch inline).
        let read = src_bytes_read(&err);
        assert!(
            read <= SIZE as u64 * 12 / 10,
            "{extra:?}: read {read} of {SIZE}: {err}"
        );
        assert!(!err.contains("verified: xxh3-128:"), "no third read: {err}");
    }
    // --two-pass=always does not fall back: both passes, SRC read 1.2x or more.
    let (src, dst, data) = scattered(dir.path());
    let out = blksync(
        &[
            "--two-pass=always",
            "--coarse-block-size",
            COARSE,
            "--stats",
            p(&src),
            p(&dst),
        ],
        None,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(fs::read(&dst).unwrap() == data);
    assert!(src_bytes_read(&err) > SIZE as u64 * 12 / 10, "{err}");
    let out = blksync(&["--two-pass=never", p(&src), p(&dst)], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn blksync_two_pass_stays_two_pass_on_clustered_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = clustered(dir.path());
    let out = blksync(
        &[
            "--two-pass",
            "--coarse-block-size",
            COARSE,
            "--verify",
            "--stats",
            "-v",
            p(&src),
            p(&dst),
        ],
        None,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    assert!(!err.contains("stopped"), "{err}");
    assert!(err.contains("verified: xxh3-128:"), "{err}");
    // Hashes: 1024 coarse, then at most 18 regions of 8 fine blocks, against 8192 fine
    // hashes for a one-pass sync.
    let fine = last_blocks_compared(&err);
    assert!(fine > 0 && fine <= 18 * 8, "{fine}: {err}");
}

/// Stand-ins for blkhash and blkpatch, first on PATH, that fail as $FAIL says and otherwise
/// run the real tool: `pass1` kills pass 1's blkhash (coarse), `hash2` cuts pass 2's hash
/// stream short, `patch` kills blkpatch (SIGKILL).
fn failing_stand_ins(dir: &Path) -> PathBuf {
    let wrap = dir.join("wrap");
    fs::create_dir_all(&wrap).unwrap();
    let real = bin("blkhash").parent().unwrap().to_owned();
    let script = format!(
        r#"#!/bin/sh
real={real}/$(basename "$0")
case "$FAIL:$(basename "$0"):$*" in
pass1:blkhash:*--block-size*) kill -9 $$ ;;
hash2:blkhash:*--block-size*) ;;
hash2:blkhash:*) "$real" "$@" | head -c 200; exit 0 ;;
patch:blkpatch:*) kill -9 $$ ;;
esac
exec "$real" "$@"
"#,
        real = real.display()
    );
    for name in ["blkhash", "blkpatch"] {
        let f = wrap.join(name);
        fs::write(&f, &script).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    wrap
}

#[test]
fn a_failing_or_killed_stage_fails_blksync_on_either_path() {
    let dir = tempfile::tempdir().unwrap();
    let wrap = failing_stand_ins(dir.path());
    let rsh = repo().join("tests/vm/local-rsh");
    let rsh = rsh.to_str().unwrap();
    type Make = fn(&Path) -> (PathBuf, PathBuf, Vec<u8>);
    // The three paths: scattered (pass 2 over the list and the rest, local), scattered with
    // --verify (pass 2 whole, through the remote-shell stand-in), clustered (two passes,
    // --verify, remote-shell stand-in). Pass 1 fails the same way before any of them.
    let paths: [(&str, Make, bool, &[&str]); 3] = [
        ("scattered", scattered, false, &["pass1", "hash2", "patch"]),
        ("scattered", scattered, true, &["hash2", "patch"]),
        ("clustered", clustered, true, &["hash2", "patch"]),
    ];
    for (name, make, verify, fails) in paths {
        let (src, dst, data) = make(dir.path());
        let remote = format!("localhost:{}", dst.display());
        let mut args = vec!["--two-pass", "--coarse-block-size", COARSE];
        if verify {
            args.extend(["--verify", "-e", rsh, p(&src), &remote]);
        } else {
            args.extend([p(&src), p(&dst)]);
        }
        for &fail in fails {
            let says = match fail {
                "pass1" => "pass 1 failed: ",
                "hash2" => "pass 2: failed: blkdiff exited 3",
                _ => "exited 137",
            };
            let out = blksync(&args, Some((&wrap, fail)));
            let err = stderr(&out);
            let what = format!("{name}, verify {verify}, {fail}");
            assert!(
                !matches!(out.status.code(), Some(0)),
                "{what}: exit 0: {err}"
            );
            assert!(err.contains(says), "{what}: {err}");
        }
        // Rerun without the failures: the job finishes.
        let out = blksync(&args, None);
        assert!(out.status.success(), "{name}, rerun: {}", stderr(&out));
        assert!(fs::read(&dst).unwrap() == data, "{name}: dst equals src");
    }
}
