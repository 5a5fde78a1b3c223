//! Progress: a pv-like line on stderr (bytes, rate, ETA when the total is known), and a
//! machine-readable feed for wrappers: one `bytes_done bytes_total` line per second on a file
//! descriptor (`bytes_total` is `-` while unknown), and a last line when the work ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress reporter; [`Progress::hidden`] costs nothing.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    feed: Option<Arc<Feed>>,
}

/// The state behind a `--progress-fd` feed.
struct Feed {
    fd: i32,
    done: AtomicU64,
    total: AtomicU64,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const UNKNOWN: u64 = u64::MAX;

impl Feed {
    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        match self.total.load(Ordering::Relaxed) {
            UNKNOWN => format!("{done} -\n"),
            total => format!("{done} {total}\n"),
        }
    }

    fn write_line(&self) {
        let line = self.line();
        // SAFETY: writing a valid buffer to a file descriptor; a closed or broken fd only
        // makes write fail, which a progress feed ignores.
        let _ = unsafe { libc::write(self.fd, line.as_ptr().cast(), line.len()) };
    }
}

impl Progress {
    /// No progress output.
    pub fn hidden() -> Self {
        Progress {
            bar: None,
            feed: None,
        }
    }

    /// Add a feed of `bytes_done bytes_total` lines, once per second, to file descriptor `fd`.
    /// Fails if `fd` is not open.
    pub fn with_feed(mut self, fd: i32) -> std::io::Result<Self> {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("progress file descriptor {fd} is not open"),
            ));
        }
        let feed = Arc::new(Feed {
            fd,
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let ticker = Arc::clone(&feed);
        let handle = std::thread::spawn(move || {
            let tick = Duration::from_millis(100);
            let mut waited = Duration::ZERO;
            while !ticker.stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= Duration::from_secs(1) {
                    ticker.write_line();
                    waited = Duration::ZERO;
                }
            }
        });
        *feed.thread.lock().expect("feed lock") = Some(handle);
        self.feed = Some(feed);
        Ok(self)
    }

    /// A progress line on stderr, `total` bytes if known. `prefix` names the tool.
    pub fn stderr(prefix: &str, total: Option<u64>) -> Self {
        let bar = match total {
            Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if total.is_some() {
            "{prefix}: {bytes}/{total_bytes} {binary_bytes_per_sec} [{wide_bar}] {percent}% ETA {eta}"
        } else {
            "{prefix}: {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_owned());
        Progress {
            bar: Some(bar),
            feed: None,
        }
    }

    /// Count `n` more bytes done.
    #[inline]
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(f) = &self.feed {
            f.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Set the total once it becomes known.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
        if let Some(f) = &self.feed {
            f.total.store(total, Ordering::Relaxed);
        }
    }

    /// Remove the line; stop the feed after writing its last line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(f) = &self.feed {
            f.stop.store(true, Ordering::Relaxed);
            let handle = f.thread.lock().expect("feed lock").take();
            if let Some(h) = handle {
                let _ = h.join();
                f.write_line();
            }
        }
    }
}
