//! Chain attacks (issue 15): sealed backup chains whose streams are swapped, dropped,
//! replayed, taken from another chain under the same key, put back older (rollback), or undo
//! streams applied at another position. None is accepted (except a rollback with
//! `--accept-rollback`), and the target is byte-identical to its state before the bad stream
//! every time: chain refusals come from the header, before a record is read.
//!
//! Most attacks run in-process: the library's reader, chain rules (`blkpipe_ops::chain`) and
//! merge (`merge_patches`) on in-memory targets. A sample goes through the real blkread-chunks,
//! blkmerge and blkpatch binaries, and lvbackup's restore path on a directory of real files.

use blkpipe_format::chain::{ChainBlock, ChainKind, Link, NO_LINK};
use blkpipe_format::patch::{PatchHeader, PatchReader, PatchWriter, RecordData};
use blkpipe_format::seal::SealKey;
use blkpipe_ops::chain::{advance, check, undo_block, ChainAccept, ChainPos};
use blkpipe_ops::merge::{merge_patches, MergeOptions};

use crate::common;

mod real;

/// splitmix64 (reproducible from its seed).
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const SIZE: usize = 32 << 10;

/// One chain: a full image at step `base`, then incrementals; the image after each step, and
/// the undo stream of each incremental.
struct Chain {
    base: u64,
    /// streams[i] brings the target to step base + i.
    streams: Vec<Vec<u8>>,
    /// images[i]: the target at step base + i.
    images: Vec<Vec<u8>>,
    /// undos[i] (i >= 1): takes step base + i back to base + i - 1.
    undos: Vec<Option<Vec<u8>>>,
    /// The undo of the full image (back to an all-zero target), and the undo of that undo:
    /// a redo, which applies only where that undo left the target.
    undo_full: Vec<u8>,
    redo_full: Vec<u8>,
}

fn write_stream(
    key: &SealKey,
    block: ChainBlock,
    image: &[u8],
    regions: &[(usize, usize)],
) -> (Vec<u8>, Link) {
    let mut header = PatchHeader::new(SIZE as u64, rand_id(block.first, image));
    header.chain = Some(block);
    let mut w = PatchWriter::start(Vec::new(), header, false, false, Some(key)).unwrap();
    let link = w.link().unwrap();
    for &(off, len) in regions {
        w.write_data(off as u64, &image[off..off + len]).unwrap();
    }
    (w.finish(None).unwrap(), link)
}

fn rand_id(step: u64, image: &[u8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&step.to_le_bytes());
    id[8..].copy_from_slice(&blkpipe_format::xxh3::xxh3_64_with_seed(image, 0).to_le_bytes());
    id
}

fn gen_chain(rng: &mut Rng, key: &SealKey, base: u64, len: usize) -> Chain {
    let chain_id: [u8; 16] = rng.bytes(16).try_into().unwrap();
    let mut image = rng.bytes(SIZE);
    let full = ChainBlock {
        chain_id,
        kind: ChainKind::Forward,
        first: base,
        last: base,
        prev: NO_LINK,
        head: NO_LINK,
    };
    let (s, mut link) = write_stream(key, full, &image, &[(0, SIZE)]);
    let undo = undo_block(&full, &link);
    let (undo_full, undo_link) = write_stream(key, undo, &[0; SIZE], &[(0, SIZE)]);
    let (redo_full, _) = write_stream(key, undo_block(&undo, &undo_link), &image, &[(0, SIZE)]);
    let mut c = Chain {
        base,
        streams: vec![s],
        images: vec![image.clone()],
        undos: vec![None],
        undo_full,
        redo_full,
    };
    for i in 1..len as u64 {
        let old = image.clone();
        let mut regions = Vec::new();
        let mut off = rng.below(4096) as usize;
        while off < SIZE && regions.len() < 4 {
            let l = (1 + rng.below(3000) as usize).min(SIZE - off);
            let fill = rng.bytes(l);
            image[off..off + l].copy_from_slice(&fill);
            regions.push((off, l));
            off += l + rng.below(8192) as usize;
        }
        let step = base + i;
        let block = ChainBlock {
            chain_id,
            kind: ChainKind::Forward,
            first: step,
            last: step,
            prev: link,
            head: NO_LINK,
        };
        let (s, l) = write_stream(key, block, &image, &regions);
        let undo = ChainBlock {
            kind: ChainKind::Undo,
            head: l,
            ..block
        };
        let (u, _) = write_stream(key, undo, &old, &regions);
        c.streams.push(s);
        c.images.push(image.clone());
        c.undos.push(Some(u));
        link = l;
    }
    c
}

/// Apply `stream` as blkpatch --chain-state does: header, chain rules, then each record;
/// the position advances only once the whole stream is applied.
fn apply(
    key: &SealKey,
    state: &mut Option<ChainPos>,
    stream: &[u8],
    target: &mut [u8],
    accept: ChainAccept,
) -> Result<(), String> {
    let mut r = PatchReader::with_key(stream, Vec::new(), Some(key)).map_err(|e| e.to_string())?;
    let block = r.header().chain.ok_or("no chain block")?;
    check(
        std::path::Path::new("state"),
        state.as_ref(),
        &block,
        accept,
    )
    .map_err(|e| e.to_string())?;
    while let Some(rec) = r.next_record().map_err(|e| e.to_string())? {
        let range = rec.offset as usize..(rec.offset + rec.length) as usize;
        match rec.data {
            RecordData::Data(d) => target[range].copy_from_slice(d),
            RecordData::Zero => target[range].fill(0),
        }
    }
    *state = Some(advance(key.id(), &block, &r.link().unwrap()));
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Attack {
    Swap,
    Drop,
    Replay,
    Foreign,
    OlderFull,
    OlderChain,
    NewerChain,
    UndoElsewhere,
    UndoWithoutAccept,
    RedoElsewhere,
    ForgedChainBlock,
}

const ATTACKS: [Attack; 11] = [
    Attack::Swap,
    Attack::Drop,
    Attack::Replay,
    Attack::Foreign,
    Attack::OlderFull,
    Attack::OlderChain,
    Attack::NewerChain,
    Attack::UndoElsewhere,
    Attack::UndoWithoutAccept,
    Attack::RedoElsewhere,
    Attack::ForgedChainBlock,
];

/// Plain blkpatch --chain-state (no --accept-* option).
const STRICT: ChainAccept = ChainAccept {
    rollback: false,
    new_chain: false,
};

/// A target that follows chain `c` up to step base + k is given a bad stream: refused, target
/// unchanged, position unchanged. Returns false if the attack does not apply at `k`. `other`
/// is another chain under the same key (`newer`: one whose full image is after `c`'s steps).
fn one_attack(
    rng: &mut Rng,
    key: &SealKey,
    which: Attack,
    c: &Chain,
    other: &Chain,
    newer: &Chain,
) -> bool {
    let n = c.streams.len();
    let k = 1 + rng.below(n as u64 - 1) as usize; // the target holds base + k (k >= 1)
    let bad: Vec<u8> = match which {
        Attack::Swap | Attack::Drop => {
            // The next two swapped, or the next one dropped: either way step k+2 comes next.
            if k + 2 >= n {
                return false;
            }
            c.streams[k + 2].clone()
        }
        Attack::Replay => c.streams[1 + rng.below(k as u64) as usize].clone(),
        Attack::Foreign => {
            // The other chain's incremental at the very step expected next.
            let j = (c.base + k as u64 + 1).checked_sub(other.base);
            match j {
                Some(j) if (1..other.streams.len() as u64).contains(&j) => {
                    other.streams[j as usize].clone()
                }
                _ => return false,
            }
        }
        Attack::OlderFull => c.streams[0].clone(),
        Attack::OlderChain => other.streams[0].clone(),
        // Another volume's newer full image under a shared key.
        Attack::NewerChain => newer.streams[0].clone(),
        // The redo of the full image, on a target past it (or `other`'s, on any).
        Attack::RedoElsewhere => [&c.redo_full, &other.redo_full][rng.below(2) as usize].clone(),
        Attack::UndoElsewhere => {
            let j = 1 + rng.below(n as u64 - 1) as usize;
            if j == k {
                return false;
            }
            c.undos[j].clone().unwrap()
        }
        Attack::UndoWithoutAccept => c.undos[k].clone().unwrap(),
        Attack::ForgedChainBlock => {
            // Step k+1 with its chain block's step or prev link altered and its xxh3 fixed:
            // only the header MAC can tell.
            if k + 1 >= n {
                return false;
            }
            let mut s = c.streams[k + 1].clone();
            // (the header is 58 bytes: no creator; the chain block follows it)
            let at =
                58 + [rng.below(16) as usize, 40 + rng.below(64) as usize][rng.below(2) as usize];
            s[at] ^= 1 << rng.below(8);
            let sum = blkpipe_format::xxh3::xxh3_64_with_seed(&s[58..162], 0);
            s[162..170].copy_from_slice(&sum.to_le_bytes());
            s
        }
    };
    // Follow the genuine chain up to base + k.
    let mut state = None;
    let mut t = vec![0u8; SIZE];
    for s in &c.streams[..=k] {
        apply(key, &mut state, s, &mut t, STRICT).unwrap();
    }
    assert!(t == c.images[k]);
    let before = state.clone();
    let r = apply(key, &mut state, &bad, &mut t, STRICT);
    let e = match r {
        Ok(()) => panic!("{which:?} at step {} accepted", c.base + k as u64),
        Err(e) => e,
    };
    assert!(t == c.images[k], "{which:?}: target changed ({e})");
    assert_eq!(state, before, "{which:?}: position changed");
    let want = match which {
        Attack::Swap | Attack::Drop => "dropped",
        Attack::Replay => "replayed",
        Attack::Foreign => "foreign chain",
        Attack::OlderFull | Attack::UndoWithoutAccept => "rollback refused",
        Attack::OlderChain | Attack::NewerChain => "full image of another chain",
        Attack::RedoElsewhere => "redo for another position",
        Attack::UndoElsewhere => "another position",
        Attack::ForgedChainBlock => "MAC mismatch",
    };
    assert!(
        e.contains(want) || which == Attack::RedoElsewhere && e.contains("foreign chain"),
        "{which:?}: {e}"
    );
    true
}

#[test]
fn thousands_of_chain_attacks_in_process_none_accepted() {
    let key = SealKey::from_slice(&[0x5c; 32]).unwrap();
    let mut rng = Rng(0xc4a1_0001);
    let mut count = std::collections::HashMap::new();
    let mut done = 0;
    while done < 3000 {
        // An older chain (steps 1..4) and a newer one under the same key.
        let other = gen_chain(&mut rng, &key, 1, 4);
        let (base, len) = (5 + rng.below(3), 4 + rng.below(4) as usize);
        let c = gen_chain(&mut rng, &key, base, len);
        // Foreign needs a chain overlapping in steps: a parallel chain at the same base.
        let parallel = gen_chain(&mut rng, &key, c.base, c.streams.len());
        let newer = gen_chain(&mut rng, &key, c.base + c.streams.len() as u64, 1);
        for _ in 0..12 {
            let which = ATTACKS[rng.below(ATTACKS.len() as u64) as usize];
            let o = if which == Attack::Foreign {
                &parallel
            } else {
                &other
            };
            if one_attack(&mut rng, &key, which, &c, o, &newer) {
                *count.entry(which).or_insert(0u32) += 1;
                done += 1;
            }
        }
        // What is refused without --accept-rollback is taken with it: an older full image
        // gives its image, the undo of the step held gives the step before.
        let rollback = ChainAccept {
            rollback: true,
            new_chain: false,
        };
        let k = c.streams.len() - 1;
        let mut state = None;
        let mut t = vec![0u8; SIZE];
        for s in &c.streams {
            apply(&key, &mut state, s, &mut t, STRICT).unwrap();
        }
        apply(
            &key,
            &mut state,
            c.undos[k].as_ref().unwrap(),
            &mut t,
            rollback,
        )
        .unwrap();
        assert!(t == c.images[k - 1]);
        assert_eq!(state.as_ref().unwrap().step, c.base + k as u64 - 1);
        // ... and the incremental re-applied goes forward again.
        apply(&key, &mut state, &c.streams[k], &mut t, STRICT).unwrap();
        assert!(t == c.images[k]);
        // Another chain only with --accept-new-chain (an older one with --accept-rollback too).
        let new_chain = ChainAccept {
            rollback: false,
            new_chain: true,
        };
        assert!(apply(&key, &mut state, &other.streams[0], &mut t, new_chain).is_err());
        assert!(apply(&key, &mut state, &other.streams[0], &mut t, rollback).is_err());
        assert!(t == c.images[k]);
        let both = ChainAccept {
            rollback: true,
            new_chain: true,
        };
        apply(&key, &mut state, &other.streams[0], &mut t, both).unwrap();
        assert!(t == other.images[0]);
        apply(&key, &mut state, &newer.streams[0], &mut t, new_chain).unwrap();
        assert!(t == newer.images[0]);
        // A redo of a full image is taken only where that image's undo left the target, and
        // then leads where the full image led.
        let mut state = None;
        let mut t = vec![0u8; SIZE];
        assert!(apply(&key, &mut state, &c.redo_full, &mut t, both).is_err());
        apply(&key, &mut state, &c.streams[0], &mut t, STRICT).unwrap();
        let at_full = state.clone();
        assert!(apply(&key, &mut state, &c.redo_full, &mut t, both).is_err());
        apply(&key, &mut state, &c.undo_full, &mut t, rollback).unwrap();
        assert!(t.iter().all(|&b| b == 0));
        assert!(apply(&key, &mut state, &other.redo_full, &mut t, both).is_err());
        apply(&key, &mut state, &c.redo_full, &mut t, STRICT).unwrap();
        assert!(t == c.images[0]);
        assert_eq!(state, at_full);
        apply(&key, &mut state, &c.streams[1], &mut t, STRICT).unwrap();
        assert!(t == c.images[1]);
    }
    for a in ATTACKS {
        assert!(
            count.get(&a).copied().unwrap_or(0) > 100,
            "{a:?}: {count:?}"
        );
    }
}

/// blkmerge (in-process): inputs that are not consecutive steps of one chain are refused
/// before any output; consecutive ones merge into one stream bound to their steps, which
/// applies as the chain does.
#[test]
fn merge_attacks_in_process_none_accepted() {
    let key = SealKey::from_slice(&[0x5d; 32]).unwrap();
    let mut rng = Rng(0xc4a1_0002);
    let opts = MergeOptions {
        lz4: false,
        key: Some(key.clone()),
    };
    let merge = |inputs: Vec<&Vec<u8>>| -> Result<Vec<u8>, String> {
        let named = inputs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("in{i}"), &s[..]))
            .collect();
        let mut out = Vec::new();
        merge_patches(named, &mut out, &opts)
            .map(|_| out)
            .map_err(|e| e.to_string())
    };
    let mut done = 0;
    while done < 1000 {
        let base = 1 + rng.below(5);
        let c = gen_chain(&mut rng, &key, base, 5);
        let other = gen_chain(&mut rng, &key, c.base, 5);
        // Genuine: the full image and every incremental: bound as the whole chain.
        let all: Vec<&Vec<u8>> = c.streams.iter().collect();
        let m = merge(all).unwrap();
        let mut state = None;
        let mut t = vec![0u8; SIZE];
        apply(&key, &mut state, &m, &mut t, STRICT).unwrap();
        assert!(t == c.images[4]);
        assert_eq!(state.as_ref().unwrap().step, c.base + 4);
        // Undo streams 4, 3, 2 merged take step 4 back to step 1.
        let undo: Vec<&Vec<u8>> = (2..5).rev().map(|i| c.undos[i].as_ref().unwrap()).collect();
        let u = merge(undo).unwrap();
        let rollback = ChainAccept {
            rollback: true,
            new_chain: false,
        };
        apply(&key, &mut state, &u, &mut t, rollback).unwrap();
        assert!(t == c.images[1]);
        // Attacks.
        let s = &c.streams;
        let u = |i: usize| c.undos[i].as_ref().unwrap();
        let bad: Vec<Vec<&Vec<u8>>> = vec![
            vec![&s[0], &s[2], &s[1], &s[3]],      // swapped
            vec![&s[0], &s[1], &s[3]],             // dropped
            vec![&s[0], &s[1], &s[1], &s[2]],      // replayed
            vec![&s[0], &s[1], &other.streams[2]], // foreign
            vec![&s[1], &s[2], &s[0]],             // full image put last
            vec![u(4), u(2)],                      // undo dropped
            vec![u(2), u(3)],                      // undo order
            vec![&s[0], u(1)],                     // kinds mixed
        ];
        for (i, inputs) in bad.into_iter().enumerate() {
            let e = merge(inputs).expect_err(&format!("merge attack {i} accepted"));
            assert!(
                e.contains("not consecutive")
                    || e.contains("foreign chain")
                    || e.contains("mixes undo")
                    || e.contains("does not follow"),
                "{i}: {e}"
            );
            done += 1;
        }
    }
}

/// The key file the real binaries read.
pub(crate) fn key_file(dir: &std::path::Path, name: &str, byte: u8) -> String {
    let p = dir.join(name);
    std::fs::write(&p, [byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Run a tool, asserting its exit code; returns stdout.
pub(crate) fn run_ok(tool: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = common::run(tool, args, stdin);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        common::stderr(&out)
    );
    out.stdout
}
