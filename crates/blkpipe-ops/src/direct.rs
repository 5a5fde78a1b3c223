//! Writes of verified, block-aligned records with `O_DIRECT`, on a thread of their own.
//!
//! Buffered writes copy every byte into the page cache, into pages that are cold in the CPU's
//! caches: for a whole-device copy that copy is the largest part of blkpatch's CPU time. A
//! record of at least [`MIN_DIRECT`] bytes whose offset and length are multiples of [`ALIGN`]
//! is instead written with `O_DIRECT` by writer threads from one of a few aligned
//! [`DirectBuf`]s, so the next records are read and verified while the device writes earlier
//! ones, several at a time. The patch reader reads payloads straight into these buffers
//! ([`DirectWriter::submit`]), so an uncompressed payload is copied once, from the pipe, and
//! never again. Other records, and targets that refuse `O_DIRECT` (tmpfs), keep the buffered
//! path. The writer is drained (every queued write done, any error returned) before each
//! checkpoint and at the end, so a sync after a drain covers every write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use blkpipe_dev::{AlignedBuf, DevError, Device};
use blkpipe_format::patch::{PayloadBuf, MAX_STORED_LEN};
use blkpipe_format::MAX_RECORD_LEN;

use crate::OpError;

/// Offsets and lengths written directly are multiples of this (any logical block size up to
/// a page divides it).
pub const ALIGN: u64 = blkpipe_dev::DIRECT_ALIGN;
/// Records shorter than this go through the page cache.
pub const MIN_DIRECT: u64 = 256 << 10;
/// Writes in flight at once (one thread each).
const WRITERS: usize = 2;
/// Buffers: one per writer, one queued, one being filled.
const BUFFERS: usize = WRITERS + 2;

/// A page-aligned payload buffer of [`MAX_STORED_LEN`] bytes (rounded up to pages), for the
/// patch reader to read into and the writer threads to write from.
pub struct DirectBuf {
    buf: AlignedBuf,
    len: usize,
}

impl DirectBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        DirectBuf {
            buf: AlignedBuf::new(MAX_STORED_LEN.next_multiple_of(ALIGN as usize)),
            len: 0,
        }
    }
}

impl Default for DirectBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PayloadBuf for DirectBuf {
    fn prepare(&mut self, len: usize) -> &mut [u8] {
        self.len = len;
        &mut self.buf[..len]
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

struct Job {
    offset: u64,
    buf: DirectBuf,
}

/// What the writer threads share.
#[derive(Default)]
struct Shared {
    /// Writes queued or in flight, and the first error.
    state: Mutex<(usize, Option<DevError>)>,
    idle: Condvar,
}

/// The writer threads and their buffers.
pub struct DirectWriter {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<DirectBuf>,
    shared: Arc<Shared>,
    /// The first write error, once returned: every later call fails with it too, so nothing
    /// after a failed write is ever reported as written.
    failed: Option<String>,
    path: std::path::PathBuf,
    threads: Vec<JoinHandle<()>>,
}

impl DirectWriter {
    /// Open `target`'s path again for writing with `O_DIRECT`, or `None` where that is not
    /// possible (not supported, a logical block larger than [`ALIGN`], or the path no longer
    /// names the same file).
    pub fn open(target: &Device) -> Option<Self> {
        let file = target.reopen_direct_for_writing()?;
        let (jobs, job_rx) = sync_channel::<Job>(BUFFERS);
        let (free_tx, free) = sync_channel::<DirectBuf>(BUFFERS);
        for _ in 0..BUFFERS {
            free_tx.send(DirectBuf::new()).expect("channel has room");
        }
        let file = Arc::new(file);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let shared = Arc::new(Shared::default());
        let threads = (0..WRITERS)
            .map(|_| {
                let (file, job_rx, free_tx, shared) = (
                    Arc::clone(&file),
                    Arc::clone(&job_rx),
                    free_tx.clone(),
                    Arc::clone(&shared),
                );
                let path = target.path().to_owned();
                std::thread::spawn(move || run(&file, &path, &job_rx, &free_tx, &shared))
            })
            .collect();
        Some(DirectWriter {
            jobs: Some(jobs),
            free,
            shared,
            failed: None,
            path: target.path().to_owned(),
            threads,
        })
    }

    /// Whether a record at `offset` of `len` bytes is written directly: aligned, and large
    /// enough that skipping the page cache pays (small scattered records are cheaper to
    /// write into the cache and let write-back merge).
    pub fn fits(offset: u64, len: usize) -> bool {
        offset % ALIGN == 0
            && len as u64 % ALIGN == 0
            && (MIN_DIRECT..=MAX_RECORD_LEN).contains(&(len as u64))
    }

    /// Queue `data` to be written at `offset` ([`DirectWriter::fits`] must hold). Returns an
    /// earlier write's error, if one failed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OpError> {
        let mut buf = self.spare()?;
        buf.prepare(data.len()).copy_from_slice(data);
        self.submit(offset, buf)
    }

    /// A free buffer, once a writer thread has finished with one. Returns an earlier write's
    /// error, if one failed.
    pub fn spare(&mut self) -> Result<DirectBuf, OpError> {
        self.check()?;
        match self.free.recv() {
            Ok(buf) => Ok(buf),
            Err(_) => self.stopped(),
        }
    }

    /// Queue the bytes of `buf` to be written at `offset` ([`DirectWriter::fits`] must hold
    /// for them). Returns an earlier write's error, if one failed.
    pub fn submit(&mut self, offset: u64, buf: DirectBuf) -> Result<(), OpError> {
        self.check()?;
        let job = Job { offset, buf };
        self.shared.lock().0 += 1;
        match self.jobs.as_ref().map(|j| j.send(job)) {
            Some(Ok(())) => Ok(()),
            _ => {
                self.shared.lock().0 -= 1; // never queued, so a drain must not wait for it
                self.stopped()
            }
        }
    }

    /// Wait until every queued write is done; the first error of any of them.
    pub fn drain(&mut self) -> Result<(), OpError> {
        let mut st = self.shared.lock();
        while st.0 > 0 {
            st = self.shared.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        drop(st);
        self.check()
    }

    fn check(&mut self) -> Result<(), OpError> {
        if let Some(msg) = &self.failed {
            return Err(DevError::Io {
                path: self.path.clone(),
                op: "write".into(),
                source: std::io::Error::other(format!("an earlier write failed: {msg}")),
            }
            .into());
        }
        match self.shared.lock().1.take() {
            Some(e) => {
                self.failed = Some(e.to_string());
                Err(e.into())
            }
            None => Ok(()),
        }
    }

    fn stopped<T>(&mut self) -> Result<T, OpError> {
        self.check()?;
        Err(OpError::Refused(
            "internal error: the direct writer stopped".into(),
        ))
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<DevError>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A writer thread: write each job it takes; once any write failed, write nothing more (keep
/// returning buffers and counting jobs done, so the applier sees the error and stops).
fn run(
    file: &File,
    path: &std::path::Path,
    jobs: &Mutex<Receiver<Job>>,
    free: &SyncSender<DirectBuf>,
    shared: &Shared,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(Job { offset, buf }) = job else {
            return;
        };
        let failed = shared.lock().1.is_some();
        let result = if failed {
            Ok(())
        } else {
            file.write_all_at(buf.bytes(), offset)
        };
        {
            let mut st = shared.lock();
            if let Err(e) = result {
                st.1.get_or_insert(DevError::Io {
                    path: path.to_owned(),
                    op: format!("write at offset {offset}"),
                    source: e,
                });
            }
            st.0 -= 1;
            if st.0 == 0 {
                shared.idle.notify_all();
            }
        }
        if free.send(buf).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queued direct writes land where they belong, a drain waits for all of them, and
    /// what does not fit the alignment is left to the caller.
    #[test]
    fn queued_writes_land_after_a_drain() {
        let f = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
        let len = 10 * MAX_RECORD_LEN as usize;
        f.as_file().set_len(len as u64).unwrap();
        let dev = Device::open_source(f.path(), false).unwrap();
        let Some(mut w) = DirectWriter::open(&dev) else {
            return; // the file system refuses O_DIRECT (tmpfs)
        };
        let mut want = vec![0u8; len];
        for (i, at) in (0..len).step_by(MAX_RECORD_LEN as usize).enumerate() {
            let n = MAX_RECORD_LEN as usize - 4096 * i;
            let data: Vec<u8> = (0..n).map(|j| (i * 31 + j / 4096) as u8).collect();
            assert!(DirectWriter::fits(at as u64, n));
            w.write(at as u64, &data).unwrap();
            want[at..at + n].copy_from_slice(&data);
        }
        w.drain().unwrap();
        drop(w);
        assert!(std::fs::read(f.path()).unwrap() == want);
        assert!(!DirectWriter::fits(512, 4096));
        assert!(!DirectWriter::fits(4096, 100));
        assert!(!DirectWriter::fits(0, MAX_RECORD_LEN as usize + 4096));
        assert!(!DirectWriter::fits(0, 4096), "small records stay buffered");
    }
}
