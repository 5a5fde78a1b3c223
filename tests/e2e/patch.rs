//! End-to-end tests of the offline path: `blkread-chunks | blkpatch`, run as real processes
//! joined by real pipes, on image files and loop devices.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use blkpipe_format::patch::{PatchReader, RecordData};

use crate::common::{
    assert_stderr_has, bin, pattern, pattern_image, require_loop, run, run_ok, spawn_fed, stderr,
    write_target, Holder, Loop,
};

/// `blkread-chunks SRC < ranges` as bytes.
fn read_chunks(src: &Path, ranges: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = extra.to_vec();
    args.push(src.to_str().unwrap());
    run_ok("blkread-chunks", &args, ranges.as_bytes())
}

fn patch(target: &Path, stream: &[u8], extra: &[&str]) -> Output {
    let mut args = extra.to_vec();
    args.push(target.to_str().unwrap());
    run("blkpatch", &args, stream)
}

/// Apply `stream`'s verified records to `image` in-process: the reference result.
fn reference_apply(image: &mut [u8], stream: &[u8], upto_records: usize) {
    let mut r = PatchReader::new(stream).unwrap();
    for _ in 0..upto_records {
        let rec = r.next_record().unwrap().unwrap();
        let range = rec.offset as usize..(rec.offset + rec.length) as usize;
        match rec.data {
            RecordData::Data(d) => image[range].copy_from_slice(d),
            RecordData::Zero => image[range].fill(0),
        }
    }
}

/// Stream byte position where each record ends (a record counts as verified once the
/// stream holds all of it).
fn record_ends(stream: &[u8]) -> Vec<usize> {
    let mut r = PatchReader::new(stream).unwrap();
    let mut ends = Vec::new();
    while r.next_record().unwrap().is_some() {
        ends.push(r.position() as usize);
    }
    ends
}

struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    src_bytes: Vec<u8>,
}

/// A 4 MiB + 1 KiB source with a zero hole, and a `dst` copy that differs everywhere.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut src_bytes = pattern((4 << 20) + 1024, 1);
    src_bytes[65536..131072].fill(0);
    let src = dir.path().join("src.img");
    fs::write(&src, &src_bytes).unwrap();
    Fixture {
        dir,
        src,
        src_bytes,
    }
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn fresh_dst(&self, name: &str) -> (PathBuf, Vec<u8>) {
        pattern_image(self.dir.path(), name, self.src_bytes.len(), 2)
    }
    /// The range list of the whole source.
    fn whole(&self) -> String {
        format!("0 {}\n", self.src_bytes.len())
    }
    /// A stream of the whole source, from blkread-chunks with `extra` options.
    fn full_stream(&self, extra: &[&str]) -> Vec<u8> {
        read_chunks(&self.src, &self.whole(), extra)
    }
}

const RANGES: &str = "# blkranges v1\n0 4096\n1048576 65536\n\n# overlap and adjacency merge:\n1114112 4096\n1050000 100\n61440 131072\n4194304 1024\n";

#[test]
fn ranges_are_copied_exactly() {
    let f = fixture();
    let (dst, mut want) = f.fresh_dst("dst.img");
    let stream = read_chunks(&f.src, RANGES, &[]);
    let out = patch(&dst, &stream, &["--stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (off, len) in [
        (0, 4096),
        (61440, 131072),
        (1048576, 65536 + 4096),
        (4194304, 1024),
    ] {
        want[off..off + len].copy_from_slice(&f.src_bytes[off..off + len]);
    }
    assert_eq!(fs::read(&dst).unwrap(), want);
    // Coalesced: the zero hole inside 61440..192512 became a zero record.
    let list = run("blkpatch", &["--list"], &stream);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("zero 65536 65536"), "{list}");
    assert!(list.contains("data 1048576 69632"), "{list}");
}

/// A copy larger than several write-behind windows (16 MiB each, 4 in flight), with gaps and
/// zero runs, into a file and a loop device: write-back of older windows is waited for while
/// later records arrive, and the result is still exact.
#[test]
fn large_copies_write_behind_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let size = (100 << 20) + 512;
    let mut src_bytes = pattern(size, 11);
    src_bytes[(40 << 20)..(50 << 20)].fill(0);
    let src = dir.path().join("src.img");
    fs::write(&src, &src_bytes).unwrap();
    // Everything but a hole at 20..30 MiB, which keeps the target's old bytes.
    let ranges = format!("0 {}\n{} {}\n", 20 << 20, 30 << 20, size - (30 << 20));
    let stream = read_chunks(&src, &ranges, &[]);
    let old = pattern(size, 12);
    let mut want = src_bytes.clone();
    want[(20 << 20)..(30 << 20)].copy_from_slice(&old[(20 << 20)..(30 << 20)]);
    let dst = dir.path().join("dst.img");
    fs::write(&dst, &old).unwrap();
    let out = patch(&dst, &stream, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&dst).unwrap() == want, "file target differs");
    let backing = dir.path().join("loop.img");
    fs::write(&backing, &old).unwrap();
    let dev = require_loop(Loop::attach(&backing));
    let out = patch(dev.path(), &stream, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        fs::read(dev.path()).unwrap() == want,
        "loop device target differs"
    );
}

/// `--direct` (O_DIRECT reads) copies unaligned ranges exactly as buffered reads do, from an
/// image file (whose size is not a multiple of 4 KiB) and from a loop device.
#[test]
fn direct_reads_copy_unaligned_ranges() {
    let f = fixture();
    let (dst, want) = f.fresh_dst("dst.img");
    let buffered = read_chunks(&f.src, RANGES, &[]);
    let out = patch(&dst, &buffered, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copied = fs::read(&dst).unwrap();
    assert_ne!(copied, want);
    let mut sources = vec![f.src.clone()];
    let dev = Loop::attach(&f.src);
    if let Some(d) = &dev {
        sources.push(d.path().to_owned());
    }
    for src in sources {
        let mut args = vec!["--direct", src.to_str().unwrap()];
        let out = run("blkread-chunks", &args, RANGES.as_bytes());
        if stderr(&out).contains("open: Invalid argument") {
            continue; // a file system without O_DIRECT (tmpfs)
        }
        assert!(out.status.success(), "{}: {}", src.display(), stderr(&out));
        let (dst2, _) = f.fresh_dst("dst2.img");
        let applied = patch(&dst2, &out.stdout, &[]);
        assert!(applied.status.success(), "{}", stderr(&applied));
        assert!(fs::read(&dst2).unwrap() == copied, "{}", src.display());
        args.insert(0, "--lz4");
        assert!(run("blkread-chunks", &args, b"5 8000\n").status.success());
    }
    if dev.is_none() {
        eprintln!("direct_reads_copy_unaligned_ranges: no loop device, file source only");
    }
}

#[test]
fn compressed_streams_are_recognised() {
    let f = fixture();
    let whole = f.whole();
    for (tool, args) in [
        ("zstd", &["-q", "-c"][..]),
        ("lz4", &["-q", "-c"][..]),
        ("gzip", &["-c"][..]),
    ] {
        for lz4_records in [false, true] {
            let extra: &[&str] = if lz4_records { &["--lz4"] } else { &[] };
            let stream = read_chunks(&f.src, &whole, extra);
            let Ok(mut child) = Command::new(tool)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
            else {
                panic!("{tool} is needed by this test (apt-get install zstd lz4 gzip)");
            };
            let mut input = child.stdin.take().unwrap();
            let feeder = std::thread::spawn(move || input.write_all(&stream));
            let packed = child.wait_with_output().unwrap().stdout;
            feeder.join().unwrap().unwrap();
            let dst = f.path(&format!("new-{tool}-{lz4_records}.img"));
            let out = patch(&dst, &packed, &[]);
            assert!(out.status.success(), "{tool}: {}", stderr(&out));
            assert_eq!(fs::read(&dst).unwrap(), f.src_bytes, "{tool}");
        }
    }
}

/// A stream of [`RANGES`] and a target to apply damaged copies of it to.
struct Damage {
    stream: Vec<u8>,
    /// Where each record ends in `stream`.
    ends: Vec<usize>,
    dst: PathBuf,
    orig: Vec<u8>,
    /// Holds the files.
    _f: Fixture,
}

impl Damage {
    fn new(f: Fixture, extra: &[&str]) -> Self {
        let stream = read_chunks(&f.src, RANGES, extra);
        let ends = record_ends(&stream);
        let (dst, orig) = f.fresh_dst("dst.img");
        Damage {
            stream,
            ends,
            dst,
            orig,
            _f: f,
        }
    }

    /// Apply `bad`, damaged from byte `at` on, to the target as it was: exit 3, and the
    /// target holds exactly the records before `at`. Returns their count and the error.
    fn apply(&self, bad: &[u8], at: usize, what: &str) -> (usize, String) {
        write_target(&self.dst, &self.orig);
        let out = patch(&self.dst, bad, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        let verified = self.ends.iter().filter(|&&e| e <= at).count();
        let mut want = self.orig.clone();
        reference_apply(&mut want, &self.stream, verified);
        assert!(
            fs::read(&self.dst).unwrap() == want,
            "{what}: target differs from the {verified} verified records"
        );
        (verified, err)
    }
}

#[test]
fn every_truncation_leaves_exactly_the_verified_records() {
    let d = Damage::new(fixture(), &["--lz4"]);
    let (stream, ends) = (&d.stream, &d.ends);
    // Every cut in the header and the first record header, and around every record boundary.
    let mut cuts: Vec<usize> = (0..120).collect();
    for &e in ends {
        cuts.extend([e - 1, e, e + 1, e + 31, e + 33]);
    }
    cuts.extend((stream.len() - 90)..stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|&c| c < stream.len());
    for cut in cuts {
        let (_, err) = d.apply(&stream[..cut], cut, &format!("cut at {cut}"));
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("truncated") || err.contains("bad magic"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn flipped_bytes_stop_before_the_damaged_record() {
    let d = Damage::new(fixture(), &[]);
    let (stream, ends) = (&d.stream, &d.ends);
    let header_len = 58 + stream[48] as usize;
    let places = [
        ("header magic", 0),
        ("header size field", 17),
        ("header checksum", header_len - 1),
        ("record 0 header", header_len + 9),
        ("record 0 payload", header_len + 32 + 100),
        ("record 2 kind", ends[1]),
        ("record 2 offset", ends[1] + 10),
        ("record 2 payload", ends[1] + 40),
        ("end record counts", stream.len() - 70),
        ("end record digest", stream.len() - 20),
    ];
    for (what, at) in places {
        let mut bad = stream.clone();
        bad[at] ^= 0x40;
        let (verified, err) = d.apply(&bad, at, what);
        if at >= header_len && at < stream.len() - 80 {
            assert!(err.contains(&format!("record {verified}")), "{what}: {err}");
        }
    }
}

#[test]
fn undo_restores_byte_for_byte_including_size() {
    let f = fixture();
    let stream = f.full_stream(&[]);
    // A smaller target: the patch grows it, the undo shrinks it back.
    let dst = f.path("small.img");
    let orig = pattern(1 << 20, 5);
    fs::write(&dst, &orig).unwrap();
    let undo = f.path("undo.patch");
    let out = patch(&dst, &stream, &["--undo", undo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dst).unwrap(), f.src_bytes);
    let out = Command::new(bin("blkpatch"))
        .args(["--input", undo.to_str().unwrap(), dst.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dst).unwrap(), orig);

    // A stream cut short: what was applied is in the undo file, which puts it all back.
    let (dst, orig) = f.fresh_dst("dst.img");
    let cut = record_ends(&stream)[0] + 1000;
    let out = patch(
        &dst,
        &stream[..cut],
        &["--undo", undo.to_str().unwrap(), "--replace-undo"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_ne!(
        fs::read(&dst).unwrap(),
        orig,
        "the first record was applied"
    );
    let out = patch(&dst, &fs::read(&undo).unwrap(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dst).unwrap(), orig);
}

/// An undo file that already holds data is an earlier run's only record of the target's old
/// contents: it is refused (exit 5, nothing written) unless --replace-undo. A run resumed with
/// --state names a new undo file for the rest, and the two undo files, newest first, restore
/// the original.
#[test]
fn an_existing_undo_file_is_kept() {
    let f = fixture();
    let stream = f.full_stream(&[]);
    let (dst, orig) = f.fresh_dst("dst.img");
    let undo = f.path("undo1.patch");
    fs::write(&undo, b"earlier undo data").unwrap();
    let out = patch(&dst, &stream, &["--undo", undo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "--replace-undo");
    assert_eq!(fs::read(&dst).unwrap(), orig, "the target was written");
    assert_eq!(fs::read(&undo).unwrap(), b"earlier undo data");

    // A stream that fails at its first record saves nothing, so the undo file stays empty
    // and the next run may use it.
    fs::remove_file(&undo).unwrap();
    let cut = record_ends(&stream)[0] - 1;
    let out = patch(&dst, &stream[..cut], &["--undo", undo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(fs::metadata(&undo).unwrap().len(), 0);

    // Interrupted after the first record with --state and --undo, then resumed.
    let state = f.path("state");
    let cut = record_ends(&stream)[1] + 10;
    let (u1, st) = (undo.to_str().unwrap(), state.to_str().unwrap());
    let first = ["--undo", u1, "--state", st, "--checkpoint", "4K"];
    let out = patch(&dst, &stream[..cut], &first);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = patch(&dst, &stream, &first);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "interrupted run");
    let undo2 = f.path("undo2.patch");
    let rest = ["--undo", undo2.to_str().unwrap(), "--state", st];
    let out = patch(&dst, &stream, &rest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dst).unwrap(), f.src_bytes);
    for u in [&undo2, &undo] {
        let out = patch(&dst, &fs::read(u).unwrap(), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(fs::read(&dst).unwrap(), orig);
}

#[test]
fn dry_run_and_list_write_nothing() {
    let f = fixture();
    let (dst, orig) = f.fresh_dst("dst.img");
    let stream = read_chunks(&f.src, RANGES, &[]);
    for args in [&["--dry-run"][..], &["--list"][..]] {
        let out = patch(&dst, &stream, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(fs::read(&dst).unwrap(), orig, "{args:?} wrote");
    }
    let out = run("blkpatch", &["--dry-run"], &stream[..stream.len() - 1]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn discard_punches_holes_in_files() {
    let f = fixture();
    let dst = f.path("dst.img");
    fs::write(&dst, pattern(f.src_bytes.len(), 9)).unwrap();
    let before = fs::metadata(&dst).unwrap().blocks();
    let stream = read_chunks(&f.src, "65536 65536\n", &[]);
    let out = patch(&dst, &stream, &["--discard"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = fs::read(&dst).unwrap();
    assert!(got[65536..131072].iter().all(|&b| b == 0));
    assert!(
        fs::metadata(&dst).unwrap().blocks() < before,
        "no hole punched"
    );
}

#[test]
fn bad_range_lists_name_the_line() {
    let f = fixture();
    let size = f.src_bytes.len();
    for (list, want) in [
        (format!("0 4096\n{size} 1\n"), "line 2"),
        ("0 4096\n# x\nabc 5\n".to_string(), "line 3"),
        (
            format!("# blkranges v1 size={}\n0 1\n", size + 1),
            "this one has",
        ),
    ] {
        let out = run(
            "blkread-chunks",
            &[f.src.to_str().unwrap()],
            list.as_bytes(),
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout after a bad range list"
        );
    }
}

#[test]
fn broken_pipes_exit_non_zero_quietly() {
    let f = fixture();
    let whole = f.whole();
    // Consumer goes away: the producer must not report success.
    let src = f.src.to_str().unwrap();
    let (mut producer, _) = spawn_fed("blkread-chunks", &[src], whole.as_bytes());
    drop(producer.stdout.take());
    let out = producer.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "noise: {}", stderr(&out));
    // Producer goes away: the consumer sees a truncated stream.
    let stream = read_chunks(&f.src, &whole, &[]);
    let out = patch(&f.path("x.img"), &stream[..stream.len() / 2], &[]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn loop_device_targets() {
    let f = fixture();
    let stream = f.full_stream(&["--lz4"]);
    // Same size as the source (rounded to 512 by the loop driver: use an aligned size).
    let size = f.src_bytes.len().div_ceil(512) * 512;
    let backing = f.path("loop.img");
    write_target(&backing, &pattern(size, 7));
    let dev = require_loop(Loop::attach(&backing));

    // A device that is open exclusively elsewhere is refused and left untouched.
    let holder = Holder::excl(dev.path());
    let before = fs::read(&backing).unwrap();
    let out = patch(dev.path(), &stream, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "--force");
    drop(holder);
    assert_eq!(fs::read(&backing).unwrap(), before);

    // The backing file of a loop device is refused too.
    let out = patch(&backing, &stream, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    let out = patch(dev.path(), &stream, &["--stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = fs::read(dev.path()).unwrap();
    assert_eq!(&got[..f.src_bytes.len()], &f.src_bytes[..]);

    // A device smaller than the source is refused before anything is written.
    let small = f.path("small.img");
    fs::write(&small, pattern(1 << 20, 8)).unwrap();
    let small_dev = require_loop(Loop::attach(&small));
    let before = fs::read(&small).unwrap();
    let out = patch(small_dev.path(), &stream, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "smaller than the source");
    assert_eq!(fs::read(&small).unwrap(), before);
}

#[test]
fn mounted_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    let dev = require_loop(Loop::attach(&img));
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(dev.path())
        .status();
    assert!(
        mkfs.is_ok_and(|s| s.success()),
        "mkfs.ext4 is needed (e2fsprogs)"
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .arg(dev.path())
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    let src = dir.path().join("src.img");
    fs::write(&src, pattern(1 << 20, 3)).unwrap();
    let stream = read_chunks(&src, "0 4096\n", &[]);
    let out = patch(dev.path(), &stream, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "mounted on");
}

/// The contract every tool keeps is in `contract.rs`; what is blkpatch's own: an empty stream
/// creates no target.
#[test]
fn empty_stream_creates_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-blkpatch");
    let out = Command::new(bin("blkpatch"))
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !missing.exists(),
        "blkpatch created a target for an empty stream"
    );
}

#[test]
fn stats_json_and_progress_feed() {
    let f = fixture();
    let stream = f.full_stream(&[]);
    let dst = f.path("dst.img");
    // fd 3 is the write end of a pipe whose read end the test keeps.
    let (mut rd, wr) = std::io::pipe().unwrap();
    let mut cmd = Command::new(bin("blkpatch"));
    cmd.args(["--stats=json", "--progress-fd", "3"]).arg(&dst);
    let wr_fd = std::os::fd::OwnedFd::from(wr);
    unsafe {
        use std::os::unix::process::CommandExt;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&wr_fd);
        cmd.pre_exec(move || {
            if libc_dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(wr_fd);
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stderr(&out);
    let total = f.src_bytes.len();
    assert!(
        json.starts_with("{\"tool\":\"blkpatch\",\"records\":"),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"bytes_written\":{total}")),
        "{json}"
    );
    let mut feed = String::new();
    std::io::Read::read_to_string(&mut rd, &mut feed).unwrap();
    assert_eq!(
        feed.lines().last(),
        Some(format!("{total} {total}").as_str()),
        "{feed}"
    );
}

fn libc_dup2(from: i32, to: i32) -> i32 {
    extern "C" {
        fn dup2(oldfd: i32, newfd: i32) -> i32;
    }
    // SAFETY: dup2 on descriptors owned by this (forked) process.
    unsafe { dup2(from, to) }
}
