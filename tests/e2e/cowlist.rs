//! End-to-end tests of `cowlist`, run as a real process: COW images built the way the kernel
//! lays them out, thin_delta and era_invalidate XML, `--data` applied with `blkpatch`, and
//! the command-line contract. The real-kernel fixtures of `tests/fixtures/dm/` are checked
//! too when present; the live-VM test is `tests/vm/cowlist-live.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use blkpipe_testkit::image;

use crate::common::{assert_stderr_has, bin, run, stderr};

fn cowlist(args: &[&str]) -> Output {
    run("cowlist", args, b"")
}

/// `cowlist --cow COW EXTRA..`.
fn cowlist_cow(cow: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--cow", cow.to_str().unwrap()];
    args.extend_from_slice(extra);
    cowlist(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// Chunk `c` of the snapshot's view (generation 0) or of the current origin (generation 1).
fn content(c: u64, gen: u8, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (c as u8).wrapping_mul(13) ^ (i as u8).wrapping_mul(7) ^ gen.wrapping_mul(0x5a);
    }
}

#[test]
fn lists_changed_chunks_sorted_and_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let cow = write_file(
        dir.path(),
        "cow",
        &image::build(8, &[9, 2, 3, 4, 30], None, None),
    );
    let out = cowlist_cow(&cow, &["--origin-size", "128K", "--stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "# blkranges v1 size=131072 chunk=4096\n8192 12288\n36864 4096\n122880 4096\n"
    );
    let err = stderr(&out);
    for want in [
        "exceptions:       5",
        "metadata areas:   1",
        "ranges:           3",
        "bytes to send:    20480",
        "chunk size:       4096",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // The origin size can come from a device or image file.
    let origin = write_file(dir.path(), "origin", &vec![0u8; 131072]);
    let out2 = cowlist_cow(&cow, &["--origin", origin.to_str().unwrap()]);
    assert_eq!(stdout(&out2), stdout(&out));
    // And the list feeds blkread-chunks as is.
    let chunks = run("blkread-chunks", &[origin.to_str().unwrap()], &out.stdout);
    assert!(chunks.status.success(), "{}", stderr(&chunks));
}

#[test]
fn many_areas_and_a_full_last_area() {
    let dir = tempfile::tempdir().unwrap();
    // 512-byte chunks: 32 exceptions per area; 96 exceptions fill three areas exactly.
    let old: Vec<u64> = (0..96).map(|i| (i * 37) % 101).collect();
    let cow = write_file(dir.path(), "cow", &image::build(1, &old, None, None));
    let out = cowlist_cow(&cow, &["--stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut listed = Vec::new();
    for line in stdout(&out).lines().skip(1) {
        let (o, l) = line.split_once(' ').unwrap();
        let (o, l): (u64, u64) = (o.parse().unwrap(), l.parse().unwrap());
        listed.extend(o / 512..(o + l) / 512);
    }
    let mut want = old.clone();
    want.sort_unstable();
    assert_eq!(listed, want);
    assert_stderr_has(&out, "metadata areas:   4");
}

#[test]
fn overflowed_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = image::build(8, &[1, 2], None, None);
    img[4..8].copy_from_slice(&0u32.to_le_bytes());
    let cow = write_file(dir.path(), "cow", &img);
    let out = cowlist_cow(&cow, &[]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("incomplete") && err.contains("full sync"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn corrupt_store_is_one_line_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = image::build(8, &[1, 2, 3], None, None);
    // Entry 2 of area 0 claims a COW chunk far past the end of the image.
    let at = 4096 + 2 * 16 + 8;
    img[at..at + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let cow = write_file(dir.path(), "cow", &img);
    let out = cowlist_cow(&cow, &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("cowlist: exception store corrupt: area 0 entry 2:"),
        "{err}"
    );
    // An old chunk past the origin, too.
    let img = image::build(8, &[1, 2, 40], None, None);
    let cow = write_file(dir.path(), "cow2", &img);
    let out = cowlist_cow(&cow, &["--origin-size", "40K"]);
    assert_eq!(out.status.code(), Some(3));
    assert_stderr_has(&out, "area 0 entry 2: old_chunk 40");
    // Truncated image: the store runs past its end.
    let img = image::build(1, &(0..32).collect::<Vec<u64>>(), None, None);
    let cow = write_file(dir.path(), "cow3", &img[..img.len() - 512]);
    let out = cowlist_cow(&cow, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // Not a COW device at all.
    let cow = write_file(dir.path(), "cow4", &[0x41u8; 8192]);
    let out = cowlist_cow(&cow, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert_stderr_has(&out, "magic");
}

/// `cowlist --data` applied with blkpatch to the origin gives the snapshot byte for byte.
#[test]
fn data_rolls_the_origin_back_to_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cb = 4096usize;
    let chunks = 64u64;
    let changed = [63u64, 0, 1, 2, 17, 40, 41];
    let cow = image::build(8, &changed, None, Some(&|old, buf| content(old, 0, buf)));
    let mut snap = vec![0u8; chunks as usize * cb];
    let mut origin = snap.clone();
    for c in 0..chunks {
        let at = c as usize * cb;
        content(c, 0, &mut snap[at..at + cb]);
        content(
            c,
            if changed.contains(&c) { 1 } else { 0 },
            &mut origin[at..at + cb],
        );
    }
    let cow = write_file(dir.path(), "cow", &cow);
    let origin_path = write_file(dir.path(), "origin", &origin);
    let out = cowlist(&[
        "--data",
        "--cow",
        cow.to_str().unwrap(),
        "--origin",
        origin_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let applied = run("blkpatch", &[origin_path.to_str().unwrap()], &out.stdout);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(
        fs::read(&origin_path).unwrap() == snap,
        "origin + view != snapshot"
    );
    // --data needs the origin size.
    let out = cowlist(&["--data", "--cow", cow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_stderr_has(&out, "origin size");
}

const THIN: &str = r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1024">
  <diff left="1" right="2">
    <different begin="2" length="2"/>
    <same begin="4" length="4"/>
    <right_only begin="8" length="1"/>
    <left_only begin="20" length="1"/>
  </diff>
</superblock>
"#;

#[test]
fn thin_delta_and_era_xml() {
    let dir = tempfile::tempdir().unwrap();
    let thin = write_file(dir.path(), "thin.xml", THIN.as_bytes());
    let out = cowlist(&["--thin-delta", thin.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = 65536;
    assert_eq!(
        stdout(&out),
        format!(
            "# blkranges v1 chunk={b}\n{} {}\n{} {}\n{} {}\n",
            2 * b,
            2 * b,
            8 * b,
            b,
            20 * b,
            b
        )
    );
    // From stdin, with an origin size for the header.
    let out2 = run(
        "cowlist",
        &["--thin-delta", "-", "--origin-size", "64M"],
        THIN.as_bytes(),
    );
    assert!(stdout(&out2).starts_with("# blkranges v1 size=67108864 chunk=65536\n"));

    let era = "<blocks>\n  <range begin=\"0\" end=\"3\"/>\n  <block block=\"10\"/>\n</blocks>\n";
    let out = run(
        "cowlist",
        &["--era-invalidate", "-", "--block-size", "128s"],
        era.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "# blkranges v1 chunk=65536\n0 196608\n655360 65536\n"
    );
    // era XML has no block size.
    let out = run("cowlist", &["--era-invalidate", "-"], era.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--block-size"));
    // Bad XML: exit 3, one line with the position.
    let out = run(
        "cowlist",
        &["--era-invalidate", "-", "--block-size", "4K"],
        b"<blocks>\n<block blok=\"1\"/>\n</blocks>\n",
    );
    assert_eq!(out.status.code(), Some(3));
    assert_stderr_has(&out, "line 2, column 1");
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn contract() {
    let dir = tempfile::tempdir().unwrap();
    let help = cowlist(&["--help"]);
    assert!(help.status.success());
    let h = stdout(&help);
    for want in [
        "writable snapshot",
        "Exit codes",
        "--thin-delta",
        "--data",
        "full sync",
    ] {
        assert!(h.contains(want), "--help lacks {want}");
    }
    assert_eq!(cowlist(&["--no-such-option"]).status.code(), Some(2));
    assert_eq!(cowlist(&[]).status.code(), Some(2));
    assert_eq!(cowlist(&["vg/snap", "--cow", "x"]).status.code(), Some(2));
    let missing = cowlist(&["--cow", dir.path().join("nothere").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(4), "{}", stderr(&missing));
    let isdir = cowlist(&["--cow", dir.path().to_str().unwrap()]);
    assert_eq!(isdir.status.code(), Some(5), "{}", stderr(&isdir));
    let isdir = cowlist(&["--thin-delta", dir.path().to_str().unwrap()]);
    assert_eq!(isdir.status.code(), Some(5), "{}", stderr(&isdir));
    // A name that cannot be resolved (no such dm device, or no device-mapper at all).
    let out = cowlist(&["nosuchvg/nosuchsnap"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(cowlist(&["a/b/c"]).status.code(), Some(2));
}

#[test]
fn broken_pipe_is_quiet_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<u64> = (0..20_000).map(|i| i * 2).collect();
    let cow = write_file(dir.path(), "cow", &image::build(8, &old, None, None));
    // The reader is gone before cowlist starts, so even output that would fit in the pipe
    // meets a broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin("cowlist"))
        .args(["--cow", cow.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- Real-kernel fixtures: tests/fixtures/dm, made in the VM by tests/fixtures/dm/make-fixtures.

const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dm")
        .join(name)
}

/// Decompress `NAME.raw.zst` into `dir`.
fn unzstd(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let st = Command::new("zstd")
        .args(["-dqf", "-o"])
        .arg(&out)
        .arg(fixture(&format!("{name}.zst")))
        .status()
        .expect("zstd (apt-get install zstd)");
    assert!(st.success(), "zstd -d {name}.zst");
    out
}

/// Writes of a manifest: (device, offset, length, stamp).
fn manifest(scenario: &str) -> Vec<(String, u64, u64, String)> {
    fs::read_to_string(fixture(&format!("{scenario}.writes.txt")))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].to_owned(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].to_owned(),
            )
        })
        .collect()
}

/// Chunks of `chunk` bytes touched by the manifest's writes whose stamp `pick` accepts.
fn written(
    scenario: &str,
    chunk: u64,
    pick: impl Fn(&str, &str) -> bool,
) -> std::collections::BTreeSet<u64> {
    let mut set = std::collections::BTreeSet::new();
    for (dev, off, len, stamp) in manifest(scenario) {
        if pick(&dev, &stamp) {
            set.extend(off / chunk..(off + len).div_ceil(chunk));
        }
    }
    set
}

/// Chunks listed by a range list (checking its header's chunk size).
fn listed(list: &str, chunk: u64) -> std::collections::BTreeSet<u64> {
    let mut lines = list.lines();
    let header = lines.next().unwrap();
    assert!(header.ends_with(&format!(" chunk={chunk}")), "{header}");
    let mut set = std::collections::BTreeSet::new();
    for l in lines {
        let (o, n) = l.split_once(' ').unwrap();
        let (o, n): (u64, u64) = (o.parse().unwrap(), n.parse().unwrap());
        set.extend(o / chunk..(o + n).div_ceil(chunk));
    }
    set
}

fn stamp_in<'a>(stamps: &'a [&'a str]) -> impl Fn(&str, &str) -> bool + 'a {
    move |_, s| stamps.contains(&s)
}

/// Roll the origin dump back with `cowlist --data` and blkpatch; compare with the view dump.
fn check_rollback(dir: &Path, scenario: &str, cow: &Path, origin_size: u64) {
    let origin = unzstd(dir, &format!("{scenario}.origin.raw"));
    let snap = unzstd(dir, &format!("{scenario}.snap.raw"));
    let size = format!("{origin_size}");
    let out = cowlist(&[
        "--data",
        "--cow",
        cow.to_str().unwrap(),
        "--origin-size",
        &size,
    ]);
    assert!(out.status.success(), "{scenario}: {}", stderr(&out));
    let applied = run("blkpatch", &[origin.to_str().unwrap()], &out.stdout);
    assert!(applied.status.success(), "{scenario}: {}", stderr(&applied));
    assert!(
        fs::read(&origin).unwrap() == fs::read(&snap).unwrap(),
        "{scenario}: origin + cowlist --data != snapshot view"
    );
}

/// Classic snapshots of 4 KiB (three full metadata areas and a fourth), 64 KiB and 512 KiB
/// chunks: exactly the written chunks, the kernel's exception count, and a byte-exact rollback.
#[test]
fn fixtures_classic_snapshots() {
    for (scenario, chunk) in [
        ("snap4k", 4096u64),
        ("snap64k", 65536),
        ("snap512k", 524288),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cow = unzstd(dir.path(), &format!("{scenario}.cow.raw"));
        let out = cowlist_cow(&cow, &["--origin-size", "32M", "--stats"]);
        assert!(out.status.success(), "{scenario}: {}", stderr(&out));
        let list = stdout(&out);
        assert!(list.starts_with(&format!("# blkranges v1 size={} chunk={chunk}\n", 32 * MIB)));
        let want = written(scenario, chunk, |_, s| s != "base");
        assert_eq!(
            listed(&list, chunk),
            want,
            "{scenario}: listed != written chunks"
        );
        // The exception count agrees with the independent decoder's summary.
        let summary = fs::read_to_string(fixture(&format!("{scenario}.cow-summary.txt"))).unwrap();
        let n = summary
            .lines()
            .find_map(|l| l.strip_prefix("exceptions: "))
            .unwrap();
        assert!(
            stderr(&out).contains(&format!("exceptions:       {n}\n")),
            "{scenario}: {}",
            stderr(&out)
        );
        check_rollback(dir.path(), scenario, &cow, 32 * MIB);
    }
}

#[test]
fn fixture_overflowed_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cow = unzstd(dir.path(), "overflow.cow.raw");
    let out = cowlist_cow(&cow, &["--origin-size", "32M"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "full sync");
    assert!(out.stdout.is_empty());
}

/// A writable snapshot lists every chunk written to either device (the superset rule), and
/// --data still restores the snapshot's view.
#[test]
fn fixture_writable_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cow = unzstd(dir.path(), "writable.cow.raw");
    let out = cowlist_cow(&cow, &["--origin-size", "32M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = listed(&stdout(&out), 65536);
    let origin_writes = written("writable", 65536, |d, s| s != "base" && d.contains("/o"));
    let all_writes = written("writable", 65536, |_, s| s != "base");
    assert!(
        got.is_superset(&origin_writes),
        "origin writes missing: {got:?}"
    );
    assert_eq!(
        got, all_writes,
        "every chunk written to origin or snapshot, nothing else"
    );
    assert!(
        got.len() > origin_writes.len(),
        "snapshot-only chunks are listed too"
    );
    check_rollback(dir.path(), "writable", &cow, 32 * MIB);
}

/// thin_delta XML between the thin snapshots and the thin volume: exactly the blocks written
/// in between (64 KiB pool blocks), simple and verbose output alike.
#[test]
fn fixture_thin_delta() {
    let cases: [(&str, &[&str]); 4] = [
        ("thin.delta-tsnap1-tsnap2.xml", &["w0", "w1", "w2", "w3"]),
        (
            "thin.delta-verbose-tsnap1-tsnap2.xml",
            &["w0", "w1", "w2", "w3"],
        ),
        ("thin.delta-tsnap2-thin.xml", &["w4", "w5", "w6"]),
        (
            "thin.delta-tsnap1-thin.xml",
            &["w0", "w1", "w2", "w3", "w4", "w5", "w6"],
        ),
    ];
    for (xml, stamps) in cases {
        let out = cowlist(&["--thin-delta", fixture(xml).to_str().unwrap()]);
        assert!(out.status.success(), "{xml}: {}", stderr(&out));
        assert_eq!(
            listed(&stdout(&out), 65536),
            written("thin", 65536, stamp_in(stamps)),
            "{xml}"
        );
    }
}

/// era_invalidate XML after each checkpoint: the era blocks (64 KiB, from the era table
/// `era META ORIGIN 128`) written since.
#[test]
fn fixture_era_invalidate() {
    let table = fs::read_to_string(fixture("era.dmsetup-table.txt")).unwrap();
    let sectors = table
        .lines()
        .find(|l| l.contains(" era "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap();
    assert_eq!(sectors, "128");
    let cases: [(&str, &[&str]); 3] = [
        (
            "era.invalidate-since-1.xml",
            &["w0", "w1", "w2", "w3", "w4", "w5"],
        ),
        ("era.invalidate-since-2.xml", &["w2", "w3", "w4", "w5"]),
        ("era.invalidate-since-3.xml", &["w4", "w5"]),
    ];
    for (xml, stamps) in cases {
        let block = format!("{sectors}s");
        let out = cowlist(&[
            "--era-invalidate",
            fixture(xml).to_str().unwrap(),
            "--block-size",
            &block,
        ]);
        assert!(out.status.success(), "{xml}: {}", stderr(&out));
        assert_eq!(
            listed(&stdout(&out), 65536),
            written("era", 65536, stamp_in(stamps)),
            "{xml}"
        );
    }
}
