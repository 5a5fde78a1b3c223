//! The three blkpipe stream formats, byte for byte as `docs/FORMAT.md` specifies them.
//!
//! - [`range`]: the text **range list** (`OFFSET LENGTH` per line) that `cowlist` writes and
//!   `blkread-chunks` reads.
//! - [`patch`]: the binary **patch stream** of data and zero records that `blkread-chunks` and
//!   `blkdiff` write and `blkpatch` applies. [`patch::PatchWriter`] and [`patch::PatchReader`].
//! - [`hash`]: the binary **hash stream** of per-block hashes that `blkhash` writes and `blkdiff`
//!   reads. [`hash::HashWriter`] and [`hash::HashReader`].
//! - [`digest`]: the block hash and whole-device digest all tools agree on.
//! - [`kind`]: what a stream is, from its first bytes, for errors that name it.
//! - [`seal`]: sealed streams, authenticated with a 32-byte key (BLAKE3 keyed MACs).
//! - [`chain`]: chain blocks binding a sealed patch stream to its place in a backup chain.
//!
//! Every reader distrusts its input: magic and version first, a checksum before any field is
//! used, every length checked against a fixed cap before anything is allocated, and truncation
//! anywhere is an error. Errors are [`FormatError`] values that name the record and offset.
//!
//! ```
//! use blkpipe_format::patch::{PatchHeader, PatchReader, PatchWriter, RecordData};
//!
//! let header = PatchHeader::new(8192, [7; 16]);
//! let mut w = PatchWriter::new(Vec::new(), header, false).unwrap();
//! w.write_data(0, &[1u8; 4096]).unwrap();
//! w.write_zero(4096, 4096).unwrap();
//! let stream = w.finish(None).unwrap();
//!
//! let mut r = PatchReader::new(&stream[..]).unwrap();
//! assert_eq!(r.header().source_size, 8192);
//! let rec = r.next_record().unwrap().unwrap();
//! assert_eq!((rec.offset, rec.length), (0, 4096));
//! assert!(matches!(rec.data, RecordData::Data(d) if d == &[1u8; 4096][..]));
//! let rec = r.next_record().unwrap().unwrap();
//! assert!(matches!(rec.data, RecordData::Zero));
//! assert!(r.next_record().unwrap().is_none());
//! assert_eq!(r.end().unwrap().record_count, 2);
//! ```

pub mod chain;
pub mod digest;
mod end;
mod error;
pub mod hash;
pub mod kind;
pub mod patch;
pub mod range;
pub mod seal;
pub mod xxh3;

pub use error::FormatError;

/// The largest length of one patch record, in bytes. No length field in any stream can make a
/// reader allocate more than this (plus the lz4 worst-case overhead).
pub const MAX_RECORD_LEN: u64 = 4 << 20;

/// Read until `buf` is full or the input ends; returns how many bytes were read (fewer than
/// `buf.len()` only at the end of the input). Interrupted reads are retried.
pub fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn le_u128(b: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(b[at..at + 16].try_into().expect("16 bytes"))
}
