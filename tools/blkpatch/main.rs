//! `blkpatch TARGET`: apply a patch stream to a device or image file, safely.

use std::io::Write;

use anyhow::Context;
use blkpipe_cli::args::blkpatch::Args;
use blkpipe_cli::{self as cli, eprintln};
use blkpipe_dev::{Avoid, Device, TargetOptions};
use blkpipe_format::FormatError;
use blkpipe_ops::apply::{apply_stream, read_header, ApplyOptions};
use blkpipe_ops::chain::{ChainAccept, ChainGate};
use blkpipe_ops::input::{open_input, refuse_terminal_stdin};
use blkpipe_ops::state::{hex_id, ResumeState};
use blkpipe_ops::OpError;
use clap::Parser;

fn run(args: Args) -> anyhow::Result<()> {
    if let (true, Some(path)) = (args.print_state, &args.state) {
        let line = match ResumeState::load(path)? {
            Some(st) => format!("{} {}\n", hex_id(&st.stream_id), st.applied),
            None => "none 0\n".into(),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(OpError::Output)?;
        return Ok(());
    }
    // A bad key file is refused before the stream is read or the target opened.
    let key = args.common.key.load()?;
    refuse_terminal_stdin(
        args.input.as_deref(),
        "blkpatch reads a patch stream (from blkread-chunks, blkdiff or cowlist --data): pipe one in, or give --input FILE",
    )?;
    // The input's file (if it is one) is never written: not as the target, undo or state.
    let avoid: Vec<Avoid> = match args.input.as_deref() {
        Some(p) if p != std::path::Path::new("-") => {
            Avoid::path(p, format!("the input {}", p.display()))
        }
        _ => Avoid::fd(0, "the input (stdin)"),
    }
    .into_iter()
    .collect();
    let (input, _) = open_input(args.input.as_deref()).with_context(|| match &args.input {
        Some(p) => format!("{}: open", p.display()),
        None => "stdin".into(),
    })?;
    // The header is checked before the target is opened, so a stream that is not a patch
    // stream at all never creates or touches a target.
    // So is a sealed stream without --key, an unsealed one with it, and another key.
    let reader = read_header(input, key.as_ref())?;
    // --chain-state: a stream that does not follow the step the target holds is refused
    // before the target is opened (or created).
    let accept = ChainAccept {
        rollback: args.accept_rollback,
        new_chain: args.accept_new_chain,
    };
    if let Some(path) = &args.chain_state {
        ChainGate::open(path, reader.header(), reader.link(), key.as_ref(), accept)?;
    }
    let write = !(args.dry_run || args.list);
    if args.verify && write && !reader.announces_source_digest() {
        return Err(OpError::Refused(
            "--verify: the stream's header does not announce a source digest to verify against (blkdiff streams carry one; blkread-chunks, cowlist --data, blkmerge and undo streams do not); nothing was written: run without --verify, or compare blkhash --digest on both sides".into(),
        )
        .into());
    }
    let mut target = match &args.target {
        Some(path) => Some(Device::open_target(
            path,
            TargetOptions {
                create: write,
                force: args.force,
                shared: args.no_exclusive,
                read_only: !write,
            },
            &avoid,
        )?),
        None => None,
    };
    let opts = ApplyOptions {
        discard: args.discard,
        undo: if write { args.undo.clone() } else { None },
        replace_undo: args.replace_undo,
        verify: args.verify && write,
        dry_run: !write,
        state: args.state.clone(),
        checkpoint_bytes: Some(args.checkpoint),
        avoid,
        key,
        chain_state: args.chain_state.clone(),
        accept,
    };
    let progress = args.common.report.progress("blkpatch")?;
    let mut stdout = cli::stdout_buffered();
    let list: Option<&mut dyn std::io::Write> = if args.list { Some(&mut stdout) } else { None };
    let applied = apply_stream(target.as_mut(), reader, &opts, &progress, list).map_err(|e| {
        if write {
            say_how_far(e)
        } else {
            e
        }
    })?;
    std::io::Write::flush(&mut stdout).context("stdout")?;
    if args.dry_run {
        let chain = match &applied.header.chain {
            Some(c) => format!("; {}", c.describe()),
            None => String::new(),
        };
        eprintln!(
            "blkpatch: dry run: stream is valid: {} records, {} data bytes, {} zero bytes, source size {}{chain}",
            applied.end.record_count, applied.end.data_bytes, applied.end.zero_bytes, applied.header.source_size
        );
    }
    args.common.report.print_stats("blkpatch", &applied.stats);
    Ok(())
}

/// A stream cut short after some records were written: say so, and how to finish (the
/// records before the cut are verified and on the target).
fn say_how_far(e: OpError) -> OpError {
    match e {
        OpError::Format(FormatError::Truncated { record, .. }) if record > 0 => {
            let written = match record {
                1 => "the record before the cut is written".to_owned(),
                n => format!("the {n} records before the cut are written"),
            };
            OpError::BadRange(format!(
                "{e}; {written}: rerun to finish (with --state, a rerun skips what is applied)"
            ))
        }
        e => e,
    }
}

fn main() {
    cli::exit_with("blkpatch", run(Args::parse()))
}
