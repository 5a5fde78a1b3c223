//! `blkmerge`: combined patch streams apply like the chain they replace; undo chains combine.

use std::fs;
use std::path::Path;

use crate::common::{pattern, run, stderr};

fn chunks(src: &Path, ranges: &str) -> Vec<u8> {
    let out = run(
        "blkread-chunks",
        &[src.to_str().unwrap()],
        ranges.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

fn apply(target: &Path, stream: &[u8], extra: &[&str]) {
    let mut args = extra.to_vec();
    args.push(target.to_str().unwrap());
    let out = run("blkpatch", &args, stream);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn merged_chain_equals_the_chain_and_merged_undo_restores() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let size = 1usize << 20;
    // Three versions of a source, each differing in overlapping, unaligned ranges.
    let ranges = [
        "0 8192\n100000 50000\n",
        "4096 8192\n120000 1000\n900000 4096\n",
        "0 1\n140000 20000\n1040000 8576\n",
    ];
    let mut patches = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let mut bytes = pattern(size, 20 + i as u64);
        bytes[140000..150000].fill(0); // zero runs too
        fs::write(p(&format!("v{i}.img")), &bytes).unwrap();
        let stream = chunks(&p(&format!("v{i}.img")), r);
        fs::write(p(&format!("d{i}.patch")), &stream).unwrap();
        patches.push(stream);
    }
    let base = pattern(size, 99);
    // One after another, with undo files.
    fs::write(p("chain.img"), &base).unwrap();
    for (i, stream) in patches.iter().enumerate() {
        let undo = p(&format!("u{i}.patch"));
        apply(&p("chain.img"), stream, &["--undo", undo.to_str().unwrap()]);
    }
    // Merged.
    let args: Vec<String> = (0..3)
        .map(|i| p(&format!("d{i}.patch")).display().to_string())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let merged = run("blkmerge", &args, b"");
    assert!(merged.status.success(), "{}", stderr(&merged));
    fs::write(p("merged.img"), &base).unwrap();
    apply(&p("merged.img"), &merged.stdout, &[]);
    assert_eq!(
        fs::read(p("merged.img")).unwrap(),
        fs::read(p("chain.img")).unwrap()
    );

    // Undo files combined newest first restore the base in one go.
    let undos: Vec<String> = (0..3)
        .rev()
        .map(|i| p(&format!("u{i}.patch")).display().to_string())
        .collect();
    let undos: Vec<&str> = undos.iter().map(String::as_str).collect();
    let undo_all = run("blkmerge", &undos, b"");
    assert!(undo_all.status.success(), "{}", stderr(&undo_all));
    apply(&p("chain.img"), &undo_all.stdout, &[]);
    assert_eq!(fs::read(p("chain.img")).unwrap(), base);

    // A truncated input: non-zero, and no end record, so blkpatch downstream fails too.
    let d1 = &patches[1];
    fs::write(p("cut.patch"), &d1[..d1.len() - 10]).unwrap();
    let cut = p("cut.patch").display().to_string();
    let out = run("blkmerge", &[args[0], &cut, args[2]], b"");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cut.patch"), "{}", stderr(&out));
    let applied = run("blkpatch", &["--dry-run"], &out.stdout);
    assert_eq!(applied.status.code(), Some(3));
}
