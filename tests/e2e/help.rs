//! The command-line surface of every tool: `--help` pinned to `tests/help/<tool>.txt`, so a
//! change of help text is deliberate, and binary streams refused on a terminal.
//!
//! After changing a tool's help on purpose, regenerate the expected texts and review the diff:
//!
//!     BLKPIPE_BLESS=1 cargo test --release --test e2e -- help::

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{self, bin};

const TOOLS: &[&str] = &[
    "blkhash",
    "blkdiff",
    "cowlist",
    "blkread-chunks",
    "blkpatch",
    "blkmerge",
];

fn expected_path(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/help")
        .join(format!("{tool}.txt"))
}

/// `tool --help` at a fixed width, whatever the terminal running the tests.
fn help(tool: &str) -> String {
    let out = Command::new(bin(tool))
        .arg("--help")
        .env("COLUMNS", "100")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} --help: {:?}", out.status);
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn help_texts_are_pinned() {
    let bless = std::env::var_os("BLKPIPE_BLESS").is_some_and(|v| v == "1");
    let mut changed = Vec::new();
    for &tool in TOOLS {
        let actual = help(tool);
        let path = expected_path(tool);
        if bless {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&path).unwrap_or_default();
        if actual != expected {
            let line = actual
                .lines()
                .zip(expected.lines())
                .position(|(a, e)| a != e)
                .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
            eprintln!(
                "{tool} --help differs from {} from line {}:\n  now:      {:?}\n  expected: {:?}",
                path.display(),
                line + 1,
                actual.lines().nth(line).unwrap_or("<end>"),
                expected.lines().nth(line).unwrap_or("<end>"),
            );
            changed.push(tool);
        }
    }
    assert!(
        changed.is_empty(),
        "--help of {changed:?} changed. If that is intended, regenerate the expected texts with \
         `BLKPIPE_BLESS=1 cargo test --release --test e2e -- help::` and commit tests/help/ with the change."
    );
}

#[test]
fn every_help_has_the_family_sections() {
    for &tool in TOOLS {
        let h = help(tool);
        for want in ["Streams:", "Usage:", "Safety:", "Examples:", "Exit codes:"] {
            assert!(h.contains(want), "{tool} --help lacks {want}");
        }
        let width = h.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(width <= 100, "{tool} --help has a line of {width} columns");
        // The short help is one screen: a one-line summary, no examples.
        let short = Command::new(bin(tool)).arg("-h").output().unwrap();
        let short = String::from_utf8_lossy(&short.stdout);
        assert!(!short.contains("Examples:"), "{tool} -h");
        assert!(
            short.lines().next().unwrap().len() < 100,
            "{tool} -h summary"
        );
    }
}

/// Runs `argv` with stdin, stdout and stderr on a pseudo-terminal (util-linux `script`);
/// returns its exit code and what it printed there.
fn on_tty(argv: &[&str]) -> (Option<i32>, String) {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out: Output = Command::new("script")
        .args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

#[test]
fn binary_streams_are_refused_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::write(&img, common::pattern(64 * 1024, 7)).unwrap();
    let ranges = dir.path().join("ranges");
    fs::write(&ranges, "0 4096\n").unwrap();
    let img_s = img.to_str().unwrap();
    let ranges_s = ranges.to_str().unwrap();
    let b = |t: &str| bin(t).to_str().unwrap().to_owned();
    let cases: Vec<Vec<String>> = vec![
        vec![b("blkhash"), img_s.into()],
        vec![b("blkdiff"), "--hashes".into(), img_s.into(), img_s.into()],
        vec![
            b("blkread-chunks"),
            "--ranges".into(),
            ranges_s.into(),
            img_s.into(),
        ],
        vec![
            b("cowlist"),
            "--data".into(),
            "--cow".into(),
            img_s.into(),
            "--origin-size".into(),
            "1M".into(),
        ],
        vec![b("blkmerge"), img_s.into()],
    ];
    for argv in &cases {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, text) = on_tty(&argv);
        assert_eq!(code, Some(5), "{argv:?} on a terminal: {text}");
        assert!(
            text.contains("refusing to write a binary stream to a terminal")
                && text.contains("--force-tty"),
            "{argv:?}: {text}"
        );
    }
    // Text output is fine on a terminal, and --force-tty overrides the refusal.
    let (code, text) = on_tty(&[&b("blkhash"), "--digest", img_s]);
    assert_eq!(code, Some(0), "blkhash --digest: {text}");
    assert!(text.contains("xxh3-128:"), "{text}");
    let (code, text) = on_tty(&[&b("blkhash"), "--text", img_s]);
    assert_eq!(code, Some(0), "blkhash --text: {text}");
    let (code, text) = on_tty(&[
        &b("blkread-chunks"),
        "--force-tty",
        "--ranges",
        ranges_s,
        img_s,
    ]);
    assert_eq!(code, Some(0), "blkread-chunks --force-tty: {text}");
    assert!(text.contains("BLKPATCH"), "{text}");
}

/// Runs the shell command `cmd` with stdin, stdout and stderr on a pseudo-terminal (a
/// redirection in `cmd` moves stdout off it), the built tools first on PATH; returns its exit
/// code and what it printed.
fn sh_on_tty(cmd: &str) -> (Option<i32>, String) {
    let out: Output = Command::new("script")
        .args(["-q", "-e", "-c", cmd, "/dev/null"])
        .env("PATH", common::tools_path())
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_terminal_on_stdin_is_refused_where_a_stream_or_list_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::write(&img, common::pattern(64 * 1024, 7)).unwrap();
    let img = img.to_str().unwrap();
    // The tools are on PATH (sh_on_tty).
    let cases = [
        (format!("blkpatch {img}"), "blkpatch reads a patch stream"),
        ("blkpatch --dry-run".into(), "blkpatch reads a patch stream"),
        (
            format!("blkdiff {img} > /dev/null"),
            "blkdiff reads a hash stream (from blkhash",
        ),
        (
            format!("blkmerge {img} - > /dev/null"),
            "blkmerge reads a patch stream from `-`",
        ),
        (
            format!("blkread-chunks {img} > /dev/null"),
            "a range list is read",
        ),
        (
            format!("blkhash --ranges - {img} > /dev/null"),
            "a range list is read",
        ),
    ];
    for (cmd, what) in &cases {
        // `timeout` turns a tool that waits on the terminal into a failure, not a hang.
        let (code, text) = sh_on_tty(&format!("timeout 10 {cmd}"));
        assert_eq!(code, Some(5), "{cmd} with stdin on a terminal: {text}");
        assert!(
            text.contains("stdin is a terminal") && text.contains(what),
            "{cmd}: {text}"
        );
        assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");
    }
    // The same tools read a file named on the command line while stdin is a terminal.
    let patch = dir.path().join("p.patch");
    let out = common::run("blkread-chunks", &["--", img], b"0 4096\n");
    fs::write(&patch, &out.stdout).unwrap();
    let (code, text) = sh_on_tty(&format!(
        "timeout 10 blkpatch --dry-run --input {}",
        patch.display()
    ));
    assert_eq!(code, Some(0), "{text}");
}

/// The examples and exit codes after the options fit 100 columns as written (clap would wrap
/// a longer line at 100), so no example is cut in the middle of a command and each can be
/// pasted.
#[test]
fn verbatim_help_lines_fit_100_columns() {
    for &tool in TOOLS {
        let out = Command::new(bin(tool))
            .arg("--help")
            .env("COLUMNS", "1000")
            .output()
            .unwrap();
        let h = String::from_utf8(out.stdout).unwrap();
        let examples = h.find("\nExamples:").expect("Examples:");
        for line in h[examples..].lines() {
            let width = line.chars().count();
            assert!(width <= 100, "{tool} --help: {width} columns: {line}");
        }
    }
}
