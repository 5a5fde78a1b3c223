//! Open a stream input, recognising zstd, lz4-frame and gzip by their magic and
//! decompressing them transparently, so `... | zstd | ssh host blkpatch DEV` works as written.
//!
//! A compressed input is read frame by frame (several concatenated frames or members are one
//! input, as `zstd -d` and `gzip -d` read them). Damaged compressed data, a frame cut before
//! its end mark, and bytes after the last frame are [`DecodeError`]s: bad input (exit 3)
//! naming the input and the compression format. An I/O error on the underlying file or pipe
//! stays an I/O error.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read};
use std::path::Path;

use blkpipe_format::kind::StreamKind;

use crate::OpError;

/// Skippable frames of the lz4 and zstd frame formats: magic 0x184D2A50..=0x184D2A5F.
fn is_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

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

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
        })
    }
}

/// What is wrong with a compressed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeProblem {
    /// The decoder rejected the data (its message).
    Damaged(String),
    /// The input ended inside a frame, before its end mark.
    CutShort,
    /// Bytes that start no frame follow the last complete frame.
    TrailingBytes,
}

/// A compressed input that does not decode: bad input, not an I/O error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The input: a path or `stdin`.
    pub input: String,
    /// Its compression format.
    pub format: Compression,
    /// What is wrong.
    pub problem: DecodeProblem,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (input, format) = (&self.input, self.format);
        match &self.problem {
            DecodeProblem::Damaged(msg) => write!(f, "{input}: damaged {format} data: {msg}"),
            DecodeProblem::CutShort => {
                write!(
                    f,
                    "{input}: {format} data cut short (the input ends inside a frame)"
                )
            }
            DecodeProblem::TrailingBytes => {
                write!(f, "{input}: bytes after the end of the {format} data")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The decode error inside `e`, if that is what `e` carries.
    pub fn in_io(e: &io::Error) -> Option<&DecodeError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
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

/// Whether `path` means stdin (`None` or `-`).
pub fn is_stdin(path: Option<&Path>) -> bool {
    path.map_or(true, |p| p == Path::new("-"))
}

/// Refuse to read a binary stream from a terminal, where a tool would wait silently for input
/// that cannot come. `what` says what the tool reads and where it usually comes from, e.g.
/// "blkpatch reads a patch stream (from blkread-chunks or blkdiff): pipe one in or give
/// --input FILE".
pub fn refuse_terminal_stdin(path: Option<&Path>, what: &str) -> Result<(), OpError> {
    if is_stdin(path) && io::stdin().is_terminal() {
        return Err(OpError::Refused(format!("stdin is a terminal: {what}")));
    }
    Ok(())
}

/// Open `path` (or stdin for `None` or `-`) and undo any compression found.
pub fn open_input(path: Option<&Path>) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    let (raw, name): (Box<dyn Read + Send>, String) = match path {
        Some(p) if !is_stdin(path) => (Box::new(File::open(p)?), p.display().to_string()),
        _ => {
            enlarge_pipe(0);
            (Box::new(io::stdin()), "stdin".to_owned())
        }
    };
    decompress_named(raw, &name)
}

/// Wrap `raw` in the decompressor its first bytes call for.
pub fn decompress(raw: Box<dyn Read + Send>) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    decompress_named(raw, "input")
}

/// Wrap `raw`, called `name` in errors, in the decompressor its first bytes call for.
pub fn decompress_named(
    raw: Box<dyn Read + Send>,
    name: &str,
) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    let mut src = Source::new(raw);
    let kind = match StreamKind::sniff(src.peek(4)?) {
        Some(StreamKind::Zstd) => Compression::Zstd,
        Some(StreamKind::Lz4) => Compression::Lz4,
        Some(StreamKind::Gzip) => Compression::Gzip,
        _ => Compression::None,
    };
    if kind == Compression::None {
        return Ok((Box::new(src), kind));
    }
    let frames = Frames {
        input: name.to_owned(),
        format: kind,
        state: State::Between(src),
    };
    Ok((Box::new(frames), kind))
}

/// Peek at the first bytes of a text input (a range list, XML) and refuse it when it is a
/// binary blkpipe stream or compressed, naming what it is. `expected` names the text
/// ("range list") and `name` the input. Returns a reader that still yields every byte.
pub fn open_text(
    raw: Box<dyn Read + Send>,
    name: &str,
    expected: &str,
) -> Result<Box<dyn BufRead + Send>, OpError> {
    let mut src = Source::new(raw);
    let head = src.peek(8).map_err(OpError::Input)?;
    match StreamKind::sniff(head) {
        Some(
            kind @ (StreamKind::Patch
            | StreamKind::Hash
            | StreamKind::Zstd
            | StreamKind::Lz4
            | StreamKind::Gzip
            | StreamKind::Xz
            | StreamKind::Bzip2),
        ) => Err(OpError::BadRange(format!(
            "{name}: not a {expected}: {}",
            kind.advice()
        ))),
        _ => Ok(Box::new(src)),
    }
}

/// The raw input, buffered, with a peek that can look a few bytes ahead across short reads.
/// Errors of the underlying reader are marked, so a decoder error is told from an I/O error.
struct Source {
    inner: Box<dyn Read + Send>,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

/// An I/O error of the raw input, passed through a decoder.
#[derive(Debug)]
struct RawError(io::Error);

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RawError {}

fn unmark(e: io::Error) -> Result<io::Error, io::Error> {
    if e.get_ref().is_some_and(|r| r.is::<RawError>()) {
        let inner = e.into_inner().expect("checked above");
        Ok(inner.downcast::<RawError>().expect("checked above").0)
    } else {
        Err(e)
    }
}

impl Source {
    fn new(inner: Box<dyn Read + Send>) -> Self {
        Source {
            inner,
            buf: vec![0; INPUT_BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }

    fn raw_read(&mut self, at: usize) -> io::Result<usize> {
        loop {
            match self.inner.read(&mut self.buf[at..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), RawError(e))),
                Ok(n) => return Ok(n),
            }
        }
    }

    /// Up to `n` bytes ahead (fewer only at end of input), without consuming them.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.len - self.pos < n {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            while self.len < n {
                match self.raw_read(self.len) {
                    Ok(0) => break,
                    Ok(got) => self.len += got,
                    Err(e) => return Err(unmark(e).unwrap_or_else(|e| e)),
                }
            }
        }
        Ok(&self.buf[self.pos..self.len.min(self.pos + n)])
    }
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len && out.len() >= self.buf.len() {
            return loop {
                match self.inner.read(out) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(io::Error::new(e.kind(), RawError(e))),
                    Ok(n) => break Ok(n),
                }
            };
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Source {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
            self.len = self.raw_read(0)?;
        }
        Ok(&self.buf[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }
}

/// One frame (or gzip member) being decoded; each gives the source back at its end.
enum Frame {
    Zstd(zstd::stream::read::Decoder<'static, Source>),
    Lz4(crate::lz4frame::Lz4Frame<Source>),
    Gzip(flate2::bufread::GzDecoder<Source>),
}

enum State {
    Decoding(Box<Frame>),
    Between(Source),
    Done,
    Failed,
}

/// A compressed input read frame by frame, checking what follows each frame.
struct Frames {
    input: String,
    format: Compression,
    state: State,
}

impl Frames {
    fn error(&self, problem: DecodeProblem) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            DecodeError {
                input: self.input.clone(),
                format: self.format,
                problem,
            },
        )
    }

    /// A decoder's error: the raw input's own I/O error passes through; the rest is bad data.
    fn classify(&self, e: io::Error) -> io::Error {
        match unmark(e) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.error(DecodeProblem::CutShort)
            }
            Err(e) => self.error(DecodeProblem::Damaged(e.to_string())),
        }
    }

    fn start(&self, src: Source) -> io::Result<Frame> {
        Ok(match self.format {
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(src)?.single_frame();
                // Allow the long windows `zstd --long` produces.
                d.window_log_max(31)?;
                Frame::Zstd(d)
            }
            Compression::Lz4 => Frame::Lz4(crate::lz4frame::Lz4Frame::new(src)?),
            Compression::Gzip => Frame::Gzip(flate2::bufread::GzDecoder::new(src)),
            Compression::None => unreachable!("Frames is only made for compressed input"),
        })
    }

    fn starts_frame(&self, head: &[u8]) -> bool {
        let kind = StreamKind::sniff(head);
        match self.format {
            Compression::Zstd => kind == Some(StreamKind::Zstd) || is_skippable(head),
            Compression::Lz4 => kind == Some(StreamKind::Lz4) || is_skippable(head),
            Compression::Gzip => kind == Some(StreamKind::Gzip),
            Compression::None => false,
        }
    }
}

impl Read for Frames {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Done => {
                    self.state = State::Done;
                    return Ok(0);
                }
                State::Failed => {
                    let again = "read again after an error".to_owned();
                    return Err(self.error(DecodeProblem::Damaged(again)));
                }
                State::Between(mut src) => {
                    let head = src.peek(4)?;
                    if head.is_empty() {
                        self.state = State::Done;
                        return Ok(0);
                    }
                    if !self.starts_frame(head) {
                        return Err(self.error(DecodeProblem::TrailingBytes));
                    }
                    let frame = self.start(src).map_err(|e| self.classify(e))?;
                    self.state = State::Decoding(Box::new(frame));
                }
                State::Decoding(mut frame) => {
                    let got = match frame.as_mut() {
                        Frame::Zstd(d) => d.read(out),
                        Frame::Lz4(d) => d.read(out),
                        Frame::Gzip(d) => d.read(out),
                    };
                    match got {
                        Ok(0) => {
                            let src = match *frame {
                                Frame::Zstd(d) => d.finish(),
                                Frame::Gzip(d) => d.into_inner(),
                                Frame::Lz4(d) => d.into_inner(),
                            };
                            self.state = State::Between(src);
                        }
                        Ok(n) => {
                            self.state = State::Decoding(frame);
                            return Ok(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            self.state = State::Decoding(frame);
                        }
                        Err(e) => return Err(self.classify(e)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn compress(format: Compression, data: &[u8]) -> Vec<u8> {
        match format {
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Lz4 => {
                let mut e = lz4::EncoderBuilder::new()
                    .checksum(lz4::ContentChecksum::ChecksumEnabled)
                    .build(Vec::new())
                    .unwrap();
                e.write_all(data).unwrap();
                let (out, res) = e.finish();
                res.unwrap();
                out
            }
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::None => data.to_vec(),
        }
    }

    /// Decode `bytes` completely: the data, or the error.
    fn decode(bytes: Vec<u8>) -> io::Result<(Vec<u8>, Compression)> {
        let (mut r, kind) = decompress_named(Box::new(io::Cursor::new(bytes)), "t.in")?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok((out, kind))
    }

    fn problem(bytes: Vec<u8>) -> DecodeError {
        let e = decode(bytes).expect_err("must fail");
        DecodeError::in_io(&e).expect("a decode error").clone()
    }

    const FORMATS: [Compression; 3] = [Compression::Zstd, Compression::Lz4, Compression::Gzip];

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i * 7 % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn whole_and_concatenated_frames_decode() {
        let data = sample();
        for f in FORMATS {
            assert_eq!(decode(compress(f, &data)).unwrap(), (data.clone(), f));
            let mut two = compress(f, &data[..1000]);
            two.extend(compress(f, &data[1000..]));
            assert_eq!(decode(two).unwrap().0, data, "{f}: two frames");
        }
    }

    #[test]
    fn a_cut_frame_is_bad_input_naming_input_and_format() {
        let data = sample();
        for f in FORMATS {
            let whole = compress(f, &data);
            for cut in [whole.len() - 1, whole.len() - 4, whole.len() / 2, 20] {
                let e = problem(whole[..cut].to_vec());
                assert_eq!(e.format, f);
                assert_eq!(e.input, "t.in");
                assert_eq!(e.problem, DecodeProblem::CutShort, "{f} cut at {cut}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.starts_with("t.in: ") && msg.contains(&f.to_string()),
                    "{msg}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_last_frame_are_bad_input() {
        let data = sample();
        for f in FORMATS {
            for tail in [&b"x"[..], b"garbage\n", &[0u8; 64]] {
                let mut bytes = compress(f, &data);
                bytes.extend_from_slice(tail);
                let e = problem(bytes);
                assert_eq!(
                    e.problem,
                    DecodeProblem::TrailingBytes,
                    "{f} + {tail:?}: {e}"
                );
                assert_eq!(e.format, f);
            }
        }
    }

    #[test]
    fn damaged_data_is_bad_input() {
        let data = sample();
        for f in FORMATS {
            let mut bytes = compress(f, &data);
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 16] {
                *b ^= 0x5a;
            }
            let e = problem(bytes);
            assert!(
                matches!(
                    e.problem,
                    DecodeProblem::Damaged(_) | DecodeProblem::CutShort
                ),
                "{f}: {e}"
            );
            assert!(DecodeError::in_io(&io::Error::other(e)).is_some());
        }
    }

    #[test]
    fn an_io_error_of_the_raw_input_stays_an_io_error() {
        struct Failing(Vec<u8>, usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() / 2 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let n = out.len().min(100).min(self.0.len() - self.1);
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        for f in FORMATS {
            let raw = Failing(compress(f, &sample()), 0);
            let (mut r, _) = decompress_named(Box::new(raw), "t.in").unwrap();
            let e = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{f}: {e}");
            assert!(DecodeError::in_io(&e).is_none(), "{f}: {e}");
        }
    }

    #[test]
    fn uncompressed_input_passes_through_with_short_reads() {
        let data = sample();
        let (mut r, kind) = decompress_named(Box::new(io::Cursor::new(data.clone())), "x").unwrap();
        assert_eq!(kind, Compression::None);
        let mut big = vec![0u8; INPUT_BUFFER * 2];
        let mut out = Vec::new();
        loop {
            let n = r.read(&mut big).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&big[..n]);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn text_input_names_a_binary_stream() {
        for (head, word) in [
            (&b"BLKPATCH\x01\0"[..], "patch stream"),
            (
                b"BLKHASH\0\x01\0",
                "hash stream (from blkhash): give it to blkdiff",
            ),
            (&blkpipe_format::kind::ZSTD_MAGIC, "zstd-compressed"),
        ] {
            let e = open_text(Box::new(io::Cursor::new(head.to_vec())), "in", "range list")
                .err()
                .expect("refused");
            assert!(e.to_string().contains(word), "{e}");
            assert!(matches!(e, OpError::BadRange(_)), "{e}");
        }
        let mut r = open_text(
            Box::new(io::Cursor::new(b"0 4096\n".to_vec())),
            "in",
            "range list",
        )
        .unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "0 4096\n");
    }
}
