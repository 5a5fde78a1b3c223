//! Memory stays flat as inputs grow (issue 16, issue 12 item 12): a range list of 10 million
//! lines, sorted or not, goes through blkread-chunks under the 64 MiB cap (it took about
//! 160 MB when the list was loaded whole). Peak RSS is measured by GNU time.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::common::{bin, gnu_time_value, pattern};

const CAP_KIB: u64 = 64 << 10;
const LINES: u64 = 10_000_000;

/// Run `sh -c` on `script` with `$1`.. set to `args`; the peak RSS (KiB) of the command GNU
/// time wraps is written to `rss`.
fn sh(script: &str, args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run sh")
}

fn write_list(path: &Path, order: impl Iterator<Item = u64>) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    for i in order {
        writeln!(out, "{} 4096", i * 16).unwrap();
    }
    out.flush().unwrap();
}

fn check_list(dir: &Path, list: &Path, what: &str) {
    let src = dir.join("src.img");
    let dst = dir.join("dst.img");
    let rss = dir.join("rss");
    let _ = fs::remove_file(&dst);
    let out = sh(
        r#"set -e; TMPDIR="$6"; export TMPDIR
/usr/bin/time -f %M -o "$5" "$1" --ranges "$3" "$2" | "$7" "$4""#,
        &[
            &bin("blkread-chunks"),
            &src,
            list,
            &dst,
            &rss,
            dir,
            &bin("blkpatch"),
        ],
    );
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kib = gnu_time_value(&rss);
    assert!(
        kib < CAP_KIB,
        "{what}: blkread-chunks peaked at {kib} KiB on {LINES} lines (cap {CAP_KIB} KiB)"
    );
    // The covered span: every byte up to the last range's end.
    let span = ((LINES - 1) * 16 + 4096) as usize;
    let a = fs::read(&src).unwrap();
    let b = fs::read(&dst).unwrap();
    assert!(a[..span] == b[..span], "{what}: target differs from source");
    // Nothing spilled is left in the temporary directory.
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".blkpipe-"))
        .collect();
    assert!(left.is_empty(), "{what}: temporary files left: {left:?}");
}

#[test]
fn ten_million_range_lines_in_bounded_memory() {
    if !Path::new("/usr/bin/time").exists() {
        panic!("GNU time is required (apt-get install time)");
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let f = File::create(&src).unwrap();
    f.set_len(256 << 20).unwrap();
    // Data in a few places across the listed span; the rest are holes.
    for at in [0u64, 5 << 20, 77 << 20, 159 << 20] {
        f.write_all_at(&pattern(1 << 20, at), at).unwrap();
    }
    drop(f);
    let list = dir.path().join("list");
    write_list(&list, 0..LINES);
    check_list(dir.path(), &list, "sorted list");
    // The same lines in a scattered order: sorted in runs spilled to $TMPDIR, then merged.
    write_list(&list, (0..LINES).map(|i| i * 7_919 % LINES));
    check_list(dir.path(), &list, "unsorted list");
}

/// cowlist on a COW store of 10 million exceptions (the kernel's layout, origin chunks in a
/// scattered order) stays under the cap: the origin and COW chunk numbers are sorted in runs
/// spilled to $TMPDIR (it held 16 bytes per exception, 160 MB here, before). The list it
/// writes is sorted, and covers every exception once.
#[test]
fn cowlist_of_ten_million_exceptions_in_bounded_memory() {
    use blkpipe_meta::snapshot::StoreHeader;
    use blkpipe_testkit::image;
    const N: u64 = 10_000_000;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cow = dir.path().join("cow");
    let h = StoreHeader::parse(&image::header_bytes(true, 8)).unwrap();
    let (cb, per_area) = (h.chunk_bytes(), h.exceptions_per_area());
    let origin_chunks = (4 * N).next_power_of_two();
    let f = File::create(&cow).unwrap();
    f.set_len(image::min_chunks(8, N) * cb).unwrap();
    f.write_all_at(&image::header_bytes(true, 8), 0).unwrap();
    // One write per metadata area; the data chunks between them stay holes.
    let mut area = vec![0u8; cb as usize];
    for a in 0..N / per_area + 1 {
        // The last area is not full: the store ends there.
        area.fill(0);
        for i in a * per_area..((a + 1) * per_area).min(N) {
            let old = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995) & (origin_chunks - 1);
            let e = ((i - a * per_area) * 16) as usize;
            area[e..e + 8].copy_from_slice(&old.to_le_bytes());
            area[e + 8..e + 16].copy_from_slice(&h.data_chunk(i).unwrap().to_le_bytes());
        }
        f.write_all_at(&area, h.area_chunk(a).unwrap() * cb)
            .unwrap();
    }
    drop(f);
    let (list, rss, stats) = (
        dir.path().join("list"),
        dir.path().join("rss"),
        dir.path().join("stats"),
    );
    // 1 TiB: past what a bitmap of the origin covers, so the chunks go through sorted runs.
    let origin = (1u64 << 40).max(origin_chunks * cb).to_string();
    let out = sh(
        r#"TMPDIR="$5"; export TMPDIR
/usr/bin/time -f %M -o "$3" "$1" --origin-size "$6" --stats=json --cow "$2" >"$4" 2>"$7""#,
        &[
            &bin("cowlist"),
            &cow,
            &rss,
            &list,
            dir.path(),
            Path::new(&origin),
            &stats,
        ],
    );
    let err = fs::read_to_string(&stats).unwrap_or_default();
    assert!(out.status.success(), "cowlist: {err}");
    let kib = gnu_time_value(&rss);
    assert!(
        kib < CAP_KIB,
        "cowlist peaked at {kib} KiB on {N} exceptions (cap {CAP_KIB} KiB)"
    );
    assert!(err.contains(&format!("\"data_bytes\":{}", N * cb)), "{err}");
    // Sorted, not overlapping, and one line per range.
    let text = fs::read_to_string(&list).unwrap();
    let (mut end, mut lines, mut bytes) = (0u64, 0u64, 0u64);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (o, l) = line.split_once(' ').unwrap();
        let (o, l): (u64, u64) = (o.parse().unwrap(), l.parse().unwrap());
        assert!(
            o > end || (lines == 0 && o >= end),
            "line {lines}: {line} after end {end}"
        );
        (end, lines, bytes) = (o + l, lines + 1, bytes + l);
    }
    assert_eq!(bytes, N * cb);
    assert!(err.contains(&format!("\"records\":{lines}")), "{err}");
    let left = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".blkpipe-"))
        .count();
    assert_eq!(left, 0, "temporary files left");
}
