//! `blkhash DEV`: hash every block of a device into a hash stream for `blkdiff`.

use std::io::Write;

use anyhow::Context;
use blkpipe_cli as cli;
use blkpipe_cli::args::blkhash::Args;
use blkpipe_dev::Device;
use blkpipe_format::digest::format_digest;
use blkpipe_format::hash::HashKind;
use blkpipe_ops::hash::{hash_device, HashOptions, HashOutput};
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
    let dev = Device::open_source(&args.dev, args.scan.direct)?;
    let opts = HashOptions {
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
    let progress = args.report.progress("blkhash")?;
    let mut stdout = cli::stdout_buffered();
    let hashed = hash_device(&dev, &mut stdout, &opts, &progress)?;
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
    args.report.print_stats("blkhash", &hashed.stats);
    Ok(())
}

fn main() {
    cli::exit_with("blkhash", run(Args::parse()))
}
