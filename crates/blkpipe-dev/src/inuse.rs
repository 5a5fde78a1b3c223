//! Is a target in use? Mounted, held by a stacked device, open in another process, or the
//! backing file of a loop device.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::DevError;

pub(crate) fn check(path: &Path) -> Result<(), DevError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(()); // does not exist yet: opening will create it or fail
    };
    let in_use = |why: String| {
        Err(DevError::InUse {
            path: path.to_owned(),
            why,
        })
    };
    if meta.file_type().is_block_device() {
        let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        if let Some(mp) = mounted_at(maj as u64, min as u64) {
            return in_use(format!("mounted on {mp}"));
        }
        let sys = format!("/sys/dev/block/{maj}:{min}");
        if let Some(h) = first_entry(&format!("{sys}/holders")) {
            return in_use(format!("held by {h}"));
        }
        // A partition's holders hang off the partition; a whole disk's partitions may be
        // mounted, which makes writing the whole disk just as dangerous.
        if let Ok(entries) = fs::read_dir(&sys) {
            for e in entries.flatten() {
                let dev = fs::read_to_string(e.path().join("dev")).unwrap_or_default();
                if let Some((a, b)) = dev.trim().split_once(':') {
                    if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                        if let Some(mp) = mounted_at(a, b) {
                            return in_use(format!(
                                "partition {} is mounted on {mp}",
                                e.file_name().to_string_lossy()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(pid) =
            opened_by_other(|m| m.file_type().is_block_device() && m.rdev() == meta.rdev())
        {
            return in_use(format!("open in process {pid}"));
        }
    } else if meta.file_type().is_file() {
        if let Some(loopdev) = backing_loop(path) {
            return in_use(format!("backs loop device {loopdev}"));
        }
    }
    Ok(())
}

fn mounted_at(major: u64, minor: u64) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{major}:{minor}");
    info.lines().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (dev == want).then(|| mp.to_owned())
    })
}

fn first_entry(dir: &str) -> Option<String> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .next()
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Another process holding an fd whose target matches.
fn opened_by_other(matches: impl Fn(&fs::Metadata) -> bool) -> Option<u32> {
    let me = std::process::id();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::metadata(fd.path()).is_ok_and(|m| matches(&m)) {
                return Some(pid);
            }
        }
    }
    None
}

fn backing_loop(path: &Path) -> Option<String> {
    let target = fs::canonicalize(path).ok()?;
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim()) == target {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}
