use std::fmt::Write as _;
use std::time::Duration;

/// What an operation did, for `--stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Records written or applied.
    pub records: u64,
    /// Bytes read from devices.
    pub bytes_read: u64,
    /// Bytes written to devices (or to the output stream, for producers).
    pub bytes_written: u64,
    /// Bytes carried by data records.
    pub data_bytes: u64,
    /// Bytes covered by zero records.
    pub zero_bytes: u64,
    /// Blocks found equal (hash compare).
    pub blocks_same: u64,
    /// Blocks found different (hash compare).
    pub blocks_different: u64,
    /// Bytes the tool made the kernel read from storage while it worked (`/proc/self/io`
    /// `read_bytes`), where it measures that: blkpatch, up to the end of applying (before
    /// `--verify`). A full rewrite of a target should read nothing from it.
    pub storage_read: Option<u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// A producer's sealed output: its link (header MAC, FORMAT.md 6.6). Not printed.
    pub link: Option<[u8; 32]>,
}

impl Stats {
    /// One JSON object on one line, for scripts.
    pub fn json(&self, tool: &str) -> String {
        format!(
            "{{\"tool\":\"{tool}\",\"records\":{},\"bytes_read\":{},\"bytes_written\":{},\"data_bytes\":{},\"zero_bytes\":{},\"blocks_same\":{},\"blocks_different\":{},{}\"seconds\":{:.6}}}\n",
            self.records,
            self.bytes_read,
            self.bytes_written,
            self.data_bytes,
            self.zero_bytes,
            self.blocks_same,
            self.blocks_different,
            self.storage_read
                .map_or(String::new(), |n| format!("\"storage_read_bytes\":{n},")),
            self.elapsed.as_secs_f64()
        )
    }

    /// A human summary, one `key: value` per line, prefixed by the tool name.
    pub fn human(&self, tool: &str) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "{tool}: {k:<25}{v}");
        };
        line("records:", self.records.to_string());
        line("bytes read from devices:", self.bytes_read.to_string());
        line("bytes written:", self.bytes_written.to_string());
        line("data bytes:", self.data_bytes.to_string());
        line("zero bytes:", self.zero_bytes.to_string());
        if self.blocks_same + self.blocks_different > 0 {
            line("blocks same:", self.blocks_same.to_string());
            line("blocks different:", self.blocks_different.to_string());
        }
        if let Some(n) = self.storage_read {
            line(
                "bytes read from disk:",
                format!("{n} (what the kernel read from storage for this process)"),
            );
        }
        let rate = if secs > 0.0 {
            (self.bytes_read.max(self.bytes_written)) as f64 / secs / (1u64 << 20) as f64
        } else {
            0.0
        };
        line("seconds:", format!("{secs:.3} ({rate:.1} MiB/s)"));
        s
    }
}
