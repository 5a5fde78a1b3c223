//! The command-line contract every tool keeps, stamped out for each tool by `contract!`:
//! `--help` and `--version`, a bad option, a missing input, a directory as input, a truncated
//! and a corrupt input, a reader that goes away (broken pipe) and stdout on /dev/full.
//!
//! Each tool describes one good run (`Spec::good`) and where its input is (`Spec::input`); the
//! checks derive the bad runs from it. An item that cannot apply to a tool says why in its
//! spec (`Na`), so no tool silently escapes a check.

use std::fs::{self, File};
use std::io::Write;
use std::process::{Command, Output, Stdio};

use blkpipe_testkit::image;

use crate::common::{bin, pattern, run, stderr};

const SIZE: usize = 256 * 1024;

/// Files every spec may use: a source and a destination image, and streams made from them.
struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let mut dst = pattern(SIZE, 1);
        fs::write(dir.path().join("src.img"), pattern(SIZE, 2)).unwrap();
        dst[..SIZE / 2].copy_from_slice(&pattern(SIZE / 2, 2));
        fs::write(dir.path().join("dst.img"), &dst).unwrap();
        let patch = run("blkread-chunks", &[&s(&dir, "src.img")], b"0 131072\n");
        assert!(patch.status.success(), "{}", stderr(&patch));
        fs::write(dir.path().join("a.patch"), &patch.stdout).unwrap();
        let patch = run("blkread-chunks", &[&s(&dir, "src.img")], b"65536 131072\n");
        fs::write(dir.path().join("b.patch"), &patch.stdout).unwrap();
        let cow = image::build(8, &[9, 2, 3, 4, 30], None, None);
        fs::write(dir.path().join("cow.img"), cow).unwrap();
        Fx { dir }
    }

    fn path(&self, name: &str) -> String {
        s(&self.dir, name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir.path().join(name)).unwrap()
    }
}

fn s(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_owned()
}

/// One good run: arguments and stdin.
struct Run {
    args: Vec<String>,
    stdin: Vec<u8>,
}

/// Where a tool's damageable input is.
enum Input {
    /// A binary stream on stdin that has an end (truncation is detectable).
    StreamOnStdin,
    /// A binary stream in the file named by argument `n`.
    StreamInArg(usize),
    /// A text list on stdin: it has no end marker, so only corruption is detectable.
    TextOnStdin,
    /// A metadata image in the file named by argument `n`; its data areas carry no checksum,
    /// so corruption is tried at the given offsets of its metadata.
    ImageInArg(usize, &'static [usize]),
    /// The tool reads no stream, only a device: nothing to truncate or corrupt.
    Na(&'static str),
}

struct Spec {
    tool: &'static str,
    good: fn(&Fx) -> Run,
    /// Index of the argument naming the device or file the tool opens first.
    path_arg: usize,
    input: Input,
    /// Why a broken pipe / full stdout does not apply (the tool writes no stream), if so.
    no_stdout: Option<&'static str>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

fn exec(spec: &Spec, r: &Run, stdout: Stdio) -> Output {
    let mut child = Command::new(bin(spec.tool))
        .args(&r.args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = r.stdin.clone();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// A refusal: the expected exit code and exactly one line on stderr, prefixed by the tool.
fn assert_one_line(spec: &Spec, out: &Output, code: i32, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{} {what}: {err}", spec.tool);
    assert!(
        err.starts_with(&format!("{}: ", spec.tool)) && err.lines().count() == 1,
        "{} {what}: not one line: {err:?}",
        spec.tool
    );
    assert!(!err.contains("panicked"), "{} {what}: {err}", spec.tool);
    // Context is added once: no part of the message is said twice.
    let parts: Vec<&str> = err.trim_end().split(": ").filter(|p| p.len() > 8).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{} {what}: repeats {p:?}: {err}",
            spec.tool
        );
    }
}

fn help(spec: &Spec) {
    let out = Command::new(bin(spec.tool)).arg("--help").output().unwrap();
    assert!(out.status.success(), "{} --help", spec.tool);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["Usage:", "Exit codes"] {
        assert!(text.contains(want), "{} --help lacks {want}", spec.tool);
    }
    assert!(out.stderr.is_empty());
    let out = Command::new(bin(spec.tool))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{} --version", spec.tool);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn bad_option(spec: &Spec) {
    let fx = Fx::new();
    let mut r = (spec.good)(&fx);
    r.args.insert(0, "--no-such-option".into());
    let out = exec(spec, &r, Stdio::piped());
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}: {}",
        spec.tool,
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "{} wrote output", spec.tool);
}

fn missing_input(spec: &Spec) {
    let fx = Fx::new();
    let mut r = (spec.good)(&fx);
    // In a missing directory, so that even a tool that creates its target cannot.
    let missing = fx.path("no-such-dir/no-such-file");
    r.args[spec.path_arg] = missing.clone();
    let out = exec(spec, &r, Stdio::piped());
    assert!(!out.status.success(), "{} accepted {missing}", spec.tool);
    assert_one_line(spec, &out, out.status.code().unwrap_or(-1), "missing input");
    assert!(stderr(&out).contains("no-such-"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{} wrote output", spec.tool);
}

fn directory_input(spec: &Spec) {
    let fx = Fx::new();
    let mut r = (spec.good)(&fx);
    r.args[spec.path_arg] = fx.path("");
    let out = exec(spec, &r, Stdio::piped());
    assert!(!out.status.success(), "{} accepted a directory", spec.tool);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 5 || code == 4,
        "{}: {code}: {}",
        spec.tool,
        stderr(&out)
    );
    assert_one_line(spec, &out, code, "directory");
    assert!(out.stdout.is_empty(), "{} wrote output", spec.tool);
}

/// Replace the damageable input of a good run by `damage(bytes)`; `None` if there is none.
fn damaged(spec: &Spec, fx: &Fx, damage: impl Fn(&mut Vec<u8>)) -> Option<Run> {
    let mut r = (spec.good)(fx);
    match spec.input {
        Input::StreamOnStdin | Input::TextOnStdin => damage(&mut r.stdin),
        Input::StreamInArg(n) | Input::ImageInArg(n, _) => {
            let mut bytes = fs::read(&r.args[n]).unwrap();
            damage(&mut bytes);
            let p = fx.path("damaged");
            fs::write(&p, bytes).unwrap();
            r.args[n] = p;
        }
        Input::Na(_) => return None,
    }
    Some(r)
}

fn truncated_input(spec: &Spec) {
    match spec.input {
        Input::Na(why) => return assert!(!why.is_empty()),
        // A text list has no end marker: a list cut at a line end is a shorter valid list.
        Input::TextOnStdin => return,
        _ => {}
    }
    let fx = Fx::new();
    for keep in [0.0, 0.01, 0.5, 0.99] {
        let r = damaged(spec, &fx, |b| b.truncate((b.len() as f64 * keep) as usize)).unwrap();
        let out = exec(spec, &r, Stdio::piped());
        assert_one_line(spec, &out, 3, &format!("input cut to {keep} of its length"));
    }
}

fn corrupt_input(spec: &Spec) {
    if let Input::Na(why) = spec.input {
        return assert!(!why.is_empty());
    }
    let fx = Fx::new();
    let text = matches!(spec.input, Input::TextOnStdin);
    let fractions = [0.0, 0.3, 0.7];
    let offsets: Vec<Option<usize>> = match spec.input {
        Input::ImageInArg(_, at) => at.iter().map(|&o| Some(o)).collect(),
        _ => vec![None; fractions.len()],
    };
    for (at, offset) in fractions.into_iter().zip(offsets) {
        let r = damaged(spec, &fx, |b| {
            let i = offset.unwrap_or((b.len() as f64 * at) as usize);
            if text {
                b.splice(i..i, b"x".iter().copied());
            } else {
                b[i] ^= 0x10;
            }
        })
        .unwrap();
        let out = exec(spec, &r, Stdio::piped());
        assert_one_line(
            spec,
            &out,
            3,
            &format!("byte at {offset:?} or {at} flipped"),
        );
    }
}

fn broken_pipe(spec: &Spec) {
    if let Some(why) = spec.no_stdout {
        return assert!(!why.is_empty());
    }
    let fx = Fx::new();
    let r = (spec.good)(&fx);
    // The reader is gone before the tool starts: its first write fails, whatever the size
    // of the pipe buffer.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = exec(spec, &r, Stdio::from(writer));
    let (status, err) = (out.status, stderr(&out));
    assert_eq!(status.code(), Some(141), "{}: {err}", spec.tool);
    assert!(
        err.is_empty(),
        "{}: noise on a broken pipe: {err}",
        spec.tool
    );
}

fn full_stdout(spec: &Spec) {
    if let Some(why) = spec.no_stdout {
        return assert!(!why.is_empty());
    }
    let fx = Fx::new();
    let r = (spec.good)(&fx);
    let full = File::options().write(true).open("/dev/full").unwrap();
    let out = exec(spec, &r, Stdio::from(full));
    assert_one_line(spec, &out, 4, "stdout on /dev/full");
}

/// The tools' good runs.
fn blkhash(fx: &Fx) -> Run {
    Run {
        args: args(&[&fx.path("dst.img")]),
        stdin: vec![],
    }
}

fn blkdiff(fx: &Fx) -> Run {
    let hashes = run("blkhash", &[&fx.path("dst.img")], b"");
    assert!(hashes.status.success());
    Run {
        args: args(&[&fx.path("src.img")]),
        stdin: hashes.stdout,
    }
}

fn blkpatch(fx: &Fx) -> Run {
    Run {
        args: args(&[&fx.path("dst.img")]),
        stdin: fx.read("a.patch"),
    }
}

fn blkread_chunks(fx: &Fx) -> Run {
    Run {
        args: args(&[&fx.path("src.img")]),
        stdin: b"0 65536\n131072 4096\n".to_vec(),
    }
}

fn blkmerge(fx: &Fx) -> Run {
    Run {
        args: args(&[&fx.path("a.patch"), &fx.path("b.patch")]),
        stdin: vec![],
    }
}

fn cowlist(fx: &Fx) -> Run {
    Run {
        args: args(&["--origin-size", "128K", "--cow", &fx.path("cow.img")]),
        stdin: vec![],
    }
}

macro_rules! contract {
    ($($name:ident => $spec:expr;)*) => {$(
        mod $name {
            use super::*;
            const SPEC: Spec = $spec;
            #[test] fn help_and_version() { help(&SPEC) }
            #[test] fn bad_option_exits_2() { bad_option(&SPEC) }
            #[test] fn missing_input_is_one_line() { missing_input(&SPEC) }
            #[test] fn directory_as_input_is_refused() { directory_input(&SPEC) }
            #[test] fn truncated_input_exits_3() { truncated_input(&SPEC) }
            #[test] fn corrupt_input_exits_3() { corrupt_input(&SPEC) }
            #[test] fn broken_pipe_exits_141_quietly() { broken_pipe(&SPEC) }
            #[test] fn full_stdout_exits_4() { full_stdout(&SPEC) }
        }
    )*};
}

contract! {
    blkhash => Spec {
        tool: "blkhash", good: super::blkhash, path_arg: 0,
        input: Input::Na("blkhash reads only a device; any bytes are a valid device"),
        no_stdout: None,
    };
    blkdiff => Spec {
        tool: "blkdiff", good: super::blkdiff, path_arg: 0,
        input: Input::StreamOnStdin, no_stdout: None,
    };
    blkpatch => Spec {
        tool: "blkpatch", good: super::blkpatch, path_arg: 0,
        input: Input::StreamOnStdin,
        no_stdout: Some("blkpatch writes the target, not a stream on stdout"),
    };
    blkread_chunks => Spec {
        tool: "blkread-chunks", good: super::blkread_chunks, path_arg: 0,
        input: Input::TextOnStdin, no_stdout: None,
    };
    blkmerge => Spec {
        tool: "blkmerge", good: super::blkmerge, path_arg: 0,
        input: Input::StreamInArg(0), no_stdout: None,
    };
    cowlist => Spec {
        tool: "cowlist", good: super::cowlist, path_arg: 3,
        // The header's magic, and an origin chunk number in the first exception.
        input: Input::ImageInArg(3, &[0, 4096 + 1]), no_stdout: None,
    };
}
