//! [`apply_patch`] against the in-memory engine: faults in the middle of a batch, the order of
//! undo and target writes, checkpoint contents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blkpipe_dev::mem::{Faults, MemEngine, MemOp};
use blkpipe_format::patch::{PatchReader, RecordData};

use super::*;

const SIZE: usize = 1 << 20;
const OLD: u8 = 0xaa;

/// Records of 4 KiB at 0, 64K, 128K, ... each filled with its number + 1 (the last one a zero
/// record): `(offset, length, byte)`.
fn records() -> Vec<(u64, u64, u8)> {
    (0..8u64)
        .map(|i| (i * 65536, 4096, if i == 7 { 0 } else { i as u8 + 1 }))
        .collect()
}

fn stream() -> Vec<u8> {
    let mut w = PatchWriter::new(Vec::new(), PatchHeader::new(SIZE as u64, [7; 16]), false)
        .expect("header");
    for (offset, len, byte) in records() {
        if byte == 0 {
            w.write_zero(offset, len).unwrap();
        } else {
            w.write_data(offset, &vec![byte; len as usize]).unwrap();
        }
    }
    w.finish(None).unwrap()
}

fn target(faults: Faults) -> (Device, MemEngine) {
    let mem = MemEngine::new(vec![OLD; SIZE], faults);
    let dev = Device::from_engine(Box::new(mem.clone()), Path::new("mem:target"));
    (dev, mem)
}

fn apply(dev: &mut Device, opts: &ApplyOptions) -> Result<Applied, OpError> {
    apply_patch(Some(dev), &stream()[..], opts, &Progress::hidden(), None)
}

fn undo_opts(undo: &Path) -> ApplyOptions {
    ApplyOptions {
        undo: Some(undo.to_owned()),
        ..ApplyOptions::default()
    }
}

/// The stream applied with `--undo` to a target that injects `faults`.
struct UndoRun {
    result: Result<Applied, OpError>,
    mem: MemEngine,
    /// The undo file (in `_dir`).
    undo: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn apply_with_undo(faults: Faults) -> UndoRun {
    let dir = tempfile::tempdir().unwrap();
    let undo = dir.path().join("undo");
    let (mut dev, mem) = target(faults);
    let result = apply(&mut dev, &undo_opts(&undo));
    UndoRun {
        result,
        mem,
        undo,
        _dir: dir,
    }
}

/// The records whose bytes `contents` holds (the rest must still hold the old bytes).
fn applied_records(contents: &[u8]) -> usize {
    let recs = records();
    let n = recs
        .iter()
        .take_while(|(o, _, b)| contents[*o as usize] == *b)
        .count();
    for (o, l, _) in &recs[n..] {
        assert!(
            contents[*o as usize..(*o + *l) as usize]
                .iter()
                .all(|&b| b == OLD),
            "record at {o} written after the fault"
        );
    }
    n
}

/// The ranges of the records an undo stream holds, whole or cut short, with their bytes.
fn undo_records(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let Ok(mut r) = PatchReader::new(&bytes[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Ok(Some(rec)) = r.next_record() {
        let data = match rec.data {
            RecordData::Data(d) => d.to_vec(),
            RecordData::Zero => vec![0; rec.length as usize],
        };
        out.push((rec.offset, data));
    }
    out
}

#[test]
fn a_write_fault_stops_the_stream_there() {
    let (mut dev, mem) = target(Faults {
        fail_write: Some(4),
        ..Faults::default()
    });
    let e = apply(&mut dev, &ApplyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("injected fault, write 4"), "{e}");
    assert_eq!(applied_records(&mem.contents()), 3);
    let writes = mem
        .log()
        .iter()
        .filter(|op| matches!(op, MemOp::Write { .. } | MemOp::Zero { .. }))
        .count();
    assert_eq!(writes, 3);
}

#[test]
fn a_fault_in_the_middle_of_an_undo_batch_writes_nothing_after_it() {
    let run = apply_with_undo(Faults {
        fail_write: Some(5),
        ..Faults::default()
    });
    let e = run.result.unwrap_err();
    assert!(e.to_string().contains("injected fault"), "{e}");
    // All eight records are one batch: the undo file has every old region, the target the
    // first four records and nothing after them.
    assert_eq!(applied_records(&run.mem.contents()), 4);
    let saved = undo_records(&run.undo);
    assert_eq!(saved.len(), 8);
    assert!(saved.iter().all(|(_, d)| d.iter().all(|&b| b == OLD)));
    // The undo stream is complete (it has its end record): applying it restores the target.
    let undo_stream = std::fs::read(&run.undo).unwrap();
    let mut r = PatchReader::new(&undo_stream[..]).unwrap();
    while r.next_record().unwrap().is_some() {}
    assert!(r.end().is_some());
}

#[test]
fn undo_data_is_on_disk_before_the_target_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let undo = dir.path().join("undo");
    let seen: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let hook = {
        let (undo, seen) = (undo.clone(), Arc::clone(&seen));
        Box::new(move |offset: u64, len: u64| {
            // What the undo file holds at this moment, read back from the file system.
            let covered = undo_records(&undo).iter().any(|(o, d)| {
                *o <= offset && offset + len <= o + d.len() as u64 && d.iter().all(|&b| b == OLD)
            });
            seen.lock().unwrap().push((offset, covered));
        })
    };
    let mem = MemEngine::with_hook(vec![OLD; SIZE], Faults::default(), hook);
    let mut dev = Device::from_engine(Box::new(mem.clone()), Path::new("mem:target"));
    apply(&mut dev, &undo_opts(&undo)).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), records().len());
    for (offset, covered) in seen.iter() {
        assert!(
            covered,
            "target written at {offset} before its old contents were saved"
        );
    }
    assert_eq!(applied_records(&mem.contents()), records().len());
    // The undo stream puts the old contents back.
    let mut back = Device::from_engine(
        Box::new(MemEngine::new(mem.contents(), Faults::default())),
        Path::new("mem:back"),
    );
    let undo_stream = std::fs::read(&undo).unwrap();
    apply_patch(
        Some(&mut back),
        &undo_stream[..],
        &ApplyOptions::default(),
        &Progress::hidden(),
        None,
    )
    .unwrap();
    let mut all = vec![0u8; SIZE];
    assert_eq!(back.read_at(&mut all, 0).unwrap(), SIZE);
    assert!(all.iter().all(|&b| b == OLD));
}

fn state_opts(state: &Path) -> ApplyOptions {
    ApplyOptions {
        state: Some(state.to_owned()),
        checkpoint_bytes: Some(4096 * 2),
        ..ApplyOptions::default()
    }
}

fn applied_in(state: &Path) -> (u64, bool) {
    let st = ResumeState::load(state).unwrap().expect("state file");
    (st.applied, st.complete)
}

#[test]
fn checkpoints_record_only_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let (mut dev, mem) = target(Faults {
        fail_write: Some(6),
        ..Faults::default()
    });
    apply(&mut dev, &state_opts(&state)).unwrap_err();
    // A checkpoint every two records (after records 2 and 4), and a last one after the fault
    // for record 5, the last written: the state covers exactly what was written and flushed.
    assert_eq!(applied_records(&mem.contents()), 5);
    let recs = records();
    assert_eq!(applied_in(&state), (recs[4].0 + recs[4].1, false));
    // Each checkpoint's flush comes right after the writes it covers.
    let log = mem.log();
    let after: Vec<MemOp> = (1..log.len())
        .filter(|&i| log[i] == MemOp::Flush)
        .map(|i| log[i - 1])
        .collect();
    let write = |i: usize| MemOp::Write {
        offset: recs[i].0,
        len: recs[i].1,
    };
    assert_eq!(after, [write(1), write(3), write(4)], "{log:?}");

    // Run again on the same target: what the state file says is applied is skipped.
    let mem2 = MemEngine::new(mem.contents(), Faults::default());
    let mut dev2 = Device::from_engine(Box::new(mem2.clone()), Path::new("mem:target"));
    apply(&mut dev2, &state_opts(&state)).unwrap();
    let first = mem2.log().into_iter().find(|op| *op != MemOp::Flush);
    assert_eq!(first, Some(write(5)));
    assert_eq!(applied_records(&mem2.contents()), recs.len());
    assert_eq!(applied_in(&state), (SIZE as u64, true));
}

#[test]
fn a_failed_flush_is_an_error_and_the_checkpoint_does_not_advance() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (mut dev, _mem) = target(Faults {
        fail_flush: true,
        ..Faults::default()
    });
    let e = apply(&mut dev, &state_opts(&state)).unwrap_err();
    assert!(e.to_string().contains("flush (injected fault)"), "{e}");
    assert_eq!(applied_in(&state), (0, false));
}

#[test]
fn a_short_read_while_saving_undo_data_saves_what_is_there() {
    // The target "ends" at 100,000 bytes for reads: the undo file keeps what could be read.
    let run = apply_with_undo(Faults {
        short_read_at: Some(100_000),
        ..Faults::default()
    });
    run.result.unwrap();
    assert_eq!(applied_records(&run.mem.contents()), records().len());
    let saved = undo_records(&run.undo);
    assert_eq!(
        saved.len(),
        2,
        "records at 0 and 64K lie below the short end"
    );
}
