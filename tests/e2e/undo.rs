//! `blkpatch --undo` gives the target back as it was, size included, with the release tools
//! joined by real pipes: a full image (blkread-chunks of a whole image, unsealed and sealed)
//! applied to a file that did not exist, an empty file, a shorter one, one of the same size,
//! a longer one (the stream shrinks it: its tail must be in the undo stream) and a loop
//! device (whose size cannot change). Each undo is applied with `--undo` of its own (a redo),
//! which must lead back to the image: so the undo of a shrink and of a growth are both
//! checked, and a shrink's sparse tail costs the undo stream only its data.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{pattern, require_loop, run, run_ok, stderr, write_target, Loop};

/// The source: 3 MiB + 1 KiB (not a multiple of 4 KiB) with a zero run inside.
const SRC_LEN: usize = (3 << 20) + 1024;

struct Case {
    dir: tempfile::TempDir,
    src: Vec<u8>,
    /// `--key FILE` when sealed.
    key: Vec<String>,
}

impl Case {
    fn new(sealed: bool) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let mut src = pattern(SRC_LEN, 31);
        src[100_000..900_000].fill(0);
        fs::write(dir.path().join("src.img"), &src).unwrap();
        let mut key = Vec::new();
        if sealed {
            let k = dir.path().join("key");
            fs::write(&k, pattern(32, 32)).unwrap();
            fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
            key = vec!["--key".into(), k.to_str().unwrap().into()];
        }
        Case { dir, src, key }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// blkread-chunks of the whole source (with `extra` options).
    fn full_image(&self, extra: &[&str]) -> Vec<u8> {
        let mut args: Vec<&str> = self.key.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let src = self.path("src.img");
        args.push(src.to_str().unwrap());
        run_ok("blkread-chunks", &args, format!("0 {SRC_LEN}\n").as_bytes())
    }

    /// `blkpatch [--key K] EXTRA... TARGET < stream`, which must succeed.
    fn patch(&self, target: &Path, stream: &[u8], extra: &[&str]) {
        let mut args: Vec<&str> = self.key.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        args.push(target.to_str().unwrap());
        let out = run("blkpatch", &args, stream);
        assert!(out.status.success(), "blkpatch {args:?}: {}", stderr(&out));
    }

    /// Apply `stream` with `--undo`; return the undo stream.
    fn patch_undo(&self, target: &Path, stream: &[u8], undo: &str, extra: &[&str]) -> Vec<u8> {
        let u = self.path(undo);
        let mut args = vec!["--undo", u.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.patch(target, stream, &args);
        fs::read(&u).unwrap()
    }

    /// The undo stream is valid under the key (and refused without it when sealed).
    fn check_valid(&self, undo: &[u8]) {
        let mut args: Vec<&str> = self.key.iter().map(String::as_str).collect();
        args.push("--dry-run");
        let out = run("blkpatch", &args, undo);
        assert!(out.status.success(), "undo stream: {}", stderr(&out));
        if !self.key.is_empty() {
            let out = run("blkpatch", &["--dry-run"], undo);
            assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        }
    }
}

/// The full image over a file holding `old` (`None`: no file), its undo, the undo of that undo:
/// image, old contents and size, image again.
fn file_round_trip(c: &Case, name: &str, old: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let t = c.path(name);
    if let Some(old) = old {
        write_target(&t, old);
    }
    let image = c.full_image(&[]);
    let undo = c.patch_undo(&t, &image, &format!("{name}.undo"), &[]);
    assert!(fs::read(&t).unwrap() == c.src, "{name}: the image");
    c.check_valid(&undo);
    let redo = c.patch_undo(&t, &undo, &format!("{name}.redo"), &[]);
    // A file blkpatch created comes back empty: blkpatch never removes a file.
    let want = old.unwrap_or(&[]);
    let got = fs::read(&t).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: the old size");
    assert!(got == want, "{name}: the old bytes");
    c.check_valid(&redo);
    c.patch(&t, &redo, &[]);
    assert!(fs::read(&t).unwrap() == c.src, "{name}: the image again");
    (undo, redo)
}

fn files(sealed: bool) {
    let c = Case::new(sealed);
    // No file: the undo stream is empty and of size 0.
    let (undo, _) = file_round_trip(&c, "new.img", None);
    let mut list: Vec<&str> = c.key.iter().map(String::as_str).collect();
    list.push("--list");
    let out = run_ok("blkpatch", &list, &undo);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    file_round_trip(&c, "empty.img", Some(&[]));
    // Shorter, ending inside a block, with a zero run: the undo saves only what was there.
    let mut shorter = pattern((1 << 20) + 100, 33);
    shorter[4096..200_000].fill(0);
    file_round_trip(&c, "shorter.img", Some(&shorter));
    file_round_trip(&c, "same.img", Some(&pattern(SRC_LEN, 34)));
    // Longer: the stream shrinks it to the source's size; the tail comes back.
    file_round_trip(&c, "longer.img", Some(&pattern(SRC_LEN + 5000, 35)));
}

#[test]
fn full_image_undo_and_redo_give_back_each_file_unsealed() {
    files(false);
}

#[test]
fn full_image_undo_and_redo_give_back_each_file_sealed() {
    files(true);
}

/// A file far longer than the source, mostly a hole: the undo stream carries the tail's data,
/// not its hole, and the restored file is sparse again (its holes before the source's end are
/// zero records, which `--discard` punches).
#[test]
fn shrinking_a_sparse_file_saves_only_the_tails_data() {
    for sealed in [false, true] {
        let c = Case::new(sealed);
        let t = c.path("sparse.img");
        let size: u64 = 1 << 30;
        let f = fs::File::create(&t).unwrap();
        f.set_len(size).unwrap();
        let tail_data = pattern(8192, 36);
        std::os::unix::fs::FileExt::write_all_at(&f, &tail_data, size - 3 * 4096).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &tail_data, 600 << 20).unwrap();
        drop(f);
        let old_blocks = fs::metadata(&t).unwrap().blocks();
        let image = c.full_image(&[]);
        let undo = c.patch_undo(&t, &image, "sparse.undo", &[]);
        assert_eq!(fs::metadata(&t).unwrap().len(), SRC_LEN as u64);
        assert!(
            undo.len() < SRC_LEN + (1 << 20),
            "the undo stream holds the hole: {} bytes",
            undo.len()
        );
        // With --discard its zero records punch holes again: as sparse as before.
        c.patch(&t, &undo, &["--discard"]);
        let m = fs::metadata(&t).unwrap();
        assert_eq!(m.len(), size);
        assert!(
            m.blocks() <= old_blocks + 64,
            "the tail's hole was filled: {} blocks, {old_blocks} before",
            m.blocks()
        );
        let f = fs::File::open(&t).unwrap();
        let mut buf = vec![0u8; 8192];
        for at in [size - 3 * 4096, 600 << 20] {
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at).unwrap();
            assert!(buf == tail_data, "tail data at {at}");
        }
        let mut buf = vec![0u8; 1 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 100 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}

/// A loop device larger than the source: its size cannot change, so the undo covers what was
/// written and the rest of the device is untouched throughout.
#[test]
fn full_image_undo_and_redo_on_a_loop_device() {
    for sealed in [false, true] {
        let c = Case::new(sealed);
        let backing = c.path("loop.img");
        let old = pattern(4 << 20, 37);
        fs::write(&backing, &old).unwrap();
        let dev = require_loop(Loop::attach(&backing));
        let image = c.full_image(&[]);
        let undo = c.patch_undo(dev.path(), &image, "loop.undo", &[]);
        let got = fs::read(dev.path()).unwrap();
        assert!(got[..SRC_LEN] == c.src[..] && got[SRC_LEN..] == old[SRC_LEN..]);
        c.check_valid(&undo);
        let redo = c.patch_undo(dev.path(), &undo, "loop.redo", &[]);
        assert!(fs::read(dev.path()).unwrap() == old, "sealed {sealed}");
        c.patch(dev.path(), &redo, &[]);
        let got = fs::read(dev.path()).unwrap();
        assert!(got[..SRC_LEN] == c.src[..] && got[SRC_LEN..] == old[SRC_LEN..]);
    }
}

/// A chained full image (a backup chain's base) applied with `--chain-state` over a longer
/// file: its undo (a rollback) gives the file back, size included, and the undo of that undo
/// (a redo) is taken where the undo left the target and gives the image again.
#[test]
fn chained_full_image_undo_and_redo_over_a_longer_file() {
    let c = Case::new(true);
    let chain = c.path("chain");
    let image = c.full_image(&["--chain", chain.to_str().unwrap(), "--new-chain", "1"]);
    let t = c.path("t.img");
    let old = pattern(SRC_LEN + (1 << 20), 38);
    write_target(&t, &old);
    let cs = c.path("cs");
    let cs = ["--chain-state", cs.to_str().unwrap()];
    let undo = c.patch_undo(&t, &image, "t.undo", &cs);
    assert!(fs::read(&t).unwrap() == c.src);
    c.check_valid(&undo);
    let rollback = [&cs[..], &["--accept-rollback"]].concat();
    let redo = c.patch_undo(&t, &undo, "t.redo", &rollback);
    assert!(fs::read(&t).unwrap() == old);
    c.check_valid(&redo);
    c.patch(&t, &redo, &cs);
    assert!(fs::read(&t).unwrap() == c.src);
}
