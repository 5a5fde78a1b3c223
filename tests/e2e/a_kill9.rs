//! Kill -9 any stage of a pipeline at a random moment, then rerun: every trial ends with the
//! target equal to the source.
//!
//! Two pipelines of real processes joined by real pipes, on real image files:
//!
//! ```text
//! blkhash DST | blkdiff SRC | blkpatch DST             (hash pipeline)
//! blkread-chunks SRC < ranges | blkpatch DST            (chunk pipeline)
//! ```
//!
//! For every stage and two modes, `BLKPIPE_KILL_TRIALS` trials (default 25; 50 until
//! 2026-11-30, when these two tests were about two thirds of the e2e binary's CPU). Each trial
//! starts from the original, differing target, sends SIGKILL to that stage after a delay drawn
//! uniformly from [0, 0.9 x the stage's own run time] (measured on unkilled runs just before
//! that stage's trials, so a change of load elsewhere meanwhile does not skew them), and
//! checks what the survivors did. Then it reruns on the partially patched target:
//!
//! - without `--state`: the whole pipeline again from scratch;
//! - with `--state FILE` on blkpatch: the state file is checked first (every byte below its
//!   offset already equals the source; `complete` means the whole target does), then the
//!   producers resume with `--from OFFSET --stream-id ID` from `blkpatch --print-state`.
//!
//! The rerun must exit 0 at every stage and leave the target equal to the source, byte for
//! byte. The delays come from a PRNG whose seed is printed (`BLKPIPE_KILL_SEED` sets it), and
//! a summary says how many kills landed mid-run (`cargo test --release --test e2e -- a_kill9::
//! --nocapture` shows it).
//!
//! One test runs both pipelines, one after the other, and the module is named `a_kill9` so
//! that it sorts first: libtest starts tests in name order, and this is the binary's longest
//! test; started late it was its critical path. Other tests run beside it on the other test
//! threads. The two pipelines are not run at the same time: each times its stages, and the
//! end of one while the other was running made the other's kills land late (seen: too few
//! mid-run kills); as two tests behind a mutex, a second libtest thread sat blocked.
//!
//! What the survivors of a kill must do, checked exactly: a stage downstream of the killed one
//! exits 3 (truncated stream), or 0 only if the stage feeding it had written its whole output
//! before dying (its write count in /proc/PID/io, read when it exits, equals that of an
//! unkilled run); a stage upstream exits 141 (broken pipe), or 0 only if it had written its
//! whole output. blkpatch exiting 0 means the target equals the source right then. No stage
//! may hang.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use blkpipe_ops::state::ResumeState;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::common::{bin, pattern, stdout_ok, Rng};

const BS: usize = 4096;
const MIB: usize = 1 << 20;
/// A run that takes longer than this is a hang.
const HANG: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn trials() -> usize {
    env_u64("BLKPIPE_KILL_TRIALS").map_or(25, |n| n as usize)
}

/// The seed: `BLKPIPE_KILL_SEED`, or a fresh one.
fn seed() -> u64 {
    env_u64("BLKPIPE_KILL_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
    })
}

/// A source image, the original (differing) target, and a range list covering every
/// difference, in a tmpfs when there is one (so the page cache, not a disk, sets the pace).
struct Images {
    dir: tempfile::TempDir,
    src: PathBuf,
    src_bytes: Vec<u8>,
    dst_orig: Vec<u8>,
    ranges: PathBuf,
    /// Bytes that differ between the two, by 4 KiB block (the tail past the target counts).
    differing: usize,
    /// Where the original target differs from the source inside its own length: (offset,
    /// length) runs of 4 KiB blocks. What a reset rewrites when the target equals the source.
    dst_runs: Vec<(usize, usize)>,
}

impl Images {
    /// The source: 48 MiB + 3 blocks + 1234 bytes (not a multiple of the block size), with a
    /// zeroed MiB and a zeroed stretch in its tail. The target: 46 MiB + 777 bytes (shorter,
    /// also not a block multiple) of the same data with scattered single blocks (some fully
    /// rewritten, some one byte off), clusters (one across a 4 MiB record boundary), a zeroed
    /// region where the source has data and data where the source has zeros.
    fn new(rng: &mut Rng) -> Images {
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let size = 48 * MIB + 3 * BS + 1234;
        let base = pattern(size, 42);
        let mut src = base.clone();
        src[30 * MIB..31 * MIB].fill(0);
        src[size - 300 * 1024..size - 100 * 1024].fill(0);
        let dst_len = 46 * MIB + 777;
        let mut dst = base[..dst_len].to_vec();
        let junk = pattern(12 * MIB, 7);
        for i in 0..300 {
            let b = rng.below(dst_len / BS) * BS;
            let end = (b + BS).min(dst_len);
            if i % 2 == 0 {
                dst[b..end].copy_from_slice(&junk[b % (7 * MIB)..][..end - b]);
            } else {
                dst[b + rng.below(end - b)] ^= 0x5a;
            }
        }
        for (at, len) in [
            (5 * MIB, 3 * MIB),
            (4 * MIB - 64 * 1024, 256 * 1024),
            (16 * MIB, 12 * MIB),
            (40 * MIB + 3 * BS, 37 * BS),
        ] {
            dst[at..at + len].copy_from_slice(&junk[..len]);
        }
        dst[12 * MIB..12 * MIB + 512 * 1024].fill(0);

        // Ranges: every differing 4 KiB block, rounded out to 16 KiB chunks like a snapshot's.
        let chunk = 4 * BS;
        let mut ranges = format!("# blkranges v1 size={size} chunk={chunk}\n");
        let mut differing = 0;
        let mut open: Option<(usize, usize)> = None;
        let mut dst_runs: Vec<(usize, usize)> = Vec::new();
        for b in (0..size).step_by(BS) {
            let end = (b + BS).min(size);
            if end <= dst_len && src[b..end] == dst[b..end] {
                continue;
            }
            differing += end - b;
            if b < dst_len {
                let end = end.min(dst_len);
                match dst_runs.last_mut() {
                    Some((at, len)) if *at + *len == b => *len = end - *at,
                    _ => dst_runs.push((b, end - b)),
                }
            }
            let (c0, c1) = (b / chunk * chunk, (end.div_ceil(chunk) * chunk).min(size));
            open = match open {
                Some((s, e)) if c0 <= e => Some((s, c1.max(e))),
                Some((s, e)) => {
                    ranges += &format!("{s} {}\n", e - s);
                    Some((c0, c1))
                }
                None => Some((c0, c1)),
            };
        }
        if let Some((s, e)) = open {
            ranges += &format!("{s} {}\n", e - s);
        }
        let src_path = dir.path().join("src.img");
        fs::write(&src_path, &src).unwrap();
        let ranges_path = dir.path().join("ranges");
        fs::write(&ranges_path, ranges).unwrap();
        Images {
            src: src_path,
            src_bytes: src,
            dst_orig: dst,
            ranges: ranges_path,
            differing,
            dst_runs,
            dir,
        }
    }

    /// Where `got` first differs from the source, if it does.
    fn first_difference(&self, got: &[u8]) -> Option<usize> {
        if got.len() != self.src_bytes.len() {
            return Some(got.len().min(self.src_bytes.len()));
        }
        got.chunks(MIB)
            .zip(self.src_bytes.chunks(MIB))
            .position(|(a, b)| a != b)
            .map(|i| {
                let at = i * MIB;
                at + got[at..]
                    .iter()
                    .zip(&self.src_bytes[at..])
                    .position(|(a, b)| a != b)
                    .unwrap()
            })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Hash,
    Chunks,
}

impl Pipeline {
    fn stages(self) -> &'static [&'static str] {
        match self {
            Pipeline::Hash => &["blkhash", "blkdiff", "blkpatch"],
            Pipeline::Chunks => &["blkread-chunks", "blkpatch"],
        }
    }
}

/// Where a rerun with `--state` resumes: `blkpatch --print-state`.
struct Resume {
    from: u64,
    stream_id: Option<String>,
}

fn print_state(state: &Path) -> Resume {
    let mut cmd = Command::new(bin("blkpatch"));
    let out = stdout_ok(
        cmd.args(["--print-state", "--state"]).arg(state),
        "--print-state",
    );
    let text = String::from_utf8(out).unwrap();
    let (id, off) = text.trim().split_once(' ').unwrap();
    Resume {
        from: off.parse().unwrap(),
        stream_id: (id != "none").then(|| id.to_owned()),
    }
}

/// One running stage.
struct Stage {
    name: &'static str,
    child: Child,
    /// Exit status, once reaped.
    status: Option<ExitStatus>,
    /// When it exited, from the start of the pipeline.
    ended: Duration,
    /// Bytes it wrote (`wchar` of /proc/PID/io), read at its exit, before it was reaped.
    wchar: u64,
}

/// A trial's files.
struct Paths {
    dst: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    /// The target was last seen equal to the source, byte for byte (so a reset only has to
    /// rewrite where the original differs).
    at_source: Cell<bool>,
}

impl Paths {
    /// Put the original target back, with its old size and without state: overwritten in
    /// place, so the file keeps its pages. A target checked equal to the source gets only the
    /// runs where the original differs (less than half of it).
    ///
    /// Written through a shared mapping, its descriptor closed before the first byte is
    /// copied: a descriptor open for writing in this process is inherited by any child that
    /// another test thread forks meanwhile, until that child's exec, and blkpatch (started
    /// next) would rightly refuse a target "open for writing in process N" (seen once in a
    /// loaded run with a plain write; see also `common::write_target`).
    fn reset(&self, img: &Images) {
        let len = img.dst_orig.len();
        let mut map = {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.dst)
                .unwrap();
            f.set_len(len as u64).unwrap();
            // SAFETY: as `map`; the mapping outlives the descriptor, closed right here.
            unsafe { memmap2::MmapMut::map_mut(&f) }.expect("mmap")
        };
        if self.at_source.replace(false) {
            for &(at, n) in &img.dst_runs {
                map[at..at + n].copy_from_slice(&img.dst_orig[at..at + n]);
            }
        } else {
            map.copy_from_slice(&img.dst_orig);
        }
        drop(map);
        let _ = fs::remove_file(&self.state);
    }

    /// The target's contents now, mapped: only once every stage has exited (nothing may
    /// truncate it under the map).
    fn target(&self) -> Mapped {
        map(&File::open(&self.dst).unwrap())
    }

    /// Where the target first differs from the source, if it does; remembered for `reset`.
    fn first_difference(&self, img: &Images) -> Option<usize> {
        let at = img.first_difference(&self.target());
        self.at_source.set(at.is_none());
        at
    }
}

/// The target mapped rather than read: reading the 48 MiB target into a buffer, twice a
/// trial, cost more than the pipelines under test (a copy out of the page cache on a 2-core
/// VM: 100-300 ms); comparing the mapped page cache costs about a third of that.
type Mapped = memmap2::Mmap;

/// Map all of `f`, shared and read-only.
fn map(f: &File) -> Mapped {
    // SAFETY: a shared mapping of a whole file that no other process changes or truncates
    // while it is mapped (every stage has exited, or none has started yet).
    unsafe { memmap2::Mmap::map(f) }.expect("mmap")
}

/// Start `p` on `dst`: each stage its own process, stdout piped into the next one's stdin,
/// stderr to a file per stage.
fn spawn(
    p: Pipeline,
    img: &Images,
    paths: &Paths,
    state: bool,
    resume: Option<&Resume>,
) -> (Vec<Stage>, Instant) {
    let log = |i: usize| File::create(paths.logs.join(format!("stderr{i}"))).unwrap();
    let from: Vec<String> = match resume {
        Some(r) if r.from > 0 => vec!["--from".into(), r.from.to_string()],
        _ => vec![],
    };
    let id: Vec<String> = match resume.and_then(|r| r.stream_id.as_ref()) {
        Some(id) => vec!["--stream-id".into(), id.clone()],
        None => vec![],
    };
    let started = Instant::now();
    let mut children = Vec::new();
    // Start the next stage reading `stdin`, its stderr into the next log; returns its stdout.
    let mut stage = |cmd: &mut Command, stdin: Stdio| {
        let c = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(log(children.len()))
            .spawn()
            .unwrap();
        children.push(c);
        children.last_mut().unwrap().stdout.take().unwrap()
    };
    let mut input: Stdio = match p {
        Pipeline::Hash => {
            let mut hash = Command::new(bin("blkhash"));
            let upstream = stage(hash.args(&from).arg(&paths.dst), Stdio::null());
            let mut diff = Command::new(bin("blkdiff"));
            stage(diff.args(&from).args(&id).arg(&img.src), upstream.into()).into()
        }
        Pipeline::Chunks => {
            let mut chunks = Command::new(bin("blkread-chunks"));
            let ranges = File::open(&img.ranges).unwrap().into();
            stage(chunks.args(&from).args(&id).arg(&img.src), ranges).into()
        }
    };
    let mut patch = Command::new(bin("blkpatch"));
    if state {
        // Frequent checkpoints, so that a killed blkpatch leaves progress to resume from.
        patch
            .arg("--state")
            .arg(&paths.state)
            .args(["--checkpoint", "256K"]);
    }
    let c = patch
        .arg(&paths.dst)
        .stdin(std::mem::replace(&mut input, Stdio::null()))
        .stdout(Stdio::null())
        .stderr(log(children.len()))
        .spawn()
        .unwrap();
    drop(patch); // the Command holds our copy of the pipe's read end
    children.push(c);
    let stages = p
        .stages()
        .iter()
        .zip(children)
        .map(|(&name, child)| Stage {
            name,
            child,
            status: None,
            ended: Duration::ZERO,
            wchar: 0,
        })
        .collect();
    (stages, started)
}

fn wchar(pid: Pid) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// If `s` has exited: its write count (read while it is a zombie) and its status.
fn reap(s: &mut Stage, started: Instant) {
    if s.status.is_some() {
        return;
    }
    let pid = Pid::from_raw(s.child.id() as i32);
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags).unwrap() {
        WaitStatus::StillAlive => {}
        _ => {
            s.wchar = wchar(pid);
            s.status = Some(s.child.wait().unwrap());
            s.ended = started.elapsed();
        }
    }
}

/// What a kill found when it was sent.
#[derive(Default, Clone, Copy)]
struct Landed {
    /// The victim had not exited yet.
    victim_running: bool,
    /// blkpatch had not exited yet.
    pipeline_running: bool,
}

/// Wait for every stage, sending SIGKILL to stage `kill.0` at `kill.1` after the start.
fn wait_all(stages: &mut [Stage], started: Instant, kill: Option<(usize, Duration)>) -> Landed {
    let mut pending = kill;
    let mut landed = Landed::default();
    loop {
        for s in stages.iter_mut() {
            reap(s, started);
        }
        let now = started.elapsed();
        if let Some((victim, at)) = pending {
            if now >= at {
                landed = Landed {
                    victim_running: stages[victim].status.is_none(),
                    pipeline_running: stages.last().unwrap().status.is_none(),
                };
                if landed.victim_running {
                    stages[victim].child.kill().unwrap(); // SIGKILL
                }
                pending = None;
                continue;
            }
        }
        if stages.iter().all(|s| s.status.is_some()) {
            return landed;
        }
        if now > HANG {
            let hung: Vec<&str> = stages
                .iter()
                .filter(|s| s.status.is_none())
                .map(|s| s.name)
                .collect();
            for s in stages.iter_mut() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            panic!("hang: {hung:?} still running after {HANG:?}");
        }
        let nap = match pending {
            Some((_, at)) => (at - now).min(Duration::from_millis(1)),
            None => Duration::from_millis(1),
        };
        std::thread::sleep(nap);
    }
}

fn logs(stages: &[Stage], paths: &Paths) -> String {
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let err = fs::read_to_string(paths.logs.join(format!("stderr{i}"))).unwrap_or_default();
            format!(
                "\n  {}: {:?}, wrote {} B, {:?}: {}",
                s.name,
                s.status.unwrap(),
                s.wchar,
                s.ended,
                err.trim()
            )
        })
        .collect()
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => c.to_string(),
        (_, Some(s)) => format!("sig{s}"),
        _ => "?".into(),
    }
}

/// The run time of each stage and what each wrote, from three unkilled runs: (fastest exit
/// time, bytes written). The fastest, not the median: a burst of load elsewhere only ever
/// slows a run, and a slowed calibration makes kills land after the stage has finished (seen
/// with the median: 13 of 25 blkhash kills late after a burst at the start of a full run).
fn calibrate(p: Pipeline, img: &Images, paths: &Paths, state: bool) -> Vec<(Duration, u64)> {
    let n = p.stages().len();
    let mut ends = vec![Vec::new(); n];
    let mut wrote = vec![0u64; n];
    for run in 0..3 {
        paths.reset(img);
        let (mut stages, started) = spawn(p, img, paths, state, None);
        wait_all(&mut stages, started, None);
        for (i, s) in stages.iter().enumerate() {
            assert!(
                s.status.unwrap().success(),
                "unkilled run: {}",
                logs(&stages, paths)
            );
            ends[i].push(s.ended);
            if i + 1 < n {
                // A stage's output is the same size every run: the kill checks rely on it.
                assert!(run == 0 || wrote[i] == s.wchar, "{}", logs(&stages, paths));
                wrote[i] = s.wchar;
            }
        }
        assert_eq!(paths.first_difference(img), None, "unkilled run");
    }
    ends.into_iter()
        .zip(wrote)
        .map(|(mut e, w)| {
            e.sort();
            (e[0], w)
        })
        .collect()
}

/// Counts for one stage in one mode.
#[derive(Default)]
struct Tally {
    trials: usize,
    /// Killed while it and blkpatch were still running.
    mid_run: usize,
    /// The stage had already exited by itself (the pipeline was still running).
    victim_done: usize,
    /// The whole pipeline had already completed.
    pipeline_done: usize,
    /// Killed mid-run, but after it had written all its output: downstream finished.
    output_complete: usize,
    /// With --state: reruns that resumed from a non-zero offset.
    resumed_mid: usize,
    max_delay: Duration,
    exits: BTreeMap<&'static str, BTreeMap<String, usize>>,
}

/// Every stage of `p`, `trials()` times each, without and with --state.
fn kill_every_stage(p: Pipeline, salt: u64) {
    let t0 = Instant::now();
    let seed = seed();
    // Each test draws its own sequence from the same seed.
    let mut rng = Rng((seed ^ salt) | 1);
    let img = Images::new(&mut rng);
    let paths = Paths {
        dst: img.dir.path().join("dst.img"),
        state: img.dir.path().join("state"),
        logs: img.dir.path().to_owned(),
        at_source: Cell::new(false),
    };
    let names = p.stages();
    let n = trials();
    eprintln!(
        "kill9 {}: seed {seed:#x} (BLKPIPE_KILL_SEED={seed:#x} with the same test repeats it), {n} trials per stage and mode; source {} B, target {} B, {} B differ, ranges {} B",
        names.join(" | "),
        img.src_bytes.len(),
        img.dst_orig.len(),
        img.differing,
        fs::read_to_string(&img.ranges)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum::<u64>()
    );
    for state in [false, true] {
        let mode = if state {
            "with --state"
        } else {
            "without --state"
        };
        for victim in 0..names.len() {
            let bench = Bench {
                p,
                img: &img,
                paths: &paths,
                state,
                cal: calibrate(p, &img, &paths, state),
            };
            eprintln!(
                "  {mode}, before killing {}: unkilled run: {}",
                names[victim],
                names
                    .iter()
                    .zip(&bench.cal)
                    .map(|(s, (t, w))| match w {
                        0 => format!("{s} exits at {t:.1?}"),
                        w => format!("{s} exits at {t:.1?} ({w} B out)"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut tally = Tally::default();
            for trial in 0..n {
                let ctx = format!(
                    "{} {mode}, kill {}, trial {trial}, seed {seed:#x}",
                    names.join(" | "),
                    names[victim]
                );
                let delay = bench.cal[victim].0.mul_f64(0.9 * rng.unit());
                kill_trial(&bench, victim, delay, &mut tally, &ctx);
            }
            eprintln!(
                "    kill {:<14} {:>3} trials: {:>3} mid-run, {:>2} after the stage had finished, {:>2} after the pipeline had; {} killed after writing all their output; delays up to {:.1?}{}; exits {}",
                names[victim],
                tally.trials,
                tally.mid_run,
                tally.victim_done,
                tally.pipeline_done,
                tally.output_complete,
                tally.max_delay,
                if state {
                    format!("; {} resumed past 0", tally.resumed_mid)
                } else {
                    String::new()
                },
                tally
                    .exits
                    .iter()
                    .map(|(s, h)| format!(
                        "{s} {}",
                        h.iter()
                            .map(|(c, k)| format!("{c}x{k}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            // Delays are drawn inside the stage's own run time, so most kills land mid-run.
            assert!(
                tally.trials < 10 || tally.mid_run * 2 >= tally.trials,
                "{} {mode}: only {} of {} kills landed mid-run",
                names[victim],
                tally.mid_run,
                tally.trials
            );
        }
    }
    eprintln!("kill9 {}: {:.1?}", names.join(" | "), t0.elapsed());
}

/// One pipeline in one mode, calibrated.
struct Bench<'a> {
    p: Pipeline,
    img: &'a Images,
    paths: &'a Paths,
    state: bool,
    /// Per stage: when it exits and how many bytes it writes in an unkilled run.
    cal: Vec<(Duration, u64)>,
}

/// Kill stage `victim` after `delay`, check the survivors and the state file, rerun.
fn kill_trial(b: &Bench, victim: usize, delay: Duration, tally: &mut Tally, ctx: &str) {
    let (p, img, paths, state, cal) = (b.p, b.img, b.paths, b.state, &b.cal);
    paths.reset(img);
    let (mut stages, started) = spawn(p, img, paths, state, None);
    let landed = wait_all(&mut stages, started, Some((victim, delay)));
    let ctx = format!("{ctx}, kill at {delay:.1?}:{}", logs(&stages, paths));
    tally.trials += 1;
    tally.max_delay = tally.max_delay.max(delay);
    let killed = stages[victim].status.unwrap().signal() == Some(9);
    match (landed.pipeline_running, landed.victim_running) {
        (false, _) => tally.pipeline_done += 1,
        (true, false) => tally.victim_done += 1,
        (true, true) => tally.mid_run += 1,
    }
    if killed && cal[victim].1 == stages[victim].wchar && victim + 1 < stages.len() {
        tally.output_complete += 1;
    }
    for s in &stages {
        *tally
            .exits
            .entry(s.name)
            .or_default()
            .entry(describe(s.status.unwrap()))
            .or_default() += 1;
    }

    // The victim died of the kill, or had exited 0 before it.
    let vs = stages[victim].status.unwrap();
    assert!(killed || vs.success(), "victim: {ctx}");
    for (i, s) in stages.iter().enumerate() {
        let st = s.status.unwrap();
        if i == victim {
            continue;
        }
        // Exit 0 is right only for a stage that got all its input and wrote all its output.
        if st.success() {
            let fed = i == 0 || stages[i - 1].wchar == cal[i - 1].1;
            let wrote_all = i + 1 == stages.len() || s.wchar == cal[i].1;
            assert!(
                fed && wrote_all,
                "{} exited 0 with {} (input complete: {fed}, output complete: {wrote_all}): {ctx}",
                s.name,
                if i > victim {
                    "its input cut short"
                } else {
                    "its reader killed"
                }
            );
        } else if i > victim {
            assert_eq!(
                st.code(),
                Some(3),
                "{} after an upstream kill: {ctx}",
                s.name
            );
        } else {
            assert_eq!(
                st.code(),
                Some(141),
                "{} after a downstream kill: {ctx}",
                s.name
            );
        }
    }
    let patched = stages.last().unwrap().status.unwrap().success();
    let got = paths.target();
    if patched {
        assert_eq!(img.first_difference(&got), None, "blkpatch exited 0: {ctx}");
    }

    // With --state: the state file tells the truth, before anything reruns.
    let resume = if state {
        let st = ResumeState::load(&paths.state).unwrap();
        if let Some(st) = st {
            let applied = st.applied as usize;
            assert_eq!(st.source_size, img.src_bytes.len() as u64, "{ctx}");
            assert!(
                applied <= got.len(),
                "state says {applied} applied, target has {} B: {ctx}",
                got.len()
            );
            if let Some(at) = got[..applied]
                .iter()
                .zip(&img.src_bytes)
                .position(|(a, b)| a != b)
            {
                panic!("state says {applied} applied, but the target differs at {at}: {ctx}");
            }
            if st.complete {
                assert_eq!(
                    img.first_difference(&got),
                    None,
                    "state says complete: {ctx}"
                );
            }
            assert!(!patched || st.complete, "blkpatch exited 0: {ctx}");
        } else {
            assert!(!patched, "blkpatch exited 0 without a state file: {ctx}");
        }
        let r = print_state(&paths.state);
        if r.from > 0 {
            tally.resumed_mid += 1;
        }
        Some(r)
    } else {
        None
    };
    drop(got);

    // The rerun, on the partially patched target, finishes the job.
    let (mut stages, started) = spawn(p, img, paths, state, resume.as_ref());
    wait_all(&mut stages, started, None);
    let rerun = format!(
        "rerun{}: {ctx}\n rerun:{}",
        resume
            .as_ref()
            .map(|r| format!(" from {} id {:?}", r.from, r.stream_id))
            .unwrap_or_default(),
        logs(&stages, paths)
    );
    assert!(
        stages.iter().all(|s| s.status.unwrap().success()),
        "{rerun}"
    );
    if let Some(at) = paths.first_difference(img) {
        panic!("target differs from the source at {at} after the {rerun}");
    }
    if state {
        let st = ResumeState::load(&paths.state).unwrap().unwrap();
        assert!(st.complete, "{rerun}");
    }
}

#[test]
fn kill_9_any_stage_of_either_pipeline_then_rerun() {
    kill_every_stage(Pipeline::Hash, 0);
    kill_every_stage(Pipeline::Chunks, 0x5eed);
}
