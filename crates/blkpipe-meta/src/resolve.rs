//! From an LVM snapshot's name to its COW device and origin.
//!
//! A snapshot can be named `vg/snap`, `/dev/vg/snap`, `/dev/mapper/vg-snap` or a bare dm name.
//! LVM's dm name is `VG-LV` with every `-` inside the VG and LV names doubled ([`dm_name`]).
//! `dmsetup table NAME` gives the snapshot's one table line,
//!
//! ```text
//! 0 2097152 snapshot 254:11 254:12 P 16
//! ```
//!
//! (start and length in sectors, target, origin device, COW device, store type, chunk size in
//! sectors, optional feature arguments) which [`parse_table_line`] checks: the target must be
//! `snapshot` with a persistent store (`P`, or `PO` with overflow reporting). A merging snapshot
//! (`snapshot-merge`: the kernel is consuming its store), a transient store (`N`: the exceptions
//! live only in kernel memory) and other targets are refused with the reason. The devices are
//! then found through `/sys/dev/block/MAJ:MIN` (size, dm name) and `/dev/block/MAJ:MIN`,
//! `/dev/dm-N` or `/dev/mapper/NAME`, each checked to be the right block device.

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::MetaError;

/// A device argument of a table line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevRef {
    /// `MAJOR:MINOR`, as the kernel prints it.
    MajMin(u32, u32),
    /// A path (tables loaded by hand may name devices by path).
    Path(PathBuf),
}

impl std::fmt::Display for DevRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevRef::MajMin(a, b) => write!(f, "{a}:{b}"),
            DevRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The persistent store variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `P`
    Persistent,
    /// `PO`: persistent, and userspace understands "Overflow" in the status.
    PersistentOverflow,
}

/// A checked `snapshot` table line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTable {
    /// Length of the snapshot device in sectors.
    pub sectors: u64,
    /// The origin (for LVM, the `-real` device).
    pub origin: DevRef,
    /// The COW device (for LVM, the `-cow` device).
    pub cow: DevRef,
    /// Store type.
    pub store: StoreKind,
    /// Chunk size in sectors as the table gives it (the store header's value wins).
    pub chunk_sectors: u64,
    /// Feature arguments (`discard_zeroes_cow`, ...).
    pub features: Vec<String>,
}

/// The dm name LVM gives `vg/lv`: each `-` doubled in both names, joined by `-`.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// Split a dm name made by [`dm_name`] back into `(vg, lv)`: the first `-` not doubled.
pub fn split_dm_name(name: &str) -> Option<(String, String)> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let (vg, lv) = (&name[..i], &name[i + 1..]);
            return Some((vg.replace("--", "-"), lv.replace("--", "-")));
        }
        i += 1;
    }
    None
}

fn parse_dev(s: &str) -> Option<DevRef> {
    if s.starts_with('/') {
        return Some(DevRef::Path(PathBuf::from(s)));
    }
    let (a, b) = s.split_once(':')?;
    Some(DevRef::MajMin(a.parse().ok()?, b.parse().ok()?))
}

/// Parse and check one line of `dmsetup table NAME` output for snapshot `name` (used only in
/// messages). A leading `NAME: ` (as `dmsetup table` without a name prints) is skipped.
pub fn parse_table_line(name: &str, line: &str) -> Result<SnapshotTable, MetaError> {
    let line = line.trim();
    let line = match line.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest,
        _ => line,
    };
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let bad = |why: String| MetaError::Resolve(format!("{name}: table line {line:?}: {why}"));
    let refuse = |why: String| MetaError::Refused(format!("{name}: {why}"));
    if f.len() < 3 {
        return Err(bad("expected START LENGTH TARGET ARGS".into()));
    }
    let sectors: u64 = f[1]
        .parse()
        .map_err(|_| bad("length is not a number".into()))?;
    let why_not = match f[2] {
        "snapshot" => None,
        "snapshot-merge" => Some("the snapshot is being merged into its origin (target snapshot-merge): the kernel is consuming its exception store, which no longer lists the changes"),
        "snapshot-origin" => Some("this is a snapshot origin (target snapshot-origin), not a snapshot; name the snapshot LV instead (lvs -o lv_name,origin)"),
        "thin" => Some("this is a thin volume (target thin), which has no exception store; use thin_delta and cowlist --thin-delta"),
        "era" => Some("this is a dm-era device (target era); use era_invalidate and cowlist --era-invalidate"),
        other => {
            return Err(refuse(format!(
                "target type is {other}, not snapshot: not an LVM snapshot"
            )))
        }
    };
    if let Some(why) = why_not {
        return Err(refuse(why.into()));
    }
    if f.len() < 7 {
        return Err(bad(
            "a snapshot line needs ORIGIN COW PERSISTENT CHUNKSIZE".into()
        ));
    }
    let origin = parse_dev(f[3]).ok_or_else(|| bad(format!("origin {:?} is not MAJ:MIN", f[3])))?;
    let cow = parse_dev(f[4]).ok_or_else(|| bad(format!("COW {:?} is not MAJ:MIN", f[4])))?;
    let store = match f[5].to_ascii_uppercase().as_str() {
        "P" => StoreKind::Persistent,
        "PO" => StoreKind::PersistentOverflow,
        s if s.starts_with('N') => {
            return Err(refuse(
                "the snapshot has a transient exception store (N): its exceptions live only in kernel memory, so there is no on-disk list of changes to read".into(),
            ))
        }
        s => return Err(bad(format!("unknown store type {s:?} (expected P or PO)"))),
    };
    let chunk_sectors: u64 = f[6]
        .parse()
        .map_err(|_| bad(format!("chunk size {:?} is not a number", f[6])))?;
    let features = f[7..].iter().skip(1).map(|s| s.to_string()).collect();
    Ok(SnapshotTable {
        sectors,
        origin,
        cow,
        store,
        chunk_sectors,
        features,
    })
}

/// What a snapshot argument names before anything is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapArg {
    /// A device-mapper name (`vg-snap`, from `vg/snap` or `/dev/mapper/vg-snap`).
    DmName(String),
    /// A device path to look up through its device number (`/dev/vg/snap`, `/dev/dm-3`), with
    /// the dm name to fall back on when the path does not exist.
    Path(PathBuf, Option<String>),
}

/// Classify a snapshot argument.
pub fn parse_snap_arg(arg: &str) -> Result<SnapArg, MetaError> {
    let bad = || {
        MetaError::Usage(format!(
            "{arg:?}: name a snapshot as VG/LV, /dev/VG/LV or /dev/mapper/VG-LV"
        ))
    };
    if let Some(name) = arg.strip_prefix("/dev/mapper/") {
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        return Ok(SnapArg::DmName(name.to_owned()));
    }
    if arg.starts_with('/') {
        let fallback = arg
            .strip_prefix("/dev/")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(vg, lv)| !vg.is_empty() && !lv.is_empty() && !lv.contains('/'))
            .map(|(vg, lv)| dm_name(vg, lv));
        return Ok(SnapArg::Path(PathBuf::from(arg), fallback));
    }
    match arg.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
            Ok(SnapArg::DmName(dm_name(vg, lv)))
        }
        Some(_) => Err(bad()),
        None if !arg.is_empty() => Ok(SnapArg::DmName(arg.to_owned())),
        None => Err(bad()),
    }
}

/// A snapshot's devices, found.
#[derive(Debug, Clone)]
pub struct ResolvedSnapshot {
    /// The snapshot's dm name.
    pub dm_name: String,
    /// Its table line.
    pub table: SnapshotTable,
    /// A block device node of the COW device.
    pub cow_path: PathBuf,
    /// A block device node of the origin (for LVM, the `-real` device).
    pub origin_path: PathBuf,
    /// Origin size in bytes.
    pub origin_size: u64,
    /// `dmsetup status` line.
    pub status: String,
}

/// Where to look: the real system, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// sysfs mount (`/sys`).
    pub sys: PathBuf,
    /// devtmpfs mount (`/dev`).
    pub dev: PathBuf,
    /// The dmsetup program.
    pub dmsetup: OsString,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            sys: "/sys".into(),
            dev: "/dev".into(),
            dmsetup: "dmsetup".into(),
        }
    }
}

impl Resolver {
    fn dmsetup(&self, verb: &str, name: &str) -> Result<String, MetaError> {
        let out = Command::new(&self.dmsetup)
            .args([verb, name])
            .output()
            .map_err(|e| {
                MetaError::Resolve(format!(
                    "cannot run {}: {e} (install dmsetup, or use --cow)",
                    Path::new(&self.dmsetup).display()
                ))
            })?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg.lines().next().unwrap_or("").trim();
            return Err(MetaError::Resolve(format!(
                "{name}: dmsetup {verb} failed: {}",
                if msg.is_empty() { "no message" } else { msg }
            )));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| MetaError::Resolve(format!("{name}: dmsetup {verb}: output is not UTF-8")))
    }

    /// The dm name of the device at `path`, through its device number.
    fn name_of_path(&self, path: &Path) -> Result<Option<String>, MetaError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(MetaError::Resolve(format!("{}: {e}", path.display())));
            }
        };
        if !meta.file_type().is_block_device() {
            return Err(MetaError::Refused(format!(
                "{}: not a block device (use --cow for a saved COW image)",
                path.display()
            )));
        }
        let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let name_file = self.sys.join(format!("dev/block/{maj}:{min}/dm/name"));
        match std::fs::read_to_string(&name_file) {
            Ok(n) => Ok(Some(n.trim().to_owned())),
            Err(_) => Err(MetaError::Refused(format!(
                "{}: device {maj}:{min} is not a device-mapper device",
                path.display()
            ))),
        }
    }

    /// A block device node for `dev`, checked to carry that device number.
    fn node_for(&self, dev: &DevRef) -> Result<PathBuf, MetaError> {
        let (maj, min) = match dev {
            DevRef::Path(p) => return Ok(p.clone()),
            DevRef::MajMin(a, b) => (*a, *b),
        };
        let sysdir = self.sys.join(format!("dev/block/{maj}:{min}"));
        let mut candidates = vec![self.dev.join(format!("block/{maj}:{min}"))];
        if let Ok(target) = std::fs::read_link(&sysdir) {
            if let Some(kname) = target.file_name() {
                candidates.push(self.dev.join(kname));
            }
        }
        if let Ok(name) = std::fs::read_to_string(sysdir.join("dm/name")) {
            candidates.push(self.dev.join("mapper").join(name.trim()));
        }
        for c in &candidates {
            if let Ok(m) = std::fs::metadata(c) {
                if m.file_type().is_block_device()
                    && libc::major(m.rdev()) == maj
                    && libc::minor(m.rdev()) == min
                {
                    return Ok(c.clone());
                }
            }
        }
        Err(MetaError::Resolve(format!(
            "no device node for {maj}:{min} (tried {})",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    fn size_of(&self, dev: &DevRef, node: &Path) -> Result<u64, MetaError> {
        if let DevRef::MajMin(a, b) = dev {
            let f = self.sys.join(format!("dev/block/{a}:{b}/size"));
            if let Ok(s) = std::fs::read_to_string(&f) {
                if let Ok(sectors) = s.trim().parse::<u64>() {
                    return Ok(sectors * 512);
                }
            }
        }
        Ok(blkpipe_dev::Device::open_source(node, false)?.size())
    }

    /// Find the snapshot named by `arg` and its devices.
    pub fn resolve(&self, arg: &str) -> Result<ResolvedSnapshot, MetaError> {
        let name = match parse_snap_arg(arg)? {
            SnapArg::DmName(n) => n,
            SnapArg::Path(p, fallback) => match (self.name_of_path(&p)?, fallback) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => {
                    return Err(MetaError::Resolve(format!(
                        "{}: no such device",
                        p.display()
                    )))
                }
            },
        };
        let text = self.dmsetup("table", &name)?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let table = match lines.as_slice() {
            [line] => parse_table_line(arg, line)?,
            [] => {
                return Err(MetaError::Refused(format!(
                    "{arg}: device {name} has no active table"
                )))
            }
            _ => {
                return Err(MetaError::Refused(format!(
                    "{arg}: device {name} has {} table lines; a snapshot has one",
                    lines.len()
                )))
            }
        };
        let status = self.dmsetup("status", &name)?;
        check_status(arg, &status)?;
        let cow_path = self.node_for(&table.cow)?;
        let origin_path = self.node_for(&table.origin)?;
        let origin_size = self.size_of(&table.origin, &origin_path)?;
        Ok(ResolvedSnapshot {
            dm_name: name,
            table,
            cow_path,
            origin_path,
            origin_size,
            status: status.trim().to_owned(),
        })
    }
}

/// Refuse a snapshot whose `dmsetup status` says it is invalid, failed to merge, or has
/// overflowed.
pub fn check_status(name: &str, status: &str) -> Result<(), MetaError> {
    let f: Vec<&str> = status.split_ascii_whitespace().collect();
    match f.get(3..).unwrap_or(&[]) {
        ["Invalid", ..] => Err(MetaError::Invalidated),
        ["Overflow", ..] => Err(MetaError::Refused(format!(
            "{name}: the snapshot overflowed (status Overflow): its COW device is full, writes to the snapshot were lost and the next origin write invalidates it; extend it (lvextend) or do a full sync"
        ))),
        ["Merge", "failed", ..] => Err(MetaError::Refused(format!(
            "{name}: a merge of this snapshot failed (status Merge failed); its store cannot be trusted"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangling() {
        assert_eq!(dm_name("vg", "snap"), "vg-snap");
        assert_eq!(dm_name("my-vg", "lv-snap-1"), "my--vg-lv--snap--1");
        assert_eq!(
            split_dm_name("my--vg-lv--snap--1"),
            Some(("my-vg".into(), "lv-snap-1".into()))
        );
        assert_eq!(
            split_dm_name("vg-lv-cow"),
            Some(("vg".into(), "lv-cow".into()))
        );
        assert_eq!(split_dm_name("novg"), None);
    }

    #[test]
    fn snap_args() {
        assert_eq!(
            parse_snap_arg("vg/snap").unwrap(),
            SnapArg::DmName("vg-snap".into())
        );
        assert_eq!(
            parse_snap_arg("a-b/c-d").unwrap(),
            SnapArg::DmName("a--b-c--d".into())
        );
        assert_eq!(
            parse_snap_arg("/dev/mapper/a--b-c--d").unwrap(),
            SnapArg::DmName("a--b-c--d".into())
        );
        assert_eq!(
            parse_snap_arg("/dev/vg-1/snap").unwrap(),
            SnapArg::Path("/dev/vg-1/snap".into(), Some("vg--1-snap".into()))
        );
        assert_eq!(
            parse_snap_arg("/dev/dm-3").unwrap(),
            SnapArg::Path("/dev/dm-3".into(), None)
        );
        assert!(parse_snap_arg("vg/").is_err());
        assert!(parse_snap_arg("a/b/c").is_err());
        assert!(parse_snap_arg("").is_err());
    }

    // Lines as the kernel prints them (Documentation/admin-guide/device-mapper/snapshot.rst
    // and LVM on Debian 12).
    #[test]
    fn snapshot_lines() {
        let t = parse_table_line("vg/snap", "0 2097152 snapshot 254:11 254:12 P 16").unwrap();
        assert_eq!(t.sectors, 2097152);
        assert_eq!(t.origin, DevRef::MajMin(254, 11));
        assert_eq!(t.cow, DevRef::MajMin(254, 12));
        assert_eq!(t.store, StoreKind::Persistent);
        assert_eq!(t.chunk_sectors, 16);
        assert!(t.features.is_empty());

        // From the VM harness (Debian 12 kernel 6.1, lvcreate -s -c 4k), dmsetup table.
        let t = parse_table_line("vg/snap", "vg-snap: 0 32768 snapshot 253:1 253:2 P 8").unwrap();
        assert_eq!(
            (t.origin, t.cow),
            (DevRef::MajMin(253, 1), DevRef::MajMin(253, 2))
        );
        assert_eq!(t.chunk_sectors, 8);
        let e =
            parse_table_line("vg/origin", "vg-origin: 0 32768 snapshot-origin 253:1").unwrap_err();
        assert!(e.to_string().contains("snapshot-origin"));
        let e = parse_table_line("x", "vg-snap-cow: 0 8192 linear 254:0 34816").unwrap_err();
        assert!(e.to_string().contains("linear"));

        let t = parse_table_line(
            "x",
            "volumeGroup-snap: 0 2097152 snapshot 254:11 254:12 P 16",
        )
        .unwrap();
        assert_eq!(t.chunk_sectors, 16);

        let t = parse_table_line(
            "x",
            "0 8388608 snapshot 253:2 253:3 PO 8 2 discard_zeroes_cow discard_passdown_origin\n",
        )
        .unwrap();
        assert_eq!(t.store, StoreKind::PersistentOverflow);
        assert_eq!(
            t.features,
            vec!["discard_zeroes_cow", "discard_passdown_origin"]
        );
    }

    #[test]
    fn refused_lines() {
        let msg = |l: &str| parse_table_line("vg/x", l).unwrap_err().to_string();
        assert!(
            msg("0 8388608 snapshot-merge 254:11 254:12 P 16").contains("merged into its origin")
        );
        assert!(msg("0 2097152 snapshot 254:11 254:12 N 16").contains("transient"));
        assert!(msg("0 2097152 snapshot-origin 254:11").contains("not a snapshot"));
        assert!(msg("0 2097152 linear 8:19 384").contains("linear"));
        assert!(msg("0 2097152 thin 253:4 1").contains("--thin-delta"));
        assert!(msg("0 2097152 era 253:4 253:5 128").contains("--era-invalidate"));
        assert!(msg("0 2097152 snapshot 254:11").contains("ORIGIN COW"));
        assert!(msg("0 2097152 snapshot 254:11 254:12 X 16").contains("store type"));
        assert!(msg("0 2097152 snapshot 254 254:12 P 16").contains("origin"));
        let e = parse_table_line("vg/x", "0 8 snapshot-merge 1:1 1:2 P 8").unwrap_err();
        assert!(matches!(e, MetaError::Refused(_)), "{e}");
    }

    #[test]
    fn status_lines() {
        assert!(check_status("s", "0 2097152 snapshot 397896/2097152 1560").is_ok());
        // From the VM harness: a 1 MiB snapshot after 3 MiB of origin writes.
        assert!(matches!(
            check_status("s", "0 32768 snapshot Invalid"),
            Err(MetaError::Invalidated)
        ));
        assert!(matches!(
            check_status("s", "0 2097152 snapshot Invalid"),
            Err(MetaError::Invalidated)
        ));
        assert!(check_status("s", "0 2097152 snapshot Overflow")
            .unwrap_err()
            .to_string()
            .contains("overflowed"));
        assert!(check_status("s", "0 2097152 snapshot Merge failed").is_err());
    }

    /// The whole lookup against a fake sysfs, /dev and dmsetup (needs root for mknod).
    #[test]
    fn resolve_in_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sys = root.join("sys");
        let dev = root.join("dev");
        for (mm, kname, name, size) in [
            ("253:2", "dm-2", "my--vg-lv-real", "2097152"),
            ("253:3", "dm-3", "my--vg-snap-cow", "204800"),
        ] {
            let d = sys.join("devices/virtual/block").join(kname);
            std::fs::create_dir_all(d.join("dm")).unwrap();
            std::fs::write(d.join("dm/name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
            std::fs::create_dir_all(sys.join("dev/block")).unwrap();
            std::os::unix::fs::symlink(
                format!("../../devices/virtual/block/{kname}"),
                sys.join("dev/block").join(mm),
            )
            .unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        for (kname, minor) in [("dm-2", 2), ("dm-3", 3)] {
            let p = std::ffi::CString::new(dev.join(kname).to_str().unwrap()).unwrap();
            // SAFETY: mknod with a valid C string and a device number.
            let r = unsafe {
                libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(253, minor))
            };
            assert_eq!(
                r,
                0,
                "mknod {kname}: {} (this test needs root, as CI runs it)",
                std::io::Error::last_os_error()
            );
        }
        let fake = root.join("dmsetup");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$1 $2\" in\n\
             'table my--vg-snap') echo '0 2097152 snapshot 253:2 253:3 P 8' ;;\n\
             'status my--vg-snap') echo '0 2097152 snapshot 16/204800 16' ;;\n\
             'table my--vg-lv') echo '0 2097152 snapshot-origin 253:2' ;;\n\
             *) echo \"Device $2 not found\" >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = Resolver {
            sys,
            dev: dev.clone(),
            dmsetup: fake.into(),
        };
        let s = r.resolve("my-vg/snap").unwrap();
        assert_eq!(s.dm_name, "my--vg-snap");
        assert_eq!(s.cow_path, dev.join("dm-3"));
        assert_eq!(s.origin_path, dev.join("dm-2"));
        assert_eq!(s.origin_size, 2097152 * 512);
        let s = r.resolve("/dev/mapper/my--vg-snap").unwrap();
        assert_eq!(s.cow_path, dev.join("dm-3"));
        let e = r.resolve("my-vg/lv").unwrap_err();
        assert!(e.to_string().contains("snapshot origin"), "{e}");
        let e = r.resolve("my-vg/nothere").unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
