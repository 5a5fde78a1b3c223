//! The NBD protocol's messages, encoded and decoded without I/O (so the parsers can be fuzzed).
//!
//! Numbers are the NBD protocol document's (`doc/proto.md` of the reference implementation);
//! everything is big-endian. Every length a server sends is checked against what the client
//! asked for before anything is allocated from it.

use super::NbdError;

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended request.
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended reply chunk.
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Options.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS`.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set in every error reply type.
pub const REP_FLAG_ERROR: u32 = 1 << 31;

/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// The server accepts `NBD_CMD_FLUSH`.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// The server accepts `NBD_CMD_TRIM`.
pub const TF_SEND_TRIM: u16 = 1 << 5;
/// The server accepts `NBD_CMD_WRITE_ZEROES`.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Several connections to the export see one another's writes and flushes.
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
/// The server accepts `NBD_CMD_FLAG_FAST_ZERO`.
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// Commands.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: `NBD_CMD_FLAG_NO_HOLE` (write zeroes, keep it allocated).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Reply chunk flag: the last chunk of this reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk types.
pub const REPLY_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
pub const REPLY_BLOCK_STATUS_EXT: u16 = 6;
/// Bit set in every error chunk type.
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
pub const REPLY_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT + 2;

/// The longest option reply payload accepted (strings are at most 4 KiB; a meta context
/// reply is a name plus 4 bytes).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The longest error message or non-data chunk accepted.
pub const MAX_SMALL_CHUNK: u64 = 64 << 10;

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Encode an option: `IHAVEOPT`, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// `NBD_OPT_GO`'s data: the export name and the info requests (block size).
pub fn go_data(export: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v
}

/// `NBD_OPT_SET_META_CONTEXT`'s data: the export name and the contexts asked for.
pub fn meta_context_data(export: &str, contexts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
    for c in contexts {
        v.extend_from_slice(&(c.len() as u32).to_be_bytes());
        v.extend_from_slice(c.as_bytes());
    }
    v
}

/// The fixed part of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// The reply type.
    pub reply: u32,
    /// Length of the data that follows.
    pub len: u32,
}

/// Decode the 20 bytes of an option reply header.
pub fn decode_option_reply(b: &[u8; 20], option: u32) -> Result<OptionReplyHeader, NbdError> {
    if be64(b) != OPT_REPLY_MAGIC {
        return Err(NbdError::protocol("option reply with a bad magic number"));
    }
    let h = OptionReplyHeader {
        option: be32(&b[8..]),
        reply: be32(&b[12..]),
        len: be32(&b[16..]),
    };
    if h.option != option {
        return Err(NbdError::protocol(format!(
            "reply to option {} while option {option} was sent",
            h.option
        )));
    }
    if h.len > MAX_OPTION_REPLY {
        return Err(NbdError::protocol(format!(
            "option reply of {} bytes (at most {MAX_OPTION_REPLY} expected)",
            h.len
        )));
    }
    Ok(h)
}

/// The name of an option error reply type.
pub fn rep_error_name(reply: u32) -> String {
    match reply & !REP_FLAG_ERROR {
        1 => "unsupported".into(),
        2 => "denied by policy".into(),
        3 => "invalid".into(),
        4 => "not supported on this platform".into(),
        5 => "TLS required".into(),
        6 => "unknown export".into(),
        7 => "server shutting down".into(),
        8 => "block size required".into(),
        9 => "too big".into(),
        10 => "extended headers required".into(),
        n => format!("error {n}"),
    }
}

/// What `NBD_INFO_*` replies to `NBD_OPT_GO` said about the export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum, preferred and maximum block size (0 when not sent).
    pub block: (u32, u32, u32),
}

/// Fold one `NBD_REP_INFO` payload into `info`; returns whether it was `NBD_INFO_EXPORT`.
pub fn decode_info(data: &[u8], info: &mut ExportInfo) -> Result<bool, NbdError> {
    if data.len() < 2 {
        return Err(NbdError::protocol("info reply shorter than its type"));
    }
    match be16(data) {
        INFO_EXPORT => {
            if data.len() != 12 {
                return Err(NbdError::protocol(format!(
                    "export info of {} bytes (12 expected)",
                    data.len()
                )));
            }
            info.size = be64(&data[2..]);
            info.flags = be16(&data[10..]);
            Ok(true)
        }
        INFO_BLOCK_SIZE => {
            if data.len() != 14 {
                return Err(NbdError::protocol(format!(
                    "block size info of {} bytes (14 expected)",
                    data.len()
                )));
            }
            let (min, pref, max) = (be32(&data[2..]), be32(&data[6..]), be32(&data[10..]));
            let pow2 = |x: u32| x.is_power_of_two();
            if !pow2(min) || min > 64 << 10 || !pow2(pref) || pref < min || max < pref {
                return Err(NbdError::protocol(format!(
                    "impossible block sizes: minimum {min}, preferred {pref}, maximum {max}"
                )));
            }
            info.block = (min, pref, max);
            Ok(false)
        }
        _ => Ok(false), // other info the client did not ask for: ignored, as the spec says
    }
}

/// Decode an `NBD_REP_META_CONTEXT` payload: (context id, name).
pub fn decode_meta_context(data: &[u8]) -> Result<(u32, String), NbdError> {
    if data.len() < 4 {
        return Err(NbdError::protocol("meta context reply shorter than its id"));
    }
    let name = String::from_utf8(data[4..].to_vec())
        .map_err(|_| NbdError::protocol("meta context name is not UTF-8"))?;
    Ok((be32(data), name))
}

/// One request to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The cookie the reply will carry.
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length (of the payload for a write).
    pub len: u64,
}

/// Encode a request header (28 bytes compact, 32 extended) into `out`.
pub fn encode_request(r: &Request, extended: bool, out: &mut Vec<u8>) {
    if extended {
        out.extend_from_slice(&EXT_REQUEST_MAGIC.to_be_bytes());
    } else {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    }
    out.extend_from_slice(&r.flags.to_be_bytes());
    out.extend_from_slice(&r.kind.to_be_bytes());
    out.extend_from_slice(&r.cookie.to_be_bytes());
    out.extend_from_slice(&r.offset.to_be_bytes());
    if extended {
        out.extend_from_slice(&r.len.to_be_bytes());
    } else {
        out.extend_from_slice(&(r.len as u32).to_be_bytes());
    }
}

/// A reply header of any of the three kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply: error and cookie; a successful read's data follows.
    Simple {
        /// Error number (0: success).
        error: u32,
        /// Cookie.
        cookie: u64,
    },
    /// Structured or extended chunk.
    Chunk {
        /// Chunk flags.
        flags: u16,
        /// Chunk type.
        kind: u16,
        /// Cookie.
        cookie: u64,
        /// Payload length.
        len: u64,
    },
}

/// The total header length of a reply with this magic (the first 4 bytes), or an error.
pub fn reply_header_len(magic: u32, extended: bool) -> Result<usize, NbdError> {
    match magic {
        SIMPLE_REPLY_MAGIC => Ok(16),
        STRUCTURED_REPLY_MAGIC if !extended => Ok(20),
        EXT_REPLY_MAGIC if extended => Ok(32),
        m => Err(NbdError::protocol(format!(
            "reply with magic {m:#010x} ({} headers were negotiated)",
            if extended { "extended" } else { "structured" }
        ))),
    }
}

/// Decode a whole reply header (the length [`reply_header_len`] gave, magic included).
pub fn decode_reply_header(b: &[u8], extended: bool) -> Result<ReplyHeader, NbdError> {
    if b.len() < 4 || reply_header_len(be32(b), extended)? != b.len() {
        return Err(NbdError::protocol("reply header of the wrong length"));
    }
    Ok(match be32(b) {
        SIMPLE_REPLY_MAGIC => ReplyHeader::Simple {
            error: be32(&b[4..]),
            cookie: be64(&b[8..]),
        },
        STRUCTURED_REPLY_MAGIC => ReplyHeader::Chunk {
            flags: be16(&b[4..]),
            kind: be16(&b[6..]),
            cookie: be64(&b[8..]),
            len: be32(&b[16..]) as u64,
        },
        _ => ReplyHeader::Chunk {
            flags: be16(&b[4..]),
            kind: be16(&b[6..]),
            cookie: be64(&b[8..]),
            len: be64(&b[24..]),
        },
    })
}

/// An error chunk's payload: (errno, message, offset if `NBD_REPLY_TYPE_ERROR_OFFSET`).
pub fn decode_error_chunk(kind: u16, p: &[u8]) -> Result<(u32, String, Option<u64>), NbdError> {
    if p.len() < 6 {
        return Err(NbdError::protocol("error chunk shorter than 6 bytes"));
    }
    let (errno, mlen) = (be32(p), be16(&p[4..]) as usize);
    let extra = if kind == REPLY_ERROR_OFFSET { 8 } else { 0 };
    if p.len() < 6 + mlen + extra {
        return Err(NbdError::protocol("error chunk shorter than its message"));
    }
    let msg = String::from_utf8_lossy(&p[6..6 + mlen]).into_owned();
    let off = (extra == 8).then(|| be64(&p[6 + mlen..]));
    Ok((errno, msg, off))
}

/// The name of an NBD error number.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM (not permitted)",
        5 => "EIO (I/O error)",
        12 => "ENOMEM (out of memory)",
        22 => "EINVAL (invalid request)",
        28 => "ENOSPC (no space left)",
        75 => "EOVERFLOW (request too large)",
        95 => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server shutting down)",
        _ => "unknown error",
    }
}

/// One extent of a block status reply: length and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Flags of the meta context (base:allocation: 1 hole, 2 zero; dirty bitmap: 1 dirty).
    pub flags: u64,
}

/// Decode a block status chunk (`NBD_REPLY_TYPE_BLOCK_STATUS` or `_EXT`): the context id and
/// its extents, appended to `out`. At most `max_extents` are accepted.
pub fn decode_block_status(
    kind: u16,
    p: &[u8],
    max_extents: usize,
    out: &mut Vec<Extent>,
) -> Result<u32, NbdError> {
    let (head, each) = if kind == REPLY_BLOCK_STATUS_EXT {
        (8, 16)
    } else {
        (4, 8)
    };
    if p.len() < head + each || (p.len() - head) % each != 0 {
        return Err(NbdError::protocol(format!(
            "block status chunk of {} bytes is not a whole number of extents",
            p.len()
        )));
    }
    let n = (p.len() - head) / each;
    if kind == REPLY_BLOCK_STATUS_EXT && be32(&p[4..]) as usize != n {
        return Err(NbdError::protocol(
            "block status chunk's extent count does not match its length",
        ));
    }
    if n > max_extents {
        return Err(NbdError::protocol(format!("block status with {n} extents")));
    }
    for d in p[head..].chunks_exact(each) {
        let e = if each == 16 {
            Extent {
                len: be64(d),
                flags: be64(&d[8..]),
            }
        } else {
            Extent {
                len: be32(d) as u64,
                flags: be32(&d[4..]) as u64,
            }
        };
        if e.len == 0 {
            return Err(NbdError::protocol("block status extent of length 0"));
        }
        out.push(e);
    }
    Ok(be32(p))
}

/// Fuzz body: decode arbitrary bytes as a stream of reply chunks the way the client does,
/// never allocating more than the lengths asked for. Returns the number of chunks accepted.
pub fn fuzz_replies(data: &[u8]) -> usize {
    let extended = data.first().is_some_and(|b| b & 1 == 1);
    let mut rest = data.get(1..).unwrap_or(&[]);
    let mut count = 0;
    while rest.len() >= 4 {
        let Ok(hlen) = reply_header_len(be32(rest), extended) else {
            break;
        };
        if rest.len() < hlen {
            break;
        }
        let Ok(h) = decode_reply_header(&rest[..hlen], extended) else {
            break;
        };
        rest = &rest[hlen..];
        count += 1;
        if let ReplyHeader::Chunk { kind, len, .. } = h {
            // The client asked for at most 64 KiB here.
            if len > MAX_SMALL_CHUNK.max(65536 + 8) || len as usize > rest.len() {
                break;
            }
            let p = &rest[..len as usize];
            rest = &rest[len as usize..];
            let mut ext = Vec::new();
            let _ = match kind {
                REPLY_BLOCK_STATUS | REPLY_BLOCK_STATUS_EXT => {
                    decode_block_status(kind, p, 1024, &mut ext).map(|_| ())
                }
                k if k & REPLY_TYPE_ERROR_BIT != 0 => decode_error_chunk(k, p).map(|_| ()),
                _ => Ok(()),
            };
        }
    }
    let mut info = ExportInfo::default();
    let _ = decode_info(rest, &mut info);
    let _ = decode_meta_context(rest);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_sizes() {
        let r = Request {
            flags: 0,
            kind: CMD_READ,
            cookie: 7,
            offset: 4096,
            len: 512,
        };
        let mut v = Vec::new();
        encode_request(&r, false, &mut v);
        assert_eq!(v.len(), 28);
        assert_eq!(&v[..4], &REQUEST_MAGIC.to_be_bytes());
        v.clear();
        encode_request(&r, true, &mut v);
        assert_eq!(v.len(), 32);
        assert_eq!(be64(&v[24..]), 512);
    }

    #[test]
    fn reply_headers() {
        let mut b = Vec::new();
        b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        b.extend_from_slice(&REPLY_OFFSET_DATA.to_be_bytes());
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&100u32.to_be_bytes());
        assert_eq!(
            decode_reply_header(&b, false).unwrap(),
            ReplyHeader::Chunk {
                flags: 1,
                kind: 1,
                cookie: 9,
                len: 100
            }
        );
        assert!(
            decode_reply_header(&b, true).is_err(),
            "structured after extended"
        );
        assert!(reply_header_len(0xdead_beef, false).is_err());
    }

    #[test]
    fn block_status_checks_lengths() {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&4096u32.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        let mut out = Vec::new();
        assert_eq!(
            decode_block_status(REPLY_BLOCK_STATUS, &p, 10, &mut out).unwrap(),
            1
        );
        assert_eq!(
            out,
            vec![Extent {
                len: 4096,
                flags: 1
            }]
        );
        p.push(0);
        assert!(decode_block_status(REPLY_BLOCK_STATUS, &p, 10, &mut out).is_err());
        let mut zero = 1u32.to_be_bytes().to_vec();
        zero.extend_from_slice(&[0; 8]);
        assert!(decode_block_status(REPLY_BLOCK_STATUS, &zero, 10, &mut out).is_err());
    }

    #[test]
    fn info_rejects_bad_block_sizes() {
        let mut i = ExportInfo::default();
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for x in [512u32, 4096, 1 << 25] {
            d.extend_from_slice(&x.to_be_bytes());
        }
        decode_info(&d, &mut i).unwrap();
        assert_eq!(i.block, (512, 4096, 1 << 25));
        d[2..6].copy_from_slice(&3u32.to_be_bytes());
        assert!(decode_info(&d, &mut i).is_err());
    }

    #[test]
    fn fuzz_seeds_decode() {
        let seed = include_bytes!("../../../../fuzz/corpus/nbd_reply/seed-structured");
        assert_eq!(fuzz_replies(seed), 4);
        let seed = include_bytes!("../../../../fuzz/corpus/nbd_reply/seed-extended");
        assert_eq!(fuzz_replies(seed), 1);
        let mut out = Vec::new();
        let p = &seed[33..];
        assert_eq!(
            decode_block_status(REPLY_BLOCK_STATUS_EXT, p, 4, &mut out).unwrap(),
            1
        );
        assert_eq!(
            out,
            vec![Extent {
                len: 65536,
                flags: 1
            }]
        );
    }

    #[test]
    fn fuzz_body_survives_garbage() {
        for seed in 0u64..2000 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let data: Vec<u8> = (0..(seed % 97) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            fuzz_replies(&data);
        }
    }
}
