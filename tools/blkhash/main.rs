//! `blkhash DEV`: hash every block of a device into a hash stream for `blkdiff`.

#[path = "../common.rs"]
mod common;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use blkpipe_dev::Device;
use blkpipe_format::digest::format_digest;
use blkpipe_format::hash::HashKind;
use blkpipe_ops::hash::{hash_device, HashOptions, HashOutput};
use blkpipe_ops::scan::ScanOptions;
use clap::builder::TypedValueParser;
use clap::Parser;

/// Hash every block of DEV and write the hashes to stdout as a hash stream for blkdiff.
///
/// Each block's hash is xxh3-128 with a seed chosen at random per run (written in the stream's
/// header), so data crafted to collide with a known hash does not help; --seed makes the
/// output reproducible. The stream stores 64 bits per block (--hash-bits 128 for 16 bytes) and
/// ends with the 128-bit digest of the whole device. DEV is read by every core with large
/// requests and dropped from the page cache behind the read.
///
/// Examples:
///   ssh dst blkhash /dev/vg/lv | blkdiff /dev/vg/lv | ssh dst blkpatch --verify /dev/vg/lv
///   blkhash --text --block-size 1M disk.img | head
///   blkhash --digest /dev/vg/lv; ssh other blkhash --digest /dev/vg/lv   # equal if same content
///
/// --text prints one line per block: the decimal byte offset and the stored hash in hex.
/// --digest prints only `xxh3-128:HEX  DEV`; it uses seed 0 unless --seed is given, so two
/// hosts get comparable digests.
///
/// Exit codes: 0 ok, 1 other failure, 2 usage, 3 bad --block-size or --from, 4 I/O error,
/// 5 refused (stdout is a terminal, device shrank), 141 broken pipe.
#[derive(Parser, Debug)]
#[command(name = "blkhash", version, verbatim_doc_comment)]
struct Args {
    /// Device or image file to hash.
    dev: PathBuf,
    /// Bytes per block: a power of two from 4096 to 16M (suffixes K, M accepted).
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = common::parse_size)]
    block_size: u64,
    /// Seed for the block hashes (decimal or 0x hex); random per run by default.
    #[arg(long, value_name = "N", value_parser = common::parse_u64)]
    seed: Option<u64>,
    /// Bits stored per block hash.
    #[arg(long, value_name = "BITS", default_value_t = 64,
          value_parser = clap::builder::PossibleValuesParser::new(["64", "128"])
              .map(|s| s.parse::<u32>().expect("64 or 128")))]
    hash_bits: u32,
    /// Write one text line per block (`OFFSET HASH`) instead of the binary stream.
    #[arg(long, conflicts_with = "digest")]
    text: bool,
    /// Write only the whole-device digest, as `xxh3-128:HEX  DEV`.
    #[arg(long)]
    digest: bool,
    /// Start at this byte offset (a multiple of the block size), e.g. to resume.
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
    let output = if args.digest {
        HashOutput::Digest
    } else if args.text {
        HashOutput::Text
    } else {
        common::guard_binary_stdout(args.force_tty)?;
        HashOutput::Stream
    };
    let seed = match (args.seed, output) {
        (Some(s), _) => s,
        (None, HashOutput::Digest) => 0,
        (None, _) => u64::from_le_bytes(blkpipe_ops::random_bytes()[..8].try_into()?),
    };
    let dev = Device::open_source(&args.dev, args.direct)?;
    let opts = HashOptions {
        block_size: u32::try_from(args.block_size).unwrap_or(u32::MAX),
        seed,
        kind: if args.hash_bits == 128 {
            HashKind::Xxh3_128
        } else {
            HashKind::Xxh3_64
        },
        from_offset: args.from,
        output,
        scan: ScanOptions {
            threads: args.threads,
            direct: args.direct,
            drop_cache: true,
        },
    };
    let progress = args.report.progress("blkhash")?;
    let mut stdout = common::stdout_buffered();
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
    common::exit_with("blkhash", run(Args::parse()))
}
