//! Wrong and damaged inputs, end to end: a stream given to the wrong tool is named with the
//! tool it belongs to, and compressed input that does not decode (damaged, cut inside a frame,
//! stray bytes after the last frame) is bad input (exit 3) naming the input and the format.
//! Compressed inputs are made by the real zstd, lz4 and gzip commands.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{assert_stderr_has, pattern, pattern_file, run, run_ok, stderr};

struct Fixture {
    _dir: tempfile::TempDir,
    src: String,
    dst: String,
    patch: Vec<u8>,
    hashes: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let image = |name, seed| {
        let p = pattern_file(dir.path(), name, 1 << 20, seed);
        p.to_str().unwrap().to_owned()
    };
    let (src, dst) = (image("src.img", 1), image("dst.img", 2));
    let patch = run_ok("blkread-chunks", &[&src], b"0 1048576\n");
    let hashes = run_ok("blkhash", &[&dst], b"");
    Fixture {
        _dir: dir,
        src,
        dst,
        patch,
        hashes,
    }
}

/// `data` through `cmd -c` (zstd, lz4 or gzip).
fn compress(cmd: &str, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("in");
    fs::write(&plain, data).unwrap();
    let out = Command::new(cmd)
        .args(["-c", "-q"])
        .arg(&plain)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (tests/install-deps): {e}"));
    assert!(out.status.success(), "{cmd}");
    out.stdout
}

fn assert_refused(tool: &str, args: &[&str], input: &[u8], code: i32, words: &[&str]) {
    let out = run(tool, args, input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{tool} {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{tool}: one line: {err}");
    for w in words {
        assert!(err.contains(w), "{tool} {args:?}: {err:?} lacks {w:?}");
    }
    assert!(!err.contains("bad magic ["), "raw bytes in {err}");
}

#[test]
fn a_stream_given_to_the_wrong_tool_names_the_right_one() {
    let f = fixture();
    let to_blkdiff = "this is a hash stream (from blkhash): give it to blkdiff";
    let to_blkpatch = "this is a patch stream (from blkread-chunks, blkdiff or cowlist --data): give it to blkpatch";
    let to_chunks = "this looks like a range list (from cowlist): give it to blkread-chunks";
    let before = fs::read(&f.dst).unwrap();
    let (src, dst) = (f.src.as_str(), f.dst.as_str());
    let zhashes = compress("zstd", &f.hashes);
    let lz4patch = compress("lz4", &f.patch);
    let zranges = compress("gzip", b"0 4096\n");
    let gunzip = "gzip-compressed: decompress it first (gzip -d)";
    // (tool, its argument, its input, what the one-line error must say); every one exits 3.
    let cases: [(&str, &str, &[u8], &[&str]); 11] = [
        (
            "blkpatch",
            dst,
            &f.hashes,
            &["not a patch stream", to_blkdiff],
        ),
        ("blkpatch", dst, &zhashes, &[to_blkdiff]),
        ("blkpatch", dst, b"0 4096\n65536 4096\n", &[to_chunks]),
        (
            "blkpatch",
            dst,
            b"# blkranges v1 size=1048576\n0 4096\n",
            &[to_chunks],
        ),
        (
            "blkdiff",
            src,
            &f.patch,
            &["not a hash stream", to_blkpatch],
        ),
        ("blkdiff", src, &lz4patch, &[to_blkpatch]),
        ("blkmerge", "-", &f.hashes, &[to_blkdiff]),
        (
            "blkread-chunks",
            src,
            &f.patch,
            &["stdin: not a range list", to_blkpatch],
        ),
        (
            "blkread-chunks",
            src,
            &f.hashes,
            &["not a range list", to_blkdiff],
        ),
        (
            "blkread-chunks",
            src,
            &zranges,
            &["not a range list", gunzip],
        ),
        // Unknown bytes are shown as text, not as a list of hex numbers.
        ("blkpatch", dst, b"\x7fELF\x02\x01\x01\0", &["\\x7fELF"]),
    ];
    for (tool, arg, input, words) in cases {
        assert_refused(tool, &[arg], input, 3, words);
    }
    assert_eq!(fs::read(&f.dst).unwrap(), before, "target untouched");
}

#[test]
fn damaged_compressed_input_is_bad_input_naming_input_and_format() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["zstd", "lz4", "gzip"] {
        let whole = compress(cmd, &f.patch);
        let mut damaged = whole.clone();
        let mid = damaged.len() / 2;
        damaged[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0xa5);
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"x");
        let mut trailing_text = whole.clone();
        trailing_text.extend_from_slice(b"leftover bytes\n");
        let cases: [(&str, &[u8]); 5] = [
            ("cut before the end mark", &whole[..whole.len() - 3]),
            ("cut in the middle", &whole[..whole.len() / 2]),
            ("damaged", &damaged),
            ("one stray byte after", &trailing),
            ("text after", &trailing_text),
        ];
        for (what, bytes) in cases {
            // From stdin, and from a named file.
            let out = run("blkpatch", &["--dry-run"], bytes);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(3), "{cmd} {what}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            // A damaged frame may be caught by the stream's own checksums first.
            if what != "damaged" {
                assert!(
                    err.contains("stdin: ") && err.contains(cmd),
                    "{cmd} {what}: {err}"
                );
            }
            let file = dir.path().join(format!("in.{cmd}"));
            fs::write(&file, bytes).unwrap();
            let file = file.to_str().unwrap();
            let out = run("blkpatch", &["--dry-run", "--input", file], b"");
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(3), "{cmd} {what} --input: {err}");
            if what != "damaged" {
                assert!(
                    err.contains(file) && err.contains(cmd),
                    "{cmd} {what}: {err}"
                );
            }
        }
        // A whole stream, and two frames back to back (as `cat a.zst b.zst` makes), decode.
        let out = run("blkpatch", &["--dry-run"], &whole);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        let half = f.patch.len() / 2;
        let mut two = compress(cmd, &f.patch[..half]);
        two.extend(compress(cmd, &f.patch[half..]));
        let out = run("blkpatch", &["--dry-run"], &two);
        assert!(out.status.success(), "{cmd} two frames: {}", stderr(&out));
    }
    // The same holds for the hash stream blkdiff reads.
    let mut hz = compress("lz4", &f.hashes);
    hz.truncate(hz.len() - 2);
    let out = run("blkdiff", &[&f.src], &hz);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_stderr_has(&out, "lz4 data cut short");
    assert!(Path::new(&f.src).exists());
}

#[test]
fn a_cut_stream_says_how_much_was_written_and_how_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    fs::write(&src, pattern(1 << 20, 5)).unwrap();
    let stream = run(
        "blkread-chunks",
        &[src.to_str().unwrap()],
        b"0 4096\n65536 4096\n131072 4096\n",
    );
    assert!(stream.status.success());
    // Cut inside the third record: two are verified and written.
    let cut = &stream.stdout[..stream.stdout.len() - 2000];
    let dst = dir.path().join("dst.img");
    let out = run("blkpatch", &[dst.to_str().unwrap()], cut);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("truncated")
            && err.contains("the 2 records before the cut are written: rerun to finish"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // --dry-run writes nothing, so it does not say so.
    let out = run("blkpatch", &["--dry-run"], cut);
    assert!(!stderr(&out).contains("written"), "{}", stderr(&out));
}
