//! Glue shared by the tool binaries: error reporting, exit codes, stdout guards.
#![allow(dead_code)]

use std::io::{self, IsTerminal};

/// `eprintln!` that never panics: with stderr full or closed the message is lost, the exit
/// code is not (std's `eprintln!` panics, exit 101). Shadows std's in every tool.
#[allow(unused_macros)]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln!`]).
#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

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
            return blkpipe_ops::io_exit_code(io);
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

/// A progress reporter for a plain `--progress` flag (drawn whenever asked).
pub fn progress(tool: &str, wanted: bool) -> blkpipe_ops::progress::Progress {
    if wanted {
        blkpipe_ops::progress::Progress::stderr(tool, None)
    } else {
        blkpipe_ops::progress::Progress::hidden()
    }
}

/// When to draw the progress line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Only when stderr is a terminal.
    Auto,
    /// Also into a file or pipe, one plain line per second.
    Always,
}

/// The format of `--stats`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    /// `tool: key: value` lines.
    Human,
    /// One JSON object on one line.
    Json,
}

/// The reporting options every long-running tool shares.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Reporting")]
pub struct Reporting {
    /// Show progress on stderr: bytes, total, percent, rate and ETA (`--progress` = auto: a
    /// line redrawn on a terminal; `--progress=always`: also into a file or pipe, one line a
    /// second).
    #[arg(long, value_name = "WHEN", num_args = 0..=1, require_equals = true, default_missing_value = "auto", value_enum)]
    pub progress: Option<When>,
    /// Write `bytes_done bytes_total` once per second to file descriptor FD, for wrappers.
    #[arg(long, value_name = "FD")]
    pub progress_fd: Option<i32>,
    /// Print a summary on stderr at the end (`--stats` = human, `--stats=json`).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "human", value_enum)]
    pub stats: Option<StatsFormat>,
}

impl Reporting {
    /// The progress reporter these options ask for.
    pub fn progress(&self, tool: &str) -> anyhow::Result<blkpipe_ops::progress::Progress> {
        use blkpipe_ops::progress::Progress;
        // A line redrawn in place on a terminal; plain lines once a second into a file or
        // pipe, where a redrawn line would be unreadable.
        let tty = io::stderr().is_terminal();
        let p = match self.progress {
            Some(_) if tty => Progress::stderr(tool, None),
            Some(When::Always) => Progress::lines(tool),
            Some(When::Auto) | None => Progress::hidden(),
        };
        Ok(match self.progress_fd {
            // Every tool but blkpatch writes its stream on stdout: progress lines there would
            // corrupt it (the reader would stop at the first, but the run would be lost).
            Some(1) if tool != "blkpatch" => {
                return Err(OpError::Refused(format!(
                    "--progress-fd 1: stdout carries the {tool} stream; give another descriptor (e.g. --progress-fd 3 3>&2)"
                ))
                .into())
            }
            Some(fd) => p.with_feed(fd)?,
            None => p,
        })
    }

    /// Print the summary if `--stats` was given.
    pub fn print_stats(&self, tool: &str, stats: &blkpipe_ops::Stats) {
        match self.stats {
            Some(StatsFormat::Human) => eprint!("{}", stats.human(tool)),
            Some(StatsFormat::Json) => eprint!("{}", stats.json(tool)),
            None => {}
        }
    }
}

/// `--key FILE`, shared by every tool that writes or reads patch and hash streams (one
/// definition, flattened into each tool's arguments).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Sealing")]
pub struct KeyArg {
    /// Sealed streams: the 32-byte key in FILE authenticates every record with a BLAKE3 MAC
    /// (and keys hash streams' block hashes). Streams written are sealed; streams read must be
    /// sealed with this key (an unsealed one, or one sealed with another key, is refused, exit
    /// 5). Make a key: `head -c 32 /dev/urandom > key; chmod 600 key`; FILE must be readable by
    /// its owner only.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
}

impl KeyArg {
    /// The key, if `--key` was given.
    pub fn load(&self) -> anyhow::Result<Option<blkpipe_format::seal::SealKey>> {
        Ok(match &self.key {
            Some(p) => Some(blkpipe_ops::keyfile::load_key(p)?),
            None => None,
        })
    }
}

/// A large buffered stdout.
pub fn stdout_buffered() -> io::BufWriter<io::StdoutLock<'static>> {
    blkpipe_ops::input::enlarge_pipe(1);
    io::BufWriter::with_capacity(1 << 20, io::stdout().lock())
}

/// Parse a byte count: decimal, or with a binary suffix `K`, `M`, `G` (`64K` = 65536).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 4096, 64K, 1M)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parse an integer in decimal or `0x` hexadecimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a number (decimal or 0x hex)"))
}

/// Parse a stream id: 32 hex digits, as `blkpatch --print-state` prints it.
pub fn parse_stream_id(s: &str) -> Result<[u8; 16], String> {
    blkpipe_ops::state::parse_id(s).ok_or_else(|| "expected 32 hex digits".into())
}
