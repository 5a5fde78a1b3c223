//! Each tool's command line: the `Args` its `main` parses and `blkpipe-gen` documents.

/// Declares a tool's `Args` (its doc comment, `#[command(name, about, ...)]` and fields, as
/// written) with what every tool's command line shares: `#[derive(Parser, Debug)]`,
/// `--version`, the doc comment kept verbatim as the long help (its line breaks are the
/// help's), and the module's `AFTER_HELP` (examples and exit codes) after `--help`.
/// rustfmt does not format inside a macro call: keep the fields as it would lay them out.
macro_rules! tool_args {
    ($(#[$attr:meta])* pub struct Args { $($fields:tt)* }) => {
        #[derive(clap::Parser, Debug)]
        #[command(version, verbatim_doc_comment, after_long_help = AFTER_HELP)]
        $(#[$attr])*
        pub struct Args { $($fields)* }
    };
}

pub mod blkdiff;
pub mod blkhash;
pub mod blkmerge;
pub mod blkpatch;
pub mod blkread_chunks;
pub mod cowlist;

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_command_line_is_consistent() {
        super::blkhash::Args::command().debug_assert();
        super::blkdiff::Args::command().debug_assert();
        super::cowlist::Args::command().debug_assert();
        super::blkread_chunks::Args::command().debug_assert();
        super::blkpatch::Args::command().debug_assert();
        super::blkmerge::Args::command().debug_assert();
    }

    #[test]
    fn every_size_option_takes_the_one_grammar() {
        let a = super::blkread_chunks::Args::try_parse_from(["x", "--from", "64K", "d"]).unwrap();
        assert_eq!(a.from, 65536);
        let a = super::blkhash::Args::try_parse_from(["x", "--from", "128s", "d"]).unwrap();
        assert_eq!(a.from, 65536);
        let a = super::blkdiff::Args::try_parse_from(["x", "--from", "1MiB", "d"]).unwrap();
        assert_eq!(a.from, 1 << 20);
        let a =
            super::blkpatch::Args::try_parse_from(["x", "--state", "s", "--checkpoint", "1G", "t"])
                .unwrap();
        assert_eq!(a.checkpoint, 1 << 30);
        let a = super::cowlist::Args::try_parse_from(["x", "--cow", "c", "--origin-size", "2T"])
            .unwrap();
        assert_eq!(a.origin_size, Some(2 << 40));
        assert!(super::blkread_chunks::Args::try_parse_from(["x", "--from", "64Q", "d"]).is_err());
    }
}
