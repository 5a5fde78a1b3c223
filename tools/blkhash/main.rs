//! `blkhash DEV`: hash every block of a device into a hash stream for `blkdiff`.

use std::io::Write;

use anyhow::Context;
use blkpipe_cli as cli;
use blkpipe_cli::args::blkhash::Args;
use blkpipe_dev::Device;
use blkpipe_format::digest::format_digest;
use blkpipe_format::hash::HashKind;
use blkpipe_ops::hash::{hash_device, hash_device_ranges, HashOptions, HashOutput};
use blkpipe_ops::ranges::{RangeLimits, SortedRanges};
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    let output = if args.digest {
        HashOutput::Digest
    } else if args.text {
        HashOutput::Text
    } else {
        args.output.guard()?;
        HashOutput::Stream
    };
    let seed = match (args.seed, output) {
        (Some(s), _) => s,
        (None, HashOutput::Digest) => 0,
        (None, _) => u64::from_le_bytes(blkpipe_ops::random_bytes()[..8].try_into()?),
    };
    let key = args.common.key.load()?;
    let dev = Device::open_source(&args.dev, args.scan.direct)?;
    let opts = HashOptions {
        key,
        block_size: u32::try_from(args.block_size).map_err(|_| {
            blkpipe_ops::OpError::BadRange(format!(
                "block size {} is not a power of two from {} to {}",
                args.block_size,
                blkpipe_format::hash::MIN_BLOCK_SIZE,
                blkpipe_format::hash::MAX_BLOCK_SIZE
            ))
        })?,
        seed,
        kind: if args.hash_bits == 128 {
            HashKind::Xxh3_128
        } else {
            HashKind::Xxh3_64
        },
        from_offset: args.from,
        output,
        scan: args.scan.options(),
    };
    let progress = args.common.report.progress("blkhash")?;
    let mut stdout = cli::stdout_buffered();
    let hashed = match &args.ranges {
        Some(path) => {
            let list = load_list(path, dev.size())?;
            hash_device_ranges(&dev, &list, &mut stdout, &opts, &progress)?
        }
        None => hash_device(&dev, &mut stdout, &opts, &progress)?,
    };
    if output == HashOutput::Digest {
        writeln!(
            stdout,
            "{}  {}",
            format_digest(hashed.digest),
            args.dev.display()
        )
        .context("stdout")?;
    }
    stdout.flush().context("stdout")?;
    args.common.report.print_stats("blkhash", &hashed.stats);
    Ok(())
}

/// Read the range list at `path` (`-`: stdin) for a device of `size` bytes.
fn load_list(path: &std::path::Path, size: u64) -> anyhow::Result<SortedRanges> {
    // `-` is stdin: blkhash reads nothing else there.
    let (text, name) = cli::open_range_list((path.as_os_str() != "-").then_some(path))?;
    let list = SortedRanges::load(text, size, false, 0, RangeLimits::default())
        .with_context(|| format!("range list {name}"))?;
    Ok(list)
}

fn main() {
    cli::exit_with("blkhash", run(Args::parse()))
}
