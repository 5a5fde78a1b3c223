//! An in-memory device that can be told to fail: the engine unit tests run the operations
//! against (a write that fails part-way through a batch, a short read, a flush that fails),
//! and whose log shows the order in which the device was written and flushed.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::Engine;
use crate::DevError;

/// Faults to inject. Writes are counted from 1 over `write_at` and `write_zeroes` together.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail this write and every one after it with EIO (nothing of it is written).
    pub fail_write: Option<u64>,
    /// Reads end here: a read past this offset returns fewer bytes than asked, as if the
    /// device had shrunk.
    pub short_read_at: Option<u64>,
    /// Fail every flush with EIO.
    pub fail_flush: bool,
}

/// One operation the device saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemOp {
    /// `write_at` of `len` bytes at `offset` (that succeeded).
    Write {
        /// Byte offset.
        offset: u64,
        /// Bytes written.
        len: u64,
    },
    /// `write_zeroes` (that succeeded).
    Zero {
        /// Byte offset.
        offset: u64,
        /// Bytes zeroed.
        len: u64,
    },
    /// `discard`.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Bytes discarded.
        len: u64,
    },
    /// A flush that succeeded.
    Flush,
}

/// Called before each write reaches the bytes, with its offset and length (for tests that
/// check what must already be durable elsewhere at that moment).
pub type WriteHook = Box<dyn Fn(u64, u64) + Send + Sync>;

struct State {
    data: Mutex<Vec<u8>>,
    log: Mutex<Vec<MemOp>>,
    writes: AtomicU64,
    faults: Faults,
    on_write: Option<WriteHook>,
    is_block: bool,
    /// Report aligned all-zero [`HOLE_GRAIN`] blocks as holes ([`Engine::next_data`]).
    holes: bool,
    /// Bytes returned by `read_at`.
    read: AtomicU64,
    /// Calls of `next_data`.
    seeks: AtomicU64,
}

/// The granularity at which a [`MemEngine::with_holes`] device reports holes.
pub const HOLE_GRAIN: u64 = 4096;

/// A device held in memory. Clones share the same bytes and log, so a test keeps one clone
/// to look at while a [`crate::Device`] owns another.
#[derive(Clone)]
pub struct MemEngine(Arc<State>);

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEngine")
            .field("size", &self.size())
            .field("faults", &self.0.faults)
            .finish()
    }
}

impl MemEngine {
    /// A fixed-size device (as a block device) holding `data`, failing as `faults` says.
    pub fn new(data: Vec<u8>, faults: Faults) -> Self {
        Self::build(data, faults, None)
    }

    /// [`MemEngine::new`] with `hook` called before every write.
    pub fn with_hook(data: Vec<u8>, faults: Faults, hook: WriteHook) -> Self {
        Self::build(data, faults, Some(hook))
    }

    /// A device like a sparse file: every aligned all-zero [`HOLE_GRAIN`] block is a hole
    /// that [`Engine::next_data`] reports (so a reader can skip it).
    pub fn with_holes(data: Vec<u8>) -> Self {
        let mut m = Self::build(data, Faults::default(), None);
        if let Some(st) = Arc::get_mut(&mut m.0) {
            st.holes = true;
        }
        m
    }

    /// Bytes read so far (over all clones).
    pub fn bytes_read(&self) -> u64 {
        self.0.read.load(Ordering::SeqCst)
    }

    /// Calls of [`Engine::next_data`] so far (over all clones): each is an `lseek` on a file.
    pub fn seeks(&self) -> u64 {
        self.0.seeks.load(Ordering::SeqCst)
    }

    fn build(data: Vec<u8>, faults: Faults, on_write: Option<WriteHook>) -> Self {
        MemEngine(Arc::new(State {
            data: Mutex::new(data),
            log: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
            faults,
            on_write,
            is_block: true,
            holes: false,
            read: AtomicU64::new(0),
            seeks: AtomicU64::new(0),
        }))
    }

    /// The device's bytes now.
    pub fn contents(&self) -> Vec<u8> {
        self.data().clone()
    }

    /// Every operation that succeeded, in order.
    pub fn log(&self) -> Vec<MemOp> {
        self.0.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn data(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, op: MemOp) {
        self.0
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(op);
    }

    fn fault(op: String) -> DevError {
        DevError::Io {
            path: PathBuf::from("<memory>"),
            op,
            source: io::Error::from_raw_os_error(libc::EIO),
        }
    }

    /// Count a write; fail it if it is the one (or after the one) to fail; check its range.
    fn begin_write(&self, offset: u64, len: u64, what: &str) -> Result<(), DevError> {
        let n = self.0.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.0.faults.fail_write.is_some_and(|f| n >= f) {
            return Err(Self::fault(format!(
                "{what} at offset {offset} (injected fault, write {n})"
            )));
        }
        if !matches!(offset.checked_add(len), Some(end) if end <= self.size()) {
            return Err(Self::fault(format!(
                "{what} of {len} bytes at offset {offset}: past the end ({} bytes)",
                self.size()
            )));
        }
        if let Some(hook) = &self.0.on_write {
            hook(offset, len);
        }
        Ok(())
    }
}

impl Engine for MemEngine {
    fn size(&self) -> u64 {
        self.data().len() as u64
    }

    fn logical_block_size(&self) -> u64 {
        512
    }

    fn is_block_device(&self) -> bool {
        self.0.is_block
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, DevError> {
        let data = self.data();
        let end = self
            .0
            .faults
            .short_read_at
            .unwrap_or(u64::MAX)
            .min(data.len() as u64);
        let start = offset.min(end);
        let n = (buf.len() as u64).min(end - start) as usize;
        buf[..n].copy_from_slice(&data[start as usize..start as usize + n]);
        self.0.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, DevError> {
        self.0.seeks.fetch_add(1, Ordering::SeqCst);
        let data = self.data();
        let size = data.len() as u64;
        if !self.0.holes || offset >= size {
            return Ok((offset < size).then_some((offset, size)));
        }
        let is_hole = |b: u64| {
            let (s, e) = (b * HOLE_GRAIN, ((b + 1) * HOLE_GRAIN).min(size));
            data[s as usize..e as usize].iter().all(|&x| x == 0)
        };
        let mut b = offset / HOLE_GRAIN;
        let blocks = size.div_ceil(HOLE_GRAIN);
        while b < blocks && is_hole(b) {
            b += 1;
        }
        if b >= blocks {
            return Ok(None);
        }
        let start = (b * HOLE_GRAIN).max(offset);
        while b < blocks && !is_hole(b) {
            b += 1;
        }
        Ok(Some((start, (b * HOLE_GRAIN).min(size))))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError> {
        self.begin_write(offset, buf.len() as u64, "write")?;
        self.data()[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        self.push(MemOp::Write {
            offset,
            len: buf.len() as u64,
        });
        Ok(())
    }

    /// Zeroes the range whether or not it may unmap (memory has nothing to unmap).
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<bool, DevError> {
        self.begin_write(offset, len, "write zeroes")?;
        self.data()[offset as usize..(offset + len) as usize].fill(0);
        self.push(MemOp::Zero { offset, len });
        Ok(true)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DevError> {
        self.push(MemOp::Discard { offset, len });
        Ok(())
    }

    fn flush(&self) -> Result<(), DevError> {
        if self.0.faults.fail_flush {
            return Err(Self::fault("flush (injected fault)".into()));
        }
        self.push(MemOp::Flush);
        Ok(())
    }
}

impl crate::Device {
    /// A device holding `data` in memory, without faults, named `<memory>` in messages (for
    /// readers' tests and fuzz bodies).
    pub fn in_memory(data: Vec<u8>) -> Self {
        let engine = MemEngine::new(data, Faults::default());
        Self::from_engine(Box::new(engine), std::path::Path::new("<memory>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_where_asked() {
        let m = MemEngine::new(
            vec![7u8; 8192],
            Faults {
                fail_write: Some(2),
                short_read_at: Some(5000),
                fail_flush: true,
            },
        );
        m.write_at(&[1; 512], 0).unwrap();
        let e = m.write_at(&[2; 512], 512).unwrap_err();
        assert!(e.to_string().contains("injected fault, write 2"), "{e}");
        assert!(
            m.write_zeroes(0, 512, false).is_err(),
            "writes after the fault fail too"
        );
        let mut buf = [0u8; 4096];
        assert_eq!(m.read_at(&mut buf, 4096).unwrap(), 904);
        assert_eq!(m.read_at(&mut buf, 6000).unwrap(), 0);
        assert!(m.flush().is_err());
        assert_eq!(
            m.log(),
            [MemOp::Write {
                offset: 0,
                len: 512
            }]
        );
        let c = m.contents();
        assert_eq!((c[0], c[511], c[512]), (1, 1, 7));
    }

    #[test]
    fn holes_are_reported_and_not_counted_as_reads() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096 + 7] = 1;
        data[2 * 4096] = 2;
        data[5 * 4096 + 99] = 3;
        let m = MemEngine::with_holes(data.clone());
        assert_eq!(m.next_data(0).unwrap(), Some((4096, 3 * 4096)));
        assert_eq!(m.next_data(5000).unwrap(), Some((5000, 3 * 4096)));
        assert_eq!(
            m.next_data(3 * 4096).unwrap(),
            Some((5 * 4096, 5 * 4096 + 100))
        );
        assert_eq!(m.next_data(5 * 4096 + 100).unwrap(), None);
        let plain = MemEngine::new(data, Faults::default());
        assert_eq!(plain.next_data(0).unwrap(), Some((0, 5 * 4096 + 100)));
        let mut buf = [0u8; 4096];
        m.read_at(&mut buf, 0).unwrap();
        assert_eq!(m.bytes_read(), 4096);
    }

    #[test]
    fn writes_past_the_end_fail() {
        let m = MemEngine::new(vec![0u8; 1024], Faults::default());
        assert!(m.write_at(&[1; 512], 768).is_err());
        assert!(m.write_zeroes(u64::MAX, 2, true).is_err());
        assert!(m.log().is_empty());
    }
}
