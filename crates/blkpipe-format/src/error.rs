use std::io;

/// Everything that can be wrong with a stream. Each variant names where: the record number
/// (0-based, counted from the first record after the header), the device offset it claims, or
/// the byte position in the stream.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The stream does not start with the expected magic. The message says what it is
    /// instead, when [`crate::kind::StreamKind`] recognises it.
    #[error("not a {stream} stream: {}", crate::kind::describe(found))]
    BadMagic {
        /// Which stream was expected.
        stream: &'static str,
        /// The bytes found.
        found: Vec<u8>,
    },
    /// The major version is one this reader does not know.
    #[error("{stream} stream version {found_major}.{found_minor} is not supported (this build reads version {supported}.x)")]
    UnsupportedVersion {
        /// Which stream.
        stream: &'static str,
        /// Major version found.
        found_major: u16,
        /// Minor version found.
        found_minor: u16,
        /// The major version supported.
        supported: u16,
    },
    /// The stream ended before `what` was complete.
    #[error("{what}: stream truncated at byte {at} (record {record})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Record number being read.
        record: u64,
        /// Stream byte position where it ended.
        at: u64,
    },
    /// A checksum did not match.
    #[error("record {record} at offset {offset}: {what} checksum mismatch")]
    Checksum {
        /// What the checksum protects ("record", "header", "end record", "hash group").
        what: &'static str,
        /// Record (or group) number.
        record: u64,
        /// Device offset claimed by the record, or stream byte position for headers.
        offset: u64,
    },
    /// A field holds a value that is not allowed.
    #[error("record {record} at offset {offset}: {reason}")]
    Invalid {
        /// Record number.
        record: u64,
        /// Device offset claimed by the record, or stream byte position for headers.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A sealed stream and no key to check it with.
    #[error("the {stream} stream is sealed: give the key it was sealed with (--key FILE); nothing was read past its header")]
    KeyNeeded {
        /// Which stream.
        stream: &'static str,
    },
    /// A key was given but the stream is not sealed, so nothing in it is authenticated.
    #[error("a key was given (--key) but the {stream} stream is not sealed: refusing an unauthenticated stream (run without --key to accept it)")]
    NotSealed {
        /// Which stream.
        stream: &'static str,
    },
    /// The stream is sealed with another key.
    #[error("the {stream} stream is sealed with key id {sealed_with}, but the key given has id {given}: wrong key")]
    WrongKey {
        /// Which stream.
        stream: &'static str,
        /// Key id in the stream, hex.
        sealed_with: String,
        /// Id of the key given, hex.
        given: String,
    },
    /// A MAC did not match: the stream was forged or altered (or spliced, reordered, cut).
    #[error("record {record} at offset {offset}: {what} MAC mismatch: the sealed stream was forged or altered")]
    Mac {
        /// What the MAC protects ("record", "patch header", "end record", "hash group").
        what: &'static str,
        /// Record (or group) number.
        record: u64,
        /// Device offset claimed by the record, or stream byte position.
        offset: u64,
    },
    /// A line of a range list is malformed.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

impl FormatError {
    pub(crate) fn invalid(record: u64, offset: u64, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            record,
            offset,
            reason: reason.into(),
        }
    }
}
