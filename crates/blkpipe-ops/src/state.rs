//! The resume state of `blkpatch --state FILE`: which stream is being applied, to which
//! target, and the device offset below which everything is written and synced.
//!
//! Patch streams are in ascending offset order, so one offset is a complete progress record.
//! The file is one text line, replaced atomically (write a new `FILE.tmp` created `O_EXCL`,
//! fsync, rename, fsync directory):
//!
//! ```text
//! blkpatch-state v2 stream=00112233445566778899aabbccddeeff size=1073741824 applied=536870912 target=block:253:4 target_size=1073741824 incarnation=dm:LVM-abc
//! ```
//!
//! `target` is the target's identity (`block:MAJOR:MINOR` for a block device, `inode:DEV:INO`
//! for a file), `target_size` a block device's size, `incarnation` what tells this target from
//! a later one with the same identity (a file's birth time, a dm uuid, a loop device's backing
//! file), when the system tells. `complete` is appended once the end record has been verified
//! and the target synced. A state whose stream or target differs from the run's is refused: it
//! describes another target, so the offsets it calls applied are not applied here. Version 1
//! files (no target) are read by `--print-state` only.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use blkpipe_dev::guard::{self, Avoid, Role};
use blkpipe_dev::FileId;

use crate::OpError;

/// Longest state file read: the line is about 200 bytes; a longer file is not a state.
const MAX_STATE_LEN: u64 = 4096;

/// The target a state describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetBinding {
    /// Block device number or file system and inode.
    pub id: FileId,
    /// A block device's size (a file target grows as it is written: not recorded).
    pub size: Option<u64>,
    /// See [`blkpipe_dev::guard::incarnation`].
    pub incarnation: Option<String>,
}

impl TargetBinding {
    /// The binding as `target=… [target_size=…] [incarnation=…]` words.
    pub(crate) fn words(&self) -> String {
        let mut s = format!(" target={}", self.id.to_text());
        if let Some(n) = self.size {
            s += &format!(" target_size={n}");
        }
        if let Some(i) = &self.incarnation {
            s += &format!(" incarnation={i}");
        }
        s
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = self.id.to_text();
        if let Some(n) = self.size {
            s += &format!(", {n} bytes");
        }
        if let Some(i) = &self.incarnation {
            s += &format!(", {i}");
        }
        s
    }
}

/// Progress of one stream on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// The stream's id (from its header).
    pub stream_id: [u8; 16],
    /// The stream's source size (from its header).
    pub source_size: u64,
    /// Everything below this device offset is written and synced.
    pub applied: u64,
    /// The whole stream, end record included, was applied.
    pub complete: bool,
    /// The target this progress was made on (`None` in a version 1 file).
    pub target: Option<TargetBinding>,
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
    /// Read a state file; `Ok(None)` if it does not exist. A path that is not a regular file
    /// (a directory, a device) or a file that is not a state is refused, saying how to start
    /// over.
    pub fn load(path: &Path) -> Result<Option<Self>, OpError> {
        let Some(bytes) = load_bytes(path, "state file")? else {
            return Ok(None);
        };
        let bad = || {
            OpError::Refused(format!(
                "state file {}: not a blkpatch state (expected one line `blkpatch-state v2 stream=HEX size=N applied=N target=...`); remove it to start over",
                path.display()
            ))
        };
        if bytes.len() as u64 > MAX_STATE_LEN {
            return Err(bad());
        }
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut words = text.split_ascii_whitespace();
        if words.next() != Some("blkpatch-state") {
            return Err(bad());
        }
        let v2 = match words.next() {
            Some("v1") => false,
            Some("v2") => true,
            _ => return Err(bad()),
        };
        let (mut id, mut size, mut applied, mut complete) = (None, None, None, false);
        let (mut target, mut target_size, mut incarnation) = (None, None, None);
        for w in words {
            match w.split_once('=') {
                Some(("stream", v)) => id = parse_id(v),
                Some(("size", v)) => size = v.parse().ok(),
                Some(("applied", v)) => applied = v.parse().ok(),
                Some(("target", v)) if v2 => target = Some(FileId::from_text(v).ok_or_else(bad)?),
                Some(("target_size", v)) if v2 => target_size = Some(v.parse().map_err(|_| bad())?),
                Some(("incarnation", v)) if v2 => incarnation = Some(v.to_owned()),
                None if w == "complete" => complete = true,
                _ => return Err(bad()),
            }
        }
        if v2 && target.is_none() {
            return Err(bad());
        }
        match (id, size, applied) {
            (Some(stream_id), Some(source_size), Some(applied)) if applied <= source_size => {
                Ok(Some(ResumeState {
                    stream_id,
                    source_size,
                    applied,
                    complete,
                    target: target.map(|id| TargetBinding {
                        id,
                        size: target_size,
                        incarnation,
                    }),
                }))
            }
            _ => Err(bad()),
        }
    }

    /// The state as its one line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "blkpatch-state v{} stream={} size={} applied={}",
            if self.target.is_some() { 2 } else { 1 },
            hex_id(&self.stream_id),
            self.source_size,
            self.applied,
        );
        if let Some(t) = &self.target {
            s += &format!(" target={}", t.id.to_text());
            if let Some(n) = t.size {
                s += &format!(" target_size={n}");
            }
            if let Some(i) = &t.incarnation {
                s += &format!(" incarnation={i}");
            }
        }
        if self.complete {
            s += " complete";
        }
        s + "\n"
    }

    /// Refuse this state for `target` unless it was made on that very target.
    pub fn check_target(&self, path: &Path, target: &TargetBinding) -> Result<(), OpError> {
        let start_over = format!(
            "remove {} to start over (the whole stream is then applied)",
            path.display()
        );
        match &self.target {
            None => Err(OpError::Refused(format!(
                "state file {} was written by an older blkpatch and does not name its target; {start_over}",
                path.display()
            ))),
            Some(t) if t != target => Err(OpError::Refused(format!(
                "state file {} describes another target ({}), not this one ({}): what it records as applied was not written here; {start_over}",
                path.display(),
                t.describe(),
                target.describe()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Replace the state file atomically and durably. `FILE.tmp` is created afresh (`O_EXCL`,
    /// through [`guard::create_temp`]) and must not be one of `avoid`.
    pub fn store(&self, path: &Path, avoid: &[Avoid]) -> Result<(), OpError> {
        store_line(path, &self.line(), "state file", avoid)
    }
}

/// Read the small file `path`, at most [`MAX_STATE_LEN`] + 1 bytes (one more than a valid
/// file holds, so an overlong one shows); `Ok(None)` if it does not exist. A directory, a
/// device or a file in use is refused (`what` names it).
fn load_bytes(path: &Path, what: &'static str) -> Result<Option<Vec<u8>>, OpError> {
    let read_err = |e: io::Error| {
        OpError::Input(io::Error::new(
            e.kind(),
            format!("{what} {}: read: {e}", path.display()),
        ))
    };
    let file = match guard::open_read(path, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(OpError::Refused(format!(
            "{what} {}: is a directory",
            path.display()
        )));
    }
    guard::check(path, &meta, Role::Aux(what), &[])?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(Some(bytes))
}

/// Read the small text file `path` (at most [`MAX_STATE_LEN`] bytes, UTF-8); `Ok(None)` if it
/// does not exist. A directory, a device or a file in use is refused (`what` names it).
pub(crate) fn load_line(path: &Path, what: &'static str) -> Result<Option<String>, OpError> {
    let Some(bytes) = load_bytes(path, what)? else {
        return Ok(None);
    };
    if bytes.len() as u64 > MAX_STATE_LEN {
        return Err(OpError::Refused(format!(
            "{what} {}: longer than {MAX_STATE_LEN} bytes, not a {what}",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| OpError::Refused(format!("{what} {}: not text", path.display())))
}

/// Replace the small text file `path` with `line` atomically and durably: `FILE.tmp` is
/// created afresh (`O_EXCL`, through [`guard::create_temp`], checked against `avoid`),
/// written, synced and renamed over `path`, and the directory is synced.
pub(crate) fn store_line(
    path: &Path,
    line: &str,
    what: &'static str,
    avoid: &[Avoid],
) -> Result<(), OpError> {
    // FILE.tmp next to FILE: appended, not swapped for FILE's own extension, which would
    // clobber a neighbour (`lv.state` would write `lv.tmp`).
    let tmp = guard::temp_path(path);
    let mut f: File = guard::create_temp(&tmp, what, avoid)?;
    let mut write = || -> io::Result<()> {
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        OpError::Output(io::Error::new(
            e.kind(),
            format!("{what} {}: write: {e}", path.display()),
        ))
    })
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
            target: Some(TargetBinding {
                id: FileId::Block { major: 7, minor: 3 },
                size: Some(1 << 30),
                incarnation: Some("loop:2049:12".into()),
            }),
        };
        st.store(&path, &[]).unwrap();
        assert_eq!(ResumeState::load(&path).unwrap(), Some(st.clone()));
        st.applied = 1 << 30;
        st.complete = true;
        st.store(&path, &[]).unwrap();
        assert_eq!(ResumeState::load(&path).unwrap(), Some(st.clone()));
        // A leftover temporary file of an interrupted store is replaced, not followed.
        fs::write(dir.path().join("lv.state.tmp"), "half").unwrap();
        st.store(&path, &[]).unwrap();
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
