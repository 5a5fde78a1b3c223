//! Property tests of the reply parsers (the `nbd_reply` fuzz target's functions, run by
//! `cargo test` where cargo-fuzz is not available): arbitrary bytes and mutated valid replies
//! through the decoders, a client talking to a server whose reply headers are mutated, and
//! the URI parser.
//! A mutated reply may fail or be accepted; it must never panic, hang, return wrong data as
//! good, or leave the connection usable after a fault.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use proptest::prelude::*;

use super::wire::*;
use super::{uri, Client};

fn chunk(extended: bool, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if extended {
        v.extend_from_slice(&EXT_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    } else {
        v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A valid reply chunk of one of the kinds the client decodes.
fn any_chunk(extended: bool) -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..5,
        any::<u64>(),
        prop::collection::vec((1u64..1 << 20, 0u64..4), 1..6),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<u32>(),
    )
        .prop_map(move |(which, cookie, extents, bytes, errno)| {
            let done = REPLY_FLAG_DONE;
            match which {
                0 => {
                    let mut p = 4096u64.to_be_bytes().to_vec();
                    p.extend_from_slice(&bytes);
                    p.push(1);
                    chunk(extended, 0, REPLY_OFFSET_DATA, cookie, &p)
                }
                1 => {
                    let mut p = 0u64.to_be_bytes().to_vec();
                    p.extend_from_slice(&512u32.to_be_bytes());
                    chunk(extended, done, REPLY_OFFSET_HOLE, cookie, &p)
                }
                2 => {
                    let mut p = 1u32.to_be_bytes().to_vec();
                    let kind = if extended {
                        p.extend_from_slice(&(extents.len() as u32).to_be_bytes());
                        for (len, flags) in &extents {
                            p.extend_from_slice(&len.to_be_bytes());
                            p.extend_from_slice(&flags.to_be_bytes());
                        }
                        REPLY_BLOCK_STATUS_EXT
                    } else {
                        for (len, flags) in &extents {
                            p.extend_from_slice(&(*len as u32).to_be_bytes());
                            p.extend_from_slice(&(*flags as u32).to_be_bytes());
                        }
                        REPLY_BLOCK_STATUS
                    };
                    chunk(extended, done, kind, cookie, &p)
                }
                3 => {
                    let msg = &bytes[..bytes.len().min(20)];
                    let mut p = errno.to_be_bytes().to_vec();
                    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                    p.extend_from_slice(msg);
                    p.extend_from_slice(&4096u64.to_be_bytes());
                    chunk(extended, done, REPLY_ERROR_OFFSET, cookie, &p)
                }
                _ => chunk(extended, done, REPLY_NONE, cookie, &[]),
            }
        })
}

/// Overwrite, insert or cut bytes of `v`; positions are taken modulo its length.
fn mutate(v: &mut Vec<u8>, edits: &[(u8, usize, u8)]) {
    for &(op, pos, byte) in edits {
        if v.is_empty() {
            return;
        }
        let pos = pos % v.len();
        match op % 4 {
            0 | 1 => v[pos] = byte,
            2 => v.insert(pos, byte),
            _ => v.truncate(pos),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every decoder on arbitrary bytes: an error or a value, never a panic.
    #[test]
    fn decoders_take_any_bytes(data in prop::collection::vec(any::<u8>(), 0..512), kind in any::<u16>()) {
        fuzz_replies(&data);
        let mut info = ExportInfo::default();
        let _ = decode_info(&data, &mut info);
        let _ = decode_meta_context(&data);
        let _ = decode_error_chunk(kind, &data);
        let mut out = Vec::new();
        if decode_block_status(kind, &data, 16, &mut out).is_ok() {
            prop_assert!(out.len() <= 16 && out.iter().all(|e| e.len > 0));
        }
        if data.len() >= 20 {
            let _ = decode_option_reply(data[..20].try_into().unwrap(), OPT_GO);
        }
        for extended in [false, true] {
            if data.len() >= 4 {
                if let Ok(n) = reply_header_len(u32::from_be_bytes(data[..4].try_into().unwrap()), extended) {
                    if data.len() >= n {
                        let _ = decode_reply_header(&data[..n], extended);
                    }
                }
            }
        }
    }

    /// Valid chunk sequences decode whole; mutated ones decode a prefix and never panic.
    #[test]
    fn valid_then_mutated_chunks(
        extended in any::<bool>(),
        chunks in prop::collection::vec(any_chunk(false), 1..8),
        ext_chunks in prop::collection::vec(any_chunk(true), 1..8),
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        let chunks = if extended { ext_chunks } else { chunks };
        let mut data = vec![extended as u8];
        for c in &chunks {
            data.extend_from_slice(c);
        }
        prop_assert_eq!(fuzz_replies(&data), chunks.len());
        mutate(&mut data, &edits);
        prop_assert!(fuzz_replies(&data) <= chunks.len() + data.len() / 16);
    }

    /// Block status round trip: what was encoded is what is decoded, within the limit.
    #[test]
    fn block_status_round_trip(extended in any::<bool>(), extents in prop::collection::vec((1u32.., any::<u32>()), 1..40), max in 1usize..50) {
        let mut p = 7u32.to_be_bytes().to_vec();
        let kind = if extended {
            p.extend_from_slice(&(extents.len() as u32).to_be_bytes());
            for (l, f) in &extents {
                p.extend_from_slice(&(*l as u64).to_be_bytes());
                p.extend_from_slice(&(*f as u64).to_be_bytes());
            }
            REPLY_BLOCK_STATUS_EXT
        } else {
            for (l, f) in &extents {
                p.extend_from_slice(&l.to_be_bytes());
                p.extend_from_slice(&f.to_be_bytes());
            }
            REPLY_BLOCK_STATUS
        };
        let mut out = Vec::new();
        match decode_block_status(kind, &p, max, &mut out) {
            Ok(id) => {
                prop_assert!(extents.len() <= max);
                prop_assert_eq!(id, 7);
                let want: Vec<Extent> = extents.iter().map(|&(l, f)| Extent { len: l as u64, flags: f as u64 }).collect();
                prop_assert_eq!(out, want);
            }
            Err(_) => prop_assert!(extents.len() > max),
        }
    }
}

const EXPORT_SIZE: u64 = 1 << 20;

fn truth(off: u64, len: usize) -> Vec<u8> {
    (off..off + len as u64)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

/// The reply to a read and the byte positions in it that a mutation may hit: headers and
/// lengths, not the payload bytes or data offsets (a server may lie about those undetectably).
fn read_reply(structured: bool, cookie: u64, off: u64, len: u32) -> (Vec<u8>, Vec<usize>) {
    let data = truth(off, len as usize);
    if !structured {
        let mut v = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        let header = (0..16).collect();
        v.extend_from_slice(&data);
        return (v, header);
    }
    // Data for the first half, then the second half again as data in a second chunk.
    let half = len as usize / 2;
    let mut v = Vec::new();
    let mut header = Vec::new();
    for (i, (start, end)) in [(0, half), (half, len as usize)].into_iter().enumerate() {
        let mut p = (off + start as u64).to_be_bytes().to_vec();
        p.extend_from_slice(&data[start..end]);
        let flags = if i == 1 { REPLY_FLAG_DONE } else { 0 };
        let at = v.len();
        // Magic, flags, type, a cookie byte and the length: the fields a lie is made of.
        header.extend([0, 3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19].map(|k| at + k));
        v.extend_from_slice(&chunk(false, flags, REPLY_OFFSET_DATA, cookie, &p));
    }
    (v, header)
}

/// Serve one client honestly up to NBD_OPT_GO, then answer reads with `edits` applied to
/// the reply headers of request number `victim`; close the connection when the client is
/// silent for 100 ms (it waits for a reply that a mutation swallowed).
fn serve(mut s: UnixStream, structured: bool, victim: usize, edits: Vec<(u8, usize, u8)>) {
    let mut hello = NBDMAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    let _ = s.write_all(&hello);
    let mut b = [0u8; 4];
    if s.read_exact(&mut b).is_err() {
        return;
    }
    let opt_reply = |s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]| {
        let mut v = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        let _ = s.write_all(&v);
    };
    loop {
        let mut h = [0u8; 16];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize];
        if s.read_exact(&mut d).is_err() {
            return;
        }
        match opt {
            OPT_STRUCTURED_REPLY if structured => opt_reply(&mut s, opt, REP_ACK, &[]),
            OPT_GO => {
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&EXPORT_SIZE.to_be_bytes());
                info.extend_from_slice(&(1u16 | TF_SEND_FLUSH).to_be_bytes());
                opt_reply(&mut s, opt, REP_INFO, &info);
                opt_reply(&mut s, opt, REP_ACK, &[]);
                break;
            }
            _ => opt_reply(&mut s, opt, REP_FLAG_ERROR | 1, &[]),
        }
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut n = 0;
    loop {
        let mut r = [0u8; 28];
        if s.read_exact(&mut r).is_err() {
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let kind = u16::from_be_bytes([r[6], r[7]]);
        let cookie = u64::from_be_bytes(r[8..16].try_into().unwrap());
        let off = u64::from_be_bytes(r[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(r[24..28].try_into().unwrap());
        if kind != CMD_READ {
            return;
        }
        let (mut v, header) = read_reply(structured, cookie, off, len);
        if n == victim {
            for &(op, pos, byte) in &edits {
                let at = header[pos % header.len()];
                if at >= v.len() {
                    continue;
                }
                match op % 3 {
                    0 | 1 => v[at] = byte,
                    _ => v.truncate(at),
                }
            }
        }
        n += 1;
        if s.write_all(&v).is_err() {
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// A client reading from a server whose reply headers are mutated: every read either
    /// returns the export's true bytes or fails, and after the first failure every read fails.
    #[test]
    fn client_survives_mutated_replies(
        structured in any::<bool>(),
        victim in 0usize..3,
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        // Removed when dropped, also when a property fails and returns early.
        let dir = tempfile::Builder::new().prefix("blkpipe-nbdprop-").tempdir().unwrap();
        let sock = dir.path().join("s");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                serve(s, structured, victim, edits);
            }
        });
        let u = uri::parse(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
        let client = Client::connect(&u, &[]).unwrap();
        let mut failed = false;
        for (i, off) in [4096u64, 65536, 300_000, 8192].into_iter().enumerate() {
            let mut buf = vec![0u8; 4096 + i * 512];
            match client.read(&mut buf, off) {
                Ok(()) => {
                    prop_assert!(!failed, "a read succeeded after a fault");
                    prop_assert!(buf == truth(off, buf.len()), "wrong data accepted at {}", off);
                }
                Err(_) => failed = true,
            }
        }
        drop(client);
        server.join().unwrap();
    }
}

/// Percent-encode every byte outside a small safe set.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    /// The URI parser on any text, and on NBD-looking text: a value or an error, no panic.
    #[test]
    fn uri_parser_takes_any_text(s in ".{0,80}", tail in "[a-z0-9:/?&=%#@\\[\\]+.-]{0,60}") {
        let _ = uri::parse(&s);
        for scheme in ["nbd://", "nbd+unix://", "nbds://", "nbd+vsock://"] {
            let _ = uri::parse(&format!("{scheme}{tail}"));
        }
    }

    /// Generated URIs parse back to what they were made of.
    #[test]
    fn uri_round_trip(host in "[a-z][a-z0-9.-]{0,20}", port in any::<u16>(), export in "\\PC{0,20}", socket in "/[a-z0-9 :%/]{1,30}") {
        let u = uri::parse(&format!("nbd://{host}:{port}/{}", encode(&export))).unwrap();
        prop_assert_eq!(u.endpoint, uri::Endpoint::Tcp(host.clone(), port));
        prop_assert_eq!(&u.export, &export);
        let u = uri::parse(&format!("nbd+unix:///{}?socket={}", encode(&export), encode(&socket))).unwrap();
        prop_assert_eq!(u.endpoint, uri::Endpoint::Unix(socket.into()));
        prop_assert_eq!(u.export, export);
    }
}
