//! The one check every path a tool writes goes through: the target, and the files written
//! beside it (an undo stream, a resume state and its temporary file).
//!
//! "The same file" is decided by identity, never by comparing path strings: `(st_dev, st_ino)`
//! for a regular file, `st_rdev` for a block device ([`FileId`]). So a symlink, a hard link, a
//! bind mount or a `/proc/self/fd/N` path reaching a file is that file.
//!
//! Paths are opened first and checked on the open descriptor (`fstat`), so a path swapped
//! between the check and the open cannot slip through. A new file is created `O_EXCL` (it is
//! then new: nothing else can be using it), and never under `/dev`: a missing `/dev` path is a
//! device that does not exist (a mistyped or inactive LV), not a file to fill.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{inuse, DevError};

/// What a file is, independent of the path that reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileId {
    /// A block device: its device number (`st_rdev`), whichever node reached it.
    Block {
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// Anything else: the file system and inode (`st_dev`, `st_ino`).
    Inode {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
    /// An NBD export: a hash (xxh3) of the URI it was opened by.
    Export {
        /// The hash of the URI.
        uri_hash: u64,
    },
}

impl FileId {
    /// The identity of what `meta` describes.
    pub fn of(meta: &Metadata) -> FileId {
        if meta.file_type().is_block_device() {
            FileId::Block {
                major: libc::major(meta.rdev()) as u64,
                minor: libc::minor(meta.rdev()) as u64,
            }
        } else {
            FileId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity of what `path` reaches (symlinks followed), `None` if nothing is there.
    pub fn of_path(path: &Path) -> Option<FileId> {
        fs::metadata(path).ok().map(|m| FileId::of(&m))
    }

    /// The identity of an open file.
    pub fn of_file(file: &File) -> Option<FileId> {
        file.metadata().ok().map(|m| FileId::of(&m))
    }

    /// `block:MAJ:MIN` or `inode:DEV:INO`, as recorded in a resume state.
    pub fn to_text(&self) -> String {
        match self {
            FileId::Block { major, minor } => format!("block:{major}:{minor}"),
            FileId::Inode { dev, ino } => format!("inode:{dev}:{ino}"),
            FileId::Export { uri_hash } => format!("nbd:{uri_hash:016x}"),
        }
    }

    /// Parse [`FileId::to_text`].
    pub fn from_text(s: &str) -> Option<FileId> {
        let (kind, rest) = s.split_once(':')?;
        if kind == "nbd" {
            let uri_hash = u64::from_str_radix(rest, 16).ok()?;
            return Some(FileId::Export { uri_hash });
        }
        let (a, b) = rest.split_once(':')?;
        let (a, b) = (a.parse().ok()?, b.parse().ok()?);
        match kind {
            "block" => Some(FileId::Block { major: a, minor: b }),
            "inode" => Some(FileId::Inode { dev: a, ino: b }),
            _ => None,
        }
    }
}

/// A file a write must not land on, and what to call it in the refusal ("the input").
#[derive(Debug, Clone)]
pub struct Avoid {
    /// Its identity.
    pub id: FileId,
    /// What it is, for the message.
    pub what: String,
}

impl Avoid {
    /// Avoid what `path` reaches (nothing if it does not exist).
    pub fn path(path: &Path, what: impl Into<String>) -> Option<Avoid> {
        FileId::of_path(path).map(|id| Avoid {
            id,
            what: what.into(),
        })
    }

    /// Avoid whatever is open on file descriptor `fd` (e.g. stdin), if it is a regular file or
    /// a block device (a pipe is nobody's target).
    pub fn fd(fd: i32, what: impl Into<String>) -> Option<Avoid> {
        let meta = fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        let ft = meta.file_type();
        (ft.is_file() || ft.is_block_device()).then(|| Avoid {
            id: FileId::of(&meta),
            what: what.into(),
        })
    }
}

/// What kind of path is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The device or image file being patched: a block device or a regular file. `force`
    /// skips the in-use checks (mounted, held, open elsewhere, backing a loop device).
    Target {
        /// Skip the in-use checks.
        force: bool,
    },
    /// A file written beside the target (undo stream, state file): a regular file only, never
    /// in use, whatever `--force` says. The name is used in messages ("undo file").
    Aux(&'static str),
}

/// Whether `path` lies on the file system mounted at `/dev` (devtmpfs), where a missing name
/// means a missing device. Decided by the nearest existing ancestor directory: on /dev's file
/// system (however reached: a symlink, a bind mount) it is; `/dev/shm`, a tmpfs of its own,
/// is not. Where /dev is no file system of its own, by its canonical path.
pub fn is_under_dev(path: &Path) -> bool {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(path),
            Err(_) => return false,
        }
    };
    let (dev, root) = (fs::metadata("/dev"), fs::metadata("/"));
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if let Ok(canon) = fs::canonicalize(d) {
            return match (&dev, &root, fs::metadata(&canon)) {
                (Ok(dev), Ok(root), Ok(m)) if dev.dev() != root.dev() => m.dev() == dev.dev(),
                _ => canon.starts_with("/dev"),
            };
        }
        dir = d.parent();
    }
    false
}

/// The check itself, on what an open descriptor reached: the type fits the role, it is not a
/// file to avoid, and (unless forced) it is not in use.
pub fn check(path: &Path, meta: &Metadata, role: Role, avoid: &[Avoid]) -> Result<(), DevError> {
    let refuse = |why: String| {
        Err(DevError::Refused {
            path: path.to_owned(),
            why,
        })
    };
    let ft = meta.file_type();
    match role {
        Role::Aux(what) if ft.is_block_device() => {
            return refuse(format!(
                "is a block device; the {what} must be a regular file (refusing to write a {what} over a device)"
            ));
        }
        Role::Aux(what) if !ft.is_file() => {
            let kind = if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() {
                "a character device"
            } else {
                "a socket"
            };
            return refuse(format!(
                "is {kind}, not a regular file; the {what} must be one"
            ));
        }
        Role::Target { .. } if !ft.is_file() && !ft.is_block_device() => {
            return Err(DevError::NotADevice(path.to_owned()));
        }
        _ => {}
    }
    let id = FileId::of(meta);
    if let Some(a) = avoid.iter().find(|a| a.id == id) {
        return refuse(format!(
            "is the same {} as {} (same {}); refusing to write it",
            if ft.is_block_device() {
                "device"
            } else {
                "file"
            },
            a.what,
            match id {
                FileId::Block { .. } => "device number",
                FileId::Inode { .. } => "device and inode",
                FileId::Export { .. } => "NBD URI",
            }
        ));
    }
    match role {
        Role::Target { force: true } => Ok(()),
        Role::Target { force: false } => inuse::check(path, meta),
        Role::Aux(what) => inuse::check(path, meta).map_err(|e| match e {
            DevError::InUse { path, why } => DevError::Refused {
                path,
                why: format!("{why}; refusing to write a {what} to it"),
            },
            e => e,
        }),
    }
}

/// How [`open`] opens a path.
#[derive(Debug, Clone, Copy)]
pub struct OpenHow {
    /// Open for writing (else read only: a dry run still performs every check).
    pub write: bool,
    /// Create a regular file (`O_EXCL`) if nothing is at the path.
    pub create: bool,
    /// Truncate an existing regular file after it passed the checks.
    pub truncate: bool,
    /// Open a block device `O_EXCL` (fails with EBUSY while mounted or claimed).
    pub exclusive: bool,
}

/// Open `path` for `role` and check what was opened with [`check`]. Nothing is written: an
/// existing file is truncated only after it passed.
pub fn open(path: &Path, role: Role, how: OpenHow, avoid: &[Avoid]) -> Result<File, DevError> {
    let io_err = |op: &str, source: io::Error| DevError::Io {
        path: path.to_owned(),
        op: op.into(),
        source,
    };
    let is_block = fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let mut oo = OpenOptions::new();
    oo.read(true).write(how.write);
    // O_NONBLOCK: opening a FIFO must not wait for a peer (it is refused just below).
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if is_block && how.exclusive {
        flags |= libc::O_EXCL;
    }
    oo.custom_flags(flags);
    let file = match oo.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if is_under_dev(path) {
                return Err(DevError::NoSuchDevice(path.to_owned()));
            }
            if !(how.create && how.write) {
                return Err(io_err("open", e));
            }
            // New: O_EXCL, so a name that appears meanwhile (a symlink planted to a device or
            // another file) is not followed or truncated.
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(if matches!(role, Role::Aux(_)) {
                    0o600
                } else {
                    0o666
                })
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map_err(|e| io_err("create", e))?
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            if matches!(role, Role::Target { force: true }) {
                return Err(DevError::Refused {
                    path: path.to_owned(),
                    why: "device is busy (mounted, or opened exclusively elsewhere) and is opened O_EXCL even with --force; add --no-exclusive to open it anyway".into(),
                });
            }
            // Say who holds it, when that can be found out.
            if let Ok(meta) = fs::metadata(path) {
                inuse::check(path, &meta)?;
            }
            return Err(DevError::InUse {
                path: path.to_owned(),
                why: "device is busy (mounted or opened exclusively elsewhere)".into(),
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            // A FIFO without a reader (write-only open) or a device node without a device.
            return Err(DevError::Refused {
                path: path.to_owned(),
                why: "no device or reader behind this path (a FIFO or a missing device)".into(),
            });
        }
        Err(e) => return Err(io_err("open", e)),
    };
    let meta = file.metadata().map_err(|e| io_err("stat", e))?;
    if meta.file_type().is_block_device() && !is_block && how.exclusive {
        return Err(DevError::Refused {
            path: path.to_owned(),
            why: "changed from a file to a block device while being opened".into(),
        });
    }
    check(path, &meta, role, avoid)?;
    clear_nonblock(&file).map_err(|e| io_err("fcntl", e))?;
    if how.truncate && how.write && meta.file_type().is_file() && meta.len() > 0 {
        file.set_len(0).map_err(|e| io_err("truncate", e))?;
    }
    Ok(file)
}

/// Open `path` to read a file or block device without blocking on a FIFO or a terminal, and
/// with the descriptor back in blocking mode. The caller checks what was opened (through the
/// descriptor, so no window between check and read).
pub fn open_read(path: &Path, extra_flags: i32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | extra_flags)
        .open(path)?;
    clear_nonblock(&file)?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = file.as_raw_fd();
    let fl = fcntl(fd, FcntlArg::F_GETFL)?;
    let fl = OFlag::from_bits_retain(fl) - OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(fl))?;
    Ok(())
}

/// Make a path ready to be replaced by `rename` (a resume state): if something is there it
/// must pass [`check`] as [`Role::Aux`]; a missing path under `/dev` is refused.
pub fn check_replaceable(path: &Path, what: &'static str, avoid: &[Avoid]) -> Result<(), DevError> {
    // The name itself is what rename replaces: a device node there (even one reached by no
    // symlink) is refused, and so is whatever a symlink there leads to.
    if let Ok(l) = fs::symlink_metadata(path) {
        if l.file_type().is_block_device() || l.file_type().is_dir() {
            check(path, &l, Role::Aux(what), avoid)?;
        }
    }
    match fs::metadata(path) {
        Ok(meta) => check(path, &meta, Role::Aux(what), avoid),
        Err(_) if is_under_dev(path) => Err(DevError::NoSuchDevice(path.to_owned())),
        Err(_) => Ok(()),
    }
}

/// Create `path` afresh (`O_EXCL`, mode 0600) for a temporary file that is renamed over
/// another: a leftover of an interrupted run (a regular file or a symlink, only the name is
/// removed) is unlinked first; anything else there is refused.
pub fn create_temp(path: &Path, what: &'static str, avoid: &[Avoid]) -> Result<File, DevError> {
    if let Ok(l) = fs::symlink_metadata(path) {
        if !(l.file_type().is_file() || l.file_type().is_symlink()) {
            check(path, &l, Role::Aux(what), avoid)?;
            return Err(DevError::Refused {
                path: path.to_owned(),
                why: format!("is not a regular file; the {what} must be one"),
            });
        }
        fs::remove_file(path).map_err(|e| DevError::Io {
            path: path.to_owned(),
            op: "remove leftover".into(),
            source: e,
        })?;
    }
    if is_under_dev(path) {
        return Err(DevError::NoSuchDevice(path.to_owned()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| DevError::Io {
            path: path.to_owned(),
            op: "create".into(),
            source: e,
        })?;
    let meta = file.metadata().map_err(|e| DevError::Io {
        path: path.to_owned(),
        op: "stat".into(),
        source: e,
    })?;
    check(path, &meta, Role::Aux(what), avoid)?;
    Ok(file)
}

/// The directory for temporary files: `$TMPDIR` (when set and not empty) or `/tmp`, as a
/// canonical path. Refused: a directory on /dev's file system (decided as [`is_under_dev`]
/// does: `/dev/shm`, a tmpfs of its own, is allowed), one under `/proc` or `/sys`, and
/// anything that is not a directory.
pub fn temp_dir() -> Result<PathBuf, DevError> {
    let dir = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    checked_temp_dir(dir)
}

/// [`temp_dir`]'s checks on `dir`.
pub fn checked_temp_dir(dir: PathBuf) -> Result<PathBuf, DevError> {
    let real = fs::canonicalize(&dir).map_err(|source| DevError::Io {
        path: dir.clone(),
        op: "temporary directory ($TMPDIR)".into(),
        source,
    })?;
    let refuse = |why: String| {
        Err(DevError::Refused {
            path: dir.clone(),
            why,
        })
    };
    if is_under_dev(&real.join("x")) || real.starts_with("/proc") || real.starts_with("/sys") {
        return refuse(format!(
            "temporary directory ($TMPDIR) is under {}; refusing to write temporary files there",
            real.display()
        ));
    }
    if !real.is_dir() {
        return refuse("temporary directory ($TMPDIR) is not a directory".into());
    }
    Ok(real)
}

/// A new file in [`temp_dir`], created `O_EXCL` (not following a symlink) with mode 0600 and
/// unlinked at once: only this process can reach it, and it goes away when closed. Returns
/// the file and the name it had, for messages.
pub fn create_unlinked_temp(purpose: &str) -> Result<(File, PathBuf), DevError> {
    let dir = temp_dir()?;
    let mut last = None;
    for attempt in 0..16u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = twox_hash::XxHash3_64::oneshot_with_seed(attempt, &now.to_le_bytes());
        let name = format!(".blkpipe-{purpose}-{}-{tag:016x}", std::process::id());
        let path = dir.join(name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => {
                let _ = fs::remove_file(&path);
                return Ok((file, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => {
                return Err(DevError::Io {
                    path,
                    op: "create temporary file".into(),
                    source,
                })
            }
        }
    }
    Err(DevError::Io {
        path: dir,
        op: "create temporary file".into(),
        source: last.unwrap_or_else(|| io::Error::other("no free name")),
    })
}

/// Paths of a state file's neighbours are built with this; kept here so every writer uses
/// the same name.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// What tells this incarnation of a file or device from another that later got the same
/// [`FileId`] (a file removed and created again can reuse the inode number; a new LV can
/// reuse a device number): a regular file's birth time; a device-mapper device's uuid; a loop
/// device's backing file identity. `None` when the system does not tell.
pub fn incarnation(meta: &Metadata) -> Option<String> {
    if meta.file_type().is_file() {
        let born = meta.created().ok()?;
        let d = born.duration_since(std::time::UNIX_EPOCH).ok()?;
        return Some(format!("born:{}.{:09}", d.as_secs(), d.subsec_nanos()));
    }
    if !meta.file_type().is_block_device() {
        return None;
    }
    let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let sys = format!("/sys/dev/block/{maj}:{min}");
    if let Ok(uuid) = fs::read_to_string(format!("{sys}/dm/uuid")) {
        let uuid = uuid.trim();
        if !uuid.is_empty() && !uuid.contains(char::is_whitespace) {
            return Some(format!("dm:{uuid}"));
        }
    }
    inuse::loop_backing_id(maj as u64, min as u64).map(|(d, i)| format!("loop:{d}:{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_on_dev_proc_or_sys_are_refused() {
        for d in ["/dev/shm/..", "/dev", "/proc/self", "/sys"] {
            let e = checked_temp_dir(d.into()).unwrap_err();
            assert!(
                e.to_string().contains("refusing to write temporary files"),
                "{d}: {e}"
            );
        }
        let e = checked_temp_dir("/etc/hostname".into()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn dev_shm_is_a_temp_dir_like_any_tmpfs() {
        // /dev/shm is a tmpfs of its own (not devtmpfs), where one is mounted.
        let (Ok(shm), Ok(dev)) = (fs::metadata("/dev/shm"), fs::metadata("/dev")) else {
            panic!("no /dev/shm here to test with");
        };
        if shm.dev() != dev.dev() {
            assert_eq!(
                checked_temp_dir("/dev/shm".into()).unwrap(),
                Path::new("/dev/shm")
            );
        } else {
            assert!(checked_temp_dir("/dev/shm".into()).is_err());
        }
    }

    #[test]
    fn unlinked_temp_files_are_private_and_nameless() {
        let (mut f, path) = create_unlinked_temp("test").unwrap();
        assert!(!path.exists(), "{} still has a name", path.display());
        let meta = f.metadata().unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        use std::io::{Read, Seek, Write};
        f.write_all(b"spill").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "spill");
    }
}
