//! The NBD connection: handshake, then requests from any number of threads.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use super::handshake::{handshake, Stream};
use super::uri::{Endpoint, NbdUri};
use super::wire::{self, ExportInfo, Extent, ReplyHeader, Request};
use super::NbdError;

/// The largest payload sent or accepted when the server names no maximum (the protocol's
/// recommendation).
const DEFAULT_MAX_PAYLOAD: u64 = 32 << 20;
/// Large reads and writes are split into requests of at most this many bytes ...
const PIECE: u64 = 1 << 20;
/// ... of which at most this many are in flight for one call.
const WINDOW: usize = 8;

/// One request of a bulk transfer: read into these bytes, or write these.
enum Piece<'d> {
    Read(&'d mut [u8]),
    Write(&'d [u8]),
}
/// How long the handshake may wait for the server.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long the handshake of the optional second connection may take before the client
/// makes do with one.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The most extents accepted in one block status chunk.
const MAX_EXTENTS: usize = 1 << 16;

/// A meta context the export agreed to, by the id it gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextId(pub u32);

/// A request waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: u16,
    offset: u64,
    len: u64,
}

#[derive(Debug, Default)]
struct Shared {
    /// The read side, held by no one while a thread reads a reply.
    reader: Option<BufReader<Stream>>,
    /// Requests sent and not yet wholly answered.
    inflight: HashMap<u64, Pending>,
    /// Chunks read by a thread for another thread's request.
    parked: HashMap<u64, Vec<(ReplyHeader, Vec<u8>)>>,
    /// The first fault: the connection is unusable after it.
    fault: Option<NbdError>,
}

/// An open connection to one export.
#[derive(Debug)]
pub struct Client {
    writer: Mutex<Stream>,
    shared: Mutex<Shared>,
    cv: Condvar,
    info: ExportInfo,
    structured: bool,
    extended: bool,
    contexts: Vec<(ContextId, String)>,
    next_cookie: AtomicU64,
    uri: NbdUri,
    /// Calls of [`Client::read`] under way on this connection.
    active: AtomicUsize,
    /// A second connection for reads, opened at the first bulk read that finds this one busy
    /// when the server allows several (`NBD_FLAG_CAN_MULTI_CONN`); `None` if it could not.
    peer: OnceLock<Option<Box<Client>>>,
}

/// One request of a call, as its owner tracks it.
struct Op<'a> {
    cookie: u64,
    p: Pending,
    buf: &'a mut [u8],
    covered: Vec<(u64, u64)>,
    ctx: u32,
    extents: Vec<Extent>,
    done: bool,
    error: Option<NbdError>,
}

pub(super) fn io_err(what: &str, e: io::Error) -> NbdError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        NbdError::Io(format!("{what}: the server closed the connection"))
    } else {
        NbdError::Io(format!("{what}: {e}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connect to `uri`, negotiate, and ask for the meta contexts `contexts` (for example
    /// `base:allocation`, `qemu:dirty-bitmap:b1`); each one the server does not agree to is an
    /// error.
    pub fn connect(uri: &NbdUri, contexts: &[&str]) -> Result<Client, NbdError> {
        Self::connect_within(uri, contexts, HANDSHAKE_TIMEOUT)
    }

    fn connect_within(
        uri: &NbdUri,
        contexts: &[&str],
        timeout: std::time::Duration,
    ) -> Result<Client, NbdError> {
        let mut s = match &uri.endpoint {
            Endpoint::Unix(p) => Stream::Unix(
                UnixStream::connect(p)
                    .map_err(|e| NbdError::Io(format!("connect to {}: {e}", p.display())))?,
            ),
            Endpoint::Tcp(h, port) => {
                let t = TcpStream::connect((h.as_str(), *port))
                    .map_err(|e| NbdError::Io(format!("connect to {h}:{port}: {e}")))?;
                let _ = t.set_nodelay(true);
                Stream::Tcp(t)
            }
        };
        // A server that accepted the connection but serves one client at a time (qemu-nbd
        // without -e) never greets a second one: say so instead of waiting forever.
        s.set_read_timeout(Some(timeout))
            .map_err(|e| io_err("socket", e))?;
        let hs = handshake(&mut s, &uri.export, contexts).map_err(|e| match e {
            NbdError::Io(m) if m.contains("timed out") || m.contains("temporarily unavailable") => {
                NbdError::Io(format!(
                    "no answer from the server within {} s during the handshake (qemu-nbd serves one client at a time unless started with -e N)",
                    timeout.as_secs()
                ))
            }
            e => e,
        })?;
        s.set_read_timeout(None).map_err(|e| io_err("socket", e))?;
        let writer = s.try_clone().map_err(|e| io_err("socket", e))?;
        Ok(Client {
            writer: Mutex::new(writer),
            shared: Mutex::new(Shared {
                reader: Some(BufReader::with_capacity(64 << 10, s)),
                ..Shared::default()
            }),
            cv: Condvar::new(),
            info: hs.info,
            structured: hs.structured,
            extended: hs.extended,
            contexts: hs.contexts,
            next_cookie: AtomicU64::new(1),
            uri: uri.clone(),
            active: AtomicUsize::new(0),
            peer: OnceLock::new(),
        })
    }

    /// Whether the server allows several connections to the export (then bulk reads from
    /// several threads use two).
    pub fn can_multi_conn(&self) -> bool {
        self.info.flags & wire::TF_CAN_MULTI_CONN != 0
    }

    /// How many connections this client has open (2 once a second one serves reads).
    pub fn connections(&self) -> usize {
        1 + self.peer.get().is_some_and(|p| p.is_some()) as usize
    }

    /// The second connection, opened on first use; one that does not negotiate quickly or
    /// sees a different export is not used.
    fn peer(&self) -> Option<&Client> {
        self.peer
            .get_or_init(|| {
                let c = Client::connect_within(&self.uri, &[], PEER_TIMEOUT).ok()?;
                let same = c.info.size == self.info.size
                    && c.info.flags == self.info.flags
                    && c.info.block == self.info.block;
                same.then(|| Box::new(c))
            })
            .as_deref()
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Whether the export refuses writes.
    pub fn read_only(&self) -> bool {
        self.info.flags & wire::TF_READ_ONLY != 0
    }

    /// Whether extended headers were negotiated (64-bit lengths).
    pub fn extended_headers(&self) -> bool {
        self.extended
    }

    /// The smallest block the server accepts unaligned requests below (1 when it said none).
    pub fn min_block(&self) -> u64 {
        (self.info.block.0 as u64).max(1)
    }

    /// The largest payload of one request.
    pub fn max_payload(&self) -> u64 {
        match self.info.block.2 {
            0 => DEFAULT_MAX_PAYLOAD,
            m => (m as u64).min(DEFAULT_MAX_PAYLOAD),
        }
    }

    /// The id of a meta context asked for at connection time.
    pub fn context(&self, name: &str) -> Option<ContextId> {
        self.contexts.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    fn fault(&self) -> Option<NbdError> {
        lock(&self.shared).fault.clone()
    }

    fn poison(&self, e: NbdError) -> NbdError {
        let mut st = lock(&self.shared);
        let first = st.fault.get_or_insert(e).clone();
        drop(st);
        self.cv.notify_all();
        first
    }

    /// Send one request (with its payload for a write) and register it.
    fn send(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> Result<u64, NbdError> {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = lock(&self.shared);
            if let Some(f) = &st.fault {
                return Err(f.clone());
            }
            st.inflight.insert(cookie, Pending { kind, offset, len });
        }
        let mut head = Vec::with_capacity(32);
        let req = Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        };
        wire::encode_request(&req, self.extended, &mut head);
        let mut w = lock(&self.writer);
        let r = w.write_all(&head).and_then(|()| w.write_all(data));
        drop(w);
        r.map_err(|e| self.poison(io_err("send request", e)))?;
        Ok(cookie)
    }

    /// Wait until every op has its whole reply; the first error wins.
    fn wait(&self, ops: &mut [Op<'_>]) -> Result<(), NbdError> {
        loop {
            let mut st = lock(&self.shared);
            let mut parked = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if let Some(chunks) = st.parked.remove(&op.cookie) {
                    parked.push((i, chunks));
                }
            }
            if !parked.is_empty() {
                drop(st);
                for (i, chunks) in parked {
                    for (h, payload) in chunks {
                        if let Err(e) = apply(&mut ops[i], h, &mut payload.as_slice(), self) {
                            return Err(self.poison(e));
                        }
                    }
                }
                continue;
            }
            // After a fault nothing is trusted, not even replies that completed before it.
            if let Some(f) = &st.fault {
                return Err(f.clone());
            }
            if ops.iter().all(|o| o.done) {
                drop(st);
                if let Some(e) = ops.iter_mut().find_map(|o| o.error.take()) {
                    return Err(self.poison(e));
                }
                return Ok(());
            }
            if let Some(mut rd) = st.reader.take() {
                drop(st);
                let r = self.read_one(&mut rd, ops);
                let mut st = lock(&self.shared);
                st.reader = Some(rd);
                if let Err(e) = r {
                    st.fault.get_or_insert(e);
                }
                drop(st);
                self.cv.notify_all();
                continue;
            }
            drop(self.cv.wait(st).unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Read one reply header and its payload: into one of `ops`, or parked for its owner.
    fn read_one(&self, rd: &mut BufReader<Stream>, ops: &mut [Op<'_>]) -> Result<(), NbdError> {
        let mut head = [0u8; 32];
        rd.read_exact(&mut head[..4])
            .map_err(|e| io_err("read reply", e))?;
        let magic = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
        let hlen = wire::reply_header_len(magic, self.extended)?;
        rd.read_exact(&mut head[4..hlen])
            .map_err(|e| io_err("read reply", e))?;
        let h = wire::decode_reply_header(&head[..hlen], self.extended)?;
        let (cookie, last) = match h {
            ReplyHeader::Simple { cookie, .. } => (cookie, true),
            ReplyHeader::Chunk { cookie, flags, .. } => {
                (cookie, flags & wire::REPLY_FLAG_DONE != 0)
            }
        };
        let p = {
            let mut st = lock(&self.shared);
            let p = *st.inflight.get(&cookie).ok_or_else(|| {
                NbdError::protocol(format!(
                    "reply for cookie {cookie}, which no request is waiting for"
                ))
            })?;
            if last {
                st.inflight.remove(&cookie);
            }
            p
        };
        let len = self.payload_len(&h, &p)?;
        if let Some(op) = ops.iter_mut().find(|o| o.cookie == cookie) {
            let mut take = rd.take(len);
            apply(op, h, &mut take, self)?;
            if take.limit() != 0 {
                return Err(NbdError::protocol("reply payload longer than its contents"));
            }
            return Ok(());
        }
        let mut payload = vec![0u8; len as usize];
        rd.read_exact(&mut payload)
            .map_err(|e| io_err("read reply", e))?;
        lock(&self.shared)
            .parked
            .entry(cookie)
            .or_default()
            .push((h, payload));
        Ok(())
    }

    /// The payload length of a reply, checked against the request it answers.
    fn payload_len(&self, h: &ReplyHeader, p: &Pending) -> Result<u64, NbdError> {
        match *h {
            ReplyHeader::Simple { error, .. } => {
                if error == 0 && p.kind == wire::CMD_READ {
                    if self.structured {
                        return Err(NbdError::protocol("simple reply with data to a read after structured replies were negotiated"));
                    }
                    Ok(p.len)
                } else if error == 0 && p.kind == wire::CMD_BLOCK_STATUS {
                    Err(NbdError::protocol("simple reply to a block status request"))
                } else {
                    Ok(0)
                }
            }
            ReplyHeader::Chunk {
                kind, len, flags, ..
            } => {
                if !self.structured {
                    return Err(NbdError::protocol(
                        "structured reply chunk that was not negotiated",
                    ));
                }
                let ok = match kind {
                    wire::REPLY_NONE => len == 0 && flags & wire::REPLY_FLAG_DONE != 0,
                    wire::REPLY_OFFSET_DATA => {
                        p.kind == wire::CMD_READ && len > 8 && len - 8 <= p.len
                    }
                    wire::REPLY_OFFSET_HOLE => p.kind == wire::CMD_READ && len == 12,
                    wire::REPLY_BLOCK_STATUS => {
                        p.kind == wire::CMD_BLOCK_STATUS
                            && !self.extended
                            && len <= 4 + 8 * MAX_EXTENTS as u64
                    }
                    wire::REPLY_BLOCK_STATUS_EXT => {
                        p.kind == wire::CMD_BLOCK_STATUS
                            && self.extended
                            && len <= 8 + 16 * MAX_EXTENTS as u64
                    }
                    k if k & wire::REPLY_TYPE_ERROR_BIT != 0 => len <= wire::MAX_SMALL_CHUNK,
                    _ => false,
                };
                if !ok {
                    return Err(NbdError::protocol(format!(
                        "reply chunk of type {kind} with {len} bytes to a request of {} bytes at offset {} (command {})",
                        p.len, p.offset, p.kind
                    )));
                }
                Ok(len)
            }
        }
    }

    fn op<'a>(
        &self,
        cookie: u64,
        kind: u16,
        offset: u64,
        len: u64,
        buf: &'a mut [u8],
        ctx: u32,
    ) -> Op<'a> {
        Op {
            cookie,
            p: Pending { kind, offset, len },
            buf,
            covered: Vec::new(),
            ctx,
            extents: Vec::new(),
            done: false,
            error: None,
        }
    }

    /// Read `buf.len()` bytes at `offset` (which must lie within the export). A bulk read
    /// that finds another thread reading goes over a second connection when the server
    /// allows several; a fault there poisons this connection too.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        let busy = self.active.fetch_add(1, Ordering::SeqCst) > 0;
        let peer = if busy && buf.len() as u64 >= PIECE && self.can_multi_conn() {
            self.peer()
        } else {
            None
        };
        // A read is counted on the connection it goes over, so two reader threads settle on
        // one connection each: a reply is then read by the thread that waits for it, into
        // its buffer, not parked by the other thread (a zeroed buffer and one more copy).
        let r = match (peer, self.fault()) {
            (_, Some(f)) => Err(f),
            (Some(peer), None) => {
                self.active.fetch_sub(1, Ordering::SeqCst);
                peer.active.fetch_add(1, Ordering::SeqCst);
                let r = peer.read_here(buf, offset).map_err(|e| self.poison(e));
                peer.active.fetch_sub(1, Ordering::SeqCst);
                return r;
            }
            (None, None) => self.read_here(buf, offset),
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// [`Client::read`] on this connection.
    fn read_here(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        let end = offset + buf.len() as u64;
        if let Some((a, b)) = self.blocks_around(offset, end) {
            let mut tmp = vec![0u8; (b - a) as usize];
            self.read_here(&mut tmp, a)?;
            buf.copy_from_slice(&tmp[(offset - a) as usize..(end - a) as usize]);
            return Ok(());
        }
        let pieces = buf.chunks_mut(self.piece_len()).map(Piece::Read);
        self.in_flight(offset, pieces)
    }

    /// `a..b`, the whole blocks around `offset..end`, if that range is not whole blocks.
    fn blocks_around(&self, offset: u64, end: u64) -> Option<(u64, u64)> {
        let min = self.min_block();
        (offset % min != 0 || end % min != 0).then(|| (offset / min * min, end.div_ceil(min) * min))
    }

    /// The bytes of one read or write request of a bulk transfer.
    fn piece_len(&self) -> usize {
        PIECE.min(self.max_payload()).max(self.min_block()) as usize
    }

    /// Send the requests of `pieces`, consecutive from `offset`, keeping up to [`WINDOW`] of
    /// them in flight, and wait for all of them.
    fn in_flight<'d>(
        &self,
        offset: u64,
        pieces: impl Iterator<Item = Piece<'d>>,
    ) -> Result<(), NbdError> {
        let mut at = offset;
        let mut pieces = pieces.peekable();
        while pieces.peek().is_some() {
            let mut ops = Vec::with_capacity(WINDOW);
            for piece in pieces.by_ref().take(WINDOW) {
                let (kind, payload, into): (u16, &[u8], &mut [u8]) = match piece {
                    Piece::Read(into) => (wire::CMD_READ, &[], into),
                    Piece::Write(payload) => (wire::CMD_WRITE, payload, &mut []),
                };
                let len = (payload.len() + into.len()) as u64;
                let c = self.send(kind, 0, at, len, payload)?;
                ops.push(self.op(c, kind, at, len, into, 0));
                at += len;
            }
            self.wait(&mut ops)?;
        }
        Ok(())
    }

    /// Write all of `data` at `offset`.
    pub fn write(&self, data: &[u8], offset: u64) -> Result<(), NbdError> {
        self.writable()?;
        let end = offset + data.len() as u64;
        if let Some((a, b)) = self.blocks_around(offset, end) {
            // Read, modify, write the blocks around an unaligned write.
            let mut tmp = vec![0u8; (b - a) as usize];
            self.read(&mut tmp, a)?;
            tmp[(offset - a) as usize..(end - a) as usize].copy_from_slice(data);
            return self.write(&tmp, a);
        }
        let pieces = data.chunks(self.piece_len()).map(Piece::Write);
        self.in_flight(offset, pieces)
    }

    fn writable(&self) -> Result<(), NbdError> {
        if self.read_only() {
            return Err(NbdError::Unsupported("the export is read-only".into()));
        }
        Ok(())
    }

    /// Whether the server takes `NBD_CMD_WRITE_ZEROES`.
    pub fn can_zero(&self) -> bool {
        self.info.flags & wire::TF_SEND_WRITE_ZEROES != 0
    }

    /// Whether the server takes `NBD_CMD_TRIM`.
    pub fn can_trim(&self) -> bool {
        self.info.flags & wire::TF_SEND_TRIM != 0
    }

    /// A command without payload over `offset..offset+len`, split at what one header can
    /// carry; unaligned edges are written as zeros by the caller's choice (`edges`).
    fn ranged(&self, kind: u16, flags: u16, offset: u64, len: u64) -> Result<(), NbdError> {
        let min = self.min_block();
        let limit = if self.extended {
            1 << 30
        } else {
            (u32::MAX as u64) / min * min
        };
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let mut ops = Vec::with_capacity(WINDOW);
            while at < end && ops.len() < WINDOW {
                let n = (end - at).min(limit);
                let c = self.send(kind, flags, at, n, &[])?;
                ops.push(self.op(c, kind, at, n, &mut [], 0));
                at += n;
            }
            self.wait(&mut ops)?;
        }
        Ok(())
    }

    /// Make `offset..offset+len` read as zeros: `NBD_CMD_WRITE_ZEROES` (with `NO_HOLE` unless
    /// `may_punch`), or written zeros where the server has no such command. Unaligned edges
    /// are written as data.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_punch: bool) -> Result<(), NbdError> {
        self.writable()?;
        let min = self.min_block();
        let end = offset + len;
        let (a, b) = (offset.div_ceil(min) * min, end / min * min);
        if !self.can_zero() || a >= b {
            return self.write_zero_bytes(offset, end);
        }
        self.write_zero_bytes(offset, a)?;
        let flags = if may_punch { 0 } else { wire::CMD_FLAG_NO_HOLE };
        self.ranged(wire::CMD_WRITE_ZEROES, flags, a, b - a)?;
        self.write_zero_bytes(b, end)
    }

    fn write_zero_bytes(&self, mut at: u64, end: u64) -> Result<(), NbdError> {
        let zeros = vec![0u8; (end - at).min(PIECE) as usize];
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            self.write(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }

    /// `NBD_CMD_TRIM` over the aligned part of the range (the data there need not read as
    /// zeros afterwards).
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.writable()?;
        if !self.can_trim() {
            return Err(NbdError::Unsupported(
                "the export does not take trim requests".into(),
            ));
        }
        let min = self.min_block();
        let (a, b) = (offset.div_ceil(min) * min, (offset + len) / min * min);
        if a < b {
            self.ranged(wire::CMD_TRIM, 0, a, b - a)?;
        }
        Ok(())
    }

    /// `NBD_CMD_FLUSH`: everything written so far is on stable storage when this returns
    /// (a no-op for a server that does not take flushes, whose writes are then stable).
    pub fn flush(&self) -> Result<(), NbdError> {
        if let Some(f) = self.fault() {
            return Err(f);
        }
        if self.info.flags & wire::TF_SEND_FLUSH == 0 {
            return Ok(());
        }
        let c = self.send(wire::CMD_FLUSH, 0, 0, 0, &[])?;
        self.wait(&mut [self.op(c, wire::CMD_FLUSH, 0, 0, &mut [], 0)])
    }

    /// The extents of meta context `ctx` from `offset` on, covering at most `len` bytes (at
    /// least one extent; fewer bytes than asked when the server stops early). Extents are
    /// clipped to the range asked for.
    pub fn block_status(
        &self,
        ctx: ContextId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        let min = self.min_block();
        let limit = if self.extended {
            1 << 40
        } else {
            (u32::MAX as u64) / min * min
        };
        let len = len.min(limit).min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let c = self.send(wire::CMD_BLOCK_STATUS, 0, offset, len, &[])?;
        let mut ops = [self.op(c, wire::CMD_BLOCK_STATUS, offset, len, &mut [], ctx.0)];
        self.wait(&mut ops)?;
        let mut ext = std::mem::take(&mut ops[0].extents);
        if ext.is_empty() {
            return Err(self.poison(NbdError::protocol(format!(
                "block status at offset {offset} answered with no extents for the context asked for"
            ))));
        }
        let mut left = len;
        ext.retain_mut(|e| {
            let keep = left > 0;
            e.len = e.len.min(left);
            left -= e.len;
            keep
        });
        Ok(ext)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut head = Vec::new();
        let req = Request {
            flags: 0,
            kind: wire::CMD_DISC,
            cookie: 0,
            offset: 0,
            len: 0,
        };
        wire::encode_request(&req, self.extended, &mut head);
        let mut w = lock(&self.writer);
        let _ = w.write_all(&head);
        w.shutdown();
    }
}

/// Take one chunk (or simple reply) for `op`, reading its payload from `src`.
fn apply(op: &mut Op<'_>, h: ReplyHeader, src: &mut dyn Read, c: &Client) -> Result<(), NbdError> {
    let rd =
        |src: &mut dyn Read, b: &mut [u8]| src.read_exact(b).map_err(|e| io_err("read reply", e));
    let p = op.p;
    let what = || format!("request of {} bytes at offset {}", p.len, p.offset);
    match h {
        ReplyHeader::Simple { error, .. } => {
            if error != 0 {
                op.error.get_or_insert(NbdError::Server(format!(
                    "{} on the {}",
                    wire::errno_name(error),
                    what()
                )));
            } else if p.kind == wire::CMD_READ {
                rd(src, op.buf)?;
                op.covered.push((0, p.len));
            }
            op.done = true;
        }
        ReplyHeader::Chunk {
            flags, kind, len, ..
        } => {
            match kind {
                wire::REPLY_OFFSET_DATA | wire::REPLY_OFFSET_HOLE => {
                    let mut b = [0u8; 12];
                    rd(src, &mut b[..8])?;
                    let off = u64::from_be_bytes(b[..8].try_into().expect("8"));
                    let n = if kind == wire::REPLY_OFFSET_DATA {
                        len - 8
                    } else {
                        rd(src, &mut b[8..])?;
                        u32::from_be_bytes(b[8..].try_into().expect("4")) as u64
                    };
                    let rel = off
                        .checked_sub(p.offset)
                        .filter(|r| n > 0 && r + n <= p.len)
                        .ok_or_else(|| {
                            NbdError::protocol(format!(
                                "read chunk of {n} bytes at offset {off} outside the {}",
                                what()
                            ))
                        })?;
                    let dst = &mut op.buf[rel as usize..(rel + n) as usize];
                    if kind == wire::REPLY_OFFSET_DATA {
                        rd(src, dst)?;
                    } else {
                        dst.fill(0);
                    }
                    op.covered.push((rel, rel + n));
                }
                wire::REPLY_BLOCK_STATUS | wire::REPLY_BLOCK_STATUS_EXT => {
                    let mut b = vec![0u8; len as usize];
                    rd(src, &mut b)?;
                    let mut ext = Vec::new();
                    let id = wire::decode_block_status(kind, &b, MAX_EXTENTS, &mut ext)?;
                    if id == op.ctx {
                        if !op.extents.is_empty() {
                            return Err(NbdError::protocol(
                                "two block status chunks for one context",
                            ));
                        }
                        op.extents = ext;
                    } else if !c.contexts.iter().any(|x| x.0 .0 == id) {
                        return Err(NbdError::protocol(format!(
                            "block status for context {id}, which was not negotiated"
                        )));
                    }
                }
                k if k & wire::REPLY_TYPE_ERROR_BIT != 0 => {
                    let mut b = vec![0u8; len as usize];
                    rd(src, &mut b)?;
                    let (errno, msg, off) = wire::decode_error_chunk(k, &b)?;
                    let at = off.map(|o| format!(" at offset {o}")).unwrap_or_default();
                    let msg = if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    };
                    op.error.get_or_insert(NbdError::Server(format!(
                        "{}{at} on the {}{msg}",
                        wire::errno_name(errno),
                        what()
                    )));
                }
                _ => {} // NBD_REPLY_TYPE_NONE
            }
            if flags & wire::REPLY_FLAG_DONE != 0 {
                op.done = true;
            }
        }
    }
    if op.done && op.error.is_none() && p.kind == wire::CMD_READ {
        op.covered.sort_unstable();
        let mut at = 0;
        for &(a, b) in &op.covered {
            if a != at {
                return Err(NbdError::protocol(format!(
                    "read reply that {} bytes {at}.. of the {}",
                    if a < at { "repeats" } else { "leaves out" },
                    what()
                )));
            }
            at = b;
        }
        if at != p.len {
            return Err(NbdError::protocol(format!(
                "read reply that ends at {at} bytes of the {}",
                what()
            )));
        }
    }
    Ok(())
}
