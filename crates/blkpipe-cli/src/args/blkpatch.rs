//! The command line of `blkpatch`: also read by `blkpipe-gen` for the man page and completions.

use std::path::PathBuf;

tool_args! {
    /// Apply the patch stream on stdin to TARGET, a block device or an image file, verifying each
    /// record before any of its bytes are written: a damaged record never reaches the device.
    /// Only a complete stream with a valid end record exits 0; if the stream is cut short, the
    /// records before the cut are written and the error says how far it got: rerun (or resume
    /// with --state) to finish.
    ///
    /// At the first fault (bad magic, checksum mismatch, misordered record, truncation) nothing
    /// more is written and the error names the record and offset. A file target is created if
    /// missing (O_EXCL, never under /dev: a missing /dev path is a missing device) and sized to
    /// the source; a block device smaller than the source is refused, and one that is mounted,
    /// held or open elsewhere, or a file backing a loop device or open for writing elsewhere, is
    /// refused unless --force (a process counts as having it open if it still does 0.1 s later,
    /// and the error names it). The --undo and --state files must be regular files that are not
    /// the target, the input or each other (by device and inode) and not in use; a --state FILE
    /// is bound to its stream and its target, and refused for any other.
    ///
    /// The target is never read to be written. Records of 256 KiB or more aligned to 4 KiB are
    /// written with O_DIRECT by two writer threads while the next records are read and verified;
    /// others go through the page cache in whole blocks and are written behind: every 16 MiB is
    /// handed to the disk at once and dropped from the cache when it is on the disk. So the disk
    /// works while the stream arrives, dirty memory stays small, and a large copy does not evict
    /// the host's other cached data. A write error is reported as soon as the disk returns it;
    /// exit 0 comes only after fsync.
    ///
    /// TARGET may be an NBD export (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH),
    /// e.g. a qcow2 image through qemu-nbd: records are written with NBD_CMD_WRITE, zero
    /// records with NBD_CMD_WRITE_ZEROES (allowed to punch holes only with --discard), and exit 0
    /// comes only after NBD_CMD_FLUSH. The in-use checks and --force do not apply to it (the
    /// server decides who may write; a read-only export is refused); --undo, --state and
    /// --verify work as for a local target. TLS (nbds://) is not supported yet.
    ///
    /// Streams:
    ///   stdin   patch stream (or --input FILE) from blkread-chunks, blkdiff, cowlist --data,
    ///           blkmerge or an --undo file; zstd, lz4 and gzip are recognised and decompressed
    ///   stdout  only with --list (one line per record) and --print-state
    ///   stderr  one line per error; progress and summary when asked (--progress, --stats)
    #[command(
        name = "blkpatch",
        about = "Apply a patch stream to a block device or image file, safely"
    )]
    pub struct Args {
        /// Block device or image file to patch, or an NBD URI (optional with --list and
        /// --dry-run).
        #[arg(required_unless_present_any = ["list", "dry_run", "print_state"])]
        pub target: Option<PathBuf>,
        /// Read the patch stream from FILE instead of stdin.
        #[arg(short, long, value_name = "FILE", help_heading = "Input")]
        pub input: Option<PathBuf>,
        /// Zero records punch holes in files and zero out (with discard) on devices.
        #[arg(long, help_heading = "Output")]
        pub discard: bool,
        /// Before overwriting a region, save its old contents to FILE as a patch stream, which
        /// gives TARGET back as it was, size included: a file the stream grew is cut back to its
        /// old size, one it shrank gets its old tail back (its holes stay holes). A file that
        /// did not exist comes back as an empty file (blkpatch never removes one). An existing
        /// FILE that is not empty is refused (it holds an earlier run's undo data).
        #[arg(long, value_name = "FILE", help_heading = "Output")]
        pub undo: Option<PathBuf>,
        /// Let --undo replace an existing, non-empty FILE (its undo data is lost).
        #[arg(long, requires = "undo", help_heading = "Output")]
        pub replace_undo: bool,
        /// Record durable progress in FILE; rerun with the same FILE to skip what an interrupted
        /// run of the same stream already applied (a different stream is refused).
        #[arg(long, value_name = "FILE", help_heading = "Output")]
        pub state: Option<PathBuf>,
        /// With --state, bring FILE up to date after every BYTES applied (suffixes K, M, G), as
        /// well as every 5 seconds; each update syncs TARGET.
        #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = crate::parse_size, requires = "state", help_heading = "Output")]
        pub checkpoint: u64,
        /// Print `STREAM_ID APPLIED_OFFSET` from the --state FILE (for resuming senders) and exit.
        #[arg(long, requires = "state", help_heading = "Output")]
        pub print_state: bool,
        /// Write to a target even if it is mounted, held by another device, open elsewhere or
        /// backing a loop device (skips those checks only: block devices are still opened O_EXCL,
        /// which the kernel refuses while one is mounted or claimed, see --no-exclusive; the
        /// checks of --undo and --state files are never skipped).
        #[arg(long, help_heading = "Safety")]
        pub force: bool,
        /// Open a block device target without O_EXCL, so a device the kernel holds (mounted, or
        /// claimed by device-mapper or md) can be opened at all; with --force only.
        #[arg(long, requires = "force", help_heading = "Safety")]
        pub no_exclusive: bool,
        /// Validate the whole stream and report what would be written; write nothing.
        #[arg(long, help_heading = "Safety")]
        pub dry_run: bool,
        /// Print one line per record (`data|zero OFFSET LENGTH`) on stdout; write nothing.
        #[arg(long, help_heading = "Safety")]
        pub list: bool,
        /// After applying, check the target's digest against the source digest in the stream; a
        /// stream whose header does not announce one (only blkdiff's do) is refused at once.
        #[arg(long, help_heading = "Safety")]
        pub verify: bool,
        /// Sealing and reporting (`--key`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::Common,
        /// Backup chains: FILE records the chain step TARGET holds (bound to the key and to
        /// TARGET). A chained stream is refused, before TARGET is touched, unless it is the next
        /// step of that chain (dropped, replayed, reordered or foreign streams are refused), or a
        /// full image of that chain newer than the step held; FILE is updated after the stream is
        /// applied and synced. Needs --key.
        #[arg(long, value_name = "FILE", requires = "key", help_heading = "Sealing")]
        pub chain_state: Option<PathBuf>,
        /// With --chain-state: also apply an older full image, or an undo stream of the step held
        /// (a rollback, refused without this).
        #[arg(long, requires = "chain_state", help_heading = "Sealing")]
        pub accept_rollback: bool,
        /// With --chain-state: also apply a full image of another chain than the one FILE
        /// records (refused without this: another volume's backups under a shared key), or, when
        /// FILE was made under another key, a full image sealed with --key (a new chain after key
        /// rotation). Drops the chain, step and key FILE recorded; FILE then holds the new chain.
        #[arg(long, requires = "chain_state", help_heading = "Sealing")]
        pub accept_new_chain: bool,
    }
}

const AFTER_HELP: &str = "\
Examples:
  blkread-chunks src.img < ranges | blkpatch dst.img
  ssh src 'cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd' | blkpatch /dev/vg/lv
  blkpatch --undo undo.patch /dev/vg/lv < delta.patch && blkpatch /dev/vg/lv < undo.patch
  blkpatch --state st /dev/vg/lv < full.patch   # interrupted? then, on the sender:
  read -r id off < <(ssh dst blkpatch --state st --print-state)
  echo \"0 $size\" | blkread-chunks --from \"$off\" --stream-id \"$id\" /dev/vg/lv \\
      | ssh dst blkpatch --state st /dev/vg/lv
  blkpatch --key k --chain-state lv.chain /dev/vg/copy < 000007.incr.patch   # only step 7

Exit codes:
  0    success: the whole stream was applied (and verified, with --verify)
  1    other failure
  2    bad command line
  3    bad, corrupted or truncated stream; a sealed stream whose MAC does not match
  4    I/O error
  5    refused: target in use or mounted, too small, missing /dev path, --undo or --state
       that is a device, the target or the input, --state of another stream or target,
       --verify of a stream that announces no source digest, stdin is a terminal;
       --key: a sealed stream without it, an unsealed one with it, another key, a key
       file that is not 32 bytes or is readable by group or others;
       --chain-state: a dropped, replayed, reordered or foreign chained stream, an older
       full image or an undo stream without --accept-rollback, FILE of another target or
       key
  6    --verify found the target differs from the source
  141  broken pipe: the reader of --list went away (nothing is printed)";
