//! Progress on stderr: a pv-like line (bytes, rate, ETA when the total is known), drawn only
//! when asked for.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress reporter; [`Progress::hidden`] costs nothing.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No progress output.
    pub fn hidden() -> Self {
        Progress { bar: None }
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
        Progress { bar: Some(bar) }
    }

    /// Count `n` more bytes done.
    #[inline]
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Set the total once it becomes known.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Remove the line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
