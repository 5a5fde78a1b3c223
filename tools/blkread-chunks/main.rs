//! `blkread-chunks DEV`: read a list of byte ranges from DEV and write them as a patch stream.

use blkpipe_cli as cli;
use blkpipe_cli::args::blkread_chunks::Args;
use blkpipe_dev::{Avoid, Device};
use blkpipe_ops::chunks::{read_chunks, ChunkOptions};
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    args.output.guard()?;
    let key = args.common.key.load()?;
    let dev = Device::open_source(&args.dev, args.direct)?;
    // The chain file is never the source or stdout.
    let mut avoid: Vec<Avoid> = Avoid::fd(1, "the output (stdout)").into_iter().collect();
    avoid.extend(Avoid::path(&args.dev, "the source"));
    let chain = args.common.chain.prepare(key.as_ref(), &avoid)?;
    // A binary stream or compressed data is named, not parsed as text.
    let (ranges, _) = cli::open_range_list(args.ranges.as_deref())?;
    let opts = ChunkOptions {
        patch: args.patch.options("blkread-chunks", key),
        from_offset: args.from,
        ignore_size: args.ignore_size,
        chain: chain.as_ref().map(|c| c.block()),
    };
    let progress = args.common.report.progress("blkread-chunks")?;
    let stats = read_chunks(&dev, ranges, cli::stdout_buffered(), &opts, &progress)?;
    // The stream is complete (its end record flushed to stdout): advance the chain file.
    if let (Some(c), Some(link)) = (&chain, stats.link) {
        c.commit(link, &avoid)?;
    }
    args.common.report.print_stats("blkread-chunks", &stats);
    Ok(())
}

fn main() {
    cli::exit_with("blkread-chunks", run(Args::parse()))
}
