//! `blkread-chunks DEV`: read a list of byte ranges from DEV and write them as a patch stream.

#[path = "../common.rs"]
mod common;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use blkpipe_dev::Device;
use blkpipe_ops::chunks::{read_chunks, ChunkOptions};
use clap::Parser;

/// Read the byte ranges listed on stdin from DEV and write them to stdout as a patch stream.
///
/// The range list has one `OFFSET LENGTH` per line in decimal bytes (`#` comments and blank
/// lines ignored), as `cowlist` writes it. Ranges are sorted and merged; a range past the end
/// of DEV is an error naming its line. All-zero 4 KiB blocks become zero records.
///
/// Examples:
///   printf '0 4096\n1048576 65536\n' | blkread-chunks src.img | blkpatch dst.img
///   cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd | ssh dst blkpatch /dev/vg/lv
///   echo "0 $(blockdev --getsize64 /dev/vg/lv)" | blkread-chunks /dev/vg/lv > full.patch
///
/// Exit codes: 0 ok, 1 other failure, 2 usage, 3 bad range list, 4 I/O error,
/// 5 refused (range list for another device size, stdout is a terminal), 141 broken pipe.
#[derive(Parser, Debug)]
#[command(name = "blkread-chunks", version, verbatim_doc_comment)]
struct Args {
    /// Device or image file to read.
    dev: PathBuf,
    /// Read the range list from FILE instead of stdin.
    #[arg(long, value_name = "FILE")]
    ranges: Option<PathBuf>,
    /// Compress data payloads with lz4 (only where that makes them smaller).
    #[arg(long)]
    lz4: bool,
    /// Skip everything below this byte offset (to resume an interrupted transfer).
    #[arg(long, value_name = "OFFSET", default_value_t = 0)]
    from: u64,
    /// Use this stream id (32 hex digits) instead of a random one, to resume a stream that
    /// `blkpatch --state` recorded (see `blkpatch --print-state`).
    #[arg(long, value_name = "HEX", value_parser = parse_stream_id)]
    stream_id: Option<[u8; 16]>,
    /// Accept a range list whose header names a different device size.
    #[arg(long)]
    ignore_size: bool,
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
    let ranges: Box<dyn Read> = match &args.ranges {
        Some(p) => {
            Box::new(File::open(p).with_context(|| format!("{}: open range list", p.display()))?)
        }
        None => Box::new(std::io::stdin().lock()),
    };
    let opts = ChunkOptions {
        lz4: args.lz4,
        from_offset: args.from,
        ignore_size: args.ignore_size,
        stream_id: args.stream_id,
        ..ChunkOptions::default()
    };
    let progress = args.report.progress("blkread-chunks")?;
    let stats = read_chunks(&dev, ranges, common::stdout_buffered(), &opts, &progress)?;
    args.report.print_stats("blkread-chunks", &stats);
    Ok(())
}

fn parse_stream_id(s: &str) -> Result<[u8; 16], String> {
    blkpipe_ops::state::parse_id(s).ok_or_else(|| "expected 32 hex digits".into())
}

fn main() {
    common::exit_with("blkread-chunks", run(Args::parse()))
}
