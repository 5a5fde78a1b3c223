//! Where metadata is read from: [`BlockSource`], the COW device opened for it, the header.

use super::*;

/// Something metadata can be read from: a [`Device`] or, for tests, bytes in memory.
pub trait BlockSource: Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Read into `buf` at `offset`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError>;
    /// A name for error messages.
    fn name(&self) -> &Path;
    /// Hint that `len` bytes at `offset` will be read soon (start reading them in the
    /// background). Advisory; the default does nothing.
    fn will_need(&self, _offset: u64, _len: usize) {}
}

impl BlockSource for Device {
    fn size(&self) -> u64 {
        Device::size(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError> {
        Ok(Device::read_at(self, buf, offset)?)
    }
    fn name(&self) -> &Path {
        self.path()
    }
    fn will_need(&self, offset: u64, len: usize) {
        self.fadvise_willneed(offset, len as u64);
    }
}

impl BlockSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, MetaError> {
        let start = offset.min(self.len() as u64) as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn name(&self) -> &Path {
        Path::new("<memory>")
    }
}

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
pub fn read_full<S: BlockSource + ?Sized>(
    src: &S,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), MetaError> {
    let n = src.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(MetaError::Read {
            path: src.name().to_owned(),
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
pub fn read_header<S: BlockSource + ?Sized>(src: &S) -> Result<StoreHeader, MetaError> {
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
