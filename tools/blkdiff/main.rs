//! `blkdiff DEV`: compare DEV with a remote hash stream and write a patch of what differs.

use anyhow::Context;
use blkpipe_cli as cli;
use blkpipe_cli::args::blkdiff::Args;
use blkpipe_dev::Device;
use blkpipe_ops::diff::{diff_device_ranges, DiffOptions};
use blkpipe_ops::input::{open_input, refuse_terminal_stdin};
use blkpipe_ops::ranges::RangeLimits;
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    if !args.list_differing {
        args.output.guard()?;
    }
    let key = args.common.key.load()?;
    let dev = Device::open_source(&args.dev, args.scan.direct)?;
    refuse_terminal_stdin(
        args.hashes.as_deref(),
        "blkdiff reads a hash stream (from blkhash on the other side, e.g. `ssh HOST blkhash DEV | blkdiff DEV`): pipe one in, or give --hashes FILE",
    )?;
    let (input, _) = open_input(args.hashes.as_deref()).with_context(|| match &args.hashes {
        Some(p) => format!("{}: open", p.display()),
        None => "stdin".into(),
    })?;
    let opts = DiffOptions {
        patch: args.patch.options("blkdiff", key),
        from_offset: args.from,
        scan: args.scan.options(),
        list_differing: args.list_differing,
        stop_above: args.stop_above,
    };
    let list = match &args.ranges {
        Some(p) => Some(cli::open_range_list(Some(p))?.0),
        None => None,
    };
    let progress = args.common.report.progress("blkdiff")?;
    let stats = diff_device_ranges(
        &dev,
        input,
        list,
        RangeLimits::default(),
        cli::stdout_buffered(),
        &opts,
        &progress,
    )?;
    args.common.report.print_stats("blkdiff", &stats);
    Ok(())
}

fn main() {
    cli::exit_with("blkdiff", run(Args::parse()))
}
