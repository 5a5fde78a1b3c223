//! Where metadata is read from: a [`Device`] over any of blkpipe-dev's engines (a file or
//! block device, an NBD export, or bytes in memory for tests), the COW device opened for it,
//! the header.

use super::*;

/// Open a COW device or image for reading metadata. A block device is read with `O_DIRECT`:
/// the kernel writes a live store with bios that bypass the device's page cache, so cached
/// pages of it can be stale. A regular file (a saved image, or the backing file of a loop
/// device) is read through the page cache, which the kernel keeps coherent with writes to a
/// file (buffered, or direct writes that invalidate the cached range), with random-access
/// advice so the data chunks between the areas are not read ahead. `O_DIRECT` falls back to
/// buffered reads where the device refuses it. Returns the device and whether reads are direct
/// (blkpipe-dev decides: [`Device::open_live_metadata`]).
pub fn open_cow(path: &Path) -> Result<(Device, bool), MetaError> {
    Ok(Device::open_live_metadata(path)?)
}

/// Read exactly `buf.len()` bytes at `offset`; a device that ends first is an error naming
/// the read.
pub fn read_full(src: &Device, buf: &mut [u8], offset: u64) -> Result<(), MetaError> {
    let n = src.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(MetaError::Read {
            path: src.path().to_owned(),
            offset,
            len: buf.len(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("device ended after {n} bytes"),
            ),
        });
    }
    Ok(())
}

/// Read and check the header in chunk 0.
pub fn read_header(src: &Device) -> Result<StoreHeader, MetaError> {
    let size = src.size();
    if size < 16 {
        return Err(MetaError::TooShort { size });
    }
    let mut buf = AlignedBuf::new(HEADER_READ);
    let want = (size.min(HEADER_READ as u64) as usize).next_multiple_of(512);
    let n = src.read_at(&mut buf[..want.min(HEADER_READ)], 0)?;
    if n < 16 {
        return Err(MetaError::TooShort { size: n as u64 });
    }
    StoreHeader::parse(&buf[..n])
}
