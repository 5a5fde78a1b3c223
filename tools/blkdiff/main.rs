//! `blkdiff DEV`: compare DEV with a remote hash stream and write a patch of what differs.

#[path = "../common.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Context;
use blkpipe_dev::Device;
use blkpipe_ops::diff::{diff_device, DiffOptions};
use blkpipe_ops::input::open_input;
use blkpipe_ops::scan::ScanOptions;
use clap::Parser;

/// Compare DEV with the hash stream on stdin (from `blkhash` on the other side) and write to
/// stdout a patch stream that makes the other side equal to DEV.
///
/// DEV is read with the stream's block size and seed while the hashes arrive. Blocks whose
/// hash differs, and DEV's blocks past the end of the remote device, become records (adjacent
/// blocks merged; all-zero blocks as zero records). The patch carries DEV's size (blkpatch
/// truncates an image file to it; a larger block device keeps its tail) and DEV's digest, for
/// `blkpatch --verify`. A bad, corrupted or truncated hash stream is an error, and then no end
/// record is written, so the blkpatch downstream fails too. zstd, lz4 and gzip input is
/// recognised and decompressed.
///
/// Examples:
///   ssh dst blkhash /dev/vg/lv | blkdiff /dev/vg/lv | ssh dst blkpatch --verify /dev/vg/lv
///   ssh dst 'blkhash /dev/x | zstd' | blkdiff --lz4 /dev/x | ssh dst blkpatch /dev/x
///   blkhash old.img > old.hashes; blkdiff --hashes old.hashes new.img > delta.patch
///
/// Exit codes: 0 ok, 1 other failure, 2 usage, 3 bad or truncated hash stream or bad --from,
/// 4 I/O error, 5 refused (stdout is a terminal, device shrank), 141 broken pipe.
#[derive(Parser, Debug)]
#[command(name = "blkdiff", version, verbatim_doc_comment)]
struct Args {
    /// Local device or image file: the source.
    dev: PathBuf,
    /// Read the hash stream from FILE instead of stdin.
    #[arg(long, value_name = "FILE")]
    hashes: Option<PathBuf>,
    /// Compress data payloads with lz4 (only where that makes them smaller).
    #[arg(long)]
    lz4: bool,
    /// Write no records below this byte offset (DEV is still read whole for its digest).
    #[arg(long, value_name = "OFFSET", default_value = "0", value_parser = common::parse_size)]
    from: u64,
    /// Hashing threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Read DEV with O_DIRECT, bypassing the page cache.
    #[arg(long)]
    direct: bool,
    /// Write the binary stream even when stdout is a terminal.
    #[arg(long)]
    force_tty: bool,
    #[command(flatten)]
    report: common::Reporting,
}

fn run(args: Args) -> anyhow::Result<()> {
    common::guard_binary_stdout(args.force_tty)?;
    let dev = Device::open_source(&args.dev, args.direct)?;
    let (input, _) = open_input(args.hashes.as_deref()).with_context(|| match &args.hashes {
        Some(p) => format!("{}: open", p.display()),
        None => "stdin".into(),
    })?;
    let opts = DiffOptions {
        lz4: args.lz4,
        from_offset: args.from,
        scan: ScanOptions {
            threads: args.threads,
            direct: args.direct,
            drop_cache: true,
        },
        ..DiffOptions::default()
    };
    let progress = args.report.progress("blkdiff")?;
    let stats = diff_device(&dev, input, common::stdout_buffered(), &opts, &progress)?;
    args.report.print_stats("blkdiff", &stats);
    Ok(())
}

fn main() {
    common::exit_with("blkdiff", run(Args::parse()))
}
