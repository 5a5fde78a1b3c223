//! Holes of sparse image files are not read (issue 16): blkhash and blkdiff find a sparse
//! file's data with SEEK_DATA and hash its holes as zeros without reading them. Their output
//! is byte-identical to a full read: the same file through a loop device (where SEEK_DATA is
//! not used: a block device is all data) and the same file with BLKPIPE_NO_SKIP_HOLES set,
//! unkeyed and keyed; the image's data is scattered, so most 4 MiB chunks are partly holes.
//! And with the file's page cache dropped, the process reads from storage about the data it
//! holds, not the device's size (GNU time's %I: file-system inputs of the reaped child).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{bin, gnu_time_value, pattern, require_loop, stderr, Loop, Rng};

/// Not a multiple of 4 KiB (a short last block), but of 512 (a loop device's size is).
const SIZE: u64 = (512 << 20) + 4096 * 3 + 512;

/// A sparse image of SIZE bytes with about 4 MiB of data in 300 pieces at odd places (some
/// unaligned, one across the end of a 4 MiB chunk, one at the very end); returns its data
/// bytes.
fn sparse_image(path: &Path, seed: u64) -> u64 {
    let f = File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut rng = Rng(seed);
    let mut data = 0;
    let mut put = |at: u64, len: usize, s: u64| {
        f.write_all_at(&pattern(len, s), at).unwrap();
        data += len as u64;
    };
    for i in 0..300 {
        let at = rng.next() % (SIZE - (64 << 10));
        let len = 1 + rng.below(28 << 10);
        put(at, len, seed + i);
    }
    put((4 << 20) - 1000, 3000, seed + 1000);
    put(SIZE - 10, 10, seed + 1001);
    f.sync_all().unwrap();
    data
}

/// Drop the page cache of `path`.
fn evict(path: &Path) {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// Run `tool args` under GNU time with `stdin` from a file (or nothing) and `env` set;
/// returns the output and the bytes it read from storage (%I, in 512-byte units).
fn timed(
    dir: &Path,
    tool: &str,
    args: &[&str],
    stdin: Option<&Path>,
    env: Option<&str>,
) -> (Output, u64) {
    let io = dir.join("io");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%I").arg("-o").arg(&io).arg(bin(tool));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(File::open(p).unwrap()),
        None => Stdio::null(),
    });
    if let Some(var) = env {
        cmd.env(var, "1");
    }
    let out = cmd.output().expect("run /usr/bin/time");
    assert!(out.status.success(), "{tool} {args:?}: {}", stderr(&out));
    (out, gnu_time_value(&io) * 512)
}

#[test]
fn hash_and_diff_skip_holes_with_the_output_of_a_full_read() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("src.img");
    let old = dir.path().join("old.img");
    let data = sparse_image(&src, 11);
    sparse_image(&old, 12);
    let lo = require_loop(Loop::attach(&src));
    let (s, l) = (src.to_str().unwrap(), lo.path().to_str().unwrap());

    // `run` on the loop device (a full read), on the file without and (cache dropped) with
    // hole skipping: the same output each time. Returns it and what the last run read. The
    // full reads come first, so the binaries' pages are cached for the measured run.
    let same_output = |tool: &str, opts: &[&str], stdin: Option<&Path>| {
        let run = |dev: &str, env| timed(dir.path(), tool, &[opts, &[dev]].concat(), stdin, env);
        let full = run(l, None).0.stdout;
        assert!(
            run(s, Some("BLKPIPE_NO_SKIP_HOLES")).0.stdout == full,
            "{tool}"
        );
        evict(&src);
        let (skip, read) = run(s, None);
        assert!(
            skip.stdout == full,
            "{tool}: skipping holes changed the output"
        );
        (full, read)
    };
    // Unkeyed and keyed (the holes' blocks take the keyed zero block hash).
    let key = dir.path().join("key");
    std::fs::write(&key, pattern(32, 5)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for keyed in [&[][..], &["--key", key.to_str().unwrap()][..]] {
        let (_, read) = same_output("blkhash", &[keyed, &["--seed", "9"]].concat(), None);
        assert!(
            read <= data + (8 << 20),
            "blkhash read {read} bytes from storage for {data} bytes of data in {SIZE}"
        );

        // blkdiff: the patch of a sparse source against an old copy's hashes.
        let hashes = dir.path().join("old.hashes");
        let old = [keyed, &["--seed", "9", old.to_str().unwrap()]].concat();
        std::fs::write(
            &hashes,
            timed(dir.path(), "blkhash", &old, None, None).0.stdout,
        )
        .unwrap();
        let id = "--stream-id=0123456789abcdef0123456789abcdef";
        let (full, read) = same_output("blkdiff", &[keyed, &[id]].concat(), Some(&hashes));
        assert!(full.len() as u64 > data, "the patch carries the data");
        assert!(read <= data + (8 << 20), "blkdiff read {read} bytes");
    }
}
