//! The command line of `blkread-chunks`: also read by `blkpipe-gen` for the man page and
//! completions.

use std::path::PathBuf;

tool_args! {
    /// Read the byte ranges listed on stdin from DEV and write them to stdout as a patch stream,
    /// for blkpatch to apply to another copy of DEV.
    ///
    /// The range list has one `OFFSET LENGTH` per line in decimal bytes (`#` comments and blank
    /// lines ignored), as cowlist writes it. Ranges are sorted and merged; a range past the end
    /// of DEV is an error naming its line. All-zero 4 KiB blocks become zero records.
    ///
    /// The whole list is read and checked before the first byte of output, in bounded memory: a
    /// list of more than 524,288 ranges goes to a temporary file in $TMPDIR (or /tmp; created
    /// exclusively and unlinked at once), 16 bytes a range. A sorted list may have any length;
    /// an unsorted one is sorted there up to 268,435,456 ranges and refused beyond (exit 5).
    ///
    /// Streams:
    ///   stdin   range list (or --ranges FILE), e.g. from cowlist
    ///   stdout  patch stream (binary; refused on a terminal unless --force-tty)
    ///   stderr  one line per error; progress and summary when asked (--progress, --stats)
    #[command(
        name = "blkread-chunks",
        about = "Read listed byte ranges of a device into a patch stream"
    )]
    pub struct Args {
        /// Device or image file to read, or an NBD URI (nbd://HOST[:PORT]/EXPORT,
        /// nbd+unix:///EXPORT?socket=PATH).
        pub dev: PathBuf,
        /// Read the range list from FILE instead of stdin.
        #[arg(long, value_name = "FILE", help_heading = "Input")]
        pub ranges: Option<PathBuf>,
        /// Skip everything below this byte offset (to resume an interrupted transfer).
        #[arg(long, value_name = "OFFSET", default_value = "0", value_parser = crate::parse_size, help_heading = "Input")]
        pub from: u64,
        /// The patch stream (`--lz4`, `--stream-id`).
        #[command(flatten)]
        pub patch: crate::opts::PatchStreamArgs,
        /// Accept a range list whose header names a different device size.
        #[arg(long, help_heading = "Safety")]
        pub ignore_size: bool,
        /// Stream output options (`--force-tty`).
        #[command(flatten)]
        pub output: crate::opts::StreamOutput,
        /// Read DEV with O_DIRECT, bypassing the page cache.
        #[arg(long, help_heading = "Performance")]
        pub direct: bool,
        /// Sealing, backup chains and reporting (`--key`, `--chain FILE`, `--new-chain STEP`,
        /// `--chain-undo FILE`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::ChainCommon,
    }
}

const AFTER_HELP: &str = "\
Examples:
  printf '0 4096\\n1048576 65536\\n' | blkread-chunks src.img | blkpatch dst.img
  cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd | ssh dst blkpatch /dev/vg/lv
  echo \"0 $(blockdev --getsize64 /dev/vg/lv)\" | blkread-chunks /dev/vg/lv > full.patch

Exit codes:
  0    success
  1    other failure
  2    bad command line
  3    bad range list (the error names its line)
  4    I/O error
  5    refused: range list for another device size, stdout or stdin (the list) is a terminal;
       a bad key file; --chain: a chain FILE of another key, missing without --new-chain,
       or holding a step at or above --new-chain
  141  broken pipe: the reader of stdout went away (nothing is printed)";
