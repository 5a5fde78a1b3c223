//! Device I/O for blkpipe: one [`Device`] type over regular files and block devices.
//!
//! - [`Device::open_source`] opens something to read (optionally `O_DIRECT`), and
//!   [`Device::open_target`] opens something to write, refusing a block device that is mounted,
//!   held by another device (a dm or md holder), or open in another process, and a file that
//!   backs a loop device or is open for writing elsewhere, unless forced. Block devices are
//!   opened `O_EXCL` unless asked not to. [`guard`] holds the check every written path
//!   (target, undo, state) goes through.
//! - [`Device::size`] comes from `BLKGETSIZE64` for block devices and `stat` for files.
//! - [`Device::read_at`] / [`Device::write_at`] are positional and retry short transfers.
//! - [`Device::zero_range`] writes zeros, or punches holes / zeroes out with `discard`.
//! - [`Device::fadvise_dontneed`] keeps a full read from evicting the host's page cache.
//! - [`AlignedBuf`] is a buffer aligned for `O_DIRECT`.
//! - [`Engine`] is the device I/O trait every kind of device implements: [`FileEngine`] for
//!   files and block devices, [`NbdEngine`] for NBD exports, [`mem::MemEngine`] in memory with
//!   injected faults for tests ([`Device::from_engine`]).
//!
//! ```no_run
//! use blkpipe_dev::Device;
//! let dev = Device::open_source("/dev/vg/lv".as_ref(), false).unwrap();
//! let mut buf = vec![0u8; 4096];
//! let n = dev.read_at(&mut buf, 0).unwrap();
//! assert!(n <= 4096 && dev.size() >= n as u64);
//! ```

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::PosixFadviseAdvice as Fadvise;

mod aligned;
mod engine;
pub mod guard;
mod inuse;
pub mod mem;
pub mod nbd;

pub use aligned::AlignedBuf;
pub use engine::{Engine, FileEngine, NbdEngine};
pub use guard::{Avoid, FileId};

pub(crate) mod ioctl {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
}

/// What went wrong opening or using a device.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A system call failed.
    #[error("{path}: {op}")]
    Io {
        /// The device or file.
        path: PathBuf,
        /// What was being done (`open`, `read at 4096`, ...).
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{}: not a regular file or block device", .0.display())]
    NotADevice(PathBuf),
    /// An NBD export could not be opened or used.
    #[error("{uri}")]
    Nbd {
        /// The URI.
        uri: String,
        /// What went wrong.
        source: nbd::NbdError,
    },
    /// An option that does not apply to an NBD export (`--direct`).
    #[error("{0}")]
    NotForNbd(String),
    /// The target is in use and `force` was not given.
    #[error("{path}: {why}; refusing to write to it (use --force to override)")]
    InUse {
        /// The target.
        path: PathBuf,
        /// Who uses it.
        why: String,
    },
    /// A path may not be written, whatever `--force` says (see [`guard`]).
    #[error("{path}: {why}")]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A path under `/dev` that does not exist: a device that is not there.
    #[error("no such device: {} (not creating a file under /dev)", .0.display())]
    NoSuchDevice(PathBuf),
}

impl DevError {
    /// The OS error behind this one, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            DevError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The alignment of direct I/O here: [`AlignedBuf`]s start on it, and direct reads and writes
/// cover whole multiples of it. A device whose logical block is larger is not written with
/// `O_DIRECT` ([`Device::reopen_direct_for_writing`] says `None`).
pub const DIRECT_ALIGN: u64 = 4096;

/// An open file, block device or NBD export: an [`Engine`] and the path it was opened by.
#[derive(Debug)]
pub struct Device {
    engine: Box<dyn Engine>,
    path: PathBuf,
}

/// `struct cachestat_range` of the `cachestat` system call (Linux 6.5).
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat`: page counts of a range.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The `cachestat` system call's number (one table for every architecture since Linux 5.1).
const SYS_CACHESTAT: libc::c_long = 451;

/// How to open a target.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetOptions {
    /// Create a regular file if the path does not exist.
    pub create: bool,
    /// Skip the in-use checks (mounted, held, open elsewhere, backing a loop device).
    pub force: bool,
    /// Open a block device without `O_EXCL`, so a device the kernel holds (mounted, claimed
    /// by device-mapper or md) can still be opened.
    pub shared: bool,
    /// Open for reading only (a dry run still performs every check).
    pub read_only: bool,
}

impl Device {
    /// The file behind a file or block device; `None` for an NBD export.
    pub fn file(&self) -> Option<&File> {
        self.engine.file()
    }

    /// The NBD connection behind an NBD export; `None` for a file or block device.
    pub fn nbd(&self) -> Option<&nbd::Client> {
        self.engine.nbd()
    }

    /// A device over any engine (an in-memory one in tests); `path` names it in messages.
    pub fn from_engine(engine: Box<dyn Engine>, path: &Path) -> Self {
        Device {
            engine,
            path: path.to_owned(),
        }
    }

    /// Open an NBD export by URI, asking for the meta contexts `contexts` (for
    /// [`nbd::Client::block_status`]). With `write`, a read-only export is refused.
    pub fn open_nbd(uri: &str, contexts: &[&str], write: bool) -> Result<Self, DevError> {
        let err = |source| DevError::Nbd {
            uri: uri.to_owned(),
            source,
        };
        let parsed = nbd::uri::parse(uri).map_err(err)?;
        let client = nbd::Client::connect(&parsed, contexts).map_err(err)?;
        if write && client.read_only() {
            return Err(err(nbd::NbdError::Unsupported(
                "the export is read-only; refusing to write to it".into(),
            )));
        }
        Ok(Device {
            engine: Box::new(NbdEngine::new(client, uri)),
            path: PathBuf::from(uri),
        })
    }

    /// The NBD URI `path` spells, if it is one.
    fn as_nbd_uri(path: &Path) -> Option<&str> {
        path.to_str().filter(|s| nbd::is_nbd_uri(s))
    }

    /// An fd-based operation's file, or `None` for NBD (where it is then a no-op).
    fn fd(&self) -> Option<libc::c_int> {
        self.file().map(|f| f.as_raw_fd())
    }

    fn io(&self, op: impl Into<String>, source: io::Error) -> DevError {
        DevError::Io {
            path: self.path.clone(),
            op: op.into(),
            source,
        }
    }

    fn from_file(file: File, path: &Path) -> Result<Self, DevError> {
        Ok(Device {
            engine: Box::new(FileEngine::new(file, path)?),
            path: path.to_owned(),
        })
    }

    /// Open a file or block device for reading. With `direct`, reads bypass the page cache
    /// (buffers and offsets must then be aligned to [`Device::logical_block_size`]).
    /// An NBD URI (`nbd://`, `nbd+unix://`) opens that export instead.
    pub fn open_source(path: &Path, direct: bool) -> Result<Self, DevError> {
        if let Some(uri) = Self::as_nbd_uri(path) {
            if direct {
                return Err(DevError::NotForNbd(format!(
                    "{uri}: --direct is for local devices, not NBD exports"
                )));
            }
            return Self::open_nbd(uri, &[], false);
        }
        let flags = if direct { libc::O_DIRECT } else { 0 };
        // Opened without blocking, so a FIFO (or a terminal) is refused by its type rather
        // than waited on forever.
        let file = guard::open_read(path, flags).map_err(|e| DevError::Io {
            path: path.to_owned(),
            op: "open".into(),
            source: e,
        })?;
        Self::from_file(file, path)
    }

    /// Open a device whose metadata the kernel may be writing while it is read (a live
    /// snapshot's COW device), for scattered reads. A block device is opened with
    /// `O_DIRECT`, since the kernel writes it with bios that bypass its page cache, so cached
    /// pages of it can be stale; where the device refuses `O_DIRECT` (EINVAL), buffered. A
    /// regular file (or an NBD export) is read through the page cache, which the kernel keeps
    /// coherent for files, with random-access advice so nothing is read ahead. Returns the
    /// device and whether its reads are direct.
    pub fn open_live_metadata(path: &Path) -> Result<(Self, bool), DevError> {
        let buffered = Self::open_source(path, false)?;
        if !buffered.is_block_device() || buffered.nbd().is_some() {
            buffered.fadvise_random();
            return Ok((buffered, false));
        }
        match Self::open_source(path, true) {
            Ok(d) => Ok((d, true)),
            Err(e) if e.io_error().and_then(|e| e.raw_os_error()) == Some(libc::EINVAL) => {
                Ok((buffered, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Open a target for writing (or, with `opts.read_only`, for the checks of a dry run),
    /// through [`guard::open`]: a regular file or block device that is not one of `avoid`,
    /// not in use unless `opts.force`, a block device `O_EXCL` unless `opts.shared`, a new
    /// file created `O_EXCL` and never under `/dev`. An NBD URI opens that export: the
    /// in-use checks do not apply to it (the server decides who may write), and its size is
    /// fixed.
    pub fn open_target(
        path: &Path,
        opts: TargetOptions,
        avoid: &[Avoid],
    ) -> Result<Self, DevError> {
        if let Some(uri) = Self::as_nbd_uri(path) {
            return Self::open_nbd(uri, &[], !opts.read_only);
        }
        let file = guard::open(
            path,
            guard::Role::Target { force: opts.force },
            guard::OpenHow {
                write: !opts.read_only,
                create: opts.create,
                truncate: false,
                exclusive: !opts.shared,
            },
            avoid,
        )?;
        Self::from_file(file, path)
    }

    /// What was opened, by identity (see [`FileId`]), and what tells this incarnation of it
    /// from a later one with the same identity (see [`guard::incarnation`]).
    /// An NBD export is known by its URI.
    pub fn identity(&self) -> Result<(FileId, Option<String>), DevError> {
        let file = match self.engine.file() {
            Some(f) => f,
            None => {
                let uri = self.path.to_string_lossy();
                let uri_hash = twox_hash::XxHash3_64::oneshot(uri.as_bytes());
                return Ok((FileId::Export { uri_hash }, None));
            }
        };
        let meta = file.metadata().map_err(|e| self.io("stat", e))?;
        Ok((FileId::of(&meta), guard::incarnation(&meta)))
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.engine.size()
    }

    /// Whether this is a block device or an NBD export (fixed size), as opposed to a regular
    /// file.
    pub fn is_block_device(&self) -> bool {
        self.engine.is_block_device()
    }

    /// Logical block size (512 for regular files).
    pub fn logical_block_size(&self) -> u64 {
        self.engine.logical_block_size()
    }

    /// Whether it was opened with `O_DIRECT` (reads and writes bypass the page cache, and need
    /// buffers, offsets and lengths aligned to [`Device::logical_block_size`]).
    pub fn is_direct(&self) -> bool {
        self.engine.is_direct()
    }

    /// The first extent at or after `offset` that may hold data (see [`Engine::next_data`]):
    /// what lies before it reads as zeros without being read.
    pub fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, DevError> {
        self.engine.next_data(offset)
    }

    /// Read into `buf` at `offset`, retrying short reads; returns fewer bytes only at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError> {
        self.engine.read_at(buf, offset)
    }

    /// Read at least `len` bytes at `offset` (a multiple of the logical block size) from a
    /// device opened with `O_DIRECT`: the request is rounded up to whole [`DIRECT_ALIGN`]
    /// blocks (`buf` must be aligned, as an [`AlignedBuf`] is, and have room for them), and a
    /// short read at the device's end is accepted: fewer than `len` bytes only there. Other
    /// devices get a plain [`Device::read_at`] of `len` bytes.
    pub fn read_at_direct(
        &self,
        buf: &mut [u8],
        offset: u64,
        len: usize,
    ) -> Result<usize, DevError> {
        let Some(file) = self.file().filter(|_| self.is_direct()) else {
            return self.read_at(&mut buf[..len], offset);
        };
        let request = (len as u64).next_multiple_of(DIRECT_ALIGN) as usize;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            match std::os::unix::fs::FileExt::read_at(file, &mut buf[done..request], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(format!("read at offset {at}"), e)),
            }
            // O_DIRECT cannot continue from an unaligned position: a short read that is not
            // block-aligned is the end of the device.
            if done as u64 % self.logical_block_size() != 0 {
                break;
            }
        }
        Ok(done)
    }

    /// Another handle on the same file or block device, for writing with `O_DIRECT`, or
    /// `None` where that is not possible: no local file (NBD, memory), a logical block larger
    /// than [`DIRECT_ALIGN`], `O_DIRECT` refused (tmpfs), or the path no longer naming the
    /// file this device has open.
    pub fn reopen_direct_for_writing(&self) -> Option<File> {
        if self.logical_block_size() > DIRECT_ALIGN {
            return None;
        }
        let current = self.file()?.metadata().ok()?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .ok()?;
        let now = file.metadata().ok()?;
        let id = |m: &std::fs::Metadata| (m.dev(), m.ino(), m.rdev());
        (id(&now) == id(&current)).then_some(file)
    }

    /// [`Device::read_at`] without keeping in the page cache what this read brought in, so a
    /// large read does not push other data out of the cache, while pages that were cached
    /// before stay. With `RWF_DONTCACHE` (Linux 6.14) the kernel reads ahead as usual and drops
    /// the pages it added once they are copied; without it, a range that was not wholly cached
    /// before the read is dropped after it (`posix_fadvise(DONTNEED)`).
    pub fn read_at_drop_behind(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError> {
        if self.nbd().is_some() {
            return self.read_at(buf, offset);
        }
        if let Some(n) = self.read_at_dontcache(buf, offset)? {
            return Ok(n);
        }
        let len = buf.len() as u64;
        let was_cached = self.cached_pages(offset, len) == Some(len.div_ceil(4096));
        let n = self.read_at(buf, offset)?;
        if !was_cached {
            self.fadvise_dontneed(offset, len);
        }
        Ok(n)
    }

    /// [`Device::read_at`] with `RWF_DONTCACHE`; `Ok(None)` when this kernel or file system
    /// does not support it (nothing was read).
    fn read_at_dontcache(&self, buf: &mut [u8], offset: u64) -> Result<Option<usize>, DevError> {
        let Some(fd) = self.fd() else {
            return Ok(None);
        };
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let rest = &mut buf[done..];
            let iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            // SAFETY: one iovec describing the valid, writable `rest`.
            let n = unsafe { libc::preadv2(fd, &iov, 1, at as i64, libc::RWF_DONTCACHE) };
            if n > 0 {
                done += n as usize;
                continue;
            }
            if n == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if done == 0 => return Ok(None),
                _ => return Err(self.io(format!("read at offset {at}"), e)),
            }
        }
        Ok(Some(done))
    }

    /// Write all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError> {
        self.engine.write_at(buf, offset)
    }

    /// Make the range `offset..offset+len` read as zeros. With `discard`, files get a hole
    /// punched and block devices are zeroed with `BLKZEROOUT` (which may unmap); without it,
    /// zeros are written from `zeros` (any length; reused as the write buffer). An NBD export
    /// gets `NBD_CMD_WRITE_ZEROES`, which may punch holes only with `discard`.
    pub fn zero_range(
        &self,
        offset: u64,
        len: u64,
        discard: bool,
        zeros: &[u8],
    ) -> Result<(), DevError> {
        if self.engine.write_zeroes(offset, len, discard)? {
            return Ok(());
        }
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Set a regular file's length (block devices are left alone).
    pub fn set_len(&mut self, len: u64) -> Result<(), DevError> {
        self.engine.set_len(len)
    }

    /// How many pages of `offset..offset+len` are in the page cache, or `None` when the kernel
    /// cannot tell (before Linux 6.5).
    pub fn cached_pages(&self, offset: u64, len: u64) -> Option<u64> {
        let fd = self.fd()?;
        let range = CachestatRange { off: offset, len };
        let mut st = Cachestat::default();
        // SAFETY: cachestat reads one struct and writes one struct through valid pointers to
        // locals of the kernel's layout.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                fd,
                &range as *const CachestatRange,
                &mut st as *mut Cachestat,
                0u32,
            )
        };
        (r == 0).then_some(st.nr_cache)
    }

    /// Start writing back the dirty pages of `offset..offset+len` without waiting, so data
    /// reaches the disk while more is being written and the final [`Device::sync`] is short.
    /// Advisory: a failure to start is ignored (the sync will still write the range).
    pub fn start_writeback(&self, offset: u64, len: u64) {
        let Some(fd) = self.fd() else {
            return;
        };
        // SAFETY: sync_file_range takes a file descriptor and plain integers.
        let _ = unsafe {
            libc::sync_file_range(fd, offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE)
        };
    }

    /// Write back `offset..offset+len` and wait until it is on the device. A write error is
    /// returned here (the kernel reports it once per open file, so it must not be dropped).
    /// Does not flush the device's volatile cache or file metadata: [`Device::sync`] does.
    /// For an NBD export every write has been answered already: nothing to wait for.
    pub fn wait_writeback(&self, offset: u64, len: u64) -> Result<(), DevError> {
        let Some(fd) = self.fd() else {
            return Ok(());
        };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: sync_file_range takes a file descriptor and plain integers.
        let r = unsafe { libc::sync_file_range(fd, offset as i64, len as i64, flags) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not supported for this file: the final sync writes the range.
            Some(libc::ESPIPE) | Some(libc::EINVAL) => Ok(()),
            _ => Err(self.io(
                format!(
                    "write back bytes {offset}..{} (a write in this range failed)",
                    offset + len
                ),
                e,
            )),
        }
    }

    /// Flush written data to stable storage (`NBD_CMD_FLUSH` for an NBD export).
    pub fn sync(&self) -> Result<(), DevError> {
        self.engine.flush()
    }

    /// Give the kernel advice on a range (0 length: to the end). Advisory: errors are ignored.
    fn fadvise(&self, offset: u64, len: u64, advice: Fadvise) {
        if let Some(fd) = self.fd() {
            let _ = nix::fcntl::posix_fadvise(fd, offset as i64, len as i64, advice);
        }
    }

    /// Tell the kernel the range will not be needed again, so a full read does not push other
    /// data out of the page cache. Advisory: errors are ignored.
    pub fn fadvise_dontneed(&self, offset: u64, len: u64) {
        self.fadvise(offset, len, Fadvise::POSIX_FADV_DONTNEED);
    }

    /// Ask the kernel to start reading the range into the page cache. Advisory.
    pub fn fadvise_willneed(&self, offset: u64, len: u64) {
        self.fadvise(offset, len, Fadvise::POSIX_FADV_WILLNEED);
    }

    /// Tell the kernel reads will be scattered, so it does not read ahead. Advisory.
    pub fn fadvise_random(&self) {
        self.fadvise(0, 0, Fadvise::POSIX_FADV_RANDOM);
    }

    /// `(major, minor)` of a block device.
    pub fn rdev(&self) -> Option<(u64, u64)> {
        let meta = self.file()?.metadata().ok()?;
        self.is_block_device().then(|| {
            (
                libc::major(meta.rdev()) as u64,
                libc::minor(meta.rdev()) as u64,
            )
        })
    }
}

/// Issue `BLKDISCARD` on a range of a block device, or `NBD_CMD_TRIM` on an NBD export (not
/// used for zeroing: discarded blocks need not read back as zeros).
pub fn discard(dev: &Device, offset: u64, len: u64) -> Result<(), DevError> {
    dev.engine.discard(offset, len)
}

/// Bytes this process has caused to be read from storage so far (`read_bytes` of
/// `/proc/self/io`): reads served from the page cache and from pipes do not count. `None` where
/// the kernel does not keep I/O accounting.
pub fn storage_bytes_read() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}
