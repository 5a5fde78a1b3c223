//! Write scattered or clustered 4 KiB blocks of pseudo-random data into a (sparse) image, for
//! the scale and WAN benchmarks (`bench/scale`), and print the sorted range list of what was
//! written.
//!
//! ```text
//! cargo run --release -p blkpipe-ops --example scatter -- IMAGE SIZE PER_MILLE [CLUSTER] [SEED]
//! ```
//!
//! IMAGE is created (or extended) to SIZE bytes. PER_MILLE thousandths of its 4 KiB blocks are
//! written, in runs of CLUSTER blocks (default 1: scattered): the device is cut into equal
//! strides and one run lands at a random place in each, so the list comes out sorted and
//! memory stays constant at any size. The data is incompressible (xorshift), different for
//! every block and every SEED. The range list (one line per run) goes to stdout. An IMAGE of
//! `-` writes no image, only the list (for a source that makes its data up, as
//! `bench/scale --nbd` does with nbdkit's random plugin).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 4096;

fn arg(args: &[String], i: usize, what: &str) -> u64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("scatter: {what} must be a number");
        std::process::exit(2)
    })
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: scatter IMAGE|- SIZE PER_MILLE [CLUSTER] [SEED]");
        std::process::exit(2);
    }
    let size = arg(&args, 1, "SIZE");
    let per_mille = arg(&args, 2, "PER_MILLE");
    let cluster = if args.len() > 3 {
        arg(&args, 3, "CLUSTER").max(1)
    } else {
        1
    };
    let seed = if args.len() > 4 {
        arg(&args, 4, "SEED")
    } else {
        1
    };
    let blocks = size / BLOCK;
    let runs = blocks * per_mille / 1000 / cluster;
    if runs == 0 {
        eprintln!("scatter: nothing to write");
        return;
    }
    let stride = blocks / runs;
    let file = (args[0] != "-").then(|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&args[0])
            .unwrap_or_else(|e| {
                eprintln!("scatter: {}: {e}", args[0]);
                std::process::exit(1)
            });
        if file.metadata().map(|m| m.len()).unwrap_or(0) < size {
            file.set_len(size).expect("size IMAGE");
        }
        file
    });
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut buf = vec![0u8; (cluster * BLOCK) as usize];
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "# blkranges v1 size={size} chunk={BLOCK}").expect("stdout");
    let room = stride.saturating_sub(cluster) + 1;
    for i in 0..runs {
        let block = i * stride + rng.next() % room;
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        let offset = block * BLOCK;
        if let Some(file) = &file {
            file.write_all_at(&buf, offset).expect("write IMAGE");
        }
        writeln!(out, "{offset} {}", buf.len()).expect("stdout");
    }
    out.flush().expect("stdout");
}
