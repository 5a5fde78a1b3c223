//! Recognise what a stream is from its first bytes, so a stream given to the wrong tool is
//! named in the error ("this is a hash stream (from blkhash): give it to blkdiff") instead of
//! shown as raw bytes.

use std::fmt;

/// What the first bytes of an input look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A patch stream (`BLKPATCH`).
    Patch,
    /// A hash stream (`BLKHASH\0`).
    Hash,
    /// A text range list (`# blkranges` header or `OFFSET LENGTH` lines).
    RangeList,
    /// A blkhash text listing (`--text`) or digest line.
    HashText,
    /// thin_delta or era_invalidate XML.
    Xml,
    /// A zstd frame.
    Zstd,
    /// An lz4 frame.
    Lz4,
    /// A gzip member.
    Gzip,
    /// An xz stream.
    Xz,
    /// A bzip2 stream.
    Bzip2,
    /// Nothing at all.
    Empty,
}

const PATCH_MAGIC: &[u8] = crate::patch::MAGIC;
const HASH_MAGIC: &[u8] = crate::hash::MAGIC;
const RANGE_HEADER: &[u8] = b"# blkranges";
/// The first bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The first bytes of an lz4 frame.
pub const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
/// The first bytes of a gzip member.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl StreamKind {
    /// The kind `head` (the first bytes of an input, 8 are enough) looks like, if any.
    pub fn sniff(head: &[u8]) -> Option<StreamKind> {
        let starts = |magic: &[u8]| head.len() >= magic.len().min(8) && head.starts_with(magic);
        let prefix_of = |magic: &[u8]| head.len() >= 4 && magic.starts_with(head);
        Some(if head.is_empty() {
            StreamKind::Empty
        } else if head.starts_with(PATCH_MAGIC) || prefix_of(PATCH_MAGIC) {
            StreamKind::Patch
        } else if head.starts_with(HASH_MAGIC) || prefix_of(HASH_MAGIC) {
            StreamKind::Hash
        } else if starts(&ZSTD_MAGIC) {
            StreamKind::Zstd
        } else if starts(&LZ4_MAGIC) {
            StreamKind::Lz4
        } else if starts(&GZIP_MAGIC) {
            StreamKind::Gzip
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            StreamKind::Xz
        } else if starts(b"BZh") {
            StreamKind::Bzip2
        } else if head.starts_with(RANGE_HEADER) || RANGE_HEADER.starts_with(head) {
            StreamKind::RangeList
        } else if head.starts_with(b"<") || head.starts_with(b"<?xml") {
            StreamKind::Xml
        } else if looks_like_hash_text(head) {
            StreamKind::HashText
        } else if looks_like_ranges(head) {
            StreamKind::RangeList
        } else {
            return None;
        })
    }

    /// The compression this kind is, if it is one.
    pub fn is_compressed(self) -> bool {
        matches!(
            self,
            StreamKind::Zstd
                | StreamKind::Lz4
                | StreamKind::Gzip
                | StreamKind::Xz
                | StreamKind::Bzip2
        )
    }

    /// What the stream is and where it goes: "a hash stream (from blkhash): give it to blkdiff".
    pub fn advice(self) -> &'static str {
        match self {
            StreamKind::Patch => {
                "this is a patch stream (from blkread-chunks, blkdiff or cowlist --data): give it to blkpatch"
            }
            StreamKind::Hash => "this is a hash stream (from blkhash): give it to blkdiff",
            StreamKind::RangeList => {
                "this looks like a range list (from cowlist): give it to blkread-chunks"
            }
            StreamKind::HashText => {
                "this looks like blkhash --text or --digest output, which is for reading, not for a pipeline"
            }
            StreamKind::Xml => {
                "this looks like XML (thin_delta or era_invalidate): give it to cowlist --thin-delta or --era-invalidate"
            }
            StreamKind::Zstd => "this is zstd-compressed: decompress it first (zstd -d)",
            StreamKind::Lz4 => "this is lz4-compressed: decompress it first (lz4 -d)",
            StreamKind::Gzip => "this is gzip-compressed: decompress it first (gzip -d)",
            StreamKind::Xz => {
                "this is xz-compressed, which blkpipe does not decompress: decompress it first (xz -d)"
            }
            StreamKind::Bzip2 => {
                "this is bzip2-compressed, which blkpipe does not decompress: decompress it first (bzip2 -d)"
            }
            StreamKind::Empty => "the input is empty",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Patch => "patch stream",
            StreamKind::Hash => "hash stream",
            StreamKind::RangeList => "range list",
            StreamKind::HashText => "blkhash text",
            StreamKind::Xml => "XML",
            StreamKind::Zstd => "zstd",
            StreamKind::Lz4 => "lz4",
            StreamKind::Gzip => "gzip",
            StreamKind::Xz => "xz",
            StreamKind::Bzip2 => "bzip2",
            StreamKind::Empty => "empty input",
        })
    }
}

/// What a wrong first few bytes are, in words: the kind's advice, or the bytes shown as text
/// with escapes when nothing is recognised.
pub fn describe(head: &[u8]) -> String {
    match StreamKind::sniff(head) {
        Some(kind) => kind.advice().to_owned(),
        None => format!("it starts with \"{}\"", head.escape_ascii()),
    }
}

/// `OFFSET LENGTH` lines: digits, then blanks, then a digit.
fn looks_like_ranges(head: &[u8]) -> bool {
    let digits = head.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &head[digits..];
    let blanks = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    digits > 0
        && blanks > 0
        && (rest.len() == blanks || rest[blanks].is_ascii_digit())
        && head
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A `--digest` line (`xxh3-128:HEX  PATH`) or `blkhash --text` lines (`OFFSET HEX`, told
/// from a range list by a hex letter after the blank).
fn looks_like_hash_text(head: &[u8]) -> bool {
    let digits = head.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &head[digits..];
    let blanks = rest.iter().take_while(|b| **b == b' ').count();
    let hex = &rest[blanks..];
    head.starts_with(b"xxh3")
        || digits > 0
            && blanks == 1
            && hex.iter().all(u8::is_ascii_hexdigit)
            && hex.iter().any(|b| matches!(b, b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_kind() {
        let cases: &[(&[u8], StreamKind)] = &[
            (b"BLKPATCH\x01\x00", StreamKind::Patch),
            (b"BLKP", StreamKind::Patch),
            (b"BLKHASH\0\x01\x00", StreamKind::Hash),
            (b"# blkranges v1 size=1", StreamKind::RangeList),
            (b"0 4096\n10", StreamKind::RangeList),
            (b"1048576\t", StreamKind::RangeList),
            (b"4096 1a2b", StreamKind::HashText),
            (b"xxh3-128:0123", StreamKind::HashText),
            (b"<superblock", StreamKind::Xml),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], StreamKind::Zstd),
            (&[0x04, 0x22, 0x4d, 0x18, 0x64], StreamKind::Lz4),
            (&[0x1f, 0x8b, 8, 0], StreamKind::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], StreamKind::Xz),
            (b"BZh91AY", StreamKind::Bzip2),
            (b"", StreamKind::Empty),
        ];
        for (head, kind) in cases {
            assert_eq!(StreamKind::sniff(head), Some(*kind), "{head:?}");
        }
        for other in [&b"\x7fELF\x02\x01"[..], b"hello wo", b"12345678", b"BL"] {
            assert_eq!(StreamKind::sniff(other), None, "{other:?}");
        }
    }

    #[test]
    fn advice_names_the_tool() {
        assert_eq!(
            describe(b"BLKHASH\0"),
            "this is a hash stream (from blkhash): give it to blkdiff"
        );
        assert_eq!(
            describe(b"0 4096\n"),
            "this looks like a range list (from cowlist): give it to blkread-chunks"
        );
        assert_eq!(describe(b"\x7fELF"), "it starts with \"\\x7fELF\"");
    }
}
