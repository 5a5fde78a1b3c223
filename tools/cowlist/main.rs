//! `cowlist SNAP`: the chunks changed since an LVM snapshot was taken, from the kernel's own
//! exception store; also thin_delta and era_invalidate XML as the same range list.

#[path = "../common.rs"]
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use blkpipe_dev::Device;
use blkpipe_meta::resolve::Resolver;
use blkpipe_meta::snapshot::{self, ChangeList, ReadOptions, SnapshotView};
use blkpipe_meta::xml::{self, BlockRanges};
use blkpipe_meta::MetaError;
use blkpipe_ops::exit;
use clap::{ArgGroup, Parser};

/// List the origin byte ranges an LVM snapshot's exception store records as changed, sorted and
/// merged, as a range list on stdout (the first line `# blkranges v1 size=ORIGIN chunk=CHUNK`).
///
/// SNAP is VG/LV, /dev/VG/LV or /dev/mapper/VG-LV; its table (dmsetup table) must be a
/// `snapshot` with a persistent store (P or PO). Merging snapshots (snapshot-merge) and
/// transient stores (N) are refused, and so is an invalidated (overflowed) snapshot: its list
/// is incomplete and only a full sync is safe. The store is read with O_DIRECT, since the
/// kernel keeps writing it, and every entry is checked against the COW and origin sizes.
///
/// What the list means: with a read-only snapshot, exactly the chunks written to the origin
/// since the snapshot was taken. With a writable snapshot the COW holds the snapshot's
/// current view, and the list also holds chunks written to the snapshot itself, which the
/// origin may never have changed: a superset, still correct for syncing. Chunks written after
/// cowlist reads the store are not listed; take the next snapshot before reading this one.
///
/// --data writes instead a patch stream of the snapshot's copies of those chunks at their
/// origin offsets: applied to the origin (blkpatch), it rolls the origin back to the snapshot.
///
/// --thin-delta FILE and --era-invalidate FILE ('-' is stdin) turn the XML of
/// thin-provisioning-tools' thin_delta (changed, new and unmapped blocks; the block size comes
/// from the XML) and era_invalidate (needs --block-size, the era target's block size) into the
/// same range list.
///
/// Examples:
///   cowlist vg/lv-snap | blkread-chunks /dev/vg/lv | zstd | ssh dst blkpatch /dev/vg/lv
///   cowlist --cow saved-cow.img --origin /dev/vg/lv --stats > ranges
///   cowlist --data vg/lv-snap | blkpatch --undo undo.patch /dev/vg/lv    # roll back
///   thin_delta -m --thin1 1 --thin2 2 /dev/mapper/pool_tmeta | cowlist --thin-delta -
///   era_invalidate --written-since 5 META | cowlist --era-invalidate - --block-size 64K
///
/// Exit codes: 0 ok, 1 other failure (snapshot not found), 2 usage, 3 corrupt exception
/// store or bad XML (one line naming the entry), 4 I/O error, 5 refused (invalid or
/// overflowed snapshot, merging, transient store, not a snapshot, stdout is a terminal for
/// --data), 141 broken pipe.
#[derive(Parser, Debug)]
#[command(name = "cowlist", version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("source").required(true)
    .args(["snap", "cow", "thin_delta", "era_invalidate"])))]
struct Args {
    /// The snapshot: VG/LV, /dev/VG/LV or /dev/mapper/VG-LV.
    snap: Option<String>,
    /// Read this COW device, or a saved image of one, instead of resolving SNAP.
    #[arg(long, value_name = "FILE")]
    cow: Option<PathBuf>,
    /// Origin size (bytes; s, K, M, G suffixes): checks every entry and clips the last chunk.
    #[arg(long, value_name = "BYTES", value_parser = size, conflicts_with_all = ["origin", "snap"])]
    origin_size: Option<u64>,
    /// Take the origin size from this device or image.
    #[arg(long, value_name = "DEV", conflicts_with = "snap")]
    origin: Option<PathBuf>,
    /// Write a patch stream of the snapshot's copies of the changed chunks.
    #[arg(long, conflicts_with_all = ["thin_delta", "era_invalidate"])]
    data: bool,
    /// With --data, write the binary stream even when stdout is a terminal.
    #[arg(long)]
    force_tty: bool,
    /// Read thin_delta XML from FILE ('-': stdin).
    #[arg(long, value_name = "FILE")]
    thin_delta: Option<PathBuf>,
    /// Read era_invalidate XML from FILE ('-': stdin).
    #[arg(long, value_name = "FILE")]
    era_invalidate: Option<PathBuf>,
    /// Block size of the XML's blocks (bytes; s, K, M, G suffixes).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    block_size: Option<u64>,
    #[command(flatten)]
    report: common::Reporting,
}

/// `--stats=json`: the shared summary object (records = ranges listed, data bytes = bytes to
/// send, bytes read = metadata bytes read).
fn json_stats(ranges: u64, bytes: u64, metadata_read: u64, started: Instant) {
    let stats = blkpipe_ops::Stats {
        records: ranges,
        data_bytes: bytes,
        bytes_read: metadata_read,
        elapsed: started.elapsed(),
        ..Default::default()
    };
    eprint!("{}", stats.json("cowlist"));
}

fn json_wanted(args: &Args) -> bool {
    args.report.stats == Some(common::StatsFormat::Json)
}

fn size(s: &str) -> Result<u64, String> {
    xml::parse_size(s)
}

fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(path) = args.thin_delta.as_deref() {
        let r = xml::parse_thin_delta(open_xml(path)?, args.block_size)
            .with_context(|| format!("{}: thin_delta XML", path.display()))?;
        return write_blocks(&args, &r, started);
    }
    if let Some(path) = args.era_invalidate.as_deref() {
        let block = args.block_size.ok_or_else(|| MetaError::Usage(
            "era_invalidate XML carries no block size: give --block-size (the era target's, from `dmsetup table`: era META ORIGIN BLOCK_SECTORS)".into(),
        ))?;
        let r = xml::parse_era_invalidate(open_xml(path)?, block)
            .with_context(|| format!("{}: era_invalidate XML", path.display()))?;
        return write_blocks(&args, &r, started);
    }
    if args.data {
        common::guard_binary_stdout(args.force_tty)?;
    }
    let (cow_path, origin_size, what) = match (&args.snap, &args.cow) {
        (Some(snap), _) => {
            let s = Resolver::default().resolve(snap)?;
            let what = format!(
                "snapshot {snap} ({}), origin {}",
                s.dm_name,
                s.origin_path.display()
            );
            (s.cow_path, Some(s.origin_size), what)
        }
        (None, Some(cow)) => (cow.clone(), origin_size(&args)?, "COW image".to_owned()),
        (None, None) => unreachable!("clap requires a source"),
    };
    let (cow, _direct) = snapshot::open_cow(&cow_path)?;
    let progress = args.report.progress("cowlist")?;
    let mut opts = ReadOptions::device(origin_size);
    let mut out = common::stdout_buffered();
    if args.data {
        let origin_size = origin_size.ok_or_else(|| {
            MetaError::Usage("--data needs the origin size: give --origin-size or --origin".into())
        })?;
        let view = SnapshotView::read(&cow, &opts)?;
        let creator = format!("cowlist {}", env!("CARGO_PKG_VERSION"));
        let st =
            snapshot::write_view_patch(&cow, &view, origin_size, &mut out, &creator, &progress)?;
        out.flush().context("stdout")?;
        if json_wanted(&args) {
            json_stats(
                st.records,
                st.data_bytes,
                view.summary.metadata_bytes_read,
                started,
            );
        } else if args.report.stats.is_some() {
            summary(&cow, &view.summary, &what, view.bytes(), None, started);
            eprintln!("cowlist: records:          {}", st.records);
            eprintln!("cowlist: data bytes:       {}", st.data_bytes);
            eprintln!("cowlist: zero bytes:       {}", st.zero_bytes);
        }
        return Ok(());
    }
    opts.progress = Some(progress.clone());
    let list = ChangeList::read(&cow, &opts)?;
    progress.finish();
    list.write_range_list(&mut out).context("stdout")?;
    if json_wanted(&args) {
        let ranges = list.ranges().count() as u64;
        json_stats(
            ranges,
            list.bytes(),
            list.summary.metadata_bytes_read,
            started,
        );
    } else if args.report.stats.is_some() {
        let ranges = list.ranges().count() as u64;
        summary(
            &cow,
            &list.summary,
            &what,
            list.bytes(),
            Some(ranges),
            started,
        );
    }
    Ok(())
}

fn origin_size(args: &Args) -> anyhow::Result<Option<u64>> {
    Ok(match (&args.origin_size, &args.origin) {
        (Some(n), _) => Some(*n),
        (None, Some(dev)) => Some(Device::open_source(dev, false)?.size()),
        (None, None) => None,
    })
}

fn open_xml(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin().lock())));
    }
    let f = File::open(path).with_context(|| format!("{}: open", path.display()))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(MetaError::Refused(format!("{}: is a directory", path.display())).into());
    }
    Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
}

fn write_blocks(args: &Args, r: &BlockRanges, started: Instant) -> anyhow::Result<()> {
    let size = origin_size(args)?;
    let ranges = r.ranges.iter().filter_map(|x| match size {
        Some(s) if x.end() > s => (x.offset < s).then(|| blkpipe_format::range::Range {
            offset: x.offset,
            length: s - x.offset,
        }),
        _ => Some(*x),
    });
    let mut out = common::stdout_buffered();
    snapshot::write_ranges(&mut out, size, r.block_bytes, ranges).context("stdout")?;
    if json_wanted(args) {
        json_stats(r.ranges.len() as u64, r.bytes(), 0, started);
    } else if args.report.stats.is_some() {
        eprintln!("cowlist: block size:       {} bytes", r.block_bytes);
        eprintln!("cowlist: blocks listed:    {}", r.blocks);
        eprintln!("cowlist: ranges:           {}", r.ranges.len());
        eprintln!("cowlist: bytes to send:    {}", r.bytes());
        eprintln!(
            "cowlist: seconds:          {:.3}",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn summary(
    cow: &Device,
    s: &snapshot::StoreSummary,
    what: &str,
    bytes: u64,
    ranges: Option<u64>,
    started: Instant,
) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "cowlist: source:           {} ({what})",
        cow.path().display()
    );
    eprintln!(
        "cowlist: chunk size:       {} bytes ({} sectors)",
        s.chunk_bytes(),
        s.header.chunk_sectors
    );
    eprintln!("cowlist: exceptions:       {}", s.exceptions);
    eprintln!("cowlist: metadata areas:   {}", s.areas);
    if let Some(r) = ranges {
        eprintln!("cowlist: ranges:           {r}");
    }
    eprintln!("cowlist: bytes to send:    {bytes}");
    match s.origin_size {
        Some(o) => eprintln!("cowlist: origin size:      {o}"),
        None => eprintln!("cowlist: origin size:      unknown (not checked)"),
    }
    eprintln!(
        "cowlist: COW size:         {} ({} metadata bytes read)",
        s.cow_size, s.metadata_bytes_read
    );
    let rate = if secs > 0.0 {
        s.exceptions as f64 / secs
    } else {
        0.0
    };
    eprintln!("cowlist: seconds:          {secs:.3} ({rate:.0} exceptions/s)");
}

fn main() {
    let result = run(Args::parse());
    if let Err(e) = &result {
        // Library errors know their exit code; the rest is mapped by the shared glue.
        if let Some(m) = e.chain().find_map(|c| c.downcast_ref::<MetaError>()) {
            let code = m.exit_code();
            if code != exit::BROKEN_PIPE {
                eprintln!("cowlist: {e:#}");
            }
            std::process::exit(code);
        }
    }
    common::exit_with("cowlist", result)
}
