//! Generate a COW image (a sparse file) whose exception store holds N exceptions, laid out as
//! the kernel writes them, for the `bench/cowlist` benchmark and for experiments.
//!
//! ```text
//! cargo run --release -p blkpipe-meta --example gen_cow -- OUT N [CHUNK_SECTORS] [sequential]
//! ```
//!
//! The origin chunks are distinct and scattered (a fixed odd multiplier modulo a power of two
//! at least 4 N), or ascending with `sequential`. Data chunks are left as holes. Prints the
//! origin size to use (`--origin-size`) on stdout.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use blkpipe_meta::snapshot::StoreHeader;
use blkpipe_testkit::image;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: gen_cow OUT N [CHUNK_SECTORS] [sequential]");
        std::process::exit(2);
    }
    let n: u64 = args[1].parse().expect("N is a number");
    let chunk_sectors: u32 = args.get(2).map_or(8, |s| s.parse().expect("CHUNK_SECTORS"));
    let sequential = args.get(3).is_some_and(|s| s == "sequential");
    let header =
        StoreHeader::parse(&image::header_bytes(true, chunk_sectors)).expect("valid chunk size");
    let cb = header.chunk_bytes();
    let origin_chunks = (4 * n).max(1).next_power_of_two();
    let entries: Vec<(u64, u64)> = (0..n)
        .map(|i| {
            let old = if sequential {
                i
            } else {
                (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1e995) & (origin_chunks - 1)
            };
            (old, header.data_chunk(i).expect("fits"))
        })
        .collect();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&args[0])
        .expect("create OUT");
    file.set_len(image::min_chunks(chunk_sectors, n) * cb)
        .expect("size OUT");
    image::write_store(chunk_sectors, true, &entries, |off, b| {
        file.write_all_at(b, off)
    })
    .expect("write OUT");
    file.sync_all().expect("sync OUT");
    println!("{}", origin_chunks * cb);
}
