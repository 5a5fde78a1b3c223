//! Opening a connection: the socket, and the fixed newstyle handshake up to `NBD_OPT_GO`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use super::client::{io_err, ContextId};
use super::wire::{self, ExportInfo};
use super::NbdError;

/// The connection to the server.
#[derive(Debug)]
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(super) fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub(super) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    pub(super) fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The non-final replies to one option: (reply type, data).
type OptReplies = Vec<(u32, Vec<u8>)>;

pub(super) struct Handshake {
    pub(super) info: ExportInfo,
    pub(super) structured: bool,
    pub(super) extended: bool,
    pub(super) contexts: Vec<(ContextId, String)>,
}

/// Send an option and collect its replies up to the final one: `Ok(Err(type))` for an error
/// reply, `Ok(Ok(non-final replies))` for an ack.
fn option(s: &mut Stream, opt: u32, data: &[u8]) -> Result<Result<OptReplies, u32>, NbdError> {
    s.write_all(&wire::encode_option(opt, data))
        .map_err(|e| io_err("handshake", e))?;
    let mut got = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).map_err(|e| io_err("handshake", e))?;
        let h = wire::decode_option_reply(&h, opt)?;
        let mut d = vec![0u8; h.len as usize];
        s.read_exact(&mut d).map_err(|e| io_err("handshake", e))?;
        if h.reply & wire::REP_FLAG_ERROR != 0 {
            return Ok(Err(h.reply));
        }
        if h.reply == wire::REP_ACK {
            return Ok(Ok(got));
        }
        if got.len() >= 4096 {
            return Err(NbdError::protocol("more than 4096 replies to one option"));
        }
        got.push((h.reply, d));
    }
}

pub(super) fn handshake(
    s: &mut Stream,
    export: &str,
    contexts: &[&str],
) -> Result<Handshake, NbdError> {
    let mut b = [0u8; 18];
    s.read_exact(&mut b).map_err(|e| io_err("handshake", e))?;
    let (m1, m2) = (
        u64::from_be_bytes(b[..8].try_into().expect("8")),
        u64::from_be_bytes(b[8..16].try_into().expect("8")),
    );
    if m1 != wire::NBDMAGIC {
        return Err(NbdError::protocol(
            "the server did not greet with NBDMAGIC (is it an NBD server?)",
        ));
    }
    if m2 != wire::IHAVEOPT {
        return Err(NbdError::protocol(
            "the server speaks oldstyle NBD, which is not supported",
        ));
    }
    let hflags = u16::from_be_bytes([b[16], b[17]]);
    if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::protocol(
            "the server does not speak fixed newstyle NBD",
        ));
    }
    let cflags = (hflags & (wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES)) as u32;
    s.write_all(&cflags.to_be_bytes())
        .map_err(|e| io_err("handshake", e))?;
    let refused = |what: &str, r: u32| {
        NbdError::Refused(format!(
            "the server refused {what}: {}",
            wire::rep_error_name(r)
        ))
    };
    let (mut structured, mut extended) = (false, false);
    if option(s, wire::OPT_EXTENDED_HEADERS, &[])?.is_ok() {
        (structured, extended) = (true, true);
    } else if option(s, wire::OPT_STRUCTURED_REPLY, &[])?.is_ok() {
        structured = true;
    }
    let mut ctx = Vec::new();
    if !contexts.is_empty() {
        if !structured {
            return Err(NbdError::Unsupported(
                "the server has no structured replies, so no block status".into(),
            ));
        }
        let replies = option(
            s,
            wire::OPT_SET_META_CONTEXT,
            &wire::meta_context_data(export, contexts),
        )?
        .map_err(|r| refused("the meta contexts", r))?;
        for (kind, d) in replies {
            if kind == wire::REP_META_CONTEXT {
                let (id, name) = wire::decode_meta_context(&d)?;
                ctx.push((ContextId(id), name));
            }
        }
        for want in contexts {
            if !ctx.iter().any(|c| c.1 == *want) {
                let hint = match want.strip_prefix("qemu:dirty-bitmap:") {
                    Some(b) => format!(" (export it with the bitmap: qemu-nbd -B {b}, or block-export-add with bitmaps)"),
                    None => String::new(),
                };
                return Err(NbdError::Unsupported(format!(
                    "the export offers no meta context {want}{hint}"
                )));
            }
        }
    }
    let replies = option(s, wire::OPT_GO, &wire::go_data(export))?
        .map_err(|r| refused(&format!("export `{export}`"), r))?;
    let mut info = ExportInfo::default();
    let mut have = false;
    for (kind, d) in replies {
        if kind == wire::REP_INFO {
            have |= wire::decode_info(&d, &mut info)?;
        }
    }
    if !have {
        return Err(NbdError::protocol(
            "the server did not send the export's size",
        ));
    }
    Ok(Handshake {
        info,
        structured,
        extended,
        contexts: ctx,
    })
}
