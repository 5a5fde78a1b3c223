//! The device I/O trait, [`Engine`], and its engines for regular files and block devices
//! ([`FileEngine`]) and NBD exports ([`NbdEngine`]); [`crate::mem::MemEngine`] is the third,
//! in memory, with injected faults for tests. A [`crate::Device`] holds one engine and adds
//! what is the same for all of them (zeroing with a fallback, page-cache advice on files).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::ioctl::{blkdiscard, blkgetsize64, blksszget, blkzeroout};
use crate::{nbd, DevError};

/// Byte-addressed device I/O: what every engine provides.
pub trait Engine: fmt::Debug + Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Logical block size: the alignment of direct I/O (512 for regular files).
    fn logical_block_size(&self) -> u64;
    /// Whether the size is fixed (a block device or an NBD export), as opposed to a regular
    /// file's.
    fn is_block_device(&self) -> bool;
    /// Whether reads and writes bypass the page cache (`O_DIRECT`): buffers, offsets and
    /// lengths must then be aligned to [`Engine::logical_block_size`].
    fn is_direct(&self) -> bool {
        false
    }
    /// Read into `buf` at `offset`, retrying short reads; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError>;
    /// Make `offset..offset+len` read as zeros with the device's own command, unmapping only
    /// if `may_unmap`. `Ok(false)`: no such command here; the caller writes zeros.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<bool, DevError>;
    /// Discard (trim) a range: its contents become undefined.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DevError>;
    /// Flush written data to stable storage.
    fn flush(&self) -> Result<(), DevError>;
    /// Set a regular file's length (fixed-size devices ignore it).
    fn set_len(&mut self, _len: u64) -> Result<(), DevError> {
        Ok(())
    }
    /// The local file, for page-cache advice and identity; `None` for other engines.
    fn file(&self) -> Option<&File> {
        None
    }
    /// The NBD connection, for block status queries; `None` for other engines.
    fn nbd(&self) -> Option<&nbd::Client> {
        None
    }
    /// The first extent at or after `offset` that may hold data, as `(start, end)` with
    /// `offset <= start < end <= size`: everything from `offset` to `start` reads as zeros
    /// (a hole in a sparse file). `None`: nothing but zeros from `offset` to the end. An engine
    /// that cannot tell says everything is data (this default), so callers only ever skip
    /// what is known to read as zeros.
    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, DevError> {
        let size = self.size();
        Ok((offset < size).then_some((offset, size)))
    }
}

/// A regular file or block device.
#[derive(Debug)]
pub struct FileEngine {
    file: File,
    path: PathBuf,
    is_block: bool,
    size: u64,
    logical_block: u64,
}

impl FileEngine {
    /// The engine of an open file or block device; anything else is refused.
    pub fn new(file: File, path: &Path) -> Result<Self, DevError> {
        let err = |op: &str, source| DevError::Io {
            path: path.to_owned(),
            op: op.into(),
            source,
        };
        let meta = file.metadata().map_err(|e| err("stat", e))?;
        let ft = meta.file_type();
        let (is_block, size, logical_block) = if ft.is_block_device() {
            let mut size = 0u64;
            let mut lbs: libc::c_int = 0;
            // SAFETY: both ioctls write one integer through a valid pointer to a local.
            unsafe {
                blkgetsize64(file.as_raw_fd(), &mut size)
                    .map_err(|e| err("BLKGETSIZE64", e.into()))?;
                blksszget(file.as_raw_fd(), &mut lbs).map_err(|e| err("BLKSSZGET", e.into()))?;
            }
            (true, size, lbs.max(512) as u64)
        } else if ft.is_file() {
            (false, meta.len(), 512)
        } else {
            return Err(DevError::NotADevice(path.to_owned()));
        };
        Ok(FileEngine {
            file,
            path: path.to_owned(),
            is_block,
            size,
            logical_block,
        })
    }

    fn io(&self, op: impl Into<String>, source: io::Error) -> DevError {
        DevError::Io {
            path: self.path.clone(),
            op: op.into(),
            source,
        }
    }
}

impl Engine for FileEngine {
    fn size(&self) -> u64 {
        self.size
    }

    fn logical_block_size(&self) -> u64 {
        self.logical_block
    }

    fn is_block_device(&self) -> bool {
        self.is_block
    }

    fn is_direct(&self) -> bool {
        nix::fcntl::fcntl(self.file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .is_ok_and(|fl| fl & libc::O_DIRECT != 0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(format!("read at offset {at}"), e)),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io(format!("write at offset {offset}"), e))
    }

    /// With `may_unmap`: `BLKZEROOUT` on a block device, a punched hole in a file. Without it
    /// there is no command that is sure not to unmap: zeros are written.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<bool, DevError> {
        if !may_unmap {
            return Ok(false);
        }
        let fd = self.file.as_raw_fd();
        let done = if self.is_block {
            let range = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64 from a valid pointer to a local array.
            unsafe { blkzeroout(fd, &range) }.map(|_| ())
        } else {
            nix::fcntl::fallocate(
                fd,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            )
        };
        match done {
            Ok(()) => Ok(true),
            // Not supported here: fall back to writing zeros.
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOTTY) => Ok(false),
            Err(e) => Err(self.io(format!("zero out at offset {offset}"), e.into())),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DevError> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 from a valid pointer to a local array.
        unsafe { blkdiscard(self.file.as_raw_fd(), &range) }
            .map(|_| ())
            .map_err(|e| self.io(format!("discard at offset {offset}"), e.into()))
    }

    fn flush(&self) -> Result<(), DevError> {
        self.file.sync_all().map_err(|e| self.io("fsync", e))
    }

    fn set_len(&mut self, len: u64) -> Result<(), DevError> {
        if self.is_block {
            return Ok(());
        }
        self.file
            .set_len(len)
            .map_err(|e| self.io(format!("resize to {len} bytes"), e))?;
        self.size = len;
        Ok(())
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }

    /// `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)` on a regular file; a block device (and a
    /// file system without them) is all data.
    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, DevError> {
        let all = Ok((offset < self.size).then_some((offset, self.size)));
        if self.is_block || offset >= self.size {
            return all;
        }
        let fd = self.file.as_raw_fd();
        let seek = |whence| nix::unistd::lseek(fd, offset_i64(offset), whence);
        let start = match seek(nix::unistd::Whence::SeekData) {
            Ok(at) => at as u64,
            // No data from `offset` to the end of the file. If the file shrank below the size
            // it had at open, say "data" so the read finds the short end and reports it.
            Err(nix::errno::Errno::ENXIO) => {
                let len = self.file.metadata().map_err(|e| self.io("stat", e))?.len();
                return if len < self.size { all } else { Ok(None) };
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::EOPNOTSUPP) => return all,
            Err(e) => return Err(self.io(format!("seek data at offset {offset}"), e.into())),
        };
        if start < offset {
            return all;
        }
        if start >= self.size {
            return Ok(None);
        }
        let end = match nix::unistd::lseek(fd, offset_i64(start), nix::unistd::Whence::SeekHole) {
            Ok(at) if (at as u64) > start => (at as u64).min(self.size),
            Ok(_) => self.size,
            Err(e) => return Err(self.io(format!("seek hole at offset {start}"), e.into())),
        };
        Ok(Some((start, end)))
    }
}

/// A file offset as `lseek` takes it (offsets here are below the file's size, so they fit).
fn offset_i64(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// An NBD export.
#[derive(Debug)]
pub struct NbdEngine {
    client: Box<nbd::Client>,
    uri: String,
}

impl NbdEngine {
    /// The engine of a connected client; `uri` names it in errors.
    pub fn new(client: nbd::Client, uri: &str) -> Self {
        NbdEngine {
            client: Box::new(client),
            uri: uri.to_owned(),
        }
    }

    fn err(&self, source: nbd::NbdError) -> DevError {
        DevError::Nbd {
            uri: self.uri.clone(),
            source,
        }
    }
}

impl Engine for NbdEngine {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn logical_block_size(&self) -> u64 {
        self.client.min_block().max(512)
    }

    fn is_block_device(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError> {
        let n = (self.size().saturating_sub(offset)).min(buf.len() as u64) as usize;
        self.client
            .read(&mut buf[..n], offset)
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError> {
        self.client.write(buf, offset).map_err(|e| self.err(e))
    }

    /// `NBD_CMD_WRITE_ZEROES`, which may punch holes only with `may_unmap`.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<bool, DevError> {
        self.client
            .write_zeroes(offset, len, may_unmap)
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DevError> {
        self.client.trim(offset, len).map_err(|e| self.err(e))
    }

    /// `NBD_CMD_FLUSH`.
    fn flush(&self) -> Result<(), DevError> {
        self.client.flush().map_err(|e| self.err(e))
    }

    fn nbd(&self) -> Option<&nbd::Client> {
        Some(&self.client)
    }

    /// From `base:allocation` block status, when the export was opened with that context:
    /// extents flagged as reading zeros are skipped. Without it, all data.
    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, DevError> {
        let size = self.size();
        let Some(ctx) = self.client.context("base:allocation") else {
            return Ok((offset < size).then_some((offset, size)));
        };
        let mut at = offset;
        while at < size {
            let ext = self
                .client
                .block_status(ctx, at, (size - at).min(1 << 30))
                .map_err(|e| self.err(e))?;
            let mut start = None;
            for e in ext.iter().filter(|e| e.len > 0) {
                let zero = e.flags & 2 != 0;
                match (start, zero) {
                    (None, true) => {}
                    (None, false) => start = Some(at),
                    (Some(s), true) => return Ok(Some((s, at))),
                    (Some(_), false) => {}
                }
                at += e.len;
            }
            if let Some(s) = start {
                return Ok(Some((s, at.min(size))));
            }
            if ext.iter().all(|e| e.len == 0) {
                // A reply that moves nothing: say the rest is data rather than loop.
                return Ok(Some((at, size)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SEEK_DATA`/`SEEK_HOLE` on a sparse file find its data; a file system without holes
    /// (or without the calls) reports data, never a hole that is not one.
    #[test]
    fn next_data_finds_the_extents_of_a_sparse_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let size = 64u64 << 20;
        f.as_file().set_len(size).unwrap();
        f.as_file().write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        f.as_file().write_all_at(&[2u8; 100], size - 100).unwrap();
        let e = FileEngine::new(f.reopen().unwrap(), f.path()).unwrap();
        let (s, end) = e.next_data(0).unwrap().expect("data");
        assert!(s <= 8 << 20 && end > 8 << 20 && end <= size, "{s}..{end}");
        if s == 0 && end == size {
            return; // no holes on this file system
        }
        let (s2, end2) = e.next_data(end).unwrap().expect("the tail");
        assert!(
            s2 >= end && s2 <= size - 100 && end2 == size,
            "{s2}..{end2}"
        );
        assert_eq!(e.next_data(size).unwrap(), None);
    }
}
