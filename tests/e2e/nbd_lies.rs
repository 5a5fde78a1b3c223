//! An NBD server that lies, in a thread of the test on a Unix socket: it negotiates honestly,
//! answers the first requests honestly, then sends a short read, a wrong cookie, an oversized
//! chunk, an error chunk or a failed write. The client must fail with one clear error, and
//! blkpatch must write nothing after the fault.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::{self, assert_stderr_has, bin, pattern, stderr};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lie {
    ShortRead,
    WrongCookie,
    Oversized,
    ErrorChunk,
    DataOutsideRequest,
    FailWrite,
    HugeOptionReply,
}

const SIZE: u64 = 8 << 20;

/// The requests the server received: (command, offset, length).
type Log = Arc<Mutex<Vec<(u16, u64, u32)>>>;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn opt_reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) {
    let mut v = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    s.write_all(&v).unwrap();
}

fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8], len: Option<u32>) -> Vec<u8> {
    let mut v = 0x668e_33efu32.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&len.unwrap_or(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn simple(error: u32, cookie: u64) -> Vec<u8> {
    let mut v = 0x6744_6698u32.to_be_bytes().to_vec();
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v
}

/// Serve one connection; `log` gets (command, offset, length) of every request.
fn serve(mut s: UnixStream, lie: Lie, honest: usize, log: Log) {
    let data = pattern(SIZE as usize, 5);
    let mut hello = 0x4e42_444d_4147_4943u64.to_be_bytes().to_vec();
    hello.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    hello.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&hello).unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    loop {
        let mut h = [0u8; 16];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let (opt, len) = (be32(&h[8..]), be32(&h[12..]));
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).unwrap();
        match opt {
            8 if lie == Lie::HugeOptionReply => {
                let mut v = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                v.extend_from_slice(&8u32.to_be_bytes());
                v.extend_from_slice(&1u32.to_be_bytes());
                v.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
                let _ = s.write_all(&v);
                return;
            }
            8 => opt_reply(&mut s, opt, 1, &[]),
            7 => {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&SIZE.to_be_bytes());
                // HAS_FLAGS, SEND_FLUSH, SEND_WRITE_ZEROES
                info.extend_from_slice(&(1u16 | 1 << 2 | 1 << 6).to_be_bytes());
                opt_reply(&mut s, opt, 3, &info);
                opt_reply(&mut s, opt, 1, &[]);
                break;
            }
            _ => opt_reply(&mut s, opt, 1 << 31 | 1, &[]), // unsupported (extended headers)
        }
    }
    let mut n = 0;
    loop {
        let mut r = [0u8; 28];
        if s.read_exact(&mut r).is_err() {
            return;
        }
        let (kind, cookie, off, len) = (
            u16::from_be_bytes([r[6], r[7]]),
            be64(&r[8..]),
            be64(&r[16..]),
            be32(&r[24..]),
        );
        log.lock().unwrap().push((kind, off, len));
        if kind == 1 {
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).unwrap();
        }
        if kind == 2 {
            return;
        }
        n += 1;
        let lying = n > honest;
        let out = match (kind, lying, lie) {
            (0, true, Lie::ShortRead) => {
                let mut p = off.to_be_bytes().to_vec();
                p.extend_from_slice(&data[off as usize..(off + len as u64 / 2) as usize]);
                chunk(1, 1, cookie, &p, None)
            }
            (0, true, Lie::WrongCookie) => simple(0, cookie + 1000),
            (0, true, Lie::Oversized) => chunk(1, 1, cookie, &[], Some(len + (64 << 20))),
            (0, true, Lie::ErrorChunk) => {
                let mut p = 5u32.to_be_bytes().to_vec();
                p.extend_from_slice(&13u16.to_be_bytes());
                p.extend_from_slice(b"disk on fire!");
                chunk(1, 1 << 15 | 1, cookie, &p, None)
            }
            (0, true, Lie::DataOutsideRequest) => {
                let mut p = (off + 4096).to_be_bytes().to_vec();
                p.extend_from_slice(&data[off as usize..(off + len as u64) as usize]);
                chunk(1, 1, cookie, &p, None)
            }
            (0, _, _) => {
                let mut p = off.to_be_bytes().to_vec();
                p.extend_from_slice(&data[off as usize..(off + len as u64) as usize]);
                chunk(1, 1, cookie, &p, None)
            }
            (1 | 6, true, Lie::FailWrite) => simple(5, cookie),
            _ => simple(0, cookie),
        };
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// A lying server on a socket in `dir`; returns its URI and the request log.
fn liar(dir: &Path, lie: Lie, honest: usize) -> (String, Log) {
    let sock = dir.join(format!("{lie:?}.sock"));
    let l = UnixListener::bind(&sock).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let log = Arc::clone(&log2);
            std::thread::spawn(move || serve(s, lie, honest, log));
        }
    });
    (format!("nbd+unix:///?socket={}", sock.display()), log)
}

/// An error and its sources, as the tools print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

#[test]
fn lies_in_reads_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (lie, says) in [
        (
            Lie::ShortRead,
            "read reply that ends at 2048 bytes of the request of 4096 bytes",
        ),
        (Lie::WrongCookie, "which no request is waiting for"),
        (
            Lie::Oversized,
            "with 67112960 bytes to a request of 4096 bytes",
        ),
        (
            Lie::ErrorChunk,
            "EIO (I/O error) on the request of 4096 bytes at offset 8192: disk on fire!",
        ),
        (Lie::DataOutsideRequest, "outside the request"),
    ] {
        let (uri, _) = liar(dir.path(), lie, 2);
        let dev = blkpipe_dev::Device::open_nbd(&uri, &[], false).unwrap();
        let mut buf = vec![0u8; 4096];
        for i in 0..2 {
            dev.read_at(&mut buf, i * 4096).unwrap();
            assert!(buf[..] == pattern(SIZE as usize, 5)[i as usize * 4096..][..4096]);
        }
        let r = dev.read_at(&mut buf, 8192);
        let e = chain(&r.expect_err(&format!("{lie:?}")));
        assert!(e.contains(says), "{lie:?}: {e}");
        // The fault is sticky: nothing more goes through this connection.
        assert!(dev.read_at(&mut buf, 0).is_err(), "{lie:?}: still usable");
    }
}

#[test]
fn blkread_chunks_stops_at_the_first_lie() {
    let dir = tempfile::tempdir().unwrap();
    for lie in [Lie::ShortRead, Lie::Oversized, Lie::ErrorChunk] {
        let (uri, _) = liar(dir.path(), lie, 3);
        let o = common::run("blkread-chunks", &[&uri], b"0 8388608\n");
        assert_eq!(o.status.code(), Some(4), "{lie:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with("blkread-chunks: nbd+unix://") && e.lines().count() == 1,
            "{e}"
        );
        // Only what was read before the lie reached stdout: no end record.
        assert!(
            o.stdout.len() < 4 << 20,
            "{lie:?}: {} bytes out",
            o.stdout.len()
        );
    }
    let (uri, _) = liar(dir.path(), Lie::HugeOptionReply, 0);
    let o = common::run("blkhash", &[&uri], b"");
    assert_eq!(o.status.code(), Some(4));
    assert_stderr_has(&o, "option reply of 4294967280 bytes");
}

#[test]
fn blkpatch_writes_nothing_after_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let mut data = pattern(SIZE as usize, 9);
    data[2 << 20..3 << 20].fill(0);
    std::fs::write(&src, &data).unwrap();
    let patch = common::run("blkread-chunks", &[src.to_str().unwrap()], b"0 8388608\n");
    assert!(patch.status.success());
    let (uri, log) = liar(d, Lie::FailWrite, 3);
    let mut child = Command::new(bin("blkpatch"))
        .arg(&uri)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(&patch.stdout);
    drop(input);
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(
        e.contains("EIO (I/O error)") && e.lines().count() == 1,
        "{e}"
    );
    let log = log.lock().unwrap();
    let writes: Vec<_> = log.iter().filter(|r| r.0 == 1 || r.0 == 6).collect();
    assert!(writes.len() >= 4, "{log:?}");
    // Requests already in flight with the failed one may complete; none is sent after its reply.
    let failed = log.iter().position(|r| r.0 == 1 || r.0 == 6).unwrap() + 3;
    let after: Vec<_> = log[failed + 1..].iter().filter(|r| r.0 != 2).collect();
    assert!(
        after.len() < 8,
        "requests after the failed write: {after:?}"
    );
    assert!(
        !log.iter().any(|r| r.0 == 3),
        "no flush after a failed write: {log:?}"
    );
}
