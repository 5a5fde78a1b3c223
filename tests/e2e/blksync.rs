//! shell/blksync on this machine: local mode (DST without HOST:) and the documented local
//! remote-shell stand-in (tests/vm/local-rsh), on image files, with the built tools first on
//! PATH.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{bin, pattern};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn blksync(args: &[&str]) -> Output {
    let tools: PathBuf = bin("blkpatch").parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(repo().join("shell/blksync"))
        .args(args)
        .env("PATH", path)
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
