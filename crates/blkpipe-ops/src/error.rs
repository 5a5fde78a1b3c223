use std::io;

use blkpipe_dev::DevError;
use blkpipe_format::FormatError;

/// What an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The input stream is bad.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A device operation failed.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The operation refuses this target or input.
    #[error("{0}")]
    Refused(String),
    /// A range in the input is not acceptable for the device.
    #[error("{0}")]
    BadRange(String),
    /// The target's digest after applying differs from the source's.
    #[error("verify failed: target digest {found} differs from source digest {expected}")]
    VerifyMismatch {
        /// Source digest, formatted.
        expected: String,
        /// Target digest, formatted.
        found: String,
    },
    /// Writing the output stream failed.
    #[error("writing output: {0}")]
    Output(io::Error),
    /// Reading the input stream failed.
    #[error("reading input: {0}")]
    Input(io::Error),
    /// One of several named input streams is bad (blkmerge): the name, then what is wrong.
    #[error("{name}: {error}")]
    InStream {
        /// The input's name as the user gave it.
        name: String,
        /// What is wrong with it.
        error: FormatError,
    },
}
