//! `cowlist SNAP`: the chunks changed since an LVM snapshot was taken, from the kernel's own
//! exception store; also thin_delta and era_invalidate XML as the same range list.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use blkpipe_cli::args::cowlist::Args;
use blkpipe_cli::{self as cli, eprint, eprintln};
use blkpipe_dev::Avoid;
use blkpipe_dev::Device;
use blkpipe_format::range::Range;
use blkpipe_meta::nbdmap::{self, MapKind};
use blkpipe_meta::resolve::Resolver;
use blkpipe_meta::snapshot::{self, ChangeList, ReadOptions, SnapshotView};
use blkpipe_meta::xml::{self, BlockRanges};
use blkpipe_meta::MetaError;
use blkpipe_ops::view::write_view_patch_sealed;
use clap::Parser;

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
    args.common.report.stats == Some(cli::StatsFormat::Json)
}

fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.common.seals() && !args.data {
        return Err(MetaError::Usage(
            "--key and the chain options seal the patch stream of --data; a range list is not sealed".into(),
        )
        .into());
    }
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
    if let Some(r) = nbd_ranges(&args)? {
        return write_nbd_ranges(&args, r, started);
    }
    if args.data {
        cli::guard_binary_stdout(args.force_tty)?;
    }
    let key = args.common.key.load()?;
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
    let (cow, direct) = snapshot::open_cow(&cow_path)?;
    let progress = args.common.report.progress("cowlist")?;
    let mut opts = if direct {
        ReadOptions::device(origin_size)
    } else {
        ReadOptions::cached(origin_size)
    };
    let mut out = cli::stdout_buffered();
    if args.data {
        let origin_size = origin_size.ok_or_else(|| {
            MetaError::Usage("--data needs the origin size: give --origin-size or --origin".into())
        })?;
        let view = SnapshotView::read(&cow, &opts)?;
        // The chain file is never the COW device, the snapshot or stdout.
        let mut avoid: Vec<Avoid> = Avoid::fd(1, "the output (stdout)").into_iter().collect();
        avoid.extend(Avoid::path(&cow_path, "the COW device"));
        let chain = args.common.chain.prepare(key.as_ref(), &avoid)?;
        let creator = format!("cowlist {}", env!("CARGO_PKG_VERSION"));
        let st = write_view_patch_sealed(
            &cow,
            &view,
            origin_size,
            &mut out,
            &creator,
            &progress,
            key.as_ref().map(|k| (k, chain.as_ref().map(|c| c.block()))),
        )?;
        out.flush().context("stdout")?;
        if let (Some(c), Some(link)) = (&chain, st.link) {
            c.commit(link, &avoid)?;
        }
        if json_wanted(&args) {
            json_stats(
                st.records,
                st.data_bytes,
                view.summary.metadata_bytes_read,
                started,
            );
        } else if args.common.report.stats.is_some() {
            summary(&cow, &view.summary, &what, view.bytes(), None, started);
            eprintln!("cowlist: records:          {}", st.records);
            eprintln!("cowlist: data bytes:       {}", st.data_bytes);
            eprintln!("cowlist: zero bytes:       {}", st.zero_bytes);
        }
        return Ok(());
    }
    opts.progress = Some({
        let p = progress.clone();
        Arc::new(move |n| p.inc(n))
    });
    let list = ChangeList::read(&cow, &opts)?;
    progress.finish();
    list.write_range_list(&mut out).context("stdout")?;
    if json_wanted(&args) {
        let ranges = list.range_count();
        json_stats(
            ranges,
            list.bytes(),
            list.summary.metadata_bytes_read,
            started,
        );
    } else if args.common.report.stats.is_some() {
        let ranges = list.range_count();
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

/// The export size and ranges of --nbd-bitmap, --nbd-allocation or --nbd-map.
fn nbd_ranges(args: &Args) -> anyhow::Result<Option<(u64, Vec<Range>)>> {
    if let (Some(name), Some(uri)) = (&args.nbd_bitmap, &args.snap) {
        return Ok(Some(nbdmap::from_export(
            uri,
            MapKind::Dirty(name.clone()),
        )?));
    }
    if let Some(uri) = &args.nbd_allocation {
        return Ok(Some(nbdmap::from_export(uri, MapKind::Data)?));
    }
    if let Some(path) = &args.nbd_map {
        let mut text = String::new();
        open_xml(path)?
            .read_to_string(&mut text)
            .map_err(MetaError::Input)
            .with_context(|| format!("{}: read", path.display()))?;
        let r = nbdmap::parse_nbdinfo_json(&text)
            .with_context(|| format!("{}: nbdinfo JSON", path.display()))?;
        return Ok(Some(r));
    }
    Ok(None)
}

fn write_nbd_ranges(
    args: &Args,
    (size, ranges): (u64, Vec<Range>),
    started: Instant,
) -> anyhow::Result<()> {
    // The header's chunk: the largest power of two (up to 1 MiB) every range is aligned to.
    let align = ranges.iter().fold(1u64 << 20, |a, r| {
        a.min(1 << (r.offset | r.length).trailing_zeros().min(20))
    });
    let bytes: u64 = ranges.iter().map(|r| r.length).sum();
    let mut out = cli::stdout_buffered();
    snapshot::write_ranges(&mut out, Some(size), align, ranges.iter().copied())
        .context("stdout")?;
    if json_wanted(args) {
        json_stats(ranges.len() as u64, bytes, 0, started);
    } else if args.common.report.stats.is_some() {
        eprintln!("cowlist: export size:      {size}");
        eprintln!("cowlist: ranges:           {}", ranges.len());
        eprintln!("cowlist: bytes to send:    {bytes}");
        eprintln!(
            "cowlist: seconds:          {:.3}",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
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
    let mut out = cli::stdout_buffered();
    snapshot::write_ranges(&mut out, size, r.block_bytes, ranges).context("stdout")?;
    if json_wanted(args) {
        json_stats(r.ranges.len() as u64, r.bytes(), 0, started);
    } else if args.common.report.stats.is_some() {
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
    cli::exit_with("cowlist", run(Args::parse()))
}
