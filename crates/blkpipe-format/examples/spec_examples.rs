//! Prints the example streams quoted in docs/FORMAT.md (run:
//! `cargo run -p blkpipe-format --example spec_examples`).

use blkpipe_format::digest::{block_hash, DigestBuilder};
use blkpipe_format::hash::{HashHeader, HashKind, HashWriter, RangeBindingBuilder};
use blkpipe_format::patch::{PatchHeader, PatchWriter, SourceDigest};
use blkpipe_format::range::{BlockAligned, Range};

fn hex(bytes: &[u8]) {
    for line in bytes.chunks(16) {
        let h: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("{}", h.join(" "));
    }
}

fn main() {
    // Patch: an 8 KiB source; "blkpipe!" x 8 at 0 ... as one 64-byte data record, a zero record.
    let mut header = PatchHeader::new(8192, *b"example-stream-1");
    header.total_payload = 64 + 4096;
    header.creator = "spec".into();
    let mut w = PatchWriter::new(Vec::new(), header, false).unwrap();
    w.write_data(0, &b"blkpipe!".repeat(8)).unwrap();
    w.write_zero(4096, 4096).unwrap();
    let mut source = vec![0u8; 8192];
    source[..64].copy_from_slice(&b"blkpipe!".repeat(8));
    let digest = blkpipe_format::digest::digest_of(&source, 4096, 42);
    let out = w
        .finish(Some(SourceDigest {
            block_size: 4096,
            seed: 42,
            digest,
        }))
        .unwrap();
    println!("== patch ({} bytes)", out.len());
    hex(&out);

    // Hash: a 10000-byte device of zeros, 4096-byte blocks, seed 42, 64-bit hashes.
    let device = vec![0u8; 10000];
    let h = HashHeader {
        block_size: 4096,
        kind: HashKind::Xxh3_64,
        group_blocks: 2,
        device_size: 10000,
        seed: 42,
        start_offset: 0,
        ranges: None,
    };
    let mut w = HashWriter::new(Vec::new(), h).unwrap();
    let mut d = DigestBuilder::new(4096, 42);
    for block in device.chunks(4096) {
        let bh = block_hash(block, 42);
        w.push(bh).unwrap();
        d.push(bh, block.len() as u64);
    }
    let out = w.finish(d.finish()).unwrap();
    println!("== hash ({} bytes)", out.len());
    hex(&out);

    // Range-restricted hash: a 20000-byte device of zeros, list `4100 10` and `16384 100`.
    let device = vec![0u8; 20000];
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
    let mut b = RangeBindingBuilder::new(4096);
    for r in &canonical {
        b.push(r.offset, r.length);
    }
    let h = HashHeader {
        block_size: 4096,
        kind: HashKind::Xxh3_64,
        group_blocks: 2,
        device_size: 20000,
        seed: 42,
        start_offset: 0,
        ranges: Some(b.finish()),
    };
    let mut w = HashWriter::new(Vec::new(), h).unwrap();
    let mut d = DigestBuilder::new(4096, 42);
    for r in &canonical {
        for off in (r.offset..r.end()).step_by(4096) {
            let block = &device[off as usize..(off + 4096).min(r.end()) as usize];
            let bh = block_hash(block, 42);
            w.push(bh).unwrap();
            d.push(bh, block.len() as u64);
        }
    }
    let out = w.finish(d.finish()).unwrap();
    println!(
        "== ranged hash ({} bytes), canonical {canonical:?}",
        out.len()
    );
    hex(&out);

    // Sealed patch (FORMAT.md 6.4): the records of 2.4, no source digest, key 00 01 .. 1f.
    let key: Vec<u8> = (0u8..32).collect();
    let key = blkpipe_format::seal::SealKey::from_slice(&key).unwrap();
    let mut header = PatchHeader::new(8192, *b"example-stream-2");
    header.total_payload = 64 + 4096;
    header.creator = "spec".into();
    let mut w = PatchWriter::start(Vec::new(), header, false, false, Some(&key)).unwrap();
    w.write_data(0, &b"blkpipe!".repeat(8)).unwrap();
    w.write_zero(4096, 4096).unwrap();
    let out = w.finish(None).unwrap();
    println!("== sealed patch ({} bytes)", out.len());
    hex(&out);
    let sealed_link: [u8; 32] = out[70..102].try_into().unwrap();

    // Chained patch (FORMAT.md 6.7): step 2 of chain "example-chain-01", after the stream of
    // 6.4 (its header MAC is the link), one zero record.
    let mut header = PatchHeader::new(8192, *b"example-stream-3");
    header.total_payload = 4096;
    header.creator = "spec".into();
    header.chain = Some(blkpipe_format::chain::ChainBlock {
        chain_id: *b"example-chain-01",
        kind: blkpipe_format::chain::ChainKind::Forward,
        first: 2,
        last: 2,
        prev: sealed_link,
        head: blkpipe_format::chain::NO_LINK,
    });
    let mut w = PatchWriter::start(Vec::new(), header, false, false, Some(&key)).unwrap();
    w.write_zero(4096, 4096).unwrap();
    let out = w.finish(None).unwrap();
    println!("== chained patch ({} bytes)", out.len());
    hex(&out);

    // Keyed hash (FORMAT.md 6.5): the device of 3.4 under the same key.
    let device = vec![0u8; 10000];
    let h = HashHeader {
        block_size: 4096,
        kind: HashKind::Xxh3_64,
        group_blocks: 2,
        device_size: 10000,
        seed: 42,
        start_offset: 0,
        ranges: None,
    };
    let hasher = blkpipe_format::digest::BlockHasher::new(42, Some(&key));
    let mut w = HashWriter::start(Vec::new(), h, Some(&key)).unwrap();
    let mut d = DigestBuilder::new(4096, 42);
    for block in device.chunks(4096) {
        let bh = hasher.hash(block);
        w.push(bh).unwrap();
        d.push(bh, block.len() as u64);
    }
    let out = w.finish(d.finish()).unwrap();
    println!("== keyed hash ({} bytes)", out.len());
    hex(&out);
}
