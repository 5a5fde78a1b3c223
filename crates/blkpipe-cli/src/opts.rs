//! The option groups several tools share (flattened into their `Args`), and the output glue
//! that goes with them.

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write as _};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::Path;

use anyhow::Context;

use blkpipe_ops::OpError;

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
            Some(StatsFormat::Human) => crate::eprint!("{}", stats.human(tool)),
            Some(StatsFormat::Json) => crate::eprint!("{}", stats.json(tool)),
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

/// The chain options of the tools that write patch streams for backup chains (blkread-chunks,
/// cowlist --data): FORMAT.md 6.6, [`blkpipe_ops::chain`].
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Sealing")]
pub struct ChainArgs {
    /// Backup chains (needs --key): FILE holds the last step written of a chain; the stream
    /// is written as the next step, bound to it, and FILE is advanced once the stream is
    /// complete (keep a copy to undo that if the stream is then lost).
    #[arg(
        long,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "chain_undo"
    )]
    pub chain: Option<std::path::PathBuf>,
    /// With --chain: the stream, a full image, starts a new chain (new random id) at STEP,
    /// which must be higher than any step FILE holds.
    #[arg(long, value_name = "STEP", requires = "chain", value_parser = crate::parse_u64)]
    pub new_chain: Option<u64>,
    /// Write the stream as the undo stream of the step the chain FILE holds (it takes a
    /// target holding that step back to the step before); FILE is not changed. Needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub chain_undo: Option<std::path::PathBuf>,
}

impl ChainArgs {
    /// Read the chain file and work out the stream's chain block (`None` without chain
    /// options). `avoid`: files the chain file must not be (the source, stdout).
    pub fn prepare(
        &self,
        key: Option<&blkpipe_format::seal::SealKey>,
        avoid: &[blkpipe_dev::Avoid],
    ) -> anyhow::Result<Option<blkpipe_ops::chain::ChainProducer>> {
        use blkpipe_ops::chain::{ChainProducer, ChainRequest};
        let req = match (&self.chain, self.new_chain, &self.chain_undo) {
            (Some(f), Some(step), _) => ChainRequest::Start(f.clone(), step),
            (Some(f), None, _) => ChainRequest::Next(f.clone()),
            (None, _, Some(f)) => ChainRequest::UndoOf(f.clone()),
            (None, _, None) => return Ok(None),
        };
        let Some(key) = key else {
            return Err(OpError::Refused("chain options need --key".into()).into());
        };
        Ok(Some(ChainProducer::prepare(&req, key, avoid)?))
    }
}

/// The options every tool shares, in this order in its help: sealing (`--key FILE`) and
/// reporting (`--progress`, `--progress-fd`, `--stats`); one group flattened into each tool's
/// arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// `--key FILE`.
    #[command(flatten)]
    pub key: KeyArg,
    /// `--progress`, `--progress-fd`, `--stats`.
    #[command(flatten)]
    pub report: Reporting,
}

/// [`Common`] of the tools that can write their stream as a step of a backup chain
/// (blkread-chunks, cowlist --data): `--key`, the chain options after it under the same
/// Sealing heading, then reporting.
#[derive(clap::Args, Debug, Clone)]
pub struct ChainCommon {
    /// `--key FILE`.
    #[command(flatten)]
    pub key: KeyArg,
    /// `--chain FILE`, `--new-chain STEP`, `--chain-undo FILE`.
    #[command(flatten)]
    pub chain: ChainArgs,
    /// `--progress`, `--progress-fd`, `--stats`.
    #[command(flatten)]
    pub report: Reporting,
}

impl ChainCommon {
    /// Whether a sealed stream is asked for: `--key` or a chain option (which needs it).
    pub fn seals(&self) -> bool {
        self.key.key.is_some() || self.chain.chain.is_some() || self.chain.chain_undo.is_some()
    }
}

/// Open a range list: the file at `path`, or stdin for `None`. Binary or compressed data is
/// named, not parsed as text (`input::open_text`). Returns the reader and the name that
/// messages use.
pub fn open_range_list(path: Option<&Path>) -> anyhow::Result<(Box<dyn BufRead + Send>, String)> {
    let (raw, name): (Box<dyn Read + Send>, String) = match path {
        Some(p) => {
            let file =
                File::open(p).with_context(|| format!("{}: open range list", p.display()))?;
            (Box::new(file), p.display().to_string())
        }
        None => {
            blkpipe_ops::input::refuse_terminal_stdin(
                None,
                "a range list is read ('OFFSET LENGTH' lines, from cowlist or blkdiff --list-differing): pipe one in or give --ranges FILE",
            )?;
            (Box::new(io::stdin()), "stdin".into())
        }
    };
    let text = blkpipe_ops::input::open_text(raw, &name, "range list")?;
    Ok((text, name))
}

/// A large buffered stdout, written with write(2) directly ([`RawStdout`]).
pub fn stdout_buffered() -> io::BufWriter<RawStdout> {
    blkpipe_ops::input::enlarge_pipe(1);
    io::BufWriter::with_capacity(1 << 20, RawStdout::new())
}

/// Standard output written with write(2) directly. std's stdout is a line writer: it scans
/// every write for its last newline (a memrchr over each 4 MiB payload of a binary stream,
/// about a sixth of blkread-chunks' CPU time) and copies what follows it into a buffer of its
/// own. Streams have no lines; their writers buffer for themselves.
pub struct RawStdout(ManuallyDrop<File>);

impl RawStdout {
    /// Standard output, after anything std's stdout still buffers.
    pub fn new() -> Self {
        let _ = io::stdout().flush();
        // SAFETY: fd 1 is open for the whole process (std opens /dev/null on a closed one
        // at startup), and ManuallyDrop never closes it: this File only borrows it.
        RawStdout(ManuallyDrop::new(unsafe { File::from_raw_fd(1) }))
    }
}

impl Default for RawStdout {
    fn default() -> Self {
        Self::new()
    }
}

impl io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The option of every tool that writes a binary stream on stdout.
#[derive(clap::Args, Debug, Clone)]
pub struct StreamOutput {
    /// Write the binary stream even when stdout is a terminal.
    #[arg(long, help_heading = "Safety")]
    pub force_tty: bool,
}

impl StreamOutput {
    /// Refuse a terminal as stdout unless `--force-tty` was given.
    pub fn guard(&self) -> anyhow::Result<()> {
        guard_binary_stdout(self.force_tty)
    }
}

/// How the tools that read a device into a patch stream (blkread-chunks, blkdiff) write it.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct PatchStreamArgs {
    /// Compress data payloads with lz4 (only where that makes them smaller).
    #[arg(long)]
    pub lz4: bool,
    /// Use this stream id (32 hex digits) instead of a random one, to resume a stream that
    /// `blkpatch --state` recorded (see `blkpatch --print-state`).
    #[arg(long, value_name = "HEX", value_parser = crate::parse_stream_id)]
    pub stream_id: Option<[u8; 16]>,
}

impl PatchStreamArgs {
    /// The patch stream options of `tool`, sealed with `key` if given.
    pub fn options(
        &self,
        tool: &str,
        key: Option<blkpipe_format::seal::SealKey>,
    ) -> blkpipe_ops::patch_out::PatchOutput {
        blkpipe_ops::patch_out::PatchOutput {
            lz4: self.lz4,
            stream_id: self.stream_id,
            key,
            ..blkpipe_ops::patch_out::PatchOutput::new(tool)
        }
    }
}

/// How a whole device is scanned (blkhash, blkdiff).
#[derive(clap::Args, Debug, Clone)]
pub struct ScanArgs {
    /// Hashing threads; 0 means one per core.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Performance"
    )]
    pub threads: usize,
    /// Read DEV with O_DIRECT, bypassing the page cache (also for parts that are cached).
    #[arg(long, help_heading = "Performance")]
    pub direct: bool,
}

impl ScanArgs {
    /// The scan engine's options: these, dropping from the page cache what the scan read,
    /// and skipping holes of sparse files unless `BLKPIPE_NO_SKIP_HOLES` is set (to compare
    /// against a full read).
    pub fn options(&self) -> blkpipe_ops::scan::ScanOptions {
        blkpipe_ops::scan::ScanOptions {
            threads: self.threads,
            direct: self.direct,
            drop_cache: true,
            skip_holes: std::env::var_os("BLKPIPE_NO_SKIP_HOLES").is_none(),
        }
    }
}
