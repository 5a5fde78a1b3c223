//! Chain attacks through the real binaries (blkread-chunks --chain, blkmerge, blkpatch
//! --chain-state) and through lvbackup's restore path on a directory of real backup files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{key_file, run_ok, Rng};
use crate::common;

/// A chain of real files: images v0..vN (the volume at steps 1..N+1), the full image at step
/// 1, an incremental per later step, and the undo file of each incremental.
struct Files {
    dir: tempfile::TempDir,
    key: String,
    images: Vec<Vec<u8>>,
    /// streams[i]: brings a target to step i + 1 (streams[0] is the full image).
    streams: Vec<PathBuf>,
    /// undos[i] (i >= 1): takes step i + 1 back to step i.
    undos: Vec<Option<PathBuf>>,
}

const SIZE: usize = 256 << 10;

fn make_chain(rng: &mut Rng, steps: usize, tag: &str, key_byte: u8) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = key_file(d, "key", key_byte);
    let chain = d.join("chain").to_str().unwrap().to_owned();
    let mut image = common::pattern(SIZE, rng.next());
    let img = d.join("v.img");
    std::fs::write(&img, &image).unwrap();
    let imgs = img.to_str().unwrap().to_owned();
    let full = run_ok(
        "blkread-chunks",
        &["--key", &key, "--chain", &chain, "--new-chain", "1", &imgs],
        format!("0 {SIZE}\n").as_bytes(),
    );
    let mut f = Files {
        images: vec![image.clone()],
        streams: vec![d.join(format!("{tag}1.full"))],
        undos: vec![None],
        key,
        dir,
    };
    std::fs::write(&f.streams[0], full).unwrap();
    for step in 2..=steps {
        let mut ranges = String::new();
        let mut changed = image.clone();
        for _ in 0..3 {
            let off = rng.below(SIZE as u64 - 8192) as usize;
            let len = 1 + rng.below(8000) as usize;
            for b in &mut changed[off..off + len] {
                *b = rng.next() as u8;
            }
            ranges += &format!("{off} {len}\n");
        }
        // The undo: the old contents of the ranges, bound as the undo of the step written next.
        let old = f.dir.path().join("old.img");
        std::fs::write(&old, &image).unwrap();
        std::fs::write(&img, &changed).unwrap();
        let incr = run_ok(
            "blkread-chunks",
            &["--key", &f.key, "--chain", &chain, &imgs],
            ranges.as_bytes(),
        );
        let undo = run_ok(
            "blkread-chunks",
            &[
                "--key",
                &f.key,
                "--chain-undo",
                &chain,
                old.to_str().unwrap(),
            ],
            ranges.as_bytes(),
        );
        let (sp, up) = (
            f.dir.path().join(format!("{tag}{step}.incr")),
            f.dir.path().join(format!("{tag}{step}.undo")),
        );
        std::fs::write(&sp, incr).unwrap();
        std::fs::write(&up, undo).unwrap();
        f.streams.push(sp);
        f.undos.push(Some(up));
        image = changed;
        f.images.push(image.clone());
    }
    f
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// blkpatch --chain-state on an image file: each bad stream exits 5 with its own message, and
/// neither the image nor the state file changes.
#[test]
fn blkpatch_chain_state_refuses_out_of_chain_streams() {
    let mut rng = Rng(0xc4a1_1001);
    let f = make_chain(&mut rng, 5, "a", 7);
    let other = make_chain(&mut rng, 5, "b", 7); // the same key, another chain
    let d = f.dir.path();
    let t = d.join("t.img");
    let st = d.join("t.chain");
    let patch = |stream: &Path, extra: &[&str]| {
        let mut args = vec!["--key", &f.key, "--chain-state", s(&st)];
        args.extend_from_slice(extra);
        args.extend(["--input", s(stream), s(&t)]);
        common::run("blkpatch", &args, b"")
    };
    for i in 0..3 {
        let out = patch(&f.streams[i], &[]);
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    assert!(std::fs::read(&t).unwrap() == f.images[2]);
    let state = std::fs::read(&st).unwrap();
    let cases: Vec<(&Path, &str)> = vec![
        (&f.streams[4], "dropped stream"),
        (&f.streams[1], "replayed or older"),
        (&f.streams[2], "replayed or older"),
        (&other.streams[3], "foreign chain"),
        (&f.streams[0], "rollback refused"),
        (&other.streams[0], "full image of another chain"),
        (f.undos[3].as_deref().unwrap(), "another position"),
        (f.undos[2].as_deref().unwrap(), "rollback refused"),
    ];
    for (stream, want) in cases {
        let out = patch(stream, &[]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{want}: {err}");
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{want}: {err}"
        );
        assert!(
            std::fs::read(&t).unwrap() == f.images[2],
            "{want}: image changed"
        );
        assert_eq!(std::fs::read(&st).unwrap(), state, "{want}: state changed");
    }
    // Swapped incrementals through blkmerge: refused before any output.
    let out = common::run(
        "blkmerge",
        &["--key", &f.key, s(&f.streams[4]), s(&f.streams[3])],
        b"",
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    assert!(out.stdout.is_empty());
    // In order, through blkmerge: steps 4 and 5 in one stream.
    let m = run_ok(
        "blkmerge",
        &["--key", &f.key, s(&f.streams[3]), s(&f.streams[4])],
        b"",
    );
    let out = common::run(
        "blkpatch",
        &[
            "--key",
            &f.key,
            "--chain-state",
            s(&st),
            "--undo",
            s(&d.join("u45")),
            s(&t),
        ],
        &m,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(&t).unwrap() == f.images[4]);
    // blkpatch's undo file is bound to steps 4..5: refused without --accept-rollback, taken
    // with it (back to step 3), and then refused (the target no longer holds step 5).
    let u45 = std::fs::read(d.join("u45")).unwrap();
    let out = common::run(
        "blkpatch",
        &["--key", &f.key, "--chain-state", s(&st), s(&t)],
        &u45,
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    let rb = [
        "--key",
        &f.key,
        "--chain-state",
        s(&st),
        "--accept-rollback",
        s(&t),
    ];
    run_ok("blkpatch", &rb, &u45);
    assert!(std::fs::read(&t).unwrap() == f.images[2]);
    let out = common::run("blkpatch", &rb, &u45);
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    // An older full image with --accept-rollback.
    run_ok("blkpatch", &rb, &std::fs::read(&f.streams[0]).unwrap());
    assert!(std::fs::read(&t).unwrap() == f.images[0]);
    // The state names its target: another image is refused.
    let t2 = d.join("t2.img");
    std::fs::write(&t2, b"").unwrap();
    let out = common::run(
        "blkpatch",
        &["--key", &f.key, "--chain-state", s(&st), s(&t2)],
        &std::fs::read(&f.streams[1]).unwrap(),
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("another target"));
    // A chain under another key: its full image is refused with this state file (made under
    // the first key).
    let k9 = make_chain(&mut rng, 1, "z", 9);
    let out = common::run(
        "blkpatch",
        &[
            "--key",
            &k9.key,
            "--chain-state",
            s(&st),
            "--input",
            s(&k9.streams[0]),
            s(&t),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("is for key id"),
        "{}",
        common::stderr(&out)
    );
    // ... taken with --accept-new-chain (a new chain after key rotation): the state is then
    // under the new key.
    run_ok(
        "blkpatch",
        &[
            "--key",
            &k9.key,
            "--chain-state",
            s(&st),
            "--accept-new-chain",
            "--input",
            s(&k9.streams[0]),
            s(&t),
        ],
        b"",
    );
    assert!(std::fs::read(&t).unwrap() == k9.images[0]);
    assert!(std::fs::read_to_string(&st).unwrap().contains("step=1 "));
}

/// A newer full image of another chain under the same key (another volume's backups) is
/// refused unless --accept-new-chain; the undo of the undo of a full image (a redo) is taken
/// only where that undo left the target, never as a full image.
#[test]
fn new_chains_and_redos_of_full_images_through_blkpatch() {
    let mut rng = Rng(0xc4a1_1004);
    let f = make_chain(&mut rng, 3, "a", 7);
    let d = f.dir.path();
    let t = d.join("t.img");
    let st = d.join("t.chain");
    let patch = |stream: &Path, extra: &[&str]| {
        let mut args = vec!["--key", &f.key, "--chain-state", s(&st)];
        args.extend_from_slice(extra);
        args.extend(["--input", s(stream), s(&t)]);
        common::run("blkpatch", &args, b"")
    };
    let refused = |stream: &Path, extra: &[&str], want: &str| {
        let (image, state) = (std::fs::read(&t).ok(), std::fs::read(&st).ok());
        let out = patch(stream, extra);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{want}: {err}");
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{want}: {err}"
        );
        assert!(std::fs::read(&t).ok() == image, "{want}: image changed");
        assert!(std::fs::read(&st).ok() == state, "{want}: state changed");
    };
    // Volume B's full image at step 9, under the same key.
    let b_img = d.join("b.img");
    let b_data = common::pattern(SIZE, rng.next());
    std::fs::write(&b_img, &b_data).unwrap();
    let b_full = d.join("b9.full");
    let out = run_ok(
        "blkread-chunks",
        &[
            "--key",
            &f.key,
            "--chain",
            s(&d.join("b.chain")),
            "--new-chain",
            "9",
            s(&b_img),
        ],
        format!("0 {SIZE}\n").as_bytes(),
    );
    std::fs::write(&b_full, out).unwrap();
    // The full image of A on a zeroed image, with an undo file; then B's newer full image:
    // refused, even with --accept-rollback; taken with --accept-new-chain.
    std::fs::write(&t, vec![0u8; SIZE]).unwrap();
    let u1 = d.join("u1");
    let out = patch(&f.streams[0], &["--undo", s(&u1)]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    refused(&b_full, &[], "full image of another chain");
    refused(&b_full, &["--accept-rollback"], "--accept-new-chain");
    // The redo: the undo of A's full image, applied with --undo r1.
    let r1 = d.join("r1");
    let out = patch(&u1, &["--accept-rollback", "--undo", s(&r1)]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(&t).unwrap() == vec![0u8; SIZE]);
    // On a target where the undo did not leave it: refused (a fresh state, or step 1).
    let fresh = d.join("fresh.chain");
    let out = common::run(
        "blkpatch",
        &[
            "--key",
            &f.key,
            "--chain-state",
            s(&fresh),
            "--accept-new-chain",
            "--input",
            s(&r1),
            s(&d.join("fresh.img")),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("records no step yet"));
    assert!(!d.join("fresh.img").exists());
    // Where the undo left it: taken, the image and position of step 1 again.
    let out = patch(&r1, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(&t).unwrap() == f.images[0]);
    refused(
        &r1,
        &["--accept-rollback", "--accept-new-chain"],
        "redo for another position",
    );
    let out = patch(&f.streams[1], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // B's full image with --accept-new-chain: the target is B's, the state B's chain.
    let out = patch(&b_full, &["--accept-new-chain"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(std::fs::read(&t).unwrap() == b_data);
    refused(&f.streams[2], &[], "foreign chain");
}

/// Random sequences of real streams fed to blkpatch --chain-state: each is accepted exactly
/// when it is the next step (or a newer full image), and the image is then the step's image;
/// otherwise exit 5 and the image as it was.
#[test]
fn random_chain_sequences_through_blkpatch() {
    let mut rng = Rng(0xc4a1_1002);
    let f = make_chain(&mut rng, 5, "c", 3);
    let d = f.dir.path();
    let t = d.join("t.img");
    let st = d.join("t.chain");
    let mut held: Option<usize> = None;
    let mut refused = 0;
    for _ in 0..120 {
        let i = rng.below(f.streams.len() as u64) as usize;
        let before = std::fs::read(&t).ok();
        let out = common::run(
            "blkpatch",
            &[
                "--key",
                &f.key,
                "--chain-state",
                s(&st),
                "--input",
                s(&f.streams[i]),
                s(&t),
            ],
            b"",
        );
        let ok = match held {
            None => i == 0,
            Some(h) => i == h + 1,
        };
        if ok {
            assert!(
                out.status.success(),
                "{i} after {held:?}: {}",
                common::stderr(&out)
            );
            assert!(std::fs::read(&t).unwrap() == f.images[i]);
            held = Some(i);
        } else {
            assert_eq!(out.status.code(), Some(5), "{i} after {held:?}");
            assert!(
                std::fs::read(&t).ok() == before,
                "{i} after {held:?}: image changed"
            );
            refused += 1;
        }
    }
    assert!(
        refused > 50 && held.is_some_and(|h| h >= 2),
        "{refused} {held:?}"
    );
}

/// lvbackup --restore on a directory laid out as lvbackup --key writes it (the backup side
/// needs LVM: tests/vm/lvm-workflows): the index MAC is checked, files swapped or from
/// another chain are refused before TARGET is touched, --chain-state refuses a rollback unless
/// --accept-rollback, and --encrypt-to/--decrypt-with's age files restore.
#[test]
fn lvbackup_restore_of_a_sealed_chain() {
    let mut rng = Rng(0xc4a1_1003);
    let f = make_chain(&mut rng, 4, "x", 4);
    let d = f.dir.path();
    let bk = d.join("bk");
    std::fs::create_dir(&bk).unwrap();
    let mut index = format!("# lvbackup v1 origin=vg/lv size={SIZE}\n");
    for (i, p) in f.streams.iter().enumerate() {
        let n = i + 1;
        let kind = if i == 0 { "full" } else { "incr" };
        let file = format!("{n:06}.{kind}.patch");
        std::fs::copy(p, bk.join(&file)).unwrap();
        let undo = match &f.undos[i] {
            Some(u) => {
                let name = format!("{n:06}.undo.patch");
                std::fs::copy(u, bk.join(&name)).unwrap();
                name
            }
            None => "-".into(),
        };
        index += &format!("{n} {kind} lv-lvbackup-{n} 0 0 {file} - {undo}\n");
    }
    // Backup 5: a --full, which starts a new chain (at step 5) in the same directory.
    let img5 = common::pattern(SIZE, rng.next());
    std::fs::write(d.join("v5.img"), &img5).unwrap();
    let full5 = run_ok(
        "blkread-chunks",
        &[
            "--key",
            &f.key,
            "--chain",
            s(&d.join("chain5")),
            "--new-chain",
            "5",
            s(&d.join("v5.img")),
        ],
        format!("0 {SIZE}\n").as_bytes(),
    );
    std::fs::write(bk.join("000005.full.patch"), full5).unwrap();
    index += "5 full lv-lvbackup-5 0 0 000005.full.patch - -\n";
    let write_index = |body: &str, key: &str| {
        std::fs::write(bk.join("lvbackup.index"), body).unwrap();
        let mac = run_ok(
            "blkhash",
            &["--key", key, "--mac", s(&bk.join("lvbackup.index"))],
            b"",
        );
        let mac = String::from_utf8(mac).unwrap();
        let mac = mac.split_whitespace().next().unwrap();
        std::fs::write(bk.join("lvbackup.index"), format!("{body}# mac {mac}\n")).unwrap();
    };
    write_index(&index, &f.key);
    let lvbackup = |args: &[&str]| {
        let bin = common::bin("blkpatch");
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap()
        );
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/shell/lvbackup"))
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap()
    };
    let t = d.join("r.img");
    let st = d.join("r.chain");
    let (ts, sts, bks) = (s(&t), s(&st), s(&bk));
    let key = f.key.as_str();
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    ok(lvbackup(&[
        "--key",
        key,
        "--chain-state",
        sts,
        "--restore",
        "3",
        bks,
        ts,
    ]));
    assert!(std::fs::read(&t).unwrap() == f.images[2]);
    // Forward with --from, then a rollback: refused, then taken with --accept-rollback.
    ok(lvbackup(&[
        "--key",
        key,
        "--chain-state",
        sts,
        "--restore",
        "4",
        "--from",
        "3",
        bks,
        ts,
    ]));
    assert!(std::fs::read(&t).unwrap() == f.images[3]);
    for args in [
        vec!["--restore", "2"],
        vec!["--restore", "2", "--from", "4"],
    ] {
        let mut a = vec!["--key", key, "--chain-state", sts];
        a.extend(args.iter().copied());
        a.extend([bks, ts]);
        let out = lvbackup(&a);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            common::stderr(&out)
        );
        assert!(
            common::stderr(&out).contains("rollback refused"),
            "{}",
            common::stderr(&out)
        );
        assert!(
            std::fs::read(&t).unwrap() == f.images[3],
            "{args:?}: image changed"
        );
    }
    ok(lvbackup(&[
        "--key",
        key,
        "--chain-state",
        sts,
        "--accept-rollback",
        "--restore",
        "2",
        "--from",
        "4",
        bks,
        ts,
    ]));
    assert!(std::fs::read(&t).unwrap() == f.images[1]);
    // Backup 5 belongs to another chain than the one TARGET holds: refused unless
    // --accept-new-chain, which blkpatch is given.
    let out = lvbackup(&[
        "--key",
        key,
        "--chain-state",
        sts,
        "--restore",
        "5",
        bks,
        ts,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("--accept-new-chain"),
        "{}",
        common::stderr(&out)
    );
    assert!(std::fs::read(&t).unwrap() == f.images[1]);
    let out = lvbackup(&["--accept-new-chain", "--restore", "5", bks, ts]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    ok(lvbackup(&[
        "--key",
        key,
        "--chain-state",
        sts,
        "--accept-new-chain",
        "--restore",
        "5",
        bks,
        ts,
    ]));
    assert!(std::fs::read(&t).unwrap() == img5);
    // Without the key: refused. A tampered index: refused.
    let out = lvbackup(&["--restore", "2", bks, ts]);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    let mut forged = std::fs::read_to_string(bk.join("lvbackup.index")).unwrap();
    forged = forged.replacen("3 incr", "3 full", 1);
    std::fs::write(bk.join("lvbackup.index"), &forged).unwrap();
    let out = lvbackup(&["--key", key, "--restore", "3", bks, s(&d.join("n.img"))]);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("MAC mismatch"),
        "{}",
        common::stderr(&out)
    );
    write_index(&index, &f.key);
    // Swapped incremental files (2 and 3 renamed into each other's place), a file of another
    // chain under the same key, and a replayed file: refused, TARGET untouched.
    let before = std::fs::read(&t).unwrap();
    let swap = |a: &str, b: &str| {
        std::fs::rename(bk.join(a), bk.join("tmp")).unwrap();
        std::fs::rename(bk.join(b), bk.join(a)).unwrap();
        std::fs::rename(bk.join("tmp"), bk.join(b)).unwrap();
    };
    let other = make_chain(&mut rng, 4, "y", 4);
    let restore_refused = |what: &str| {
        let out = lvbackup(&["--key", key, "--restore", "4", bks, ts]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{what}: {}",
            common::stderr(&out)
        );
        assert!(
            std::fs::read(&t).unwrap() == before,
            "{what}: TARGET changed"
        );
    };
    swap("000002.incr.patch", "000003.incr.patch");
    restore_refused("swapped");
    swap("000002.incr.patch", "000003.incr.patch");
    let keep = std::fs::read(bk.join("000003.incr.patch")).unwrap();
    std::fs::copy(&other.streams[2], bk.join("000003.incr.patch")).unwrap();
    restore_refused("foreign");
    std::fs::copy(&f.streams[1], bk.join("000003.incr.patch")).unwrap();
    restore_refused("replayed");
    std::fs::write(bk.join("000003.incr.patch"), keep).unwrap();
    ok(lvbackup(&[
        "--key",
        key,
        "--restore",
        "4",
        bks,
        s(&d.join("fresh.img")),
    ]));
    assert!(std::fs::read(d.join("fresh.img")).unwrap() == f.images[3]);

    // age: the same directory with every file encrypted to a recipient.
    assert!(
        Command::new("age").arg("--version").output().is_ok(),
        "age is not installed: apt-get install age (tests/install-deps)"
    );
    let id = d.join("age.id");
    let kg = Command::new("age-keygen")
        .args(["-o", s(&id)])
        .output()
        .unwrap();
    assert!(kg.status.success());
    let recip = Command::new("age-keygen")
        .args(["-y", s(&id)])
        .output()
        .unwrap();
    let recip = String::from_utf8(recip.stdout).unwrap().trim().to_owned();
    let mut enc_index = String::new();
    for line in index.lines() {
        let mut words: Vec<String> = line.split(' ').map(str::to_owned).collect();
        if !line.starts_with('#') {
            for w in [5, 7] {
                if words[w] != "-" {
                    let out = Command::new("age")
                        .args(["-r", &recip, "-o"])
                        .arg(bk.join(format!("{}.age", words[w])))
                        .arg(bk.join(&words[w]))
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                    std::fs::remove_file(bk.join(&words[w])).unwrap();
                    words[w] += ".age";
                }
            }
        }
        enc_index += &(words.join(" ") + "\n");
    }
    write_index(&enc_index, &f.key);
    let e = d.join("enc.img");
    let out = lvbackup(&["--key", key, "--restore", "4", bks, s(&e)]);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    let idp = s(&id);
    ok(lvbackup(&[
        "--key",
        key,
        "--decrypt-with",
        idp,
        "--restore",
        "4",
        bks,
        s(&e),
    ]));
    assert!(std::fs::read(&e).unwrap() == f.images[3]);
    ok(lvbackup(&[
        "--key",
        key,
        "--decrypt-with",
        idp,
        "--restore",
        "2",
        "--from",
        "4",
        bks,
        s(&e),
    ]));
    assert!(std::fs::read(&e).unwrap() == f.images[1]);
    ok(lvbackup(&[
        "--key",
        key,
        "--decrypt-with",
        idp,
        "--restore",
        "1",
        bks,
        s(&d.join("e1.img")),
    ]));
    assert!(std::fs::read(d.join("e1.img")).unwrap() == f.images[0]);
}
