//! One lz4 frame decoded from a [`BufRead`] that is consumed exactly up to the frame's end,
//! so what follows the frame (another frame, or stray bytes) can be checked. The `lz4`
//! crate's `Decoder` reads ahead into its own buffer and ends silently when its input does,
//! so it can neither tell a cut frame nor see the bytes after one.

use std::ffi::CStr;
use std::io::{self, BufRead, Read};

use lz4_sys::{
    LZ4FDecompressionContext, LZ4F_createDecompressionContext, LZ4F_decompress,
    LZ4F_freeDecompressionContext, LZ4F_getErrorName, LZ4F_isError, LZ4F_VERSION,
};

/// Decodes one lz4 frame (or skippable frame). `read` returns 0 once the frame is complete;
/// an input that ends inside the frame is an `UnexpectedEof` error, damaged data
/// `InvalidData` with liblz4's message.
pub(crate) struct Lz4Frame<R> {
    ctx: LZ4FDecompressionContext,
    src: R,
    done: bool,
}

fn check(code: usize) -> io::Result<usize> {
    // SAFETY: LZ4F_isError and LZ4F_getErrorName only inspect the code; the name is a static
    // NUL-terminated string.
    unsafe {
        if LZ4F_isError(code) != 0 {
            let name = CStr::from_ptr(LZ4F_getErrorName(code));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                name.to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(code)
}

impl<R: BufRead> Lz4Frame<R> {
    /// Start decoding the frame at the current position of `src`.
    pub(crate) fn new(src: R) -> io::Result<Self> {
        let mut ctx = LZ4FDecompressionContext(std::ptr::null_mut());
        // SAFETY: creates a context owned by the returned value and freed in Drop.
        check(unsafe { LZ4F_createDecompressionContext(&mut ctx, LZ4F_VERSION) })?;
        Ok(Lz4Frame {
            ctx,
            src,
            done: false,
        })
    }

    /// The source, positioned just after the frame once `read` has returned 0.
    pub(crate) fn into_inner(self) -> R {
        // SAFETY: reading the field out of a value whose Drop only frees `ctx`; `ctx` is
        // freed here and the value is forgotten, so nothing is freed or dropped twice.
        let me = std::mem::ManuallyDrop::new(self);
        unsafe {
            LZ4F_freeDecompressionContext(me.ctx);
            std::ptr::read(&me.src)
        }
    }
}

impl<R: BufRead> Read for Lz4Frame<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.src.fill_buf()?;
            let at_eof = input.is_empty();
            let (mut src_size, mut dst_size) = (input.len(), out.len());
            // SAFETY: both pointers and sizes describe live buffers; liblz4 writes at most
            // dst_size bytes to out and reads at most src_size bytes of input.
            let hint = check(unsafe {
                LZ4F_decompress(
                    self.ctx,
                    out.as_mut_ptr(),
                    &mut dst_size,
                    input.as_ptr(),
                    &mut src_size,
                    std::ptr::null(),
                )
            })?;
            self.src.consume(src_size);
            if hint == 0 {
                self.done = true;
                return Ok(dst_size);
            }
            if dst_size > 0 {
                return Ok(dst_size);
            }
            if at_eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "lz4 frame cut short",
                ));
            }
        }
    }
}

impl<R> Drop for Lz4Frame<R> {
    fn drop(&mut self) {
        // SAFETY: the context was created in `new` and is freed once.
        unsafe {
            LZ4F_freeDecompressionContext(self.ctx);
        }
    }
}
