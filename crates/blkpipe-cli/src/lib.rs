//! The command lines of the blkpipe tools, shared by the tool binaries (`tools/`) and by
//! `blkpipe-gen`, which writes the man pages and completions from the same definitions.
//!
//! - [`args`]: each tool's clap `Args`, one module per tool.
//! - [`opts`]: the option groups several tools flatten in (reporting: `--progress`,
//!   `--progress-fd`, `--stats`; stream output: `--force-tty`; whole-device scans:
//!   `--threads`, `--direct`) and the stdout glue that goes with them.
//! - [`size`]: the one size grammar (`4096`, `128s`, `64K`, `64KiB`, `1M`, `2G`, `1T`) and the
//!   other value parsers.
//! - [`exit`]: the one exit-code table. The libraries return typed errors and know nothing of
//!   exit codes; [`exit::code_of`] maps each of them.
//!
//! This crate is tool glue: it uses `anyhow`, which the libraries do not.

/// `eprintln!` that never panics: with stderr full or closed the message is lost, the exit
/// code is not (std's `eprintln!` panics, exit 101). Tools import it to shadow std's.
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln!`]).
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub mod args;
#[cfg(test)]
mod arrows;
pub mod exit;
pub mod opts;
pub mod size;

pub use exit::exit_with;
pub use opts::{
    guard_binary_stdout, open_range_list, progress, stdout_buffered, ChainArgs, ChainCommon,
    Common, KeyArg, RawStdout, Reporting, StatsFormat, When,
};
pub use size::{parse_size, parse_stream_id, parse_u64};
