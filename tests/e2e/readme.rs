//! Runs the README's offline recipe block as written, in a directory holding `src.img` and
//! `dst.img`, with the built tools first on PATH, so the README cannot drift from the tools.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{bash, bin, pattern, stdout_ok};

/// The first ```sh block after the line containing `marker`.
fn block_after(readme: &str, marker: &str) -> String {
    let start = readme.find(marker).expect("recipe marker in README");
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("sh block") + 6;
    let close = rest[open..].find("```").expect("block end");
    rest[open..open + close].to_owned()
}

#[test]
fn offline_recipe_runs_as_written() {
    let readme = include_str!("../../README.md");
    let script = block_after(readme, "Save a patch to a file");
    let dir = tempfile::tempdir().unwrap();
    let src = pattern(2 << 20, 1);
    let dst = pattern(2 << 20, 2);
    fs::write(dir.path().join("src.img"), &src).unwrap();
    fs::write(dir.path().join("dst.img"), &dst).unwrap();
    stdout_ok(
        bash(&script).current_dir(dir.path()),
        &format!("recipe failed:\n{script}"),
    );
    // The recipe applies the delta and then its undo: dst.img is back to where it was, and
    // the saved files exist.
    assert_eq!(fs::read(dir.path().join("dst.img")).unwrap(), dst);
    for f in ["delta.patch.zst", "undo.patch"] {
        assert!(Path::new(&dir.path().join(f)).exists(), "{f} missing");
    }
    // The delta itself carries exactly the source's bytes in those ranges.
    let mut want = dst.clone();
    want[..4096].copy_from_slice(&src[..4096]);
    want[1048576..1048576 + 65536].copy_from_slice(&src[1048576..1048576 + 65536]);
    let applied = Command::new(bin("blkpatch"))
        .args(["--input", "delta.patch.zst", "dst.img"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(applied.status.success());
    assert_eq!(fs::read(dir.path().join("dst.img")).unwrap(), want);
}
