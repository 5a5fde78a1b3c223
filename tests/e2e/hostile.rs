//! Hostile and careless input (issue 12): every way a user reaches a file blkpatch must not
//! write (hard links, symlinks, bind mounts, /proc fd paths, mounted devices, missing /dev
//! names, reused state files), exit codes of the neighbours, and no tool panicking when its
//! stdout is full and its stdin closed. Each `itemNN_` test covers the item NN; all
//! run the built tools on real files, loop devices and mounted ext4 (root needed).

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blkpipe_testkit::image;

use crate::common::{
    assert_stderr_has, bin, pattern, pattern_file, require_loop, run, run_ok, stderr, stdout_ok,
    Holder, Loop,
};

const SIZE: usize = 1 << 20;

/// A source image, a stream of all of it, and a scratch directory.
struct Fx {
    dir: tempfile::TempDir,
    src: PathBuf,
    src_bytes: Vec<u8>,
    stream: Vec<u8>,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let src_bytes = pattern(SIZE, 1);
    fs::write(&src, &src_bytes).unwrap();
    let stream = run_ok(
        "blkread-chunks",
        &[s(&src)],
        format!("0 {SIZE}\n").as_bytes(),
    );
    Fx {
        dir,
        src,
        src_bytes,
        stream,
    }
}

impl Fx {
    /// `blkpatch --state STATE TARGET` with the fixture's stream.
    fn patch_with_state(&self, state: &Path, target: &Path) -> Output {
        patch(&["--state", s(state), s(target)], &self.stream)
    }

    /// [`Fx::patch_with_state`], which must succeed and leave TARGET equal to the source.
    #[track_caller]
    fn apply_with_state(&self, state: &Path, target: &Path) {
        let out = self.patch_with_state(state, target);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(fs::read(target).unwrap() == self.src_bytes);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// A file of `len` bytes of other content.
    fn file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        pattern_file(self.dir.path(), name, len, seed)
    }

    /// A file `name` the stream was applied to with `--state` FILE; returns FILE and it.
    fn applied_with_state(&self, name: &str) -> (PathBuf, PathBuf) {
        let (state, target) = (self.path("st"), self.file(name, SIZE, 2));
        self.apply_with_state(&state, &target);
        (state, target)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn patch(args: &[&str], stream: &[u8]) -> Output {
    run("blkpatch", args, stream)
}

#[track_caller]
fn assert_refused(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(5), "want exit 5 ({want}): {err}");
    assert!(err.contains(want), "want `{want}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A mount, unmounted (lazily, if busy) on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(ok.success(), "mount {args:?} {}", at.display());
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A path removed on drop (for names a faulty tool might create outside the temp dir).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_file()) {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// A loop device over a fresh ext4 image of 16 MiB, mounted in the fixture's dir.
fn mounted_ext4(f: &Fx, name: &str) -> (Loop, Mount) {
    let img = f.path(&format!("{name}.img"));
    fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let dev = require_loop(Loop::attach(&img));
    // No lazy initialisation: the file system is idle once mounted, so its bytes stay put.
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(dev.path())
        .status();
    assert!(mkfs.is_ok_and(|s| s.success()), "mkfs.ext4 (e2fsprogs)");
    let mnt = Mount::new(&[s(dev.path())], &f.path(&format!("{name}.mnt")));
    (dev, mnt)
}

fn read_head(p: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let mut f = fs::File::open(p).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn item01_loop_backing_file_by_any_path_is_refused() {
    let f = fx();
    // Backing file of another size than the source: a patch would also truncate it.
    let backing = f.file("backing.img", 3 << 20, 7);
    let before = fs::read(&backing).unwrap();
    let _dev = require_loop(Loop::attach(&backing));
    let hard = f.path("hard.img");
    fs::hard_link(&backing, &hard).unwrap();
    let soft = f.path("soft.img");
    symlink(&backing, &soft).unwrap();
    let bind_dir = f.path("bind");
    let _bind = Mount::new(&["--bind", s(f.dir.path())], &bind_dir);
    let via_bind = bind_dir.join("backing.img");
    let held = fs::File::open(&backing).unwrap();
    let via_proc = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&held)
    ));
    for path in [&backing, &hard, &soft, &via_bind, &via_proc] {
        let out = patch(&[s(path)], &f.stream);
        assert_refused(&out, "backs loop device");
        assert!(
            fs::read(&backing).unwrap() == before,
            "{} changed the backing file",
            path.display()
        );
    }
    // --force is the documented way through.
    let out = patch(&["--force", s(&hard)], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&backing).unwrap() == f.src_bytes);
}

#[test]
fn item02_undo_or_state_on_a_block_device_is_refused() {
    let f = fx();
    let (dev, mnt) = mounted_ext4(&f, "fs");
    fs::write(mnt.0.join("keep"), b"precious").unwrap();
    let _ = Command::new("sync").status();
    let dev_head = read_head(dev.path(), 1 << 20);
    let target = f.file("t.img", SIZE, 2);
    let target_before = fs::read(&target).unwrap();
    let link = f.path("dev-link");
    symlink(dev.path(), &link).unwrap();
    for path in [dev.path(), link.as_path()] {
        let out = patch(&["--undo", s(path), s(&target)], &f.stream);
        assert_refused(&out, "block device");
        let out = patch(&["--state", s(path), s(&target)], &f.stream);
        assert_refused(&out, "block device");
    }
    // Nothing was written anywhere: not the device, not the target.
    assert!(fs::read(&target).unwrap() == target_before);
    let _ = Command::new("sync").status();
    assert!(read_head(dev.path(), 1 << 20) == dev_head);
    assert_eq!(fs::read(mnt.0.join("keep")).unwrap(), b"precious");

    // The state's temporary file is created afresh: a planted symlink is not followed.
    let state = f.path("st");
    let victim = f.file("victim", 4096, 9);
    let victim_before = fs::read(&victim).unwrap();
    symlink(&victim, f.path("st.tmp")).unwrap();
    f.apply_with_state(&state, &target);
    assert!(
        fs::read(&victim).unwrap() == victim_before,
        "st.tmp symlink followed"
    );
    // An undo file that backs a loop device is refused like a target that does.
    let backing = f.path("fs.img");
    let out = patch(&["--undo", s(&backing), s(&target)], &f.stream);
    assert_refused(&out, "backs loop device");
}

#[test]
fn item03_undo_that_is_the_target_or_the_input_is_refused() {
    let f = fx();
    let target = f.file("t.img", SIZE, 2);
    let before = fs::read(&target).unwrap();
    let input = f.path("in.patch");
    fs::write(&input, &f.stream).unwrap();
    let target_link = f.path("t-hard.img");
    fs::hard_link(&target, &target_link).unwrap();
    let input_link = f.path("in-soft.patch");
    symlink(&input, &input_link).unwrap();
    for undo in [&target, &target_link] {
        let out = patch(&["--undo", s(undo), s(&target)], &f.stream);
        assert_refused(&out, "the target");
        assert!(fs::read(&target).unwrap() == before);
    }
    for undo in [&input, &input_link] {
        let out = patch(&["--undo", s(undo), "--input", s(&input), s(&target)], &[]);
        assert_refused(&out, "the input");
        assert!(fs::read(&input).unwrap() == f.stream, "input overwritten");
        assert!(fs::read(&target).unwrap() == before);
    }
    // The input on stdin, redirected from a file: the same.
    let out = Command::new(bin("blkpatch"))
        .args(["--undo", s(&input), s(&target)])
        .stdin(fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert_refused(&out, "the input");
    assert!(fs::read(&input).unwrap() == f.stream);
    // A target that is the input, and a state file that is the target, are refused too.
    let out = patch(&["--input", s(&input), s(&input)], &[]);
    assert_refused(&out, "the input");
    let out = f.patch_with_state(&target_link, &target);
    assert_refused(&out, "the target");
    assert!(fs::read(&target).unwrap() == before);
    // A fresh undo file works and restores.
    let undo = f.path("undo.patch");
    let out = patch(&["--undo", s(&undo), s(&target)], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = patch(&["--input", s(&undo), s(&target)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&target).unwrap() == before);
}

#[test]
fn item04_state_is_bound_to_its_target() {
    let f = fx();
    let (state, a) = f.applied_with_state("a.img");
    // The same stream and state on another file: nothing may be skipped there.
    let b = f.file("b.img", SIZE, 3);
    let b_before = fs::read(&b).unwrap();
    let out = f.patch_with_state(&state, &b);
    assert_refused(&out, "another target");
    assert_stderr_has(&out, "to start over");
    assert!(fs::read(&b).unwrap() == b_before);
    // A fresh file at the same path (the inode number may well be reused).
    fs::remove_file(&a).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&a, pattern(SIZE, 4)).unwrap();
    let out = f.patch_with_state(&state, &a);
    assert_refused(&out, "another target");
    // Another loop device than the one the state was made on.
    let la = f.file("la.img", SIZE, 5);
    let lb = f.file("lb.img", SIZE, 6);
    let da = require_loop(Loop::attach(&la));
    let db = require_loop(Loop::attach(&lb));
    let lstate = f.path("lst");
    let out = patch(&["--state", s(&lstate), s(da.path())], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));
    let lb_before = fs::read(&lb).unwrap();
    let out = patch(&["--state", s(&lstate), s(db.path())], &f.stream);
    assert_refused(&out, "another target");
    assert!(fs::read(&lb).unwrap() == lb_before);
    // Starting over as the message says works.
    fs::remove_file(&state).unwrap();
    f.apply_with_state(&state, &b);
}

#[test]
fn item05_missing_dev_path_is_not_created() {
    let f = fx();
    let name = format!("/dev/blkpipe-hostile-{}", std::process::id());
    let missing = PathBuf::from(&name);
    let _cleanup = RemoveOnDrop(missing.clone());
    let out = patch(&[&name], &f.stream);
    assert_refused(&out, &format!("no such device: {name}"));
    assert!(!missing.exists(), "a file was created in /dev");
    // A missing volume group directory is a missing device too.
    let lv = format!("/dev/blkpipe-hostile-vg-{}/lv", std::process::id());
    let out = patch(&[&lv], &f.stream);
    assert_refused(&out, &format!("no such device: {lv}"));
    // /dev/shm is a tmpfs of its own, not devtmpfs: files are created there as anywhere.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = patch(&[s(&shm.path().join("t.img"))], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nor as an undo or state file.
    let target = f.file("t.img", SIZE, 2);
    for opt in ["--undo", "--state"] {
        let out = patch(&[opt, &name, s(&target)], &f.stream);
        assert_refused(&out, "no such device");
        assert!(!missing.exists(), "{opt} created a file in /dev");
    }
}

#[test]
fn item06_verify_without_a_source_digest_refuses_before_writing() {
    let f = fx();
    let target = f.file("t.img", SIZE, 2);
    let before = fs::read(&target).unwrap();
    let out = patch(&["--verify", s(&target)], &f.stream);
    assert_refused(&out, "does not announce a source digest");
    assert!(
        fs::read(&target).unwrap() == before,
        "written, then refused"
    );
    let new = f.path("new.img");
    let out = patch(&["--verify", s(&new)], &f.stream);
    assert_refused(&out, "source digest");
    assert!(!new.exists(), "target created, then refused");
    // A blkdiff stream announces its digest and verifies.
    let hashes = Command::new(bin("blkhash")).arg(&target).output().unwrap();
    assert!(hashes.status.success());
    let diff = run("blkdiff", &[s(&f.src)], &hashes.stdout);
    assert!(diff.status.success(), "{}", stderr(&diff));
    let out = patch(&["--verify", s(&target)], &diff.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&target).unwrap() == f.src_bytes);
}

fn full_stdout(cmd: &mut Command) -> Output {
    // SAFETY: close(2) is async-signal-safe; the child closes its own stdin before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::close(0);
            Ok(())
        });
    }
    cmd.stdout(dev_full())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// /dev/full, open for writing: every write fails with ENOSPC.
fn dev_full() -> fs::File {
    fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
}

#[track_caller]
fn assert_no_panic(out: &Output, code: i32, what: &str) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_ne!(out.status.code(), Some(101), "{what}: {err}");
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
}

#[test]
fn item08_print_state_to_a_full_stdout_is_an_io_error() {
    let f = fx();
    let (state, _) = f.applied_with_state("t.img");
    for st in [&state, &f.path("none")] {
        let out =
            full_stdout(Command::new(bin("blkpatch")).args(["--print-state", "--state", s(st)]));
        assert_no_panic(&out, 4, "--print-state > /dev/full");
    }
}

#[test]
fn item09_blkdiff_refuses_a_hash_stream_that_starts_later() {
    let f = fx();
    let target = f.file("t.img", SIZE, 2);
    let mut cmd = Command::new(bin("blkhash"));
    let hashes = stdout_ok(cmd.args(["--from", "524288"]).arg(&target), "blkhash");
    let out = run("blkdiff", &[s(&f.src)], &hashes);
    assert_refused(&out, "--from 524288");
    assert!(out.stdout.is_empty(), "a patch was written");
    // With the same --from it is the documented resume.
    let out = run("blkdiff", &["--from", "524288", s(&f.src)], &hashes);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Run with a deadline: a tool that blocks is killed and reported.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still blocked after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn item10_small_ones() {
    let f = fx();
    // --block-size past u32 names the size asked for.
    let out = Command::new(bin("blkhash"))
        .args(["--block-size", "16G", s(&f.src)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_stderr_has(&out, "17179869184");
    assert!(!stderr(&out).contains("4294967295"), "{}", stderr(&out));
    // stdin twice is a bad command line.
    let out = run("blkmerge", &["-", "-"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A --state that is a directory, or not text, is a refused state, not a write error.
    let target = f.file("t.img", SIZE, 2);
    let dir_state = f.path("sdir");
    fs::create_dir(&dir_state).unwrap();
    let binary = f.file("sbin", 100, 3);
    for st in [&dir_state, &binary] {
        for args in [
            vec!["--state", s(st), s(&target)],
            vec!["--print-state", "--state", s(st)],
        ] {
            let out = patch(&args, &f.stream);
            assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
            assert!(!stderr(&out).contains("writing"), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("directory") || stderr(&out).contains("remove it"),
                "{}",
                stderr(&out)
            );
        }
    }
    // A FIFO where a device is expected is refused at once, not waited on.
    let fifo = f.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let limit = Duration::from_secs(10);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("blkhash", vec![s(&fifo)]),
        ("blkhash", vec!["--digest", s(&fifo)]),
        ("blkdiff", vec![s(&fifo)]),
        ("blkread-chunks", vec![s(&fifo)]),
        ("cowlist", vec!["--cow", s(&fifo), "--origin-size", "1M"]),
        ("cowlist", vec!["--cow", s(&f.src), "--origin", s(&fifo)]),
        ("blkpatch", vec![s(&fifo)]),
    ];
    for (tool, args) in cases {
        let mut cmd = Command::new(bin(tool));
        cmd.args(&args).stdin(Stdio::null());
        if tool == "blkpatch" {
            fs::write(f.path("in"), &f.stream).unwrap();
            cmd.stdin(fs::File::open(f.path("in")).unwrap());
        }
        let out = run_within(&mut cmd, limit);
        let err = stderr(&out);
        assert!(
            err.contains("not a regular file or block device"),
            "{tool} {args:?}: {err}"
        );
        assert!(
            matches!(out.status.code(), Some(3) | Some(5)),
            "{tool} {args:?}: {err}"
        );
    }
}

#[test]
fn item11_force_keeps_o_excl_unless_asked() {
    let f = fx();
    let backing = f.file("l.img", SIZE, 2);
    let dev = require_loop(Loop::attach(&backing));
    let before = fs::read(&backing).unwrap();
    let holder = Holder::excl(dev.path());
    let out = patch(&["--force", s(dev.path())], &f.stream);
    assert_refused(&out, "--no-exclusive");
    assert!(fs::read(&backing).unwrap() == before);
    let out = patch(&["--no-exclusive", s(dev.path())], &f.stream);
    assert_eq!(out.status.code(), Some(2), "--no-exclusive needs --force");
    let out = patch(&["--force", "--no-exclusive", s(dev.path())], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(holder);
    assert!(fs::read(dev.path()).unwrap() == f.src_bytes);
    let help = Command::new(bin("blkpatch"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--no-exclusive") && text.contains("O_EXCL"),
        "{text}"
    );
}

/// Every tool with typical arguments, stdout on /dev/full and stdin closed: never a panic,
/// always the documented code (4: I/O error writing stdout; 3: an empty stream on stdin).
#[test]
fn no_tool_panics_with_a_full_stdout_and_closed_stdin() {
    let f = fx();
    let d = f.dir.path();
    let target = f.file("t.img", SIZE, 2);
    let patch_file = f.path("p.patch");
    fs::write(&patch_file, &f.stream).unwrap();
    let hashes = Command::new(bin("blkhash")).arg(&target).output().unwrap();
    let hash_file = f.path("h.hash");
    fs::write(&hash_file, &hashes.stdout).unwrap();
    let ranges = f.path("ranges");
    fs::write(&ranges, "0 65536\n").unwrap();
    let cow = f.path("cow");
    fs::write(&cow, image::build(8, &[1, 2, 9], None, None)).unwrap();
    let thin = f.path("thin.xml");
    fs::write(
        &thin,
        "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1024\">\n  <diff left=\"1\" right=\"2\">\n    <different begin=\"2\" length=\"2\"/>\n  </diff>\n</superblock>\n",
    )
    .unwrap();
    let state = f.path("st");
    let p = |x: &Path| x.to_str().unwrap().to_owned();
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        ("blkhash", vec![p(&f.src)], 4),
        ("blkhash", vec!["--digest".into(), p(&f.src)], 4),
        ("blkhash", vec!["--text".into(), p(&f.src)], 4),
        ("blkdiff", vec![p(&f.src)], 3),
        ("blkpatch", vec![p(&target)], 3),
        (
            "blkpatch",
            vec!["--list".into(), "--input".into(), p(&patch_file)],
            4,
        ),
        (
            "blkpatch",
            vec!["--dry-run".into(), "--input".into(), p(&patch_file)],
            0,
        ),
        (
            "blkpatch",
            vec!["--print-state".into(), "--state".into(), p(&state)],
            4,
        ),
        (
            "cowlist",
            vec![
                "--cow".into(),
                p(&cow),
                "--origin-size".into(),
                "128K".into(),
            ],
            4,
        ),
        (
            "cowlist",
            vec![
                "--data".into(),
                "--cow".into(),
                p(&cow),
                "--origin".into(),
                p(&f.src),
            ],
            4,
        ),
        ("cowlist", vec!["--thin-delta".into(), p(&thin)], 4),
        ("cowlist", vec!["--thin-delta".into(), "-".into()], 3),
        ("blkread-chunks", vec![p(&f.src)], 4),
        (
            "blkread-chunks",
            vec!["--ranges".into(), p(&ranges), p(&f.src)],
            4,
        ),
        ("blkmerge", vec![p(&patch_file), p(&patch_file)], 4),
        ("blkmerge", vec!["-".into()], 3),
    ];
    for (tool, args, code) in &cases {
        let out = full_stdout(Command::new(bin(tool)).args(args).current_dir(d));
        assert_no_panic(out_ref(&out), *code, &format!("{tool} {args:?}"));
    }
    // With the streams on stdin (only stdout is full).
    for (tool, args, input) in [
        ("blkdiff", vec![p(&f.src)], &hash_file),
        ("blkpatch", vec!["--list".into()], &patch_file),
        ("blkread-chunks", vec![p(&f.src)], &ranges),
        ("blkmerge", vec!["-".into(), p(&patch_file)], &patch_file),
    ] {
        let out = Command::new(bin(tool))
            .args(&args)
            .stdin(fs::File::open(input).unwrap())
            .stdout(dev_full())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_no_panic(&out, 4, &format!("{tool} {args:?} < {}", input.display()));
    }
    // A full stderr loses the message, never the exit code (std's eprintln! would panic).
    let missing = f.path("missing.img");
    for (tool, args, code) in [
        ("blkhash", vec![p(&missing)], 4),
        (
            "blkhash",
            vec!["--stats".into(), "--digest".into(), p(&f.src)],
            0,
        ),
        (
            "blkpatch",
            vec![
                "--stats".into(),
                "--dry-run".into(),
                "--input".into(),
                p(&patch_file),
            ],
            0,
        ),
        ("blkpatch", vec![p(&target)], 3),
        (
            "cowlist",
            vec![
                "--stats".into(),
                "--cow".into(),
                p(&cow),
                "--origin-size".into(),
                "128K".into(),
            ],
            0,
        ),
        ("blkread-chunks", vec![p(&missing)], 4),
        ("blkmerge", vec![p(&missing)], 4),
        ("blkdiff", vec![p(&missing)], 4),
    ] {
        let out = Command::new(bin(tool))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(dev_full())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{tool} {args:?} 2>/dev/full");
    }
    // --help and --version into a full stdout.
    for tool in [
        "blkhash",
        "blkdiff",
        "blkpatch",
        "cowlist",
        "blkread-chunks",
        "blkmerge",
    ] {
        for flag in ["--help", "--version"] {
            let out = full_stdout(Command::new(bin(tool)).arg(flag));
            let err = stderr(&out);
            assert!(!err.contains("panicked"), "{tool} {flag}: {err}");
            assert_ne!(out.status.code(), Some(101), "{tool} {flag}: {err}");
        }
    }
}

fn out_ref(o: &Output) -> &Output {
    o
}

/// A holder names itself (prctl PR_SET_NAME): a newline or escape in its name does not get
/// into blkpatch's one-line refusal.
#[test]
fn a_holders_chosen_name_stays_on_one_line() {
    let f = fx();
    let target = f.file("held.img", SIZE, 2);
    let holder = Holder::python(
        "import ctypes\n\
         ctypes.CDLL(None).prctl(15, b'ev\\nil\\x1b[2J', 0, 0, 0)\n\
         fd = os.open(sys.argv[1], os.O_RDWR)",
        &target,
    );
    let out = patch(&[s(&target)], &f.stream);
    let pid = holder.pid();
    drop(holder);
    assert_refused(
        &out,
        &format!("open for writing in process {pid} (ev?il?[2J)"),
    );
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
}

/// Found beyond the list: an image file open for writing in another process (a running VM's
/// disk) is in use like a mounted device; progress lines on stdout would corrupt the stream.
#[test]
fn beyond_file_open_for_writing_elsewhere_and_progress_on_stdout() {
    let f = fx();
    let target = f.file("vm.img", SIZE, 2);
    let before = fs::read(&target).unwrap();
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<>\"$0\"; exec sleep 30")
        .arg(&target)
        .spawn()
        .unwrap();
    // Wait until the holder has the file open.
    let start = Instant::now();
    let pid = holder.id();
    while !fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|p| p == target) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "holder never opened it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = patch(&[s(&target)], &f.stream);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_refused(&out, &format!("open for writing in process {pid} (sleep)"));
    assert!(fs::read(&target).unwrap() == before);
    let out = patch(&[s(&target)], &f.stream);
    assert!(out.status.success(), "{}", stderr(&out));

    for (tool, args) in [
        ("blkhash", vec!["--progress-fd", "1", s(&f.src)]),
        ("blkread-chunks", vec!["--progress-fd", "1", s(&f.src)]),
    ] {
        let out = run(tool, &args, b"0 4096\n");
        assert_refused(&out, "stdout carries");
        assert!(out.stdout.is_empty(), "{tool}");
    }
}
