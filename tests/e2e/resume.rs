//! Resume (`blkpatch --state`, `blkread-chunks --from/--stream-id`) and faults: kill -9 at
//! random moments, a full filesystem.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{assert_stderr_has, bin, pattern, pattern_image, run, spawn_fed, stderr};

/// `(stream id, applied offset)` from a state file, through `blkpatch --print-state`.
fn print_state(state: &Path) -> (String, u64) {
    let out = Command::new(bin("blkpatch"))
        .args(["--print-state", "--state"])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let (id, off) = text.trim().split_once(' ').unwrap();
    (id.to_owned(), off.parse().unwrap())
}

/// `blkpatch --state STATE DST < stream`.
fn with_state(state: &Path, dst: &Path, stream: &[u8]) -> std::process::Output {
    let args = ["--state", state.to_str().unwrap(), dst.to_str().unwrap()];
    run("blkpatch", &args, stream)
}

fn full_stream(src: &Path, size: u64, extra: &[&str]) -> Vec<u8> {
    let mut args = extra.to_vec();
    args.push(src.to_str().unwrap());
    let out = run("blkread-chunks", &args, format!("0 {size}\n").as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// Resume from what the state file says until the target is complete.
fn resume(src: &Path, dst: &Path, state: &Path, size: u64) {
    let (id, from) = print_state(state);
    let from_s = from.to_string();
    let mut extra = vec!["--from", &from_s];
    if id != "none" {
        extra.extend(["--stream-id", &id]);
    }
    let stream = full_stream(src, size, &extra);
    let out = with_state(state, dst, &stream);
    assert!(out.status.success(), "resume from {from}: {}", stderr(&out));
}

#[test]
fn truncated_then_resumed_from_the_recorded_offset() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24u64 << 20;
    let (src, src_bytes) = pattern_image(dir.path(), "src.img", size as usize, 11);
    let dst = dir.path().join("dst.img");
    let state = dir.path().join("state");
    let stream = full_stream(&src, size, &[]);
    let out = with_state(&state, &dst, &stream[..stream.len() * 2 / 3]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let (_, applied) = print_state(&state);
    assert!(applied >= 12 << 20, "state records progress: {applied}");
    let got = fs::read(&dst).unwrap();
    assert_eq!(&got[..applied as usize], &src_bytes[..applied as usize]);

    // Another stream (a new id) is refused while the state file says otherwise.
    let other = full_stream(&src, size, &[]);
    let out = with_state(&state, &dst, &other);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(&out, "remove it to start over");

    resume(&src, &dst, &state, size);
    assert_eq!(fs::read(&dst).unwrap(), src_bytes);
    assert!(fs::read_to_string(&state)
        .unwrap()
        .trim_end()
        .ends_with("complete"));
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let (src, src_bytes) = pattern_image(dir.path(), "src.img", size as usize, 12);
    let src_arg = src.to_str().unwrap();
    let mut rng = 0x1234_5678u64;
    for trial in 0..8 {
        let dst = dir.path().join(format!("dst{trial}.img"));
        let state = dir.path().join(format!("state{trial}"));
        fs::write(&dst, pattern(size as usize, 100 + trial)).unwrap();
        // Which stage dies alternates; when it dies is random.
        let list = format!("0 {size}\n");
        let (mut producer, _) = spawn_fed("blkread-chunks", &[src_arg], list.as_bytes());
        let mut consumer = Command::new(bin("blkpatch"))
            .arg("--state")
            .arg(&state)
            .arg(&dst)
            .stdin(producer.stdout.take().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 150));
        let victim = if trial % 2 == 0 {
            &mut consumer
        } else {
            &mut producer
        };
        let _ = victim.kill(); // SIGKILL
        let p = producer.wait().unwrap();
        let c = consumer.wait().unwrap();
        if c.success() {
            // blkpatch only succeeds on a whole stream whose end record it verified: the
            // kill landed after the producer had written it (also when the producer then died
            // on its way out, so `p` is no success). The target must be the source; a
            // truncated stream taken as whole would leave dst's own pattern behind.
            assert_eq!(
                fs::read(&dst).unwrap(),
                src_bytes,
                "trial {trial} (producer: {p})"
            );
            continue;
        }
        if state.exists() {
            let (_, applied) = print_state(&state);
            let got = fs::read(&dst).unwrap();
            assert_eq!(
                &got[..applied as usize],
                &src_bytes[..applied as usize],
                "trial {trial}: state overstates"
            );
            resume(&src, &dst, &state, size);
        } else {
            let out = run(
                "blkpatch",
                &[dst.to_str().unwrap()],
                &full_stream(&src, size, &[]),
            );
            assert!(out.status.success());
        }
        assert_eq!(fs::read(&dst).unwrap(), src_bytes, "trial {trial}");
    }
}

#[test]
fn full_filesystem_is_a_clear_error_and_the_state_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let size = 16u64 << 20;
    let (src, src_bytes) = pattern_image(dir.path(), "src.img", size as usize, 13);
    let stream = full_stream(&src, size, &[]);
    for state_on_full_fs in [false, true] {
        let dst = mnt.join("dst.img");
        let state = if state_on_full_fs {
            mnt.join("state")
        } else {
            dir.path().join("state")
        };
        let _ = fs::remove_file(&dst);
        let _ = fs::remove_file(&state);
        let out = with_state(&state, &dst, &stream);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert_stderr_has(&out, "No space left");
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        if state.exists() {
            let (_, applied) = print_state(&state);
            let got = fs::read(&dst).unwrap();
            assert!(applied as usize <= got.len());
            assert_eq!(&got[..applied as usize], &src_bytes[..applied as usize]);
            assert!(!fs::read_to_string(&state).unwrap().contains("complete"));
        }
    }
}
