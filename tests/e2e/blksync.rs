//! shell/blksync on this machine: local mode (DST without HOST:) and the documented local
//! remote-shell stand-in (tests/vm/local-rsh), on image files, with the built tools first on
//! PATH.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{pattern, tools_path};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn blksync(args: &[&str]) -> Output {
    Command::new(repo().join("shell/blksync"))
        .args(args)
        .env("PATH", tools_path())
        .output()
        .expect("run shell/blksync")
}

fn images(dir: &Path) -> (String, String, Vec<u8>) {
    let src = dir.join("src.img");
    let dst = dir.join("dst.img");
    let mut data = pattern(4 << 20, 11);
    data[1 << 20..(1 << 20) + 8192].fill(0);
    fs::write(&src, &data).unwrap();
    let mut old = data.clone();
    old[12345..20000].copy_from_slice(&pattern(20000 - 12345, 12));
    old[3 << 20..(3 << 20) + 4096].fill(7);
    fs::write(&dst, &old).unwrap();
    (
        src.to_str().unwrap().to_owned(),
        dst.to_str().unwrap().to_owned(),
        data,
    )
}

#[test]
fn blksync_syncs_two_local_images_without_a_remote_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = images(dir.path());
    let out = blksync(&["--verify", "--stats", &src, &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "blksync: {err}");
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    // Only what differed was sent: two regions of about 12 KiB.
    assert!(err.contains("blkdiff: data bytes:"), "{err}");
    // A missing image file is created, as on a remote host.
    let fresh = dir.path().join("new.img");
    let out = blksync(&["--zstd", &src, fresh.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(&fresh).unwrap() == data);
    // A failing stage is named: the destination directory does not exist.
    let out = blksync(&[&src, "/nonexistent-dir/x.img"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("blksync: failed: blkhash (/nonexistent-dir/x.img)"),
        "{err}"
    );
}

#[test]
fn blksync_through_the_local_remote_shell_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = images(dir.path());
    let rsh = repo().join("tests/vm/local-rsh");
    let remote = format!("localhost:{dst}");
    let out = blksync(&[
        "-e",
        rsh.to_str().unwrap(),
        "--progress=always",
        &src,
        &remote,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "blksync -e local-rsh: {err}");
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    // --progress=always reaches blkdiff, whose last line has the total.
    assert!(err.contains("blkdiff: 4.0 MiB of 4.0 MiB (100%)"), "{err}");
}

#[test]
fn blksync_two_pass_locally_and_through_the_remote_shell_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, data) = images(dir.path());
    let out = blksync(&["--two-pass", "--verify", "--stats", "-v", &src, &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "blksync --two-pass: {err}");
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    // Pass 1 listed the two changed MiB; pass 2 read only those (2 MiB of the 4 MiB source).
    assert!(err.contains("pass 1: 2 regions differ"), "{err}");
    assert!(err.contains("bytes read from devices: 2097152"), "{err}");
    assert!(err.contains("verified: xxh3-128:"), "{err}");
    // Through the remote shell stand-in, into a missing file, with a smaller coarse block.
    let fresh = dir.path().join("fresh.img");
    let rsh = repo().join("tests/vm/local-rsh");
    let remote = format!("localhost:{}", fresh.display());
    let out = blksync(&[
        "-e",
        rsh.to_str().unwrap(),
        "--two-pass",
        "--coarse-block-size",
        "65536",
        "--verify",
        &src,
        &remote,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "blksync -e local-rsh --two-pass: {err}"
    );
    assert!(fs::read(&fresh).unwrap() == data, "fresh equals src");
    // Every region differs: pass 2 is a whole-device one-pass sync, verified by blkpatch
    // inline (no separate digest pass).
    fs::write(&dst, pattern(data.len(), 77)).unwrap();
    let out = blksync(&["--two-pass", "--verify", "-v", &src, &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "blksync --two-pass, all differ: {err}"
    );
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    assert!(err.contains("pass 2 hashes the whole device"), "{err}");
    assert!(!err.contains("verified: xxh3-128:"), "{err}");
    // A bad coarse block size is a usage error; a pass-1 failure is named.
    let out = blksync(&["--two-pass", "--coarse-block-size", "1000", &src, &dst]);
    assert_eq!(out.status.code(), Some(2));
    let out = blksync(&["--two-pass", &src, dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("pass 1 failed"), "{err}");
}

#[test]
fn blksync_changed_sends_only_the_listed_regions_and_verify_catches_a_short_list() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let mut data = pattern(4 << 20, 21);
    fs::write(&dst, &data).unwrap();
    // Written while the copy was away: 8 KiB at 1 MiB and 4 KiB at 3 MiB.
    data[1 << 20..(1 << 20) + 8192].copy_from_slice(&pattern(8192, 22));
    data[3 << 20..(3 << 20) + 4096].copy_from_slice(&pattern(4096, 23));
    fs::write(&src, &data).unwrap();
    let list = dir.path().join("changed");
    fs::write(
        &list,
        "# blkranges v1 size=4194304\n1048576 8192\n3145728 4096\n",
    )
    .unwrap();
    let (s, d, l) = (
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        list.to_str().unwrap(),
    );
    let out = blksync(&["--changed", l, "--verify", "--stats", s, d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "blksync --changed: {err}");
    assert!(fs::read(&dst).unwrap() == data, "dst equals src");
    assert!(err.contains("bytes read from devices: 12288"), "{err}");
    // A write the list does not name: --verify says the digests differ (exit 6).
    data[2 << 20] ^= 1;
    fs::write(&src, &data).unwrap();
    let out = blksync(&["--changed", l, "--verify", s, d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("--verify:"), "{err}");
    // --changed with --two-pass is a usage error.
    let out = blksync(&["--changed", l, "--two-pass", s, d]);
    assert_eq!(out.status.code(), Some(2));
}
