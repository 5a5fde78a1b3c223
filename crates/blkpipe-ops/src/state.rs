//! The resume state of `blkpatch --state FILE`: which stream is being applied and the device
//! offset below which everything is written and synced.
//!
//! Patch streams are in ascending offset order, so one offset is a complete progress record.
//! The file is one text line, replaced atomically (write, fsync, rename, fsync directory):
//!
//! ```text
//! blkpatch-state v1 stream=00112233445566778899aabbccddeeff size=1073741824 applied=536870912
//! ```
//!
//! `complete` is appended once the end record has been verified and the target synced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::OpError;

/// Progress of one stream on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeState {
    /// The stream's id (from its header).
    pub stream_id: [u8; 16],
    /// The stream's source size (from its header).
    pub source_size: u64,
    /// Everything below this device offset is written and synced.
    pub applied: u64,
    /// The whole stream, end record included, was applied.
    pub complete: bool,
}

/// Hex of a stream id.
pub fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse 32 hex digits into a stream id.
pub fn parse_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

impl ResumeState {
    /// Read a state file; `Ok(None)` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, OpError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_err(path, e)),
        };
        let bad = || {
            OpError::Refused(format!(
                "state file {}: not a blkpatch state (expected `blkpatch-state v1 stream=HEX size=N applied=N`)",
                path.display()
            ))
        };
        let mut words = text.split_ascii_whitespace();
        if words.next() != Some("blkpatch-state") || words.next() != Some("v1") {
            return Err(bad());
        }
        let (mut id, mut size, mut applied, mut complete) = (None, None, None, false);
        for w in words {
            match w.split_once('=') {
                Some(("stream", v)) => id = parse_id(v),
                Some(("size", v)) => size = v.parse().ok(),
                Some(("applied", v)) => applied = v.parse().ok(),
                None if w == "complete" => complete = true,
                _ => return Err(bad()),
            }
        }
        match (id, size, applied) {
            (Some(stream_id), Some(source_size), Some(applied)) if applied <= source_size => {
                Ok(Some(ResumeState {
                    stream_id,
                    source_size,
                    applied,
                    complete,
                }))
            }
            _ => Err(bad()),
        }
    }

    /// The state as its one line.
    pub fn line(&self) -> String {
        format!(
            "blkpatch-state v1 stream={} size={} applied={}{}\n",
            hex_id(&self.stream_id),
            self.source_size,
            self.applied,
            if self.complete { " complete" } else { "" }
        )
    }

    /// Replace the state file atomically and durably.
    pub fn store(&self, path: &Path) -> Result<(), OpError> {
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(self.line().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| state_err(path, e))
    }
}

fn state_err(path: &Path, e: io::Error) -> OpError {
    OpError::Output(io::Error::new(
        e.kind(),
        format!("state file {}: {e}", path.display()),
    ))
}
