//! `blkpatch`: apply a patch stream to a target, one verified record at a time.
//!
//! Nothing is written for a record until [`PatchReader`] has verified its checksum, order and
//! bounds; at the first fault the records already applied stay applied, nothing more is
//! written, and the error names the record and offset. Only a valid end record is success.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use blkpipe_dev::guard::{self, OpenHow, Role};
use blkpipe_dev::{Avoid, Device};
use blkpipe_format::digest::{format_digest, BlockHasher};
use blkpipe_format::patch::{PatchEnd, PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::seal::SealKey;
use blkpipe_format::MAX_RECORD_LEN;

use crate::chain::ChainGate;
use crate::chunks::emit_piece;
use crate::direct::{DirectBuf, DirectWriter};
use crate::progress::Progress;
use crate::state::{hex_id, ResumeState, TargetBinding};
use crate::{OpError, Stats};

/// Options of [`apply_patch`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Zero records punch holes (files) or zero out with discard (block devices).
    pub discard: bool,
    /// Save the old contents of every overwritten region to this file, as a patch stream.
    pub undo: Option<PathBuf>,
    /// An existing, non-empty undo file may be replaced. Without it such a file is refused
    /// before anything is written: it holds an earlier run's undo data.
    pub replace_undo: bool,
    /// Check and read everything, write nothing.
    pub dry_run: bool,
    /// Record durable progress in this file and skip what an earlier run of the same stream
    /// already applied (see [`crate::state`]).
    pub state: Option<PathBuf>,
    /// With a state file, bring it up to date after this many bytes applied (and at least
    /// every [`CHECKPOINT_INTERVAL`]); `None` means [`CHECKPOINT_BYTES`].
    pub checkpoint_bytes: Option<u64>,
    /// After applying, compare the target's digest with the source digest in the end record
    /// (a stream whose header does not announce one is refused before anything is written).
    pub verify: bool,
    /// Files no write may land on besides the target itself (the input stream's file): the
    /// undo and state files are checked against these, the target and each other.
    pub avoid: Vec<Avoid>,
    /// The stream must be sealed with this key (see [`read_header`]); the undo stream is
    /// sealed with it too (and, for a chained stream, bound to the same steps: FORMAT.md 6.6).
    pub key: Option<SealKey>,
    /// `--chain-state FILE`: refuse a chained stream that does not follow the step the target
    /// holds, and record the new step once the stream is applied (see [`crate::chain`]).
    pub chain_state: Option<PathBuf>,
    /// With `chain_state`: what is accepted beyond the next step (a rollback, a new chain).
    pub accept: crate::chain::ChainAccept,
}

/// What was applied, and the stream's end record.
#[derive(Debug)]
pub struct Applied {
    /// Counters.
    pub stats: Stats,
    /// The stream header.
    pub header: PatchHeader,
    /// The verified end record.
    pub end: PatchEnd,
}

/// Writes the old contents of regions about to be overwritten, durably, as a patch stream.
/// Nothing is written to the file before the first region is saved, so an undo file that is
/// not empty always holds old contents (see [`keep_earlier_undo`]).
struct Undo {
    out: UndoOut,
    key: Option<SealKey>,
    /// Size of the target before any write: regions past it have nothing to save.
    old_size: u64,
    buf: Vec<u8>,
}

enum UndoOut {
    /// Before the first region: the header is not written yet.
    Pending(BufWriter<File>, PatchHeader),
    Writing(Box<PatchWriter<BufWriter<File>>>),
    /// A write of the header failed.
    Failed,
}

impl Undo {
    /// `earlier` decides about an existing file that holds data (its length): refuse it, or
    /// let it be replaced.
    fn create(
        path: &std::path::Path,
        target: &Device,
        avoid: &[Avoid],
        key: Option<&SealKey>,
        chain: Option<blkpipe_format::chain::ChainBlock>,
        earlier: impl FnOnce(u64) -> Result<(), OpError>,
    ) -> Result<Self, OpError> {
        // Not a device, not in use, not the target or the input; created O_EXCL when new.
        let file = guard::open(
            path,
            Role::Aux("undo file"),
            OpenHow {
                write: true,
                create: true,
                truncate: false,
                exclusive: false,
            },
            avoid,
        )?;
        let held = file.metadata().map_err(|e| undo_err(path, e))?.len();
        if held > 0 {
            earlier(held)?;
            file.set_len(0).map_err(|e| undo_err(path, e))?;
        }
        let header = PatchHeader {
            source_size: target.size(),
            total_payload: blkpipe_format::patch::UNKNOWN_TOTAL,
            stream_id: crate::random_bytes(),
            creator: format!("blkpatch {} undo", env!("CARGO_PKG_VERSION")),
            chain,
        };
        Ok(Undo {
            out: UndoOut::Pending(BufWriter::with_capacity(1 << 20, file), header),
            key: key.cloned(),
            old_size: target.size(),
            buf: Vec::new(),
        })
    }

    /// The stream writer, its header written on first use.
    fn writer(&mut self) -> Result<&mut PatchWriter<BufWriter<File>>, OpError> {
        self.out = match std::mem::replace(&mut self.out, UndoOut::Failed) {
            UndoOut::Pending(out, header) => UndoOut::Writing(Box::new(
                PatchWriter::start(out, header, false, false, self.key.as_ref())
                    .map_err(io_undo)?,
            )),
            other => other,
        };
        match &mut self.out {
            UndoOut::Writing(w) => Ok(w),
            _ => Err(io_undo(io::Error::other("an earlier write failed"))),
        }
    }

    /// Save `offset..offset+len` of `target` (durable after the next [`Undo::sync`]).
    fn save(&mut self, target: &Device, offset: u64, len: u64) -> Result<(), OpError> {
        let end = (offset + len).min(self.old_size);
        if offset >= end {
            return Ok(());
        }
        self.buf.resize((end - offset) as usize, 0);
        let got = target.read_at(&mut self.buf, offset)?;
        self.buf.truncate(got);
        let buf = std::mem::take(&mut self.buf);
        let saved = emit_piece(self.writer()?, offset, &buf).map_err(io_undo);
        self.buf = buf;
        saved
    }

    /// A file target the stream makes smaller than it was loses `new_len..old_size` when it is
    /// resized at the end: save that tail (before the resize). Only its data extents are
    /// saved; its holes stay holes, implied by the undo stream's `source_size` (the file grows
    /// back to its old size after the records: FORMAT.md 2.5).
    fn save_tail(&mut self, target: &Device, new_len: u64) -> Result<(), OpError> {
        let mut at = new_len;
        while at < self.old_size {
            let Some((start, end)) = target.next_data(at)? else {
                break;
            };
            let end = end.min(self.old_size);
            let mut piece = start;
            while piece < end {
                let len = (end - piece).min(MAX_RECORD_LEN);
                self.save(target, piece, len)?;
                piece += len;
            }
            at = end;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), OpError> {
        let UndoOut::Writing(w) = &mut self.out else {
            return Ok(()); // nothing saved yet
        };
        let w = w.get_mut();
        w.flush().map_err(io_undo)?;
        w.get_ref().sync_data().map_err(io_undo)
    }

    /// Complete the stream. When the run failed before anything was saved, the file is left
    /// empty, so the next run may use it.
    fn finish(mut self, run_ok: bool) -> Result<(), OpError> {
        if matches!(self.out, UndoOut::Pending(..)) && !run_ok {
            return Ok(());
        }
        self.writer()?;
        let UndoOut::Writing(w) = self.out else {
            return Err(io_undo(io::Error::other("an earlier write failed")));
        };
        let file = w.finish(None).map_err(io_undo)?;
        file.get_ref().sync_all().map_err(io_undo)
    }
}

fn undo_err(path: &std::path::Path, e: io::Error) -> OpError {
    OpError::Output(io::Error::new(
        e.kind(),
        format!("undo file {}: {e}", path.display()),
    ))
}

fn io_undo(e: io::Error) -> OpError {
    OpError::Output(io::Error::new(e.kind(), format!("undo file: {e}")))
}

/// Check a stream's header against a target before anything is written.
pub fn check_fits(header: &PatchHeader, target: &Device) -> Result<(), OpError> {
    if target.is_block_device() && target.size() < header.source_size {
        return Err(OpError::Refused(format!(
            "{}: target is {} bytes, smaller than the source's {} bytes",
            target.path().display(),
            target.size(),
            header.source_size
        )));
    }
    Ok(())
}

/// With `--undo`, verified records are gathered into batches of at most this many bytes, so
/// the undo file is synced once per batch rather than once per record.
const UNDO_BATCH_BYTES: usize = 16 << 20;
/// ... or this many records.
const UNDO_BATCH_RECORDS: usize = 4096;

/// Writes verified records to the target; with an undo file, in batches whose old contents
/// are saved and synced before the batch touches the target.
struct Applier<'a> {
    target: &'a Device,
    undo: Option<Undo>,
    /// The state file and what it says.
    state: Option<(PathBuf, ResumeState, Vec<Avoid>)>,
    /// End offset of the last record written to the target (not necessarily synced).
    written_end: u64,
    /// Bytes written and time since the last durable checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoint_bytes: u64,
    discard: bool,
    zeros: Vec<u8>,
    /// Pending records: (offset, length, payload range in `batch`, or None for zeros).
    pending: Vec<(u64, u64, Option<std::ops::Range<usize>>)>,
    batch: Vec<u8>,
    write_behind: WriteBehind,
    /// Aligned data records go here (see [`crate::direct`]); `None`: all writes buffered.
    direct: Option<DirectWriter>,
}

/// Write-behind: once this much of the target's offset range has been written, its write-back
/// is started, ...
const WRITEBACK_WINDOW: u64 = 16 << 20;
/// ... and once this many windows are in write-back, the oldest is waited for and dropped
/// from the page cache. So dirty pages stay bounded, the disk writes while the stream is
/// still arriving (the final fsync has little left), and a large copy does not push the
/// host's other data out of the page cache.
const WRITEBACK_WINDOWS: usize = 4;

/// Windows of the target being written back, oldest first.
#[derive(Default)]
struct WriteBehind {
    /// End of the last window started.
    started_to: u64,
    windows: std::collections::VecDeque<(u64, u64)>,
}

impl WriteBehind {
    /// Records up to `end` are written (records ascend, so nothing below `end` changes again).
    fn written(&mut self, target: &Device, end: u64) -> Result<(), OpError> {
        if end < self.started_to + WRITEBACK_WINDOW {
            return Ok(());
        }
        let start = self.started_to;
        target.start_writeback(start, end - start);
        self.windows.push_back((start, end));
        self.started_to = end;
        while self.windows.len() > WRITEBACK_WINDOWS {
            let (a, b) = self.windows.pop_front().expect("not empty");
            target.wait_writeback(a, b - a)?;
            target.fadvise_dontneed(a, b - a);
        }
        Ok(())
    }
}

/// A state file is brought up to date after this many bytes (unless
/// [`ApplyOptions::checkpoint_bytes`] says otherwise) ...
pub const CHECKPOINT_BYTES: u64 = 256 << 20;
/// ... or this much time, whichever comes first.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl Applier<'_> {
    /// Apply a verified record whose bytes are `data` (`None`: zeros).
    fn push(&mut self, offset: u64, length: u64, data: Option<&[u8]>) -> Result<(), OpError> {
        self.record(offset, length, |a| match a.undo {
            None => a.write(offset, length, data),
            Some(_) => a.queue(offset, length, data),
        })
    }

    /// Whether the verified plain data record at `offset` of `length` bytes goes to
    /// [`Applier::push_payload`]: written directly, from the reader's own buffer (a range an
    /// earlier run applied is skipped there as in [`Applier::push`]).
    fn takes_payload(&self, offset: u64, length: u64) -> bool {
        self.undo.is_none() && self.direct.is_some() && DirectWriter::fits(offset, length as usize)
    }

    /// Apply the plain data record the reader just returned by handing its payload buffer to
    /// the direct writer, and giving the reader a free one to read on into.
    fn push_payload<R: Read>(
        &mut self,
        offset: u64,
        length: u64,
        reader: &mut PatchReader<R, DirectBuf>,
    ) -> Result<(), OpError> {
        self.record(offset, length, |a| {
            let Some(d) = a.direct.as_mut() else {
                return Err(OpError::Refused(
                    "internal error: no direct writer for a direct record".into(),
                ));
            };
            let spare = d.spare()?;
            d.submit(offset, reader.swap_payload(spare))
        })
    }

    /// Whether an earlier run of this stream applied and synced this range.
    fn already_applied(&self, offset: u64, length: u64) -> bool {
        self.state
            .as_ref()
            .is_some_and(|(_, st, _)| offset + length <= st.applied)
    }

    /// Skip what an earlier run applied; otherwise write (or, with an undo file, queue) the
    /// record with `apply`, then start write-back and checkpoint as due.
    fn record(
        &mut self,
        offset: u64,
        length: u64,
        apply: impl FnOnce(&mut Self) -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        if self.already_applied(offset, length) {
            return Ok(());
        }
        self.since_checkpoint += length;
        apply(self)?;
        if self.undo.is_none() {
            self.written_end = offset + length;
            self.write_behind.written(self.target, self.written_end)?;
        }
        if self.state.is_some()
            && (self.since_checkpoint >= self.checkpoint_bytes
                || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Flush, sync the target, and record in the state file how far it is applied.
    fn checkpoint(&mut self) -> Result<(), OpError> {
        self.flush()?;
        if let Some(d) = self.direct.as_mut() {
            d.drain()?;
        }
        let Some((path, st, avoid)) = self.state.as_mut() else {
            return Ok(());
        };
        self.target.sync()?;
        st.applied = st.applied.max(self.written_end);
        st.store(path, avoid)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn queue(&mut self, offset: u64, length: u64, data: Option<&[u8]>) -> Result<(), OpError> {
        let range = data.map(|d| {
            self.batch.extend_from_slice(d);
            self.batch.len() - d.len()..self.batch.len()
        });
        self.pending.push((offset, length, range));
        if self.batch.len() >= UNDO_BATCH_BYTES || self.pending.len() >= UNDO_BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, length: u64, data: Option<&[u8]>) -> Result<(), OpError> {
        match data {
            Some(bytes) => match self.direct.as_mut() {
                Some(d) if DirectWriter::fits(offset, bytes.len()) => d.write(offset, bytes)?,
                _ => self.target.write_at(bytes, offset)?,
            },
            None => self
                .target
                .zero_range(offset, length, self.discard, &self.zeros)?,
        }
        Ok(())
    }

    /// Save the old contents of the pending records, make that durable, then write them.
    fn flush(&mut self) -> Result<(), OpError> {
        let Some(undo) = self.undo.as_mut() else {
            return Ok(());
        };
        for &(offset, length, _) in &self.pending {
            undo.save(self.target, offset, length)?;
        }
        undo.sync()?;
        let batch = std::mem::take(&mut self.batch);
        for (offset, length, range) in std::mem::take(&mut self.pending) {
            self.write(offset, length, range.map(|r| &batch[r]))?;
            self.written_end = offset + length;
        }
        self.batch = batch;
        self.write_behind.written(self.target, self.written_end)?;
        self.batch.clear();
        Ok(())
    }

    /// Write what is pending, record it in the state file, and complete the undo stream.
    /// `resize_to`: the whole stream is applied, and a file target is about to be resized to
    /// this length: what a shrink drops is saved in the undo stream first.
    fn finish(mut self, resize_to: Option<u64>) -> Result<(), OpError> {
        let run_ok = resize_to.is_some();
        let flushed = self.checkpoint();
        let mut tail = Ok(());
        if let (Some(len), Some(u), true) = (
            resize_to,
            self.undo.as_mut(),
            flushed.is_ok() && !self.target.is_block_device(),
        ) {
            tail = u.save_tail(self.target, len);
        }
        let finished = match tail {
            // The undo stream is completed either way (it covers what was written), but a
            // failure to save the tail fails the run before the target is resized.
            Ok(()) => self.undo.take().map_or(Ok(()), |u| u.finish(run_ok)),
            Err(e) => {
                let _ = self.undo.take().map(|u| u.finish(false));
                Err(e)
            }
        };
        flushed.and(finished)
    }
}

/// Apply the patch stream on `input` to `target` (or, with `target = None` or
/// `opts.dry_run`, only validate it). With `list`, one line per record is written there
/// (`data|zero OFFSET LENGTH`).
pub fn apply_patch<R: Read>(
    target: Option<&mut Device>,
    input: R,
    opts: &ApplyOptions,
    progress: &Progress,
    list: Option<&mut dyn Write>,
) -> Result<Applied, OpError> {
    let reader = read_header(input, opts.key.as_ref())?;
    apply_stream(target, reader, opts, progress, list)
}

/// Read and verify a patch stream's header, for [`apply_stream`]. Payloads are then read into
/// page-aligned buffers that can be written with `O_DIRECT` as they are. With a `key`, the
/// stream must be sealed with it (and without one, must not be sealed): a missing, needless
/// or wrong key is refused here, before a target is opened.
pub fn read_header<R: Read>(
    input: R,
    key: Option<&SealKey>,
) -> Result<PatchReader<R, DirectBuf>, OpError> {
    Ok(PatchReader::with_key(input, DirectBuf::new(), key)?)
}

/// [`apply_patch`] for a stream whose header has already been read, so a caller can check
/// the header before it opens (or creates) the target.
pub fn apply_stream<R: Read>(
    mut target: Option<&mut Device>,
    mut reader: PatchReader<R, DirectBuf>,
    opts: &ApplyOptions,
    progress: &Progress,
    mut list: Option<&mut dyn Write>,
) -> Result<Applied, OpError> {
    let started = Instant::now();
    let header = reader.header().clone();
    if header.total_payload != blkpipe_format::patch::UNKNOWN_TOTAL {
        progress.set_total(header.total_payload);
    }
    if let Some(t) = target.as_deref() {
        check_fits(&header, t)?;
    }
    if opts.dry_run {
        target = None;
    }
    if opts.verify && !opts.dry_run && !reader.announces_source_digest() {
        return Err(OpError::Refused(
            "--verify: the stream's header does not announce a source digest to verify against (blkdiff streams carry one; blkread-chunks, cowlist --data, blkmerge and undo streams do not); nothing was written: run without --verify, or check with blkhash --digest on both sides".into(),
        ));
    }
    // Every file written besides the target is checked against the target, the input and the
    // other written files, by identity.
    let mut avoid = opts.avoid.clone();
    if let Some(t) = target.as_deref() {
        avoid.push(Avoid {
            id: t.identity()?.0,
            what: format!("the target {}", t.path().display()),
        });
    }
    let named = [
        ("--undo", opts.undo.as_ref()),
        ("--state", opts.state.as_ref()),
        ("--chain-state", opts.chain_state.as_ref()),
    ];
    for (i, (a, pa)) in named.iter().enumerate() {
        for (b, pb) in &named[i + 1..] {
            if let (Some(pa), Some(pb)) = (pa, pb) {
                if pa == pb || guard::temp_path(pa) == **pb || guard::temp_path(pb) == **pa {
                    return Err(OpError::Refused(format!(
                        "{a} {} and {b} {} name the same file",
                        pa.display(),
                        pb.display()
                    )));
                }
            }
        }
    }
    // --chain-state: the stream must follow the step the target holds (checked before
    // anything is written; the tool checks it before it even opens the target).
    let chain_gate = match &opts.chain_state {
        Some(path) => {
            let gate =
                ChainGate::open(path, &header, reader.link(), opts.key.as_ref(), opts.accept)?;
            if let Some(t) = target.as_deref() {
                gate.check_target(&binding(t)?)?;
                guard::check_replaceable(path, "chain state file", &avoid)?;
            }
            Some(gate)
        }
        None => None,
    };
    let mut chain_avoid = avoid.clone();
    for (what, p) in [("undo file", &opts.undo), ("state file", &opts.state)] {
        if let Some(p) = p {
            chain_avoid.extend(Avoid::path(p, format!("the {what} {}", p.display())));
        }
    }
    if let Some(c) = &opts.chain_state {
        avoid.extend(Avoid::path(
            c,
            format!("the chain state file {}", c.display()),
        ));
    }
    // A sealed undo stream of a chained stream is bound to the same steps, the other way.
    let undo_chain = match (header.chain, reader.link()) {
        (Some(b), Some(link)) => Some(crate::chain::undo_block(&b, &link)),
        _ => None,
    };
    // The undo file first: an existing one that holds data is refused before the state file
    // is created. Each is checked against the other when it exists.
    let undo = match (&opts.undo, target.as_deref()) {
        (Some(path), Some(t)) => {
            let mut undo_avoid = avoid.clone();
            if let Some(s) = &opts.state {
                undo_avoid.extend(Avoid::path(s, format!("the state file {}", s.display())));
            }
            let earlier = |held| match opts.replace_undo {
                true => Ok(()),
                false => keep_earlier_undo(path, held, opts.state.as_deref(), &header),
            };
            Some(Undo::create(
                path,
                t,
                &undo_avoid,
                opts.key.as_ref(),
                undo_chain,
                earlier,
            )?)
        }
        _ => None,
    };
    let state = match (&opts.state, target.as_deref()) {
        (Some(path), Some(t)) => {
            let mut state_avoid = avoid;
            if let Some(u) = &opts.undo {
                state_avoid.extend(Avoid::path(u, format!("the undo file {}", u.display())));
            }
            let st = resume_state(path, &header, t, &state_avoid)?;
            Some((path.clone(), st, state_avoid))
        }
        _ => None,
    };
    let mut applier = target.as_deref().map(|t| Applier {
        target: t,
        undo,
        state,
        written_end: 0,
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        checkpoint_bytes: opts.checkpoint_bytes.unwrap_or(CHECKPOINT_BYTES),
        discard: opts.discard,
        zeros: vec![0u8; MAX_RECORD_LEN as usize],
        pending: Vec::new(),
        batch: Vec::new(),
        write_behind: WriteBehind::default(),
        // With --undo, writes stay buffered: each batch is written right after its old
        // contents are saved.
        direct: if opts.undo.is_none() {
            DirectWriter::open(t)
        } else {
            None
        },
    });
    let mut stats = Stats::default();
    let result = loop {
        let rec = match reader.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        let (offset, length, lz4) = (rec.offset, rec.length, rec.lz4);
        let data = match rec.data {
            RecordData::Data(bytes) => Some(bytes),
            RecordData::Zero => None,
        };
        let is_data = data.is_some();
        if let Some(l) = list.as_deref_mut() {
            let kind = if is_data { "data" } else { "zero" };
            if let Err(e) = writeln!(l, "{kind} {offset} {length}") {
                break Err(OpError::Output(e));
            }
        }
        if let Some(a) = applier.as_mut() {
            let pushed = if is_data && !lz4 && a.takes_payload(offset, length) {
                a.push_payload(offset, length, &mut reader)
            } else {
                a.push(offset, length, data)
            };
            if let Err(e) = pushed {
                break Err(e);
            }
            stats.bytes_written += length;
        }
        if is_data {
            stats.data_bytes += length;
        } else {
            stats.zero_bytes += length;
        }
        stats.records += 1;
        progress.inc(length);
    };
    // Records verified before a fault are still applied, and the undo stream is completed
    // even then: it covers exactly what was written.
    let state = applier.as_ref().and_then(|a| a.state.clone());
    let resize_to = result.is_ok().then_some(header.source_size);
    let applied = applier.map_or(Ok(()), |a| a.finish(resize_to));
    result?;
    applied?;
    let end = *reader.end().expect("loop ends at the end record");
    if let Some(t) = target.as_deref_mut() {
        if !t.is_block_device() {
            t.set_len(header.source_size)?;
        }
        t.sync()?;
    }
    if let Some((path, mut st, avoid)) = state {
        st.applied = header.source_size;
        st.complete = true;
        st.store(&path, &avoid)?;
    }
    // The whole stream is applied and the target synced: now the target holds its step.
    if let (Some(gate), Some(t)) = (&chain_gate, target.as_deref()) {
        gate.commit(binding(t)?, &chain_avoid)?;
    }
    progress.finish();
    stats.storage_read = blkpipe_dev::storage_bytes_read();
    if opts.verify {
        let key = opts.key.as_ref().filter(|_| reader.is_sealed());
        verify(target.as_deref(), &header, &end, key, &mut stats)?;
    }
    stats.elapsed = started.elapsed();
    Ok(Applied { stats, header, end })
}

/// The state for this stream on this target: a fresh one (recorded at once, so the stream's
/// and the target's identities are durable before any write), or the one an earlier run left,
/// if it is for this very stream and this very target.
fn resume_state(
    path: &std::path::Path,
    header: &PatchHeader,
    target: &Device,
    avoid: &[Avoid],
) -> Result<ResumeState, OpError> {
    guard::check_replaceable(path, "state file", avoid)?;
    let binding = binding(target)?;
    match ResumeState::load(path)? {
        Some(st) if st.stream_id == header.stream_id && st.source_size == header.source_size => {
            st.check_target(path, &binding)?;
            Ok(st)
        }
        Some(st) => Err(OpError::Refused(format!(
            "state file {} is for stream {} of a {}-byte source, not this stream {} of a {}-byte source; remove it to start over",
            path.display(),
            hex_id(&st.stream_id),
            st.source_size,
            hex_id(&header.stream_id),
            header.source_size
        ))),
        None => {
            let st = ResumeState {
                stream_id: header.stream_id,
                source_size: header.source_size,
                applied: 0,
                complete: false,
                target: Some(binding),
            };
            st.store(path, avoid)?;
            Ok(st)
        }
    }
}

/// What a state file records of the target: its identity, a block device's size, its
/// incarnation.
fn binding(target: &Device) -> Result<TargetBinding, OpError> {
    let (id, incarnation) = target.identity()?;
    Ok(TargetBinding {
        id,
        size: target.is_block_device().then(|| target.size()),
        incarnation,
    })
}

/// Refuse an undo file that already holds data: it is an earlier run's only record of what
/// the target held. When `state` shows that run was this stream, interrupted, say how to keep
/// both halves.
fn keep_earlier_undo(
    undo: &std::path::Path,
    held: u64,
    state: Option<&std::path::Path>,
    header: &PatchHeader,
) -> Result<(), OpError> {
    let resuming = match state {
        Some(s) => {
            ResumeState::load(s)?.is_some_and(|st| st.stream_id == header.stream_id && !st.complete)
        }
        None => false,
    };
    Err(OpError::Refused(if resuming {
        format!(
            "undo file {u} holds the undo data of the interrupted run that --state resumes; nothing was written: name a new --undo file for the rest (to undo all, apply the new one, then {u})",
            u = undo.display()
        )
    } else {
        format!(
            "undo file {} already holds {held} bytes (an earlier run's undo data); nothing was written: move it away, name another --undo file, or add --replace-undo",
            undo.display()
        )
    }))
}

fn verify(
    target: Option<&Device>,
    header: &PatchHeader,
    end: &PatchEnd,
    key: Option<&SealKey>,
    stats: &mut Stats,
) -> Result<(), OpError> {
    let Some(sd) = end.source_digest else {
        return Err(OpError::Refused(
            "--verify: the stream carries no source digest (blkread-chunks streams do not; blkdiff streams do)".into(),
        ));
    };
    let Some(t) = target else { return Ok(()) };
    if !(blkpipe_format::hash::MIN_BLOCK_SIZE..=blkpipe_format::hash::MAX_BLOCK_SIZE)
        .contains(&sd.block_size)
        || !sd.block_size.is_power_of_two()
    {
        return Err(OpError::Refused(format!(
            "--verify: the end record's digest block size {} is invalid",
            sd.block_size
        )));
    }
    // Read what was written from the device, not from our own page cache.
    t.fadvise_dontneed(0, header.source_size);
    // A sealed stream's source digest is built from keyed block hashes (FORMAT.md 6).
    let hasher = BlockHasher::new(sd.seed, key);
    let found = crate::digest::device_digest_with(t, header.source_size, sd.block_size, &hasher)?;
    stats.bytes_read += header.source_size;
    if found != sd.digest {
        return Err(OpError::VerifyMismatch {
            expected: format_digest(sd.digest),
            found: format_digest(found),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
