//! End-to-end tests of blkpipe: the built tools run as real processes joined by real pipes, on
//! image files, loop devices and NBD exports. One test binary (one link in CI); each module
//! covers one area, and `common` holds the helpers they share.
//!
//! Run one area with `cargo test --release --test e2e -- MODULE::`, e.g. `hashsync::`.

mod common;

// First in name order, so libtest starts its (long) test first (see its module doc).
mod a_kill9;
mod blksync;
mod chain;
mod contract;
mod cowlist;
mod fallback;
mod hashsync;
mod help;
mod holes;
mod hostile;
mod merge;
mod nbd;
mod nbd_lies;
mod noread;
mod patch;
mod progress;
mod readme;
mod resume;
mod scale;
mod seal;
mod streams;
mod twopass;
mod undo;
