//! `blkmerge`: combine patch streams, oldest first, into one where later records win.
//!
//! A sweep over device offsets with one current record per input: memory is bounded by the
//! record cap times the number of inputs, whatever the streams' sizes. The output is only
//! finished (end record written) once every input has been read to a valid end record, so a
//! damaged input never yields a complete-looking result.

use std::io::{Read, Write};
use std::time::Instant;

use blkpipe_format::patch::{PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::seal::SealKey;

use crate::{OpError, Stats};

/// Options of [`merge_patches`].
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Compress data payloads with lz4.
    pub lz4: bool,
    /// Every input must be sealed with this key, and the output is sealed with it.
    pub key: Option<SealKey>,
}

/// One input and its current record, owned.
struct Input<R: Read> {
    reader: PatchReader<R>,
    name: String,
    /// Current record: offset, length, data (None for zeros). None when exhausted.
    current: Option<(u64, u64, Option<Vec<u8>>)>,
}

impl<R: Read> Input<R> {
    fn advance(&mut self) -> Result<(), OpError> {
        let mut data_buf = self
            .current
            .take()
            .and_then(|(_, _, d)| d)
            .unwrap_or_default();
        self.current = match self.reader.next_record() {
            Ok(Some(rec)) => {
                let data = match rec.data {
                    RecordData::Data(d) => {
                        data_buf.clear();
                        data_buf.extend_from_slice(d);
                        Some(data_buf)
                    }
                    RecordData::Zero => None,
                };
                Some((rec.offset, rec.length, data))
            }
            Ok(None) => None,
            Err(e) => return Err(named(e, &self.name)),
        };
        Ok(())
    }
}

fn named(e: blkpipe_format::FormatError, name: &str) -> OpError {
    // Keep the error (and so the exit code), say which input it was.
    OpError::InStream {
        name: name.to_owned(),
        error: e,
    }
}

/// Merge `inputs` (oldest first, each with a name for messages) into one stream on `out`.
/// The result's source size is the newest stream's; older records past it are cut off.
pub fn merge_patches<R: Read, W: Write>(
    inputs: Vec<(String, R)>,
    out: W,
    opts: &MergeOptions,
) -> Result<Stats, OpError> {
    let started = Instant::now();
    let mut ins = Vec::with_capacity(inputs.len());
    for (name, r) in inputs {
        let reader =
            PatchReader::with_key(r, Vec::new(), opts.key.as_ref()).map_err(|e| named(e, &name))?;
        let mut input = Input {
            reader,
            name,
            current: None,
        };
        input.advance()?;
        ins.push(input);
    }
    let Some(newest) = ins.last() else {
        return Err(OpError::Refused("no input streams".into()));
    };
    let size = newest.reader.header().source_size;
    // Chained inputs must be consecutive steps of one chain (FORMAT.md 6.6): checked from
    // their headers, before a byte of output.
    let links: Vec<_> = ins
        .iter()
        .map(|i| (i.name.clone(), i.reader.header().chain, i.reader.link()))
        .collect();
    let chain = crate::chain::merged(&links)?;
    let header = PatchHeader {
        source_size: size,
        total_payload: blkpipe_format::patch::UNKNOWN_TOTAL,
        stream_id: crate::random_bytes(),
        creator: format!("blkmerge {}", env!("CARGO_PKG_VERSION")),
        chain,
    };
    let mut w = PatchWriter::start(out, header, opts.lz4, false, opts.key.as_ref())
        .map_err(OpError::Output)?;
    let mut pos = 0u64;
    loop {
        // Retire records that end at or before the sweep position.
        for input in ins.iter_mut() {
            while matches!(input.current, Some((o, l, _)) if o + l <= pos) {
                input.advance()?;
            }
        }
        let Some(next) = ins
            .iter()
            .filter_map(|i| i.current.as_ref().map(|(o, _, _)| (*o).max(pos)))
            .min()
        else {
            break;
        };
        pos = next;
        if pos >= size {
            // Everything left lies past the result's end; read it to its end record anyway.
            for input in ins.iter_mut() {
                while input.current.is_some() {
                    input.advance()?;
                }
            }
            break;
        }
        let win = ins
            .iter()
            .rposition(|i| matches!(i.current, Some((o, l, _)) if o <= pos && pos < o + l))
            .expect("some record starts at pos");
        let (w_off, w_len, _) = ins[win].current.as_ref().expect("winner has a record");
        let mut seg_end = (w_off + w_len).min(size);
        for newer in &ins[win + 1..] {
            if let Some((o, _, _)) = newer.current {
                if o > pos {
                    seg_end = seg_end.min(o);
                }
            }
        }
        let (w_off, _, data) = ins[win].current.as_ref().expect("winner has a record");
        match data {
            Some(d) => {
                let slice = &d[(pos - w_off) as usize..(seg_end - w_off) as usize];
                w.write_data(pos, slice).map_err(OpError::Output)?;
            }
            None => w.write_zero(pos, seg_end - pos).map_err(OpError::Output)?,
        }
        pos = seg_end;
    }
    let stats = Stats {
        records: w.record_count(),
        data_bytes: w.data_bytes(),
        zero_bytes: w.zero_bytes(),
        bytes_written: w.data_bytes() + w.zero_bytes(),
        elapsed: started.elapsed(),
        ..Stats::default()
    };
    w.finish(None).map_err(OpError::Output)?;
    Ok(stats)
}
