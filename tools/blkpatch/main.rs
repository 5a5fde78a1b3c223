//! `blkpatch TARGET`: apply a patch stream to a device or image file, safely.

#[path = "../common.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Context;
use blkpipe_dev::{Device, TargetOptions};
use blkpipe_ops::apply::{apply_patch, ApplyOptions};
use blkpipe_ops::input::open_input;
use blkpipe_ops::state::{hex_id, ResumeState};
use clap::Parser;

/// Apply the patch stream on stdin to TARGET, a block device or an image file.
///
/// zstd, lz4 and gzip input is recognised and decompressed. Each record is verified before any
/// of its bytes are written; at the first fault (bad magic, checksum mismatch, misordered
/// record, truncation) nothing more is written and the error names the record and offset.
/// Only a complete stream with a valid end record exits 0. A file target is created if
/// missing and sized to the source; a block device smaller than the source is refused, and
/// one that is mounted or open elsewhere is refused unless --force.
///
/// Examples:
///   blkread-chunks src.img < ranges | blkpatch dst.img
///   ssh src 'cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd' | blkpatch /dev/vg/lv
///   blkpatch --undo undo.patch /dev/vg/lv < delta.patch && blkpatch /dev/vg/lv < undo.patch
///   blkpatch --state st /dev/vg/lv < full.patch   # interrupted? then, on the sender:
///   read -r id off < <(ssh dst blkpatch --state st --print-state)
///   echo "0 $size" | blkread-chunks --from "$off" --stream-id "$id" /dev/vg/lv | ssh dst blkpatch --state st /dev/vg/lv
///
/// Exit codes: 0 ok, 1 other failure, 2 usage, 3 bad or truncated stream, 4 I/O error,
/// 5 target refused (in use, too small), 6 --verify mismatch.
#[derive(Parser, Debug)]
#[command(name = "blkpatch", version, verbatim_doc_comment)]
struct Args {
    /// Block device or image file to patch (optional with --list and --dry-run).
    #[arg(required_unless_present_any = ["list", "dry_run", "print_state"])]
    target: Option<PathBuf>,
    /// Read the patch stream from FILE instead of stdin.
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Zero records punch holes in files and zero out (with discard) on devices.
    #[arg(long)]
    discard: bool,
    /// Write to a target even if it is mounted or in use.
    #[arg(long)]
    force: bool,
    /// Validate the whole stream and report what would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one line per record (`data|zero OFFSET LENGTH`) on stdout; write nothing.
    #[arg(long)]
    list: bool,
    /// Before overwriting a region, save its old contents to FILE as a patch stream.
    #[arg(long, value_name = "FILE")]
    undo: Option<PathBuf>,
    /// Record durable progress in FILE; rerun with the same FILE to skip what an interrupted
    /// run of the same stream already applied (a different stream is refused).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Print `STREAM_ID APPLIED_OFFSET` from the --state FILE (for resuming senders) and exit.
    #[arg(long, requires = "state")]
    print_state: bool,
    /// After applying, check the target's digest against the source digest in the stream.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    report: common::Reporting,
}

fn run(args: Args) -> anyhow::Result<()> {
    if let (true, Some(path)) = (args.print_state, &args.state) {
        match ResumeState::load(path)? {
            Some(st) => println!("{} {}", hex_id(&st.stream_id), st.applied),
            None => println!("none 0"),
        }
        return Ok(());
    }
    let (input, _) = open_input(args.input.as_deref()).with_context(|| match &args.input {
        Some(p) => format!("{}: open", p.display()),
        None => "stdin".into(),
    })?;
    let write = !(args.dry_run || args.list);
    let mut target = match &args.target {
        Some(path) => Some(Device::open_target(
            path,
            TargetOptions {
                create: write,
                force: args.force,
                read_only: !write,
            },
        )?),
        None => None,
    };
    let opts = ApplyOptions {
        discard: args.discard,
        undo: if write { args.undo.clone() } else { None },
        verify: args.verify && write,
        dry_run: !write,
        state: args.state.clone(),
    };
    let progress = args.report.progress("blkpatch")?;
    let mut stdout = common::stdout_buffered();
    let list: Option<&mut dyn std::io::Write> = if args.list { Some(&mut stdout) } else { None };
    let applied = apply_patch(target.as_mut(), input, &opts, &progress, list)?;
    std::io::Write::flush(&mut stdout).context("stdout")?;
    if args.dry_run {
        eprintln!(
            "blkpatch: dry run: stream is valid: {} records, {} data bytes, {} zero bytes, source size {}",
            applied.end.record_count, applied.end.data_bytes, applied.end.zero_bytes, applied.header.source_size
        );
    }
    args.report.print_stats("blkpatch", &applied.stats);
    Ok(())
}

fn main() {
    common::exit_with("blkpatch", run(Args::parse()))
}
