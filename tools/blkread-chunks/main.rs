//! `blkread-chunks DEV`: read a list of byte ranges from DEV and write them as a patch stream.

use std::fs::File;
use std::io::Read;

use anyhow::Context;
use blkpipe_cli as cli;
use blkpipe_cli::args::blkread_chunks::Args;
use blkpipe_dev::Device;
use blkpipe_ops::chunks::{read_chunks, ChunkOptions};
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    args.output.guard()?;
    let dev = Device::open_source(&args.dev, args.direct)?;
    let (ranges, name): (Box<dyn Read + Send>, String) = match &args.ranges {
        Some(p) => (
            Box::new(File::open(p).with_context(|| format!("{}: open range list", p.display()))?),
            p.display().to_string(),
        ),
        None => (Box::new(std::io::stdin()), "stdin".into()),
    };
    // A binary stream or compressed data is named, not parsed as text.
    let ranges = blkpipe_ops::input::open_text(ranges, &name, "range list")?;
    let opts = ChunkOptions {
        lz4: args.lz4,
        from_offset: args.from,
        ignore_size: args.ignore_size,
        stream_id: args.stream_id,
        ..ChunkOptions::default()
    };
    let progress = args.report.progress("blkread-chunks")?;
    let stats = read_chunks(&dev, ranges, cli::stdout_buffered(), &opts, &progress)?;
    args.report.print_stats("blkread-chunks", &stats);
    Ok(())
}

fn main() {
    cli::exit_with("blkread-chunks", run(Args::parse()))
}
