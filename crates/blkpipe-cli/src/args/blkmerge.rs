//! The command line of `blkmerge`: also read by `blkpipe-gen` for the man page and completions.

use std::path::PathBuf;

tool_args! {
    /// Combine patch streams, oldest first, into one patch stream on stdout in which later records
    /// win where they overlap: applying the result equals applying the inputs one after another.
    ///
    /// Memory is bounded by the record cap (4 MiB) times the number of inputs, whatever the
    /// streams' sizes. The result is complete (has an end record) only if every input was; its
    /// source size is the newest input's. Inputs may be zstd, lz4 or gzip compressed.
    ///
    /// Sealed chained inputs (--key; written with --chain) must be consecutive steps of one chain,
    /// each following the one before (undo streams: newest step first); the result is bound to
    /// all their steps (docs/FORMAT.md 6.6). Anything else is refused before any output.
    ///
    /// Streams:
    ///   stdin   a patch stream, if `-` is one of the PATCH arguments
    ///   stdout  patch stream (binary; refused on a terminal unless --force-tty)
    ///   stderr  one line per error; a summary when asked (--stats)
    #[command(
        name = "blkmerge",
        about = "Merge patch streams, oldest first, into one in which later records win"
    )]
    pub struct Args {
        /// Patch streams, oldest first (`-` is stdin).
        #[arg(required = true, value_name = "PATCH")]
        pub inputs: Vec<PathBuf>,
        /// Compress data payloads with lz4.
        #[arg(long, help_heading = "Output")]
        pub lz4: bool,
        /// Stream output options (`--force-tty`).
        #[command(flatten)]
        pub output: crate::opts::StreamOutput,
        /// Sealing and reporting (`--key`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::Common,
    }
}

const AFTER_HELP: &str = "\
Examples:
  blkmerge mon.patch tue.patch wed.patch | blkpatch restored.img
  blkmerge undo-wed.patch undo-tue.patch undo-mon.patch > undo-all.patch   # undo a chain
  blkmerge full.patch.zst delta1.patch.zst | zstd > full-as-of-delta1.patch.zst

Exit codes:
  0    success
  1    other failure
  2    bad command line
  3    an input is bad, corrupted or truncated
  4    I/O error
  5    refused: stdout is a terminal, or stdin (for `-`); --key: an input not sealed with
       the key; chained inputs that are not consecutive steps of one chain
  141  broken pipe: the reader of stdout went away (nothing is printed)";
