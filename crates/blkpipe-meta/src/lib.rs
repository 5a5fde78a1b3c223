//! Device-mapper metadata for blkpipe: which chunks changed, from the kernel's own records.
//!
//! - [`snapshot`]: the dm-snapshot persistent exception store on an LVM snapshot's COW device.
//!   [`snapshot::ChangeList`] is the sorted, coalesced list of changed origin chunks (written
//!   as a range list); [`snapshot::SnapshotView`] is where the snapshot's copies of those
//!   chunks lie (`blkpipe_ops::view::write_view_patch_sealed` writes them as a patch stream, for
//!   `cowlist --data`). Every entry is checked against
//!   the COW and origin sizes; an invalidated (overflowed) snapshot is refused.
//! - [`resolve`]: from `vg/snap`, `/dev/vg/snap` or `/dev/mapper/vg-snap` to the snapshot's
//!   `-cow` device and origin, through `dmsetup table` and sysfs, refusing merging snapshots
//!   and transient stores.
//! - [`xml`]: the XML of thin-provisioning-tools' `thin_delta` and `era_invalidate` as byte
//!   ranges.
//!
//! Errors are [`MetaError`] values that name the entry, line or device concerned; the tools'
//! exit-code table (blkpipe-cli) maps them.
//!
//! What the change list means: a read-only snapshot's store lists exactly the origin chunks
//! written since the snapshot was taken. A writable snapshot's store also lists chunks written
//! to the snapshot itself, and the COW then holds the snapshot's current view of them, so the
//! list may include chunks the origin never changed (a superset, still correct for syncing).
//!
//! ```
//! use blkpipe_dev::Device;
//! use blkpipe_meta::snapshot::{ChangeList, ReadOptions};
//! use blkpipe_testkit::image;
//!
//! // A COW image with 4 KiB chunks (8 sectors) whose store maps origin chunks 7, 3 and 4,
//! // read from memory (a file, block device or NBD export reads the same way).
//! let cow = Device::in_memory(image::build(8, &[7, 3, 4], None, None));
//! let opts = ReadOptions { origin_size: Some(1 << 20), ..ReadOptions::default() };
//! let list = ChangeList::read(&cow, &opts).unwrap();
//! assert_eq!(list.summary.exceptions, 3);
//!
//! let mut out = Vec::new();
//! list.write_range_list(&mut out).unwrap();
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "# blkranges v1 size=1048576 chunk=4096\n12288 8192\n28672 4096\n"
//! );
//! ```

mod error;
pub mod nbdmap;
pub mod resolve;
pub mod snapshot;
pub mod xml;

pub use error::{EntryPos, MetaError};
