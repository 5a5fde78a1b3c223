//! `blkread-chunks DEV`: read a list of byte ranges from DEV and write them as a patch stream.

use blkpipe_cli as cli;
use blkpipe_cli::args::blkread_chunks::Args;
use blkpipe_dev::Device;
use blkpipe_ops::chunks::{read_chunks, ChunkOptions};
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    args.output.guard()?;
    let key = args.common.key.load()?;
    let dev = Device::open_source(&args.dev, args.direct)?;
    // A binary stream or compressed data is named, not parsed as text.
    let (ranges, _) = cli::open_range_list(args.ranges.as_deref())?;
    let opts = ChunkOptions {
        lz4: args.lz4,
        from_offset: args.from,
        ignore_size: args.ignore_size,
        stream_id: args.stream_id,
        key,
        ..ChunkOptions::default()
    };
    let progress = args.common.report.progress("blkread-chunks")?;
    let stats = read_chunks(&dev, ranges, cli::stdout_buffered(), &opts, &progress)?;
    args.common.report.print_stats("blkread-chunks", &stats);
    Ok(())
}

fn main() {
    cli::exit_with("blkread-chunks", run(Args::parse()))
}
