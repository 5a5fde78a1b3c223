//! `--progress=always` into a pipe: plain lines once a second with the total, percent, rate
//! and ETA, and a last line when the work ends, for every tool that reports progress.

use std::fs;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{pattern, run, spawn, stderr};

/// Lines of the form `TOOL: DONE of TOTAL (P%), RATE/s, ETA m:ss`.
fn periodic_lines<'a>(tool: &str, err: &'a str) -> Vec<&'a str> {
    err.lines()
        .filter(|l| l.starts_with(&format!("{tool}: ")) && l.contains(" of ") && l.contains("%), "))
        .filter(|l| l.contains("/s, ETA "))
        .collect()
}

#[test]
fn progress_into_a_pipe_shows_lines_with_total_and_eta() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    fs::write(&src, pattern(8 << 20, 3)).unwrap();
    let src_s = src.to_str().unwrap();
    let stream = run("blkread-chunks", &[src_s], b"0 8388608\n");
    assert!(stream.status.success(), "{}", stderr(&stream));

    // blkpatch reads half the stream, then waits 2.5 s for the rest: at least two periodic
    // lines, while the total is known from the stream header.
    let mut child = spawn(
        "blkpatch",
        &["--progress=always", dst.to_str().unwrap()],
        Stdio::piped(),
    );
    let mut input = child.stdin.take().unwrap();
    let half = stream.stdout.len() / 2;
    input.write_all(&stream.stdout[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    input.write_all(&stream.stdout[half..]).unwrap();
    drop(input);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    let lines = periodic_lines("blkpatch", &err);
    assert!(
        lines.len() >= 2,
        "periodic lines with total and ETA: {err:?}"
    );
    assert!(lines.iter().all(|l| l.contains(" of 8.0 MiB (")), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\x1b'),
        "plain lines: {err:?}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("blkpatch: 8.0 MiB of 8.0 MiB (100%), ") && last.contains(", done in "),
        "{last}"
    );
    assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());

    // The other tools end with the same last line, with their total.
    let cases: [(&str, Vec<&str>, Vec<u8>); 3] = [
        ("blkhash", vec!["--progress=always", src_s], vec![]),
        (
            "blkread-chunks",
            vec!["--progress=always", src_s],
            b"0 4194304\n".to_vec(),
        ),
        (
            "blkdiff",
            vec!["--progress=always", src_s],
            run("blkhash", &[dst.to_str().unwrap()], b"").stdout,
        ),
    ];
    for (tool, args, input) in cases {
        let out = run(tool, &args, &input);
        let err = stderr(&out);
        assert!(out.status.success(), "{tool}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with(&format!("{tool}: "))
                && last.contains(" MiB (100%), ")
                && last.contains(", done in "),
            "{tool}: {err:?}"
        );
    }
    // Without =always, a pipe gets no progress at all.
    let out = run("blkhash", &["--progress", src_s], b"");
    assert_eq!(stderr(&out), "");
}
