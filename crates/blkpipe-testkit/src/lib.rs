//! Test builders for blkpipe, used only as a dev-dependency (by blkpipe-meta's and
//! blkpipe-ops' tests, the end-to-end tests, the `gen_cow` bench generator and the fuzz
//! targets): [`image`] builds dm-snapshot COW images laid out exactly as the kernel writes
//! them, and [`fuzz_cow_store`] is the body of the `cow_store` fuzz target.
//!
//! A crate of its own rather than a feature of blkpipe-meta: a feature that the tests turn on
//! is on for the whole test build, so the tools as shipped (built without it) compiled
//! blkpipe-meta and every crate above it a second time. The tools never link this crate.

mod fuzz;
pub mod image;

#[doc(hidden)]
pub use fuzz::fuzz_cow_store;
