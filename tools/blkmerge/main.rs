//! `blkmerge PATCH...`: combine patch streams, oldest first, into one where later records win.

#[path = "../common.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Context;
use blkpipe_ops::input::open_input;
use blkpipe_ops::merge::{merge_patches, MergeOptions};
use clap::Parser;

/// Combine patch streams, oldest first, into one patch stream on stdout where later records
/// win where they overlap.
///
/// Applying the result equals applying the inputs one after another. Inputs may be zstd, lz4
/// or gzip compressed; `-` is stdin. Memory is bounded by the record cap (4 MiB) times the
/// number of inputs, whatever the streams' sizes. The result is complete (has an end record)
/// only if every input was; its source size is the newest input's.
///
/// Examples:
///   blkmerge mon.patch tue.patch wed.patch | blkpatch restored.img
///   blkmerge undo-wed.patch undo-tue.patch undo-mon.patch > undo-all.patch   # undo a chain
///   blkmerge full.patch.zst delta1.patch.zst | zstd > full-as-of-delta1.patch.zst
///
/// Exit codes: 0 ok, 1 other failure, 2 usage, 3 an input is bad or truncated, 4 I/O error,
/// 5 refused (stdout is a terminal), 141 broken pipe.
#[derive(Parser, Debug)]
#[command(name = "blkmerge", version, verbatim_doc_comment)]
struct Args {
    /// Patch streams, oldest first.
    #[arg(required = true, value_name = "PATCH")]
    inputs: Vec<PathBuf>,
    /// Compress data payloads with lz4.
    #[arg(long)]
    lz4: bool,
    /// Write the binary stream even when stdout is a terminal.
    #[arg(long)]
    force_tty: bool,
    #[command(flatten)]
    report: common::Reporting,
}

fn run(args: Args) -> anyhow::Result<()> {
    common::guard_binary_stdout(args.force_tty)?;
    if args.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        anyhow::bail!("stdin (-) can be given only once");
    }
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        let (reader, _) =
            open_input(Some(path)).with_context(|| format!("{}: open", path.display()))?;
        inputs.push((path.display().to_string(), reader));
    }
    let opts = MergeOptions { lz4: args.lz4 };
    let stats = merge_patches(inputs, common::stdout_buffered(), &opts)?;
    args.report.print_stats("blkmerge", &stats);
    Ok(())
}

fn main() {
    common::exit_with("blkmerge", run(Args::parse()))
}
