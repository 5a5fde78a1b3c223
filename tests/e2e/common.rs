//! Helpers shared by the end-to-end tests: the built tools, test data, processes, loop
//! devices.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;

pub fn bin(name: &str) -> PathBuf {
    match name {
        "blkread-chunks" => env!("CARGO_BIN_EXE_blkread-chunks").into(),
        "blkpatch" => env!("CARGO_BIN_EXE_blkpatch").into(),
        "blkhash" => env!("CARGO_BIN_EXE_blkhash").into(),
        "blkdiff" => env!("CARGO_BIN_EXE_blkdiff").into(),
        "cowlist" => env!("CARGO_BIN_EXE_cowlist").into(),
        "blkmerge" => env!("CARGO_BIN_EXE_blkmerge").into(),
        _ => unreachable!(),
    }
}

/// Deterministic, incompressible pseudo-random bytes (xorshift64, 8 bytes per step).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// xorshift64*: small and seedable, for choosing blocks and moments.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Start a tool with piped stdout and stderr.
pub fn spawn(name: &str, args: &[&str], stdin: Stdio) -> Child {
    Command::new(bin(name))
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Start a tool with piped stdout and stderr, and `stdin` written to its stdin (from a
/// thread, then closed).
pub fn spawn_fed(name: &str, args: &[&str], stdin: &[u8]) -> (Child, JoinHandle<()>) {
    let mut child = spawn(name, args, Stdio::piped());
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    (child, feeder)
}

/// Run a tool to its end with `stdin` as its input.
pub fn run(name: &str, args: &[&str], stdin: &[u8]) -> Output {
    let (child, feeder) = spawn_fed(name, args, stdin);
    let out = child.wait_with_output().expect("wait");
    feeder.join().unwrap();
    out
}

/// [`run`], which must exit 0; returns its stdout.
#[track_caller]
pub fn run_ok(name: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(name, args, stdin);
    assert!(out.status.success(), "{name} {args:?}: {}", stderr(&out));
    out.stdout
}

/// `dir/name`, written with `len` bytes of [`pattern`] `seed`.
pub fn pattern_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    pattern_image(dir, name, len, seed).0
}

/// [`pattern_file`], and the bytes written.
pub fn pattern_image(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let (p, bytes) = (dir.join(name), pattern(len, seed));
    write_target(&p, &bytes);
    (p, bytes)
}

/// Write `bytes` to `path` (created or truncated) through a child `dd`, so that this test
/// process never holds the file open for writing. blkpatch refuses a target that any process
/// has open for writing; a child that another test thread forks while this process holds the
/// descriptor keeps a copy until it execs, and under load that window made blkpatch refuse
/// ("open for writing in process N") in tests that rewrite their target in a loop.
pub fn write_target(path: &Path, bytes: &[u8]) {
    let of = format!("of={}", path.display());
    let mut dd = Command::new("dd")
        .args([of.as_str(), "bs=1M", "status=none"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn dd");
    dd.stdin.take().unwrap().write_all(bytes).unwrap();
    assert!(dd.wait().unwrap().success(), "dd {of} failed");
}

/// A child process (python3) that holds `path` open until dropped, as another program holding
/// a device or an image would. The test process never holds the descriptor itself: a child
/// forked meanwhile by another test thread would keep a copy until its exec, and blkpatch's
/// in-use check would rightly name that child (seen once in CI under load).
pub struct Holder(Child);

impl Holder {
    /// Held read-only with O_EXCL.
    pub fn excl(path: &Path) -> Holder {
        Holder::python("os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)", path)
    }

    /// Held by `opening`, python3 statements that open `sys.argv[1]` (`os` and `sys`
    /// imported), run before the holder reports that it holds it.
    pub fn python(opening: &str, path: &Path) -> Holder {
        let program =
            format!("import os, sys\n{opening}\nprint('held', flush=True)\nsys.stdin.read()");
        let mut child = Command::new("python3")
            .args(["-c", &program])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(
            line.trim(),
            "held",
            "python3 could not hold {}",
            path.display()
        );
        Holder(child)
    }

    /// The holding process's id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The number GNU time wrote to `file` (`/usr/bin/time -f %M -o FILE`: one field), e.g.
/// the peak RSS in KiB.
pub fn gnu_time_value(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("GNU time wrote a number")
}

/// Assert that `o`'s stderr holds `want`.
#[track_caller]
pub fn assert_stderr_has(o: &Output, want: &str) {
    let err = stderr(o);
    assert!(err.contains(want), "want {want:?} in stderr: {err}");
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `cmd` to its end, assert that it exited 0 (the failure names `what` and shows its
/// stderr) and return its stdout.
pub fn stdout_ok(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().expect(what);
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    out.stdout
}

/// `PATH` with the directory of the built tools first, for shell scripts and pipelines.
pub fn tools_path() -> String {
    let tools = bin("blkpatch");
    let dir = tools.parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// `bash -euo pipefail -c SCRIPT`, with the built tools first on `PATH`.
pub fn bash(script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .env("PATH", tools_path());
    cmd
}

/// A loop device over a file, detached on drop.
pub struct Loop(pub String);

/// One losetup at a time in this process. `losetup --find` opens the free device it found
/// before binding it, so two at once can pick the same one, and the loser holds the
/// winner's new device open for a moment (blkpatch named such a losetup once in CI).
static LOSETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Loop {
    pub fn attach(file: &Path) -> Option<Loop> {
        let _one = LOSETUP.lock().unwrap_or_else(|e| e.into_inner());
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "losetup unavailable: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Loop(
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        ))
    }
    pub fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _one = LOSETUP.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

pub fn require_loop(l: Option<Loop>) -> Loop {
    // CI runs as root with loop devices; a developer box without them says so loudly.
    l.expect("loop devices are required (run as root with losetup)")
}

/// How many times a randomized test drew each kind of case.
#[derive(Debug)]
pub struct Tally<K>(std::collections::HashMap<K, u32>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(std::collections::HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq + std::fmt::Debug> Tally<K> {
    /// Count one case of kind `k`.
    pub fn add(&mut self, k: K) {
        *self.0.entry(k).or_insert(0) += 1;
    }

    /// Assert that each kind in `all` was drawn more than `min` times.
    #[track_caller]
    pub fn assert_each_over(&self, all: &[K], min: u32) {
        for k in all {
            let n = self.0.get(k).copied().unwrap_or(0);
            assert!(n > min, "{k:?} drawn {n} times: {self:?}");
        }
    }
}
