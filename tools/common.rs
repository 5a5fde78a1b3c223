//! Glue shared by the tool binaries: error reporting, exit codes, stdout guards.
#![allow(dead_code)]

use std::io::{self, IsTerminal};

use blkpipe_ops::{exit, OpError};

/// Print `tool: error` (unless it is only a broken pipe) and exit with the error's code.
pub fn exit_with(tool: &str, result: anyhow::Result<()>) -> ! {
    let code = match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let code = code_of(&e);
            if code != exit::BROKEN_PIPE {
                eprintln!("{tool}: {e:#}");
            }
            code
        }
    };
    std::process::exit(code)
}

/// The exit code for an error: the first [`OpError`] or I/O error in its chain decides.
pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(op) = cause.downcast_ref::<OpError>() {
            return op.exit_code();
        }
        if let Some(dev) = cause.downcast_ref::<blkpipe_dev::DevError>() {
            return blkpipe_ops::dev_exit_code(dev);
        }
        if let Some(fmt) = cause.downcast_ref::<blkpipe_format::FormatError>() {
            return blkpipe_ops::format_exit_code(fmt);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return if io.kind() == io::ErrorKind::BrokenPipe {
                exit::BROKEN_PIPE
            } else {
                exit::IO
            };
        }
    }
    exit::FAILURE
}

/// Refuse to write a binary stream to a terminal unless forced.
pub fn guard_binary_stdout(force: bool) -> anyhow::Result<()> {
    if !force && io::stdout().is_terminal() {
        return Err(OpError::Refused(
            "refusing to write a binary stream to a terminal; redirect stdout or pipe it on (--force-tty to override)"
                .into(),
        )
        .into());
    }
    Ok(())
}

/// A progress reporter for `--progress`.
pub fn progress(tool: &str, wanted: bool) -> blkpipe_ops::progress::Progress {
    if wanted {
        blkpipe_ops::progress::Progress::stderr(tool, None)
    } else {
        blkpipe_ops::progress::Progress::hidden()
    }
}

/// A large buffered stdout.
pub fn stdout_buffered() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(1 << 20, io::stdout().lock())
}
