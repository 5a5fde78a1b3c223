//! Prints the example streams quoted in docs/FORMAT.md (run:
//! `cargo run -p blkpipe-format --example spec_examples`).

use blkpipe_format::digest::{BlockHasher, DigestBuilder};
use blkpipe_format::hash::{HashHeader, HashKind, HashWriter, RangeBindingBuilder};
use blkpipe_format::patch::{PatchHeader, PatchWriter, SourceDigest};
use blkpipe_format::range::{BlockAligned, Range};
use blkpipe_format::seal::SealKey;

fn hex(bytes: &[u8]) {
    for line in bytes.chunks(16) {
        let h: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("{}", h.join(" "));
    }
}

/// The patch of FORMAT.md 2.4 (sealed with `key`: 6.4): an 8 KiB source, "blkpipe!" x 8 at 0
/// as one 64-byte data record, a zero record at 4096; with `digest`, the end record carries
/// the source digest (seed 42).
fn example_patch(id: &[u8; 16], key: Option<&SealKey>, digest: bool) -> Vec<u8> {
    let mut header = PatchHeader::new(8192, *id);
    header.total_payload = 64 + 4096;
    header.creator = "spec".into();
    let mut w = PatchWriter::start(Vec::new(), header, false, false, key).unwrap();
    w.write_data(0, &b"blkpipe!".repeat(8)).unwrap();
    w.write_zero(4096, 4096).unwrap();
    let mut source = vec![0u8; 8192];
    source[..64].copy_from_slice(&b"blkpipe!".repeat(8));
    let digest = digest.then(|| SourceDigest {
        block_size: 4096,
        seed: 42,
        digest: blkpipe_format::digest::digest_of(&source, 4096, 42),
    });
    w.finish(digest).unwrap()
}

/// The hash stream of a device of `size` zero bytes (4096-byte blocks, seed 42, 64-bit
/// hashes, two blocks a group): of every block, or, range-restricted, of the blocks of
/// `ranges` (block-aligned already); keyed with `key`.
fn example_hash(size: u64, ranges: Option<&[Range]>, key: Option<&SealKey>) -> Vec<u8> {
    let whole = [Range {
        offset: 0,
        length: size,
    }];
    let binding = ranges.map(|list| {
        let mut b = RangeBindingBuilder::new(4096);
        for r in list {
            b.push(r.offset, r.length);
        }
        b.finish()
    });
    let h = HashHeader {
        block_size: 4096,
        kind: HashKind::Xxh3_64,
        group_blocks: 2,
        device_size: size,
        seed: 42,
        start_offset: 0,
        ranges: binding,
    };
    let device = vec![0u8; size as usize];
    let hasher = BlockHasher::new(42, key);
    let mut w = HashWriter::start(Vec::new(), h, key).unwrap();
    let mut d = DigestBuilder::new(4096, 42);
    for r in ranges.unwrap_or(&whole) {
        for off in (r.offset..r.end()).step_by(4096) {
            let block = &device[off as usize..(off + 4096).min(r.end()) as usize];
            let bh = hasher.hash(block);
            w.push(bh).unwrap();
            d.push(bh, block.len() as u64);
        }
    }
    w.finish(d.finish()).unwrap()
}

fn main() {
    let out = example_patch(b"example-stream-1", None, true);
    println!("== patch ({} bytes)", out.len());
    hex(&out);

    // Hash: a 10000-byte device of zeros.
    let out = example_hash(10000, None, None);
    println!("== hash ({} bytes)", out.len());
    hex(&out);

    // Range-restricted hash: a 20000-byte device of zeros, list `4100 10` and `16384 100`.
    let list = [
        Range {
            offset: 4100,
            length: 10,
        },
        Range {
            offset: 16384,
            length: 100,
        },
    ];
    let canonical: Vec<Range> =
        BlockAligned::new(list.iter().map(|r| Ok::<_, ()>(*r)), 4096, 20000)
            .map(|r| r.unwrap())
            .collect();
    let out = example_hash(20000, Some(&canonical), None);
    println!(
        "== ranged hash ({} bytes), canonical {canonical:?}",
        out.len()
    );
    hex(&out);

    // Sealed patch (FORMAT.md 6.4): the records of 2.4, no source digest, key 00 01 .. 1f.
    let key: Vec<u8> = (0u8..32).collect();
    let key = SealKey::from_slice(&key).unwrap();
    let out = example_patch(b"example-stream-2", Some(&key), false);
    println!("== sealed patch ({} bytes)", out.len());
    hex(&out);

    // Keyed hash (FORMAT.md 6.5): the device of 3.4 under the same key.
    let out = example_hash(10000, None, Some(&key));
    println!("== keyed hash ({} bytes)", out.len());
    hex(&out);
}
