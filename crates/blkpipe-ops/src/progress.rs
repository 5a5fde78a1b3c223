//! Progress, wherever it is asked for:
//!
//! - on a terminal, a pv-like line redrawn in place: bytes done, total, percent, rate and ETA
//!   once the total is known ([`Progress::stderr`]);
//! - into a file or pipe (`--progress=always` with stderr redirected), one plain line per
//!   second with the same fields, and a last line when the work ends ([`Progress::lines`]):
//!   `blkpatch: 512.0 MiB of 1.0 GiB (50%), 98.2 MiB/s, ETA 0:05`;
//! - for wrappers, one `bytes_done bytes_total` line per second on a file descriptor
//!   (`bytes_total` is `-` while unknown), and a last line when the work ends
//!   ([`Progress::with_feed`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress reporter; [`Progress::hidden`] costs nothing.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<Arc<Ticker>>,
}

/// Where the once-a-second ticker writes.
enum Sink {
    /// `bytes_done bytes_total` lines on a file descriptor (`--progress-fd`).
    Feed(i32),
    /// Human lines on stderr, prefixed by the tool's name.
    Lines(String),
}

/// The counters and the thread behind the line outputs.
struct Ticker {
    done: AtomicU64,
    total: AtomicU64,
    started: Instant,
    sinks: Mutex<Vec<Sink>>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const UNKNOWN: u64 = u64::MAX;

const TOTAL_TEMPLATE: &str =
    "{prefix}: {bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec} [{wide_bar}] ETA {eta}";
const NO_TOTAL_TEMPLATE: &str = "{prefix}: {bytes} {binary_bytes_per_sec} {elapsed}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `bytes` in binary units with one decimal: `512.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `h:mm:ss` or `m:ss`.
fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// One plain progress line (without a newline): done, total and percent when known, the
/// average rate, and the ETA (or the elapsed time once `finished`).
pub fn progress_line(
    prefix: &str,
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
    finished: bool,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut line = format!("{prefix}: {}", human_bytes(done));
    if let Some(t) = total {
        let pct = if t == 0 {
            100
        } else {
            (done as u128 * 100 / t as u128).min(100)
        };
        line += &format!(" of {} ({pct}%)", human_bytes(t));
    }
    line += &format!(", {}/s", human_bytes(rate as u64));
    if finished {
        line += &format!(", done in {}", clock(elapsed.as_secs()));
    } else if let Some(t) = total {
        match t.saturating_sub(done) {
            0 => line += ", ETA 0:00",
            left if rate > 0.0 => line += &format!(", ETA {}", clock((left as f64 / rate) as u64)),
            _ => line += ", ETA unknown",
        }
    }
    line
}

impl Ticker {
    fn new() -> Arc<Ticker> {
        let t = Arc::new(Ticker {
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            started: Instant::now(),
            sinks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let ticker = Arc::clone(&t);
        let handle = std::thread::spawn(move || {
            let tick = Duration::from_millis(100);
            let mut waited = Duration::ZERO;
            while !ticker.stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= Duration::from_secs(1) {
                    ticker.write_lines(false);
                    waited = Duration::ZERO;
                }
            }
        });
        *t.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        t
    }

    fn write_lines(&self, finished: bool) {
        let done = self.done.load(Ordering::Relaxed);
        let total = match self.total.load(Ordering::Relaxed) {
            UNKNOWN => None,
            t => Some(t),
        };
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        for sink in sinks.iter() {
            let (fd, line) = match sink {
                Sink::Feed(fd) => (
                    *fd,
                    match total {
                        None => format!("{done} -\n"),
                        Some(t) => format!("{done} {t}\n"),
                    },
                ),
                Sink::Lines(prefix) => (
                    2,
                    progress_line(prefix, done, total, self.started.elapsed(), finished) + "\n",
                ),
            };
            // SAFETY: writing a valid buffer to a file descriptor; a closed or broken fd only
            // makes write fail, which progress output ignores.
            let _ = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        }
    }
}

impl Progress {
    /// No progress output.
    pub fn hidden() -> Self {
        Progress {
            bar: None,
            ticker: None,
        }
    }

    fn add_sink(mut self, sink: Sink) -> Self {
        let ticker = self.ticker.get_or_insert_with(Ticker::new);
        ticker
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
        self
    }

    /// Add a feed of `bytes_done bytes_total` lines, once per second, to file descriptor `fd`.
    /// Fails if `fd` is not open.
    pub fn with_feed(self, fd: i32) -> std::io::Result<Self> {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("progress file descriptor {fd} is not open"),
            ));
        }
        Ok(self.add_sink(Sink::Feed(fd)))
    }

    /// Plain progress lines on stderr once per second, for a file or pipe; `prefix` names the
    /// tool. The last line, when the work ends, gives the time it took.
    pub fn lines(prefix: &str) -> Self {
        Progress::hidden().add_sink(Sink::Lines(prefix.to_owned()))
    }

    /// A progress line on stderr, redrawn in place (for a terminal), `total` bytes if known.
    /// `prefix` names the tool.
    pub fn stderr(prefix: &str, total: Option<u64>) -> Self {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        bar.set_style(style(if total.is_some() {
            TOTAL_TEMPLATE
        } else {
            NO_TOTAL_TEMPLATE
        }));
        bar.set_prefix(prefix.to_owned());
        Progress {
            bar: Some(bar),
            ticker: None,
        }
    }

    /// Count `n` more bytes done.
    #[inline]
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(t) = &self.ticker {
            t.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Set the total once it becomes known; the terminal line then shows total, percent and
    /// ETA.
    pub fn set_total(&self, total: u64) {
        if total == UNKNOWN {
            return;
        }
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_style(style(TOTAL_TEMPLATE));
        }
        if let Some(t) = &self.ticker {
            t.total.store(total, Ordering::Relaxed);
        }
    }

    /// Remove the terminal line; stop the line outputs after writing their last line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(t) = &self.ticker {
            t.stop.store(true, Ordering::Relaxed);
            let handle = t.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                let _ = h.join();
                t.write_lines(true);
            }
        }
    }
}

/// A writer that counts what goes through it as progress (for a tool whose work is best
/// measured by its output, like blkmerge).
pub struct ProgressWriter<W> {
    inner: W,
    progress: Progress,
}

impl<W: std::io::Write> ProgressWriter<W> {
    /// Count what is written to `inner` on `progress`.
    pub fn new(inner: W, progress: Progress) -> Self {
        ProgressWriter { inner, progress }
    }
}

impl<W: std::io::Write> std::io::Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_total_percent_rate_and_eta() {
        let l = progress_line(
            "blkpatch",
            512 << 20,
            Some(1 << 30),
            Duration::from_secs(5),
            false,
        );
        assert_eq!(
            l,
            "blkpatch: 512.0 MiB of 1.0 GiB (50%), 102.4 MiB/s, ETA 0:05"
        );
        let l = progress_line("blkhash", 3 << 20, None, Duration::from_secs(1), false);
        assert_eq!(l, "blkhash: 3.0 MiB, 3.0 MiB/s");
        let l = progress_line("x", 1 << 30, Some(1 << 30), Duration::from_secs(3725), true);
        assert_eq!(
            l,
            "x: 1.0 GiB of 1.0 GiB (100%), 281.5 KiB/s, done in 1:02:05"
        );
        let l = progress_line("x", 0, Some(10), Duration::ZERO, false);
        assert_eq!(l, "x: 0 B of 10 B (0%), 0 B/s, ETA unknown");
    }
}
