//! `blkpatch`: apply a patch stream to a target, one verified record at a time.
//!
//! Nothing is written for a record until [`PatchReader`] has verified its checksum, order and
//! bounds; at the first fault the records already applied stay applied, nothing more is
//! written, and the error names the record and offset. Only a valid end record is success.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use blkpipe_dev::Device;
use blkpipe_format::digest::format_digest;
use blkpipe_format::patch::{PatchEnd, PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::MAX_RECORD_LEN;

use crate::chunks::emit_piece;
use crate::progress::Progress;
use crate::{OpError, Stats};

/// Options of [`apply_patch`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Zero records punch holes (files) or zero out with discard (block devices).
    pub discard: bool,
    /// Save the old contents of every overwritten region to this file, as a patch stream.
    pub undo: Option<PathBuf>,
    /// Check and read everything, write nothing.
    pub dry_run: bool,
    /// After applying, compare the target's digest with the source digest in the end record.
    pub verify: bool,
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
struct Undo {
    writer: PatchWriter<BufWriter<File>>,
    /// Size of the target before any write: regions past it have nothing to save.
    old_size: u64,
    buf: Vec<u8>,
}

impl Undo {
    fn create(path: &PathBuf, target: &Device) -> Result<Self, OpError> {
        let file = File::create(path).map_err(|e| undo_err(path, e))?;
        let header = PatchHeader {
            source_size: target.size(),
            total_payload: blkpipe_format::patch::UNKNOWN_TOTAL,
            stream_id: crate::random_bytes(),
            creator: format!("blkpatch {} undo", env!("CARGO_PKG_VERSION")),
        };
        let writer = PatchWriter::new(BufWriter::with_capacity(1 << 20, file), header, false)
            .map_err(|e| undo_err(path, e))?;
        Ok(Undo {
            writer,
            old_size: target.size(),
            buf: Vec::new(),
        })
    }

    /// Save `offset..offset+len` of `target` and make it durable.
    fn save(&mut self, target: &Device, offset: u64, len: u64) -> Result<(), OpError> {
        let end = (offset + len).min(self.old_size);
        if offset >= end {
            return Ok(());
        }
        self.buf.resize((end - offset) as usize, 0);
        let got = target.read_at(&mut self.buf, offset)?;
        self.buf.truncate(got);
        emit_piece(&mut self.writer, offset, &self.buf).map_err(io_undo)?;
        self.sync()
    }

    fn sync(&mut self) -> Result<(), OpError> {
        let w = self.writer_file();
        w.flush().map_err(io_undo)?;
        w.get_ref().sync_data().map_err(io_undo)
    }

    fn writer_file(&mut self) -> &mut BufWriter<File> {
        self.writer.get_mut()
    }

    fn finish(self) -> Result<(), OpError> {
        let file = self.writer.finish(None).map_err(io_undo)?;
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

/// Apply the patch stream on `input` to `target` (or, with `target = None` or
/// `opts.dry_run`, only validate it). With `list`, one line per record is written there (`data|zero OFFSET LENGTH`).
pub fn apply_patch<R: Read>(
    mut target: Option<&mut Device>,
    input: R,
    opts: &ApplyOptions,
    progress: &Progress,
    mut list: Option<&mut dyn Write>,
) -> Result<Applied, OpError> {
    let started = Instant::now();
    let mut reader = PatchReader::new(input)?;
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
    let mut undo = match (&opts.undo, target.as_deref()) {
        (Some(path), Some(t)) => Some(Undo::create(path, t)?),
        _ => None,
    };
    let zeros = vec![0u8; MAX_RECORD_LEN as usize];
    let mut stats = Stats::default();
    let result = loop {
        let rec = match reader.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        if let Some(l) = list.as_deref_mut() {
            let kind = if matches!(rec.data, RecordData::Zero) {
                "zero"
            } else {
                "data"
            };
            if let Err(e) = writeln!(l, "{kind} {} {}", rec.offset, rec.length) {
                break Err(OpError::Output(e));
            }
        }
        if let Some(t) = target.as_deref() {
            if let Some(u) = undo.as_mut() {
                if let Err(e) = u.save(t, rec.offset, rec.length) {
                    break Err(e);
                }
            }
            let written = match rec.data {
                RecordData::Data(bytes) => t.write_at(bytes, rec.offset),
                RecordData::Zero => t.zero_range(rec.offset, rec.length, opts.discard, &zeros),
            };
            if let Err(e) = written {
                break Err(e.into());
            }
            stats.bytes_written += rec.length;
        }
        match rec.data {
            RecordData::Data(_) => stats.data_bytes += rec.length,
            RecordData::Zero => stats.zero_bytes += rec.length,
        }
        stats.records += 1;
        progress.inc(rec.length);
    };
    // The undo stream is completed even after a fault: it covers exactly what was written.
    let undo_done = undo.map_or(Ok(()), Undo::finish);
    result?;
    undo_done?;
    let end = *reader.end().expect("loop ends at the end record");
    if let Some(t) = target.as_deref_mut() {
        if !t.is_block_device() {
            t.set_len(header.source_size)?;
        }
        t.sync()?;
    }
    progress.finish();
    if opts.verify {
        verify(target.as_deref(), &header, &end, &mut stats)?;
    }
    stats.elapsed = started.elapsed();
    Ok(Applied { stats, header, end })
}

fn verify(
    target: Option<&Device>,
    header: &PatchHeader,
    end: &PatchEnd,
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
    let found = crate::digest::device_digest(t, header.source_size, sd.block_size, sd.seed)?;
    stats.bytes_read += header.source_size;
    if found != sd.digest {
        return Err(OpError::VerifyMismatch {
            expected: format_digest(sd.digest),
            found: format_digest(found),
        });
    }
    Ok(())
}
