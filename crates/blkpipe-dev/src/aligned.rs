use std::ops::{Deref, DerefMut};

/// A zeroed byte buffer whose start is aligned to 4096 bytes, as `O_DIRECT` needs.
///
/// An anonymous private mapping: page-aligned, and zero pages until first written, so a 4 MiB
/// buffer costs nothing until it is filled. (`alloc_zeroed` with a 4096-byte alignment has no
/// calloc to lean on: it allocated, then wrote 4 MiB of zeroes, about a quarter of the CPU of
/// the short runs in the kill -9 tests.)
pub struct AlignedBuf {
    map: memmap2::MmapMut,
    len: usize,
}

const _: () = assert!(
    crate::DIRECT_ALIGN <= 4096,
    "pages are at least 4096-aligned"
);

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (mapped as at least one); aborts as an allocation
    /// would when there is no memory.
    pub fn new(len: usize) -> Self {
        let mapped = len.max(1);
        match memmap2::MmapMut::map_anon(mapped) {
            Ok(map) => AlignedBuf { map, len },
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(mapped, 4096).expect("valid layout"),
            ),
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBuf;

    #[test]
    fn aligned_zeroed_and_exactly_as_long_as_asked() {
        for len in [0, 1, 4095, 4096, 4 << 20] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % crate::DIRECT_ALIGN as usize, 0);
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(0xa5);
            assert!(buf.iter().all(|&b| b == 0xa5));
        }
    }
}
