//! Memory stays flat as inputs grow (issue 16, issue 12 item 12): a range list of 10 million
//! lines, sorted or not, goes through blkread-chunks under the 64 MiB cap (it took about
//! 160 MB when the list was loaded whole). Peak RSS is measured by GNU time.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::common::{bin, pattern};

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
    let kib: u64 = fs::read_to_string(&rss)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("GNU time wrote the peak RSS");
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
