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
        // FILE.tmp next to FILE: appended, not swapped for FILE's own extension, which would
        // clobber a neighbour (`lv.state` would write `lv.tmp`).
        let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load_round_trip_without_touching_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lv.state");
        // A file that merely shares the state file's stem is not ours to overwrite.
        let neighbour = dir.path().join("lv.tmp");
        fs::write(&neighbour, "keep me").unwrap();
        let mut st = ResumeState {
            stream_id: [7; 16],
            source_size: 1 << 30,
            applied: 4096,
            complete: false,
        };
        st.store(&path).unwrap();
        assert_eq!(ResumeState::load(&path).unwrap(), Some(st));
        st.applied = 1 << 30;
        st.complete = true;
        st.store(&path).unwrap();
        assert_eq!(ResumeState::load(&path).unwrap(), Some(st));
        assert_eq!(fs::read_to_string(&neighbour).unwrap(), "keep me");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["lv.state", "lv.tmp"]);
    }
}
