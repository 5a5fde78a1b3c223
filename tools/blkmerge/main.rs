//! `blkmerge PATCH...`: combine patch streams, oldest first, into one where later records win.

use anyhow::Context;
use blkpipe_cli as cli;
use blkpipe_cli::args::blkmerge::Args;
use blkpipe_ops::input::{open_input, refuse_terminal_stdin};
use blkpipe_ops::merge::{merge_patches, MergeOptions};
use blkpipe_ops::progress::ProgressWriter;
use clap::{CommandFactory, Parser};

fn run(args: Args) -> anyhow::Result<()> {
    args.output.guard()?;
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        refuse_terminal_stdin(
            Some(path),
            "blkmerge reads a patch stream from `-` (from blkread-chunks, blkdiff or a saved patch): pipe one in, or name the files",
        )?;
        let (reader, _) =
            open_input(Some(path)).with_context(|| format!("{}: open", path.display()))?;
        inputs.push((path.display().to_string(), reader));
    }
    let opts = MergeOptions {
        lz4: args.lz4,
        key: args.common.key.load()?,
    };
    let progress = args.common.report.progress("blkmerge")?;
    let out = ProgressWriter::new(cli::stdout_buffered(), progress.clone());
    let stats = merge_patches(inputs, out, &opts)?;
    progress.finish();
    args.common.report.print_stats("blkmerge", &stats);
    Ok(())
}

fn main() {
    let args = Args::parse();
    if args.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        // A bad command line, reported and exited (2) like clap's own errors.
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "stdin (-) can be given only once",
            )
            .exit();
    }
    cli::exit_with("blkmerge", run(args))
}
