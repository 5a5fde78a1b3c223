use std::io;

use blkpipe_dev::DevError;
use blkpipe_format::FormatError;

/// Exit codes shared by every tool (documented in each `--help` and the README).
pub mod exit {
    /// Success: the whole stream was produced or applied and verified.
    pub const OK: i32 = 0;
    /// Any other failure.
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// The input stream is malformed, corrupted or truncated.
    pub const BAD_INPUT: i32 = 3;
    /// Reading or writing a device, file or pipe failed.
    pub const IO: i32 = 4;
    /// The target was refused: in use, mounted, too small, or a stream that does not fit it.
    pub const REFUSED: i32 = 5;
    /// `--verify` found the target differs from the source.
    pub const VERIFY: i32 = 6;
    /// The reader of our output went away (broken pipe); as a shell reports SIGPIPE.
    pub const BROKEN_PIPE: i32 = 141;
}

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
}

impl OpError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            OpError::Format(e) => format_exit_code(e),
            OpError::Input(e) => io_code(e),
            OpError::BadRange(_) => exit::BAD_INPUT,
            OpError::Refused(_) => exit::REFUSED,
            OpError::Dev(e) => dev_exit_code(e),
            OpError::VerifyMismatch { .. } => exit::VERIFY,
            OpError::Output(e) => io_code(e),
        }
    }

    /// True when the error is only that our reader went away: report it silently.
    pub fn is_broken_pipe(&self) -> bool {
        self.exit_code() == exit::BROKEN_PIPE
    }
}

/// The exit code for a device error.
pub fn dev_exit_code(e: &DevError) -> i32 {
    match e {
        DevError::InUse { .. }
        | DevError::NotADevice(_)
        | DevError::Refused { .. }
        | DevError::NoSuchDevice(_) => exit::REFUSED,
        DevError::NotForNbd(_) => exit::USAGE,
        DevError::Nbd { source, .. } => match source {
            blkpipe_dev::nbd::NbdError::Uri(_) => exit::USAGE,
            blkpipe_dev::nbd::NbdError::Unsupported(_) => exit::REFUSED,
            _ => exit::IO,
        },
        DevError::Io { source, .. } => io_code(source),
    }
}

/// The exit code for a stream format error.
pub fn format_exit_code(e: &FormatError) -> i32 {
    match e {
        FormatError::Io(io) => io_code(io),
        FormatError::KeyNeeded { .. }
        | FormatError::NotSealed { .. }
        | FormatError::WrongKey { .. } => exit::REFUSED,
        _ => exit::BAD_INPUT,
    }
}

/// The exit code for an I/O error: a compressed input that does not decode is bad input.
pub fn io_exit_code(e: &io::Error) -> i32 {
    io_code(e)
}

fn io_code(e: &io::Error) -> i32 {
    if crate::input::DecodeError::in_io(e).is_some() {
        exit::BAD_INPUT
    } else if e.kind() == io::ErrorKind::BrokenPipe {
        exit::BROKEN_PIPE
    } else {
        exit::IO
    }
}
