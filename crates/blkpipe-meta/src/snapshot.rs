//! The dm-snapshot persistent exception store, as `drivers/md/dm-snap-persistent.c` writes it.
//!
//! Layout of a COW device, in chunks of `chunk_size` sectors:
//!
//! - chunk 0: the header, four little-endian u32: magic `0x70416e53` ("SnAp"), valid (0 once
//!   the kernel invalidated the snapshot), version (1), chunk size in sectors.
//! - metadata area `a` at chunk `1 + a * (E + 1)`, where `E = chunk_bytes / 16` is the number of
//!   exceptions per area, followed by the `E` data chunks that area's exceptions allocate.
//! - an exception is two little-endian u64: `old_chunk` (the origin chunk) and `new_chunk` (the
//!   COW chunk holding the snapshot's copy of it).
//! - inside an area the exceptions end at the first entry whose `new_chunk` is 0 (chunk 0 is
//!   the header, so no real exception points there). An area with no such entry is full and the
//!   store continues in the next area (the kernel zeroes that next area before it commits the
//!   last entry of a full one). So the store ends at the first area that is not full.
//!
//! [`read_header`] reads and checks the header, [`walk_store`] visits every exception with its
//! [`EntryPos`] after checking it lies inside the COW device and the origin, [`ChangeList`] is the
//! sorted, coalesced list of origin chunks for a range list, and [`SnapshotView`] maps origin
//! chunks to COW chunks (blkpipe-ops writes it as a
//! patch stream: `cowlist --data`). blkpipe-testkit builds COW images for tests.
//!
//! Metadata is read from a [`Device`] through its engine (a file or block device, an NBD
//! export, or bytes in memory: [`Device::in_memory`]); on a block device [`open_cow`] opens
//! with `O_DIRECT`, so every read bypasses the page cache, which matters because the kernel
//! keeps writing the areas of a live snapshot below it. Areas are read whole (at most [`MAX_READ`]
//! bytes per request), with several requests in flight on a block device and with read-ahead
//! hints through the page cache on an image file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use blkpipe_dev::{AlignedBuf, Device};
use blkpipe_format::range::{write_header, Range, RangeHeader};

use crate::{EntryPos, MetaError};

mod header;
mod list;
mod sort;
mod source;
mod spill;
mod view;
mod walk;

pub use header::*;
pub use list::*;
pub use sort::*;
pub use source::*;
pub use spill::*;
pub use view::*;
pub use walk::*;

#[cfg(test)]
mod tests;
