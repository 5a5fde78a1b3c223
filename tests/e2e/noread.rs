//! blkpatch does not make the kernel read the target while writing it (issue 16): 2,000
//! scattered, aligned 4 KiB records into a 256 MiB image file and into a loop device whose
//! page cache was dropped read nothing from storage (`--stats=json` storage_read_bytes, from
//! /proc/self/io).
//!
//! What the count covers: /proc/self/io read_bytes counts every read the process causes,
//! including its own executable's pages (the release binary is tens of MB) and a stdin that
//! is a file. So the binary is run once first (its pages are then cached) and the stream comes
//! through a pipe: what is left is the target.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::{self, pattern, require_loop, run, stderr, Loop};

const SIZE: u64 = 256 << 20;
const RECORDS: u64 = 2000;

/// Record `i`'s block: one in each stride of SIZE / RECORDS, at a varying place.
fn block_of(i: u64) -> u64 {
    let stride = SIZE / 4096 / RECORDS;
    i * stride + (i * 37) % stride
}

/// A patch of RECORDS scattered 4 KiB records (the blocks of `src` listed).
fn scattered_patch(dir: &Path) -> Vec<u8> {
    let src = dir.join("src.img");
    let f = File::create(&src).unwrap();
    f.set_len(SIZE).unwrap();
    let mut list = String::new();
    let data = pattern(4096 * RECORDS as usize, 16);
    for i in 0..RECORDS {
        let block = block_of(i);
        let at = (i * 4096) as usize;
        f.write_all_at(&data[at..at + 4096], block * 4096).unwrap();
        list.push_str(&format!("{} 4096\n", block * 4096));
    }
    let out = run("blkread-chunks", &[src.to_str().unwrap()], list.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// Write back and drop the page cache of `path` (a file or a block device).
fn evict(path: &Path) {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    f.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// A fully written (allocated) image of SIZE bytes.
fn full_image(path: &Path) {
    let chunk = pattern(4 << 20, 99);
    let f = File::create(path).unwrap();
    for i in 0..SIZE / chunk.len() as u64 {
        f.write_all_at(&chunk, i * chunk.len() as u64).unwrap();
    }
    f.sync_all().unwrap();
}

fn storage_read(target: &Path, patch: &[u8], evict_also: &[&Path]) -> u64 {
    for p in evict_also {
        evict(p);
    }
    evict(target);
    let out = run(
        "blkpatch",
        &["--stats=json", target.to_str().unwrap()],
        patch,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let key = "\"storage_read_bytes\":";
    let at = err.find(key).unwrap_or_else(|| panic!("no {key} in {err}")) + key.len();
    err[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad stats: {err}"))
}

#[test]
fn scattered_aligned_records_read_nothing_from_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let patch = scattered_patch(dir.path());
    // Warm run: the binary's pages come into the page cache and stay there.
    let warm = dir.path().join("warm.img");
    File::create(&warm).unwrap().set_len(SIZE).unwrap();
    let out = run("blkpatch", &[warm.to_str().unwrap()], &patch);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = fs::read(common::bin("blkpatch")).unwrap();

    let file = dir.path().join("file.img");
    full_image(&file);
    let n = storage_read(&file, &patch, &[]);
    // A block of file metadata may be read (the inode, an extent block); never the data
    // around the records (that would be at least 2000 pages, 8 MB).
    assert!(
        n <= 64 << 10,
        "image file: blkpatch made the kernel read {n} bytes writing {} bytes",
        RECORDS * 4096
    );
    let (a, b) = (
        fs::read(&file).unwrap(),
        fs::read(dir.path().join("src.img")).unwrap(),
    );
    for i in 0..RECORDS {
        let at = block_of(i) as usize * 4096;
        assert!(
            a[at..at + 4096] == b[at..at + 4096],
            "record {i} not applied"
        );
    }

    let backing = dir.path().join("loop.img");
    full_image(&backing);
    let lo = require_loop(Loop::attach(&backing));
    let n = storage_read(lo.path(), &patch, &[&backing]);
    assert_eq!(
        n,
        0,
        "loop device: blkpatch made the kernel read {n} bytes writing {} bytes",
        RECORDS * 4096
    );
}
