//! A Network Block Device client: read, write, zero, trim and flush an export, and read its
//! block status (`base:allocation`, `qemu:dirty-bitmap:NAME`).
//!
//! - [`uri`] parses `nbd://host[:port]/export` and `nbd+unix:///export?socket=PATH`.
//! - [`wire`] encodes and decodes the protocol's messages without I/O.
//! - [`Client`] negotiates (fixed newstyle, `NBD_OPT_GO`, structured replies or extended
//!   headers, meta contexts) and then serves requests from several threads at once: requests
//!   go out under a write lock, and whichever waiting thread holds the read side reads the next
//!   reply, delivering it straight into its own buffer or parking it for its owner.
//!
//! A server that breaks the protocol (wrong cookie, short or oversized reply, bad magic) or
//! answers with an error poisons the connection: every later request fails with the first
//! fault, so nothing is written after it.

mod client;
mod handshake;
pub mod uri;
pub mod wire;

#[cfg(test)]
mod prop_tests;

pub use client::{Client, ContextId};
pub use uri::{is_nbd_uri, Endpoint, NbdUri};
pub use wire::Extent;

/// What can go wrong talking to an NBD server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NbdError {
    /// The URI is malformed or asks for something not supported (TLS).
    #[error("{0}")]
    Uri(String),
    /// Connecting, reading or writing the socket failed.
    #[error("{0}")]
    Io(String),
    /// The server refused an option during the handshake.
    #[error("{0}")]
    Refused(String),
    /// The server broke the protocol.
    #[error("NBD protocol violation: {0}")]
    Protocol(String),
    /// The server answered a request with an error.
    #[error("server error: {0}")]
    Server(String),
    /// The request cannot be made on this export (read-only, no trim, ...).
    #[error("{0}")]
    Unsupported(String),
}

impl NbdError {
    pub(crate) fn protocol(s: impl Into<String>) -> Self {
        NbdError::Protocol(s.into())
    }
}
