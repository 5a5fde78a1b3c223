//! Is a target in use? Mounted, held by a stacked device, open in another process, or the
//! backing file of a loop device. Decided on what was opened (its metadata), by device
//! number and by device and inode, never by comparing paths.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::DevError;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

pub(crate) fn check(path: &Path, meta: &fs::Metadata) -> Result<(), DevError> {
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
        if let Some(holder) = opened_by_other(false, |m| {
            m.file_type().is_block_device() && m.rdev() == meta.rdev()
        }) {
            return in_use(format!("open in process {holder}"));
        }
    } else if meta.file_type().is_file() {
        if let Some(loopdev) = backing_loop(meta) {
            return in_use(format!("backs loop device {loopdev}"));
        }
        let same = |m: &fs::Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
        if let Some(holder) = opened_by_other(true, same) {
            return in_use(format!("open for writing in process {holder}"));
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

/// How many times a holder must be seen, and how long apart, before it counts. Some opens
/// last only milliseconds and are no use of the target: `losetup --find` opening the free
/// device it then fails to bind, another blkpatch asking each loop device for its backing
/// file, udev probing a new device, a child between fork and exec holding a copy of its
/// parent's descriptors. A holder that is still there 0.1 s later is refused.
const HOLDER_SCANS: u32 = 3;
const HOLDER_RESCAN_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Another process holding an fd whose target matches (with `writers_only`, one open for
/// writing) on each of [`HOLDER_SCANS`] scans: "PID (command)" of the last one seen.
fn opened_by_other(writers_only: bool, matches: impl Fn(&fs::Metadata) -> bool) -> Option<String> {
    let mut pid = scan_processes(writers_only, &matches)?;
    for _ in 1..HOLDER_SCANS {
        std::thread::sleep(HOLDER_RESCAN_AFTER);
        pid = scan_processes(writers_only, &matches)?;
    }
    // The command name is the process's own choice (prctl): no control character of it
    // reaches the one-line error.
    let comm: String = fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end_matches('\n')
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Some(match comm.as_str() {
        "" => pid.to_string(),
        name => format!("{pid} ({name})"),
    })
}

/// One pass over /proc for [`opened_by_other`].
fn scan_processes(writers_only: bool, matches: &impl Fn(&fs::Metadata) -> bool) -> Option<u32> {
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
            if !fs::metadata(fd.path()).is_ok_and(|m| matches(&m)) {
                continue;
            }
            if !writers_only {
                return Some(pid);
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let flags = fs::read_to_string(info).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
            });
            if flags.is_some_and(|f| f & libc::O_ACCMODE != libc::O_RDONLY) {
                return Some(pid);
            }
        }
    }
    None
}

/// The loop device whose backing file is the file `meta` describes (same device and inode),
/// whatever path reached it: asked of each bound loop device with `LOOP_GET_STATUS64`, or,
/// where its node cannot be opened, by stat'ing the backing file's path the kernel reports.
fn backing_loop(meta: &fs::Metadata) -> Option<String> {
    let (maj, min) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue; // not bound
        };
        let by_ioctl = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/dev/{name}"))
            .ok()
            .and_then(|f| {
                // SAFETY: an all-zero LoopInfo64 is valid; the ioctl fills it.
                let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
                // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 through a valid pointer.
                unsafe { loop_get_status64(f.as_raw_fd(), &mut info) }.ok()?;
                let dev = info.lo_device as libc::dev_t;
                Some(
                    libc::major(dev) == maj
                        && libc::minor(dev) == min
                        && info.lo_inode == meta.ino(),
                )
            });
        let same = by_ioctl.unwrap_or_else(|| {
            let p = backing.trim_end_matches('\n');
            let p = p.strip_suffix(" (deleted)").unwrap_or(p);
            fs::metadata(p).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        });
        if same {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// `(st_dev, st_ino)` of the file behind loop device `major:minor`, if it is one and is bound.
pub(crate) fn loop_backing_id(major: u64, minor: u64) -> Option<(u64, u64)> {
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let name = fs::read_link(&sys).ok()?;
    let name = name.file_name()?.to_string_lossy().into_owned();
    if !name.starts_with("loop") {
        return None;
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/dev/{name}"))
        .ok()?;
    // SAFETY: an all-zero LoopInfo64 is valid; the ioctl fills it.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 through a valid pointer.
    unsafe { loop_get_status64(f.as_raw_fd(), &mut info) }.ok()?;
    Some((info.lo_device, info.lo_inode))
}
