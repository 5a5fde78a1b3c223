//! The one exit-code table: every typed error of the libraries, mapped to the codes each tool's
//! `--help` and the README document. The libraries only say what went wrong; this module alone
//! decides which exit code that is.

use std::io;

use blkpipe_dev::nbd::NbdError;
use blkpipe_dev::DevError;
use blkpipe_format::FormatError;
use blkpipe_meta::MetaError;
use blkpipe_ops::input::DecodeError;
use blkpipe_ops::OpError;

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

/// The exit code for an error: the first typed error in its chain decides; [`FAILURE`] if
/// there is none.
pub fn code_of(e: &anyhow::Error) -> i32 {
    e.chain().find_map(code_of_cause).unwrap_or(FAILURE)
}

/// The exit code of one error of a chain, if it is one the table knows.
pub fn code_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<i32> {
    if let Some(e) = cause.downcast_ref::<OpError>() {
        return Some(op(e));
    }
    if let Some(e) = cause.downcast_ref::<MetaError>() {
        return Some(meta(e));
    }
    if let Some(e) = cause.downcast_ref::<DevError>() {
        return Some(dev(e));
    }
    if let Some(e) = cause.downcast_ref::<FormatError>() {
        return Some(format(e));
    }
    if let Some(e) = cause.downcast_ref::<io::Error>() {
        return Some(io(e));
    }
    None
}

/// An operation's error.
pub fn op(e: &OpError) -> i32 {
    match e {
        OpError::Format(e) | OpError::InStream { error: e, .. } => format(e),
        OpError::Input(e) | OpError::Output(e) => io(e),
        OpError::BadRange(_) => BAD_INPUT,
        OpError::Refused(_) => REFUSED,
        OpError::Dev(e) => dev(e),
        OpError::VerifyMismatch { .. } => VERIFY,
    }
}

/// A device-mapper metadata error: 3 for bad metadata, 4 for I/O errors, 5 for a refused
/// snapshot, 2 for a missing option.
pub fn meta(e: &MetaError) -> i32 {
    match e {
        MetaError::Read { source, .. } => io(source),
        MetaError::Input(e) | MetaError::Output(e) => io(e),
        MetaError::Dev(e) => dev(e),
        MetaError::BadMagic { .. }
        | MetaError::Uninitialised
        | MetaError::TooShort { .. }
        | MetaError::UnsupportedVersion { .. }
        | MetaError::BadChunkSize { .. }
        | MetaError::Corrupt { .. }
        | MetaError::StorePastEnd { .. }
        | MetaError::Xml { .. }
        | MetaError::Json { .. } => BAD_INPUT,
        MetaError::Invalidated | MetaError::Refused(_) => REFUSED,
        MetaError::Usage(_) => USAGE,
        MetaError::Resolve(_) => FAILURE,
    }
}

/// A device error.
pub fn dev(e: &DevError) -> i32 {
    match e {
        DevError::InUse { .. }
        | DevError::NotADevice(_)
        | DevError::Refused { .. }
        | DevError::NoSuchDevice(_) => REFUSED,
        DevError::NotForNbd(_) => USAGE,
        DevError::Nbd { source, .. } => match source {
            NbdError::Uri(_) => USAGE,
            NbdError::Unsupported(_) => REFUSED,
            _ => IO,
        },
        DevError::Io { source, .. } => io(source),
    }
}

/// A stream format error.
pub fn format(e: &FormatError) -> i32 {
    match e {
        FormatError::Io(e) => io(e),
        _ => BAD_INPUT,
    }
}

/// An I/O error: a compressed input that does not decode is bad input; a broken pipe is 141.
pub fn io(e: &io::Error) -> i32 {
    if DecodeError::in_io(e).is_some() {
        BAD_INPUT
    } else if e.kind() == io::ErrorKind::BrokenPipe {
        BROKEN_PIPE
    } else {
        IO
    }
}

/// Print `tool: error` (unless it is only a broken pipe) and exit with the error's code.
pub fn exit_with(tool: &str, result: anyhow::Result<()>) -> ! {
    let code = match result {
        Ok(()) => OK,
        Err(e) => {
            let code = code_of(&e);
            if code != BROKEN_PIPE {
                crate::eprintln!("{tool}: {e:#}");
            }
            code
        }
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_141_and_silent_code() {
        let e = anyhow::Error::new(OpError::Output(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert_eq!(code_of(&e), BROKEN_PIPE);
        let e = anyhow::Error::new(MetaError::Output(io::Error::from(
            io::ErrorKind::BrokenPipe,
        )));
        assert_eq!(code_of(&e), BROKEN_PIPE);
    }

    #[test]
    fn the_outermost_typed_error_decides() {
        let e = anyhow::Error::new(OpError::Refused("no".into())).context("while doing x");
        assert_eq!(code_of(&e), REFUSED);
        let e = anyhow::Error::new(MetaError::Usage("give --origin-size".into()));
        assert_eq!(code_of(&e), USAGE);
        let e = anyhow::Error::new(MetaError::Invalidated);
        assert_eq!(code_of(&e), REFUSED);
        let e = anyhow::Error::new(OpError::VerifyMismatch {
            expected: "a".into(),
            found: "b".into(),
        });
        assert_eq!(code_of(&e), VERIFY);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), FAILURE);
    }

    #[test]
    fn io_errors() {
        assert_eq!(io(&io::Error::other("disk on fire")), IO);
        let e = anyhow::Error::new(io::Error::other("x")).context("reading");
        assert_eq!(code_of(&e), IO);
        let e = anyhow::Error::new(FormatError::Io(io::Error::other("x")));
        assert_eq!(code_of(&e), IO);
    }
}
