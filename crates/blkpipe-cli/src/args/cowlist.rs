//! The command line of `cowlist`: also read by `blkpipe-gen` for the man page and completions.

use std::path::PathBuf;

use clap::ArgGroup;

tool_args! {
    /// List the origin byte ranges an LVM snapshot's exception store records as changed, sorted and
    /// merged, as a range list on stdout for blkread-chunks: what changed since the snapshot was
    /// taken, without reading the origin.
    ///
    /// SNAP is VG/LV, /dev/VG/LV or /dev/mapper/VG-LV; its table (dmsetup table) must be a
    /// `snapshot` with a persistent store (P or PO). Merging snapshots (snapshot-merge) and
    /// transient stores (N) are refused, and so is an invalidated (overflowed) snapshot: its list
    /// is incomplete and only a full sync is safe. A COW block device is read with O_DIRECT, since
    /// the kernel keeps writing the store below its page cache; a COW image file (--cow) is read
    /// through the page cache, which stays coherent for files. Every entry is checked against the
    /// COW and origin sizes, and an origin chunk or COW chunk listed twice is refused.
    ///
    /// What the list means: with a read-only snapshot, exactly the chunks written to the origin
    /// since the snapshot was taken. With a writable snapshot the COW holds the snapshot's
    /// current view, and the list also holds chunks written to the snapshot itself, which the
    /// origin may never have changed: a superset, still correct for syncing. Chunks written after
    /// cowlist reads the store are not listed; take the next snapshot before reading this one.
    ///
    /// --data writes instead a patch stream of the snapshot's copies of those chunks at their
    /// origin offsets: applied to the origin (blkpatch), it rolls the origin back to the snapshot.
    ///
    /// --thin-delta FILE and --era-invalidate FILE ('-' is stdin) turn the XML of
    /// thin-provisioning-tools' thin_delta (changed, new and unmapped blocks; the block size comes
    /// from the XML) and era_invalidate (needs --block-size, the era target's block size) into the
    /// same range list.
    ///
    /// --nbd-bitmap NAME URI lists the dirty extents of the qemu dirty bitmap NAME of a running
    /// VM's or qemu-nbd's export (meta context qemu:dirty-bitmap:NAME; export it with the bitmap:
    /// qemu-nbd -B NAME, or block-export-add with bitmaps); --nbd-allocation URI lists the extents
    /// that hold data (base:allocation: holes and known-zero extents are left out, so use it for a
    /// first copy into a new sparse file or a zeroed device). --nbd-map FILE reads the same from
    /// `nbdinfo --map --json` (or --map=qemu:dirty-bitmap:NAME --json) output. The header
    /// carries the export's size.
    ///
    /// Streams:
    ///   stdin   read only for --thin-delta - or --era-invalidate -
    ///   stdout  range list (text; first line `# blkranges v1 size=ORIGIN chunk=CHUNK`), or with
    ///           --data a patch stream (binary; refused on a terminal unless --force-tty)
    ///   stderr  one line per error; progress and summary when asked (--progress, --stats)
    #[command(
        name = "cowlist",
        about = "List the chunks changed since an LVM snapshot was taken, as a range list",
        override_usage = "cowlist [OPTIONS] <SNAP | --cow FILE | --thin-delta FILE | --era-invalidate FILE>\n       \
                          cowlist [OPTIONS] <--nbd-bitmap NAME URI | --nbd-allocation URI | --nbd-map FILE>"
    )]
    #[command(group(ArgGroup::new("source").required(true)
        .args(["snap", "cow", "thin_delta", "era_invalidate", "nbd_allocation", "nbd_map"])))]
    pub struct Args {
        /// The snapshot: VG/LV, /dev/VG/LV or /dev/mapper/VG-LV.
        pub snap: Option<String>,
        /// Read this COW device, or a saved image of one, instead of resolving SNAP.
        #[arg(long, value_name = "FILE", help_heading = "Input")]
        pub cow: Option<PathBuf>,
        /// Origin size (bytes; s, K, M, G suffixes): checks every entry and clips the last chunk.
        #[arg(long, value_name = "BYTES", value_parser = crate::parse_size, conflicts_with_all = ["origin", "snap"], help_heading = "Input")]
        pub origin_size: Option<u64>,
        /// Take the origin size from this device or image.
        #[arg(
            long,
            value_name = "DEV",
            conflicts_with = "snap",
            help_heading = "Input"
        )]
        pub origin: Option<PathBuf>,
        /// Read thin_delta XML from FILE ('-': stdin).
        #[arg(long, value_name = "FILE", help_heading = "Input")]
        pub thin_delta: Option<PathBuf>,
        /// Read era_invalidate XML from FILE ('-': stdin).
        #[arg(long, value_name = "FILE", help_heading = "Input")]
        pub era_invalidate: Option<PathBuf>,
        /// List the dirty extents of this qemu dirty bitmap of the NBD export SNAP (a URI).
        #[arg(long, value_name = "NAME", requires = "snap", conflicts_with_all = ["cow", "data"], help_heading = "Input")]
        pub nbd_bitmap: Option<String>,
        /// List the allocated (data) extents of this NBD export.
        #[arg(long, value_name = "URI", conflicts_with_all = ["snap", "cow", "data"], help_heading = "Input")]
        pub nbd_allocation: Option<String>,
        /// Read `nbdinfo --map --json` output from FILE ('-': stdin).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["snap", "cow", "data"], help_heading = "Input")]
        pub nbd_map: Option<PathBuf>,
        /// Block size of the XML's blocks (bytes; s, K, M, G suffixes).
        #[arg(long, value_name = "SIZE", value_parser = crate::parse_size, help_heading = "Input")]
        pub block_size: Option<u64>,
        /// Write a patch stream of the snapshot's copies of the changed chunks.
        #[arg(long, conflicts_with_all = ["thin_delta", "era_invalidate"], help_heading = "Output")]
        pub data: bool,
        /// With --data, write the binary stream even when stdout is a terminal.
        #[arg(long, help_heading = "Safety")]
        pub force_tty: bool,
        /// Sealing, backup chains and reporting (`--key`, `--chain FILE`, `--new-chain STEP`,
        /// `--chain-undo FILE`, `--progress`, `--progress-fd`, `--stats`).
        #[command(flatten)]
        pub common: crate::ChainCommon,
    }
}

const AFTER_HELP: &str = "\
Examples:
  cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd | ssh dst blkpatch /dev/vg/lv
  cowlist --cow saved-cow.img --origin /dev/vg/lv --stats > ranges
  cowlist --data vg/lv-snap | blkpatch --undo undo.patch /dev/vg/lv    # roll back
  thin_delta -m --thin1 1 --thin2 2 /dev/mapper/pool_tmeta | cowlist --thin-delta -
  era_invalidate --written-since 5 META | cowlist --era-invalidate - --block-size 64K
  cowlist --nbd-bitmap b1 'nbd+unix:///vda?socket=/run/backup.sock' > ranges
  nbdinfo --map --json nbd://host/disk | cowlist --nbd-map -

Exit codes:
  0    success
  1    other failure (snapshot not found)
  2    bad command line
  3    corrupt exception store or bad XML (one line naming the entry)
  4    I/O error
  5    refused: invalid or overflowed snapshot, merging, transient store, not a snapshot,
       stdout is a terminal for --data; --data --key: a bad key file, a --chain or
       --chain-undo FILE of another key, or missing
  141  broken pipe: the reader of stdout went away (nothing is printed)";
