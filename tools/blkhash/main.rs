//! `blkhash DEV`: hash every block of a device into a hash stream for `blkdiff`.

use std::io::{Read, Write};

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
    if args.mac {
        return print_mac(&args);
    }
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

/// `--mac`: the keyed text MAC of DEV's bytes (FORMAT.md 6.6).
fn print_mac(args: &Args) -> anyhow::Result<()> {
    let key = args.common.key.load()?.context("--mac needs --key")?;
    // A text file, read whole: at most 16 MiB (an index line per backup is ~200 bytes).
    const MAX: u64 = 16 << 20;
    let read_err = |e: std::io::Error| {
        blkpipe_ops::OpError::Input(std::io::Error::new(
            e.kind(),
            format!("{}: read: {e}", args.dev.display()),
        ))
    };
    let file = std::fs::File::open(&args.dev).map_err(read_err)?;
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(blkpipe_ops::OpError::Refused(format!(
            "--mac {}: not a regular file (--mac authenticates a small text file)",
            args.dev.display()
        ))
        .into());
    }
    let mut bytes = Vec::new();
    std::io::Read::take(file, MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX {
        return Err(blkpipe_ops::OpError::Refused(format!(
            "--mac {}: larger than {MAX} bytes, not a text index",
            args.dev.display()
        ))
        .into());
    }
    let mac = key.text_mac(&bytes);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "blake3-mac:{}  {}",
        mac.to_hex(),
        args.dev.display()
    )
    .and_then(|()| stdout.flush())
    .map_err(blkpipe_ops::OpError::Output)?;
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
