//! Helpers shared by the end-to-end tests: the built tools, test data, processes, loop
//! devices.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

/// Deterministic, incompressible-ish content: block `i` is filled from a simple generator.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn run(name: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin(name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    feeder.join().unwrap();
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loop device over a file, detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Option<Loop> {
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
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

pub fn require_loop(l: Option<Loop>) -> Loop {
    // CI runs as root with loop devices; a developer box without them says so loudly.
    l.expect("loop devices are required (run as root with losetup)")
}
