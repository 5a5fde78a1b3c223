//! The command line of `blkhash`: also read by `blkpipe-gen` for the man page and completions.

use std::path::PathBuf;

use clap::builder::TypedValueParser;

tool_args! {
    /// Hash every block of DEV and write the hashes to stdout as a hash stream, which blkdiff on
    /// the other side compares with its own copy of the device to send only what differs.
    ///
    /// Each block's hash is xxh3-128 with a seed chosen at random per run (written in the stream's
    /// header), so data crafted to collide with a known hash does not help; --seed makes the
    /// output reproducible. The stream stores 64 bits per block (--hash-bits 128 for 16 bytes) and
    /// ends with the 128-bit digest of the whole device. DEV is read in large sequential requests
    /// and hashed by every core, without disturbing the page cache: what the read brings into the
    /// cache is dropped once copied, what was cached before stays (RWF_DONTCACHE on Linux 6.14+,
    /// else posix_fadvise).
    ///
    /// --ranges LIST hashes only the blocks LIST touches (a range list, e.g. from
    /// `blkdiff --list-differing`), into a range-restricted stream bound to LIST: the second
    /// pass of a coarse-to-fine sync, read by `blkdiff --ranges LIST`.
    ///
    /// --text prints one line per block: the decimal byte offset and the stored hash in hex.
    /// --digest prints only `xxh3-128:HEX  DEV`; it uses seed 0 unless --seed is given, so two
    /// hosts get comparable digests.
    ///
    /// Streams:
    ///   stdin   not read, except the range list with --ranges -
    ///   stdout  hash stream (binary; refused on a terminal unless --force-tty), or text lines
    ///           with --text or --digest
    ///   stderr  one line per error; progress and summary when asked (--progress, --stats)
    #[command(
        name = "blkhash",
        about = "Hash every block of a device into a hash stream for blkdiff"
    )]
    pub struct Args {
        /// Device or image file to hash, or an NBD URI (nbd://HOST[:PORT]/EXPORT,
        /// nbd+unix:///EXPORT?socket=PATH).
        pub dev: PathBuf,
        /// Start at this byte offset, rounded down to a multiple of the block size, e.g. to resume
        /// from the offset `blkpatch --print-state` recorded.
        #[arg(long, value_name = "OFFSET", default_value = "0", value_parser = crate::parse_size, help_heading = "Input")]
        pub from: u64,
        /// Hash only the blocks this range list touches (a range-restricted stream for
        /// `blkdiff --ranges` with the same list); `-` reads it from stdin.
        #[arg(
            long,
            value_name = "LIST",
            conflicts_with = "from",
            help_heading = "Input"
        )]
        pub ranges: Option<PathBuf>,
        /// Bytes per block: a power of two from 4096 to 16M (suffixes K, M accepted).
        #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = crate::parse_size, help_heading = "Output")]
        pub block_size: u64,
        /// Seed for the block hashes (decimal or 0x hex); random per run by default.
        #[arg(long, value_name = "N", value_parser = crate::parse_u64, help_heading = "Output")]
        pub seed: Option<u64>,
        /// Bits stored per block hash.
        #[arg(long, value_name = "BITS", default_value_t = 64,
              value_parser = clap::builder::PossibleValuesParser::new(["64", "128"])
                  .map(|s| s.parse::<u32>().expect("64 or 128")),
              help_heading = "Output")]
        pub hash_bits: u32,
        /// Write one text line per block (`OFFSET HASH`) instead of the binary stream.
        #[arg(long, conflicts_with = "digest", help_heading = "Output")]
        pub text: bool,
        /// Write only the whole-device digest, as `xxh3-128:HEX  DEV`.
        #[arg(long, help_heading = "Output")]
        pub digest: bool,
        /// Stream output options (`--force-tty`).
        #[command(flatten)]
        pub output: crate::opts::StreamOutput,
        /// Scan options (`--threads`, `--direct`).
        #[command(flatten)]
        pub scan: crate::opts::ScanArgs,
        /// Sealing and reporting (`--key`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::Common,
        /// Print only the keyed MAC of DEV's bytes, as `blake3-mac:HEX  DEV` (for a small text
        /// file such as lvbackup's chain index, FORMAT.md 6.6). Needs --key.
        #[arg(long, requires = "key", conflicts_with_all = ["digest", "text", "ranges"], help_heading = "Sealing")]
        pub mac: bool,
    }
}

const AFTER_HELP: &str = "\
Examples:
  ssh dst blkhash /dev/vg/lv | blkdiff /dev/vg/lv | ssh dst blkpatch --verify /dev/vg/lv
  blkhash --text --block-size 1M disk.img | head
  blkhash --digest /dev/vg/lv; ssh other blkhash --digest /dev/vg/lv   # equal if same content
  blkhash --key k --mac index.txt   # blake3-mac:HEX  index.txt

Exit codes:
  0    success
  1    other failure
  2    bad command line
  3    bad --block-size, --from past the end of DEV
  4    I/O error
  5    refused: stdout is a terminal, or stdin for --ranges -; DEV shrank while being read
  141  broken pipe: the reader of stdout went away (nothing is printed)";
