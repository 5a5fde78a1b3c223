//! Open a stream input, recognising zstd, lz4-frame and gzip by their magic and
//! decompressing them transparently, so `... | zstd | ssh host blkpatch DEV` works as written.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Buffer size for stream input. Small records and headers are read through it; a read of at
/// least this size (a large payload) bypasses it, so large payloads are copied once.
pub const INPUT_BUFFER: usize = 128 << 10;

/// The compression recognised on an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// zstd frames.
    Zstd,
    /// lz4 frames.
    Lz4,
    /// gzip members.
    Gzip,
}

/// Pipe buffer asked for on stdin and stdout: fewer context switches between the stages of a
/// pipeline than the default 64 KiB.
pub const PIPE_BUFFER: i32 = 1 << 20;

/// Ask for a larger pipe buffer on `fd` if it is a pipe. Advisory: a limit lower than
/// [`PIPE_BUFFER`] (`/proc/sys/fs/pipe-max-size`) or a non-pipe fd leaves it as it is.
pub fn enlarge_pipe(fd: i32) {
    // SAFETY: F_SETPIPE_SZ only resizes the kernel buffer of a pipe; it fails harmlessly
    // (EBADF, EINVAL, EPERM) for anything else.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BUFFER);
    }
}

/// Open `path` (or stdin for `None` or `-`) and undo any compression found.
pub fn open_input(path: Option<&Path>) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    let raw: Box<dyn Read + Send> = match path {
        Some(p) if p != Path::new("-") => Box::new(File::open(p)?),
        _ => {
            enlarge_pipe(0);
            Box::new(io::stdin())
        }
    };
    decompress(raw)
}

/// Wrap `raw` in the decompressor its first bytes call for.
pub fn decompress(
    mut raw: Box<dyn Read + Send>,
) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    // Pipes deliver short reads, so collect the magic bytes explicitly, then replay them.
    let mut head = Vec::with_capacity(4);
    let mut byte = [0u8; 4];
    while head.len() < 4 {
        match raw.read(&mut byte[..4 - head.len()]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&byte[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if head.starts_with(&LZ4_MAGIC) {
        Compression::Lz4
    } else if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else {
        Compression::None
    };
    let buf = BufReader::with_capacity(INPUT_BUFFER, io::Cursor::new(head).chain(raw));
    Ok(match kind {
        Compression::None => (Box::new(buf), kind),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(buf)?;
            // Allow the long windows `zstd --long` produces.
            d.window_log_max(31)?;
            (Box::new(d), kind)
        }
        Compression::Lz4 => (Box::new(lz4::Decoder::new(buf)?), kind),
        Compression::Gzip => (Box::new(flate2::bufread::MultiGzDecoder::new(buf)), kind),
    })
}
