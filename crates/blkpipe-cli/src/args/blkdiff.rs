//! The command line of `blkdiff`: also read by `blkpipe-gen` for the man page and completions.

use std::path::PathBuf;

tool_args! {
    /// Compare DEV with the hash stream on stdin (from blkhash on the other side) and write to
    /// stdout a patch stream that makes the other side equal to DEV, ready for blkpatch there.
    ///
    /// DEV is read with the stream's block size and seed while the hashes arrive (leaving the page
    /// cache as it was, like blkhash). Blocks whose hash differs, and DEV's blocks past the end of
    /// the remote device, become records (adjacent blocks merged; all-zero blocks as zero
    /// records). The patch carries DEV's size (blkpatch truncates an image file to it; a larger
    /// block device keeps its tail) and DEV's digest, for `blkpatch --verify`. A bad, corrupted or
    /// truncated hash stream is an error, and then no end record is written, so the blkpatch
    /// downstream fails too.
    ///
    /// Coarse-to-fine sync: --list-differing writes, instead of a patch, the range list of the
    /// remote blocks that differ (pass 1, with coarse blocks: blkhash --block-size 1M); blkhash
    /// --ranges LIST then hashes only those regions in 4 KiB blocks and `blkdiff --ranges LIST`
    /// compares them (pass 2). It refuses a hash stream made from another list. DEV is read only
    /// where listed (and past the remote's end), so that patch carries no digest of DEV: check it
    /// separately (blkhash --digest on both sides). With --stop-above PERCENT, pass 1 gives up
    /// when the changes turn out scattered: once more than PERCENT of the coarse blocks compared
    /// so far differ (judged from 64 blocks, or 1/64 of the device if more, on), it lists the rest
    /// of the device whole, adds the comment line `# stopped at OFFSET: ...` last, exits 0 and
    /// reads no further (blkhash upstream then meets a closed pipe). Pass 2 over that list reads
    /// the device once, plus what differed in the part compared: never much more than a one-pass
    /// sync.
    ///
    /// Streams:
    ///   stdin   hash stream from blkhash (or --hashes FILE); zstd, lz4 and gzip are recognised
    ///           and decompressed
    ///   stdout  patch stream (binary; refused on a terminal unless --force-tty)
    ///   stderr  one line per error; progress and summary when asked (--progress, --stats)
    #[command(
        name = "blkdiff",
        about = "Compare a device with a hash stream and write a patch stream of what differs"
    )]
    pub struct Args {
        /// Local device or image file, or NBD URI (nbd://HOST[:PORT]/EXPORT,
        /// nbd+unix:///EXPORT?socket=PATH): the source.
        pub dev: PathBuf,
        /// Read the hash stream from FILE instead of stdin.
        #[arg(long, value_name = "FILE", help_heading = "Input")]
        pub hashes: Option<PathBuf>,
        /// The hash stream is range-restricted (blkhash --ranges LIST): compare only the blocks of
        /// this same LIST.
        #[arg(
            long,
            value_name = "LIST",
            conflicts_with = "from",
            help_heading = "Input"
        )]
        pub ranges: Option<PathBuf>,
        /// Write the range list of the remote's differing blocks instead of a patch stream.
        #[arg(long, conflicts_with_all = ["lz4", "stream_id"], help_heading = "Output")]
        pub list_differing: bool,
        /// With --list-differing: once more than PERCENT of the blocks compared so far differ,
        /// stop and list the rest of the device whole (0-100).
        #[arg(
            long,
            value_name = "PERCENT",
            requires = "list_differing",
            conflicts_with = "ranges",
            value_parser = clap::value_parser!(u32).range(0..=100),
            help_heading = "Output"
        )]
        pub stop_above: Option<u32>,
        /// The patch stream (`--lz4`, `--stream-id`).
        #[command(flatten)]
        pub patch: crate::opts::PatchStreamArgs,
        /// Write no records below this byte offset, rounded down to a multiple of the block size
        /// (DEV is still read whole for its digest).
        #[arg(long, value_name = "OFFSET", default_value = "0", value_parser = crate::parse_size, help_heading = "Output")]
        pub from: u64,
        /// Stream output options (`--force-tty`).
        #[command(flatten)]
        pub output: crate::opts::StreamOutput,
        /// Scan options (`--threads`, `--direct`).
        #[command(flatten)]
        pub scan: crate::opts::ScanArgs,
        /// Sealing and reporting (`--key`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::Common,
    }
}

const AFTER_HELP: &str = "\
Examples:
  ssh dst blkhash /dev/vg/lv | blkdiff /dev/vg/lv | ssh dst blkpatch --verify /dev/vg/lv
  ssh dst 'blkhash /dev/x | zstd' | blkdiff --lz4 /dev/x | ssh dst blkpatch /dev/x
  blkhash old.img > old.hashes; blkdiff --hashes old.hashes new.img > delta.patch
  ssh dst blkhash --block-size 1M /dev/x | blkdiff --list-differing /dev/x > regions
  ssh dst blkhash --block-size 1M /dev/x | blkdiff --list-differing --stop-above 10 /dev/x > regions
  scp regions dst:; ssh dst blkhash --ranges regions /dev/x |
      blkdiff --ranges regions /dev/x | ssh dst blkpatch /dev/x

Exit codes:
  0    success
  1    other failure
  2    bad command line
  3    bad, corrupted or truncated hash stream
  4    I/O error
  5    refused: stdout or stdin is a terminal, DEV shrank while being read
  141  broken pipe: the reader of stdout went away (nothing is printed)";
