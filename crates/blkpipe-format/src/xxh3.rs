//! xxh3, the checksum of every record, header and hash stream, and the block hash of unkeyed
//! streams: the one place the workspace names its implementation.
//!
//! `twox-hash` computes the same function as the reference xxh3 and picks AVX2 at run time, so
//! the shipped x86-64 build (which targets SSE2 only) still hashes with 256-bit vectors.

use std::hash::Hasher as _;

use twox_hash::{XxHash3_128, XxHash3_64};

/// 64-bit xxh3 of `data` with `seed`.
#[inline]
pub fn xxh3_64_with_seed(data: &[u8], seed: u64) -> u64 {
    XxHash3_64::oneshot_with_seed(seed, data)
}

/// 128-bit xxh3 of `data` with `seed`.
#[inline]
pub fn xxh3_128_with_seed(data: &[u8], seed: u64) -> u128 {
    XxHash3_128::oneshot_with_seed(seed, data)
}

/// A streaming xxh3 of one width: a newtype over twox-hash's hasher `$inner`, whose
/// `$finish` gives the `$out` hash. Both widths have the same methods, so code that keeps a
/// running checksum reads the same whichever it keeps.
macro_rules! streaming_xxh3 {
    ($(#[$doc:meta])* $name:ident($inner:ty) -> $out:ty, $finish:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name($inner);

        impl $name {
            /// A hasher with seed 0.
            pub fn new() -> Self {
                Self::with_seed(0)
            }

            /// A hasher with `seed`.
            pub fn with_seed(seed: u64) -> Self {
                $name(<$inner>::with_seed(seed))
            }

            /// Add bytes.
            #[inline]
            pub fn update(&mut self, data: &[u8]) {
                self.0.write(data);
            }

            /// The hash of everything added so far.
            pub fn digest(&self) -> $out {
                self.0.$finish()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

streaming_xxh3!(
    /// Streaming 64-bit xxh3: the same value as [`xxh3_64_with_seed`] of everything written.
    Xxh3_64(XxHash3_64) -> u64, finish
);
streaming_xxh3!(
    /// Streaming 128-bit xxh3: the same value as [`xxh3_128_with_seed`] of everything written.
    Xxh3_128(XxHash3_128) -> u128, finish_128
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Published xxh3 values (the reference implementation's test vectors for empty input),
    /// and streaming equals one-shot across every split of a buffer longer than a stripe block.
    #[test]
    fn matches_the_reference_and_streams_like_one_shot() {
        assert_eq!(xxh3_64_with_seed(b"", 0), 0x2d06_8005_38d3_94c2);
        assert_eq!(
            xxh3_128_with_seed(b"", 0),
            0x99aa_06d3_0147_98d8_6001_c324_468d_497f
        );
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for split in [0, 1, 15, 16, 17, 240, 1024, 4096, 4999, 5000] {
            let mut a = Xxh3_64::with_seed(7);
            a.update(&data[..split]);
            a.update(&data[split..]);
            assert_eq!(a.digest(), xxh3_64_with_seed(&data, 7));
            let mut b = Xxh3_128::with_seed(7);
            b.update(&data[..split]);
            b.update(&data[split..]);
            assert_eq!(b.digest(), xxh3_128_with_seed(&data, 7));
        }
    }
}
