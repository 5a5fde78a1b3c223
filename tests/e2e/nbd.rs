//! End-to-end tests of NBD exports as sources and targets, against real qemu-nbd (qemu-utils)
//! and nbdinfo (libnbd-bin) over Unix sockets: qcow2 images with dirty bitmaps made by
//! qemu-img and qemu-io, whole pipelines of the tools, guest views compared with
//! `qemu-img compare`. A fake server that lies is in `nbd_lies.rs`.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_stderr_has, bash, bin, pattern, pattern_image, stderr};

/// A qemu-nbd serving one image on a Unix socket, killed on drop.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    fn start(image: &Path, fmt: &str, extra: &[&str]) -> QemuNbd {
        let sock = image.with_extension("sock");
        let pid = image.with_extension("pid");
        let _ = fs::remove_file(&sock);
        let _ = fs::remove_file(&pid);
        let child = Command::new("qemu-nbd")
            .args(["-f", fmt, "-k"])
            .arg(&sock)
            .arg("--pid-file")
            .arg(&pid)
            .args(["-t", "-e", "8", "--cache=writeback"])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd (apt-get install qemu-utils)");
        wait_for(10, "qemu-nbd did not write its pid file", || pid.exists());
        QemuNbd { child, sock }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a bash pipeline (pipefail) with the built tools first on PATH.
fn sh(script: &str) -> Output {
    bash(script).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstderr: {}",
        o.status,
        stderr(o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect(cmd)
}

/// `qemu-img compare` of two images' guest views (-U: they may be exported).
fn same_guest_view(a: &Path, fa: &str, b: &Path, fb: &str) {
    let o = tool(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            fa,
            "-F",
            fb,
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img.to_str().unwrap());
    let o = tool("qemu-io", &args);
    assert!(o.status.success(), "qemu-io: {}", stderr(&o));
}

fn qcow2(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    let o = tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), size],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    p
}

/// Ranges of a range list body (header and comments skipped).
fn ranges(list: &str) -> Vec<(u64, u64)> {
    list.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// The extents nbdinfo's map selects (type bit `bit` set, or clear with `want_set` false),
/// merged.
fn nbdinfo_map(uri: &str, map: &str, bit: u64, want_set: bool) -> Vec<(u64, u64)> {
    let o = tool("nbdinfo", &[&format!("--map={map}"), uri]);
    let text = ok(&o);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (off, len, ty): (u64, u64, u64) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        if (ty & bit != 0) == want_set {
            match out.last_mut() {
                Some(l) if l.0 + l.1 == off => l.1 += len,
                _ => out.push((off, len)),
            }
        }
    }
    out
}

#[test]
fn qcow2_source_into_raw_target_by_allocation_and_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = qcow2(d, "src.qcow2", "48M");
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 5M 3M",
            "write -z 6M 64k",
            "write -P 0x33 47M 1M",
        ],
    );
    // The first full copy, from the allocated extents, into a new sparse raw file.
    let srv = QemuNbd::start(&img, "qcow2", &["-r"]);
    let alloc = ok(&sh(&format!("cowlist --nbd-allocation '{}'", srv.uri())));
    assert!(
        alloc.starts_with("# blkranges v1 size=50331648 "),
        "{alloc}"
    );
    assert_eq!(
        ranges(&alloc),
        nbdinfo_map(&srv.uri(), "base:allocation", 2, false),
        "cowlist's data extents are nbdinfo's non-zero extents"
    );
    let raw = d.join("copy.raw");
    ok(&sh(&format!(
        "cowlist --nbd-allocation '{u}' | blkread-chunks '{u}' | blkpatch {r}",
        u = srv.uri(),
        r = raw.display()
    )));
    same_guest_view(&img, "qcow2", &raw, "raw");
    drop(srv);

    // Writes after a bitmap was added: only they are listed and sent.
    let o = tool(
        "qemu-img",
        &["bitmap", "--add", img.to_str().unwrap(), "b1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    qemu_io(
        &img,
        &[
            "write -P 0x44 2M 128k",
            "write -P 0x55 5M 4k",
            "write -z 47M 512k",
        ],
    );
    let srv = QemuNbd::start(&img, "qcow2", &["-r", "-B", "b1"]);
    let dirty = ok(&sh(&format!("cowlist --nbd-bitmap b1 '{}'", srv.uri())));
    let want = nbdinfo_map(&srv.uri(), "qemu:dirty-bitmap:b1", 1, true);
    assert_eq!(
        ranges(&dirty),
        want,
        "cowlist's dirty extents are nbdinfo's"
    );
    let dirty_bytes: u64 = want.iter().map(|r| r.1).sum();
    assert!(dirty_bytes < 2 << 20, "only the new writes: {want:?}");
    // The same list from nbdinfo's JSON.
    let json = ok(&sh(&format!(
        "nbdinfo --map=qemu:dirty-bitmap:b1 --json '{}' | cowlist --nbd-map -",
        srv.uri()
    )));
    assert_eq!(ranges(&json), want);
    let st = ok(&sh(&format!(
        "cowlist --nbd-bitmap b1 '{u}' | blkread-chunks --stats=json '{u}' 2>{e} | blkpatch {r}; cat {e}",
        u = srv.uri(),
        r = raw.display(),
        e = d.join("stats").display()
    )));
    assert!(st.contains("\"records\""), "{st}");
    same_guest_view(&img, "qcow2", &raw, "raw");
}

#[test]
fn raw_source_into_qcow2_target_through_qemu_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 24usize << 20;
    let mut src = pattern(size, 7);
    src[3 << 20..5 << 20].fill(0); // zero records over the target's data
    let raw = d.join("src.raw");
    fs::write(&raw, &src).unwrap();
    let img = qcow2(d, "dst.qcow2", "24M");
    qemu_io(&img, &["write -P 0x99 0 8M", "write -P 0x77 20M 1M"]);
    let before = d.join("before.raw");
    let o = tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            before.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let srv = QemuNbd::start(&img, "qcow2", &[]);
    let u = srv.uri();
    let undo = d.join("undo.patch");
    let state = d.join("state");
    // Target hashed over NBD, diffed against the local raw source, patched over NBD.
    let o = sh(&format!(
        "blkhash '{u}' | blkdiff {r} | blkpatch --verify --undo {un} --state {st} --stats '{u}'",
        r = raw.display(),
        un = undo.display(),
        st = state.display()
    ));
    ok(&o);
    same_guest_view(&img, "qcow2", &raw, "raw");
    // A second pass finds nothing to send.
    let again = ok(&sh(&format!(
        "blkhash '{u}' | blkdiff {r} | blkpatch --list '{u}'",
        r = raw.display()
    )));
    assert!(again.trim().is_empty(), "second pass listed: {again}");
    // The undo file rolls the export back to what it was.
    ok(&sh(&format!("blkpatch '{u}' < {}", undo.display())));
    same_guest_view(&img, "qcow2", &before, "raw");
    // --discard: zero records may become holes; the guest view still matches.
    ok(&sh(&format!(
        "blkhash '{u}' | blkdiff {r} | blkpatch --discard '{u}'",
        r = raw.display()
    )));
    same_guest_view(&img, "qcow2", &raw, "raw");
}

/// The snapshot metadata readers read through the device engine, so a COW image exported
/// over NBD gives the same range list and the same `--data` stream as the file.
#[test]
fn cow_store_read_over_nbd_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old: Vec<u64> = (0..300).map(|i| i * 7 % 1000).collect();
    let fill = |c: u64, buf: &mut [u8]| buf.fill(c as u8 ^ 0x5a);
    let cow = d.join("cow.raw");
    fs::write(
        &cow,
        blkpipe_testkit::image::build(8, &old, None, Some(&fill)),
    )
    .unwrap();
    let srv = QemuNbd::start(&cow, "raw", &["-r"]);
    let u = srv.uri();
    let c = cow.display();
    let origin = "--origin-size 4M";
    let (a, b) = (d.join("from-file"), d.join("from-nbd"));
    // The range lists are equal byte for byte; the patch streams (each with its own random
    // stream id) write the same bytes.
    for (args, then) in [("", ">"), ("--data", "| blkpatch")] {
        let (ta, tb) = (a.display(), b.display());
        ok(&sh(&format!(
            "cowlist {args} {origin} --cow {c} {then} {ta}"
        )));
        ok(&sh(&format!(
            "cowlist {args} {origin} --cow '{u}' {then} {tb}"
        )));
        let file = fs::read(&a).unwrap();
        assert!(
            file.len() > 300,
            "cowlist {args} wrote {} bytes",
            file.len()
        );
        assert!(
            file == fs::read(&b).unwrap(),
            "cowlist {args}: NBD export and file differ"
        );
        fs::remove_file(&a).unwrap();
        fs::remove_file(&b).unwrap();
    }
}

#[test]
fn refusals_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = qcow2(d, "ro.qcow2", "4M");
    let srv = QemuNbd::start(&img, "qcow2", &["-r"]);
    let u = srv.uri();
    let patch = ok(&sh(&format!(
        "echo '0 4096' | blkread-chunks '{u}' > {p}; echo",
        p = d.join("p").display()
    )));
    assert!(patch.trim().is_empty());
    for (script, code, says) in [
        (
            format!("blkpatch '{u}' < {}", d.join("p").display()),
            5,
            "read-only",
        ),
        (
            format!("cowlist --nbd-bitmap nope '{u}'"),
            5,
            "qemu-nbd -B nope",
        ),
        (
            "blkhash 'nbds://host/disk'".into(),
            2,
            "TLS is not supported",
        ),
        ("blkhash 'nbd+unix:///disk'".into(), 2, "?socket=PATH"),
        (format!("blkhash --direct '{u}'"), 2, "--direct"),
        (
            format!("blkhash 'nbd+unix:///nosuch?socket={}'", srv.sock.display()),
            4,
            "export `nosuch`",
        ),
    ] {
        let o = sh(&script);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{script}: {e}");
        assert!(e.contains(says), "{script}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{script}: one line: {e}");
    }
}

/// Several threads read and write one connection at once (the tools' scan workers, reader
/// thread and writers do): every reply reaches its own request. `data` is the export's
/// initial contents; checked over NBD at the end and returned as the expected contents.
fn exercise_threads(uri: &str, data: &[u8]) -> Vec<u8> {
    let size = data.len();
    let dev = blkpipe_dev::Device::open_nbd(uri, &[], true).unwrap();
    assert_eq!(dev.size(), size as u64);
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dev, barrier) = (&dev, &barrier);
            s.spawn(move || {
                let mut buf = vec![0u8; 300_000];
                for i in 0..40u64 {
                    let off = (i * 7919 + t * 104_729) * 37 % (size as u64 - buf.len() as u64);
                    let n = dev.read_at(&mut buf, off).unwrap();
                    assert_eq!(n, buf.len());
                    assert!(
                        buf[..] == data[off as usize..off as usize + n],
                        "thread {t} read {i}"
                    );
                }
                // Then each thread writes its own region, unaligned at both ends.
                barrier.wait();
                let mine = 1 + t * (3 << 20);
                let w = pattern(1 << 20, 100 + t);
                dev.write_at(&w, mine).unwrap();
            });
        }
    });
    dev.zero_range(5, 70_000, false, &[0u8; 4096]).unwrap();
    dev.zero_range(8 << 20, 3 << 20, true, &[0u8; 4096])
        .unwrap();
    dev.sync().unwrap();
    let mut want = data.to_vec();
    for t in 0..4usize {
        let mine = 1 + t * (3 << 20);
        want[mine..mine + (1 << 20)].copy_from_slice(&pattern(1 << 20, 100 + t as u64));
    }
    want[5..70_005].fill(0);
    want[8 << 20..11 << 20].fill(0);
    let mut back = vec![0u8; size + 100];
    assert_eq!(dev.read_at(&mut back, 0).unwrap(), size, "short at the end");
    assert!(back[..size] == want[..], "contents over NBD");
    want
}

#[test]
fn one_connection_serves_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = pattern_image(dir.path(), "img.raw", 16 << 20, 3);
    let srv = QemuNbd::start(&raw, "raw", &[]);
    let want = exercise_threads(&srv.uri(), &data);
    drop(srv);
    assert!(fs::read(&raw).unwrap() == want, "contents on disk");
}

/// Bulk reads from two threads: over a second connection when the server allows several
/// (qemu-nbd -r -e 8 sets NBD_FLAG_CAN_MULTI_CONN), over one when it does not (no -e); the
/// same bytes either way, and blkread-chunks' copy equals the image.
#[test]
fn bulk_reads_use_a_second_connection_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = pattern_image(dir.path(), "img.raw", 24 << 20, 9);
    for (extra, conns) in [(&["-r"][..], 2), (&["-r", "-e", "1"][..], 1)] {
        let srv = QemuNbd::start(&raw, "raw", extra);
        let dev = blkpipe_dev::Device::open_nbd(&srv.uri(), &[], false).unwrap();
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for t in 0..2usize {
                let (dev, data, barrier) = (&dev, &data, &barrier);
                s.spawn(move || {
                    let mut buf = vec![0u8; 4 << 20];
                    for i in 0..12usize {
                        barrier.wait();
                        let off = ((i * 2 + t) % 6) << 22;
                        assert_eq!(dev.read_at(&mut buf, off as u64).unwrap(), buf.len());
                        assert!(buf[..] == data[off..off + buf.len()], "thread {t} read {i}");
                    }
                });
            }
        });
        assert_eq!(
            dev.nbd().unwrap().connections(),
            conns,
            "qemu-nbd {extra:?}"
        );
        drop(dev);
        let copy = dir.path().join("copy.raw");
        let out = sh(&format!(
            "echo '0 {}' | {} '{}' | {} {}",
            data.len(),
            bin("blkread-chunks").display(),
            srv.uri(),
            bin("blkpatch").display(),
            copy.display()
        ));
        ok(&out);
        assert!(
            fs::read(&copy).unwrap() == data,
            "blkread-chunks copy with {extra:?}"
        );
        fs::remove_file(&copy).unwrap();
    }
}

/// nbdkit (no extended headers) with structured replies, with simple replies only, and with
/// a 4 KiB minimum and 64 KiB maximum block size that it enforces: reads and writes are
/// aligned and split as it asks.
#[test]
fn nbdkit_simple_replies_and_block_size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let policy = [
        "blocksize-minimum=4096",
        "blocksize-preferred=4096",
        "blocksize-maximum=65536",
        "blocksize-error-policy=error",
    ];
    for (i, (flags, params)) in [
        (&[][..], &[][..]),
        (&["--no-sr"][..], &[][..]),
        (&["--filter=blocksize-policy"][..], &policy[..]),
    ]
    .iter()
    .enumerate()
    {
        let sock = dir.path().join(format!("k{i}.sock"));
        let pid = dir.path().join(format!("k{i}.pid"));
        let mut child = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .arg("-P")
            .arg(&pid)
            .args(*flags)
            .args(["memory", "size=16M"])
            .args(*params)
            .stdin(Stdio::null())
            .spawn()
            .expect("nbdkit");
        wait_for(10, "nbdkit did not write its pid file", || pid.exists());
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        exercise_threads(&uri, &vec![0u8; 16 << 20]);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A qemu without a guest (`-machine none`) holding a qcow2 disk node, driven over QMP; the
/// "guest's" writes are qemu-io commands through the human monitor.
struct Qemu {
    child: Child,
    qmp: PathBuf,
}

impl Qemu {
    fn start(dir: &Path, img: &Path) -> Qemu {
        let qmp = dir.join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-blockdev")
            .arg(format!(
                "driver=qcow2,node-name=disk0,file.driver=file,file.filename={}",
                img.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64");
        wait_for(20, "qemu did not listen on its QMP socket", || {
            UnixStream::connect(&qmp).is_ok() // closed at once
        });
        Qemu { child, qmp }
    }

    fn qemu_io(&self, cmd: &str) {
        let script = format!(
            "printf '%s\\n' '{{\"execute\":\"qmp_capabilities\"}}' \
             '{{\"execute\":\"human-monitor-command\",\"arguments\":{{\"command-line\":\"qemu-io disk0 \\\"{cmd}\\\"\"}}}}' \
             | socat -t 2 - UNIX-CONNECT:{}",
            self.qmp.display()
        );
        let out = ok(&sh(&script));
        assert!(out.matches("\"return\"").count() == 2, "{cmd}: {out}");
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vmsync_rounds_follow_the_bitmaps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = qcow2(d, "vm.qcow2", "32M");
    qemu_io(&img, &["write -P 1 0 6M", "write -P 2 30M 2M"]);
    let qemu = Qemu::start(d, &img);
    let copy = d.join("copy.raw");
    let vmsync = Path::new(env!("CARGO_MANIFEST_DIR")).join("shell/vmsync");
    let round = |target: &Path, extra: &str| {
        sh(&format!(
            "{} --qmp {} --node disk0 {extra} {}",
            vmsync.display(),
            qemu.qmp.display(),
            target.display()
        ))
    };
    let o = round(&copy, "");
    assert_stderr_has(&o, "full copy applied");
    ok(&o);
    qemu.qemu_io("write -P 3 1M 64k");
    qemu.qemu_io("write -P 4 20M 1M");
    // A round that fails keeps its changes for the next one.
    let o = round(&d.join("no/such/dir/copy.raw"), "");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_stderr_has(&o, "bitmaps kept");
    qemu.qemu_io("write -P 5 9M 4k");
    // The last round stops the "guest" (qemu flushes the image), so the copy equals it.
    let o = round(&copy, "--pause");
    ok(&o);
    assert_stderr_has(&o, "changes since blkpipe-2");
    same_guest_view(&img, "qcow2", &copy, "raw");
}

/// Wait until `ready()`, for up to `secs` seconds (`what`: the failure message). A server's
/// socket appears at its bind(), before its listen(): a client that connects in between is
/// refused (a CI run failed so). So the servers are waited for by the pid file each writes
/// once it listens (qemu-nbd --pid-file, nbdkit -P), and qemu's QMP socket by a connection.
fn wait_for(secs: u64, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
