//! `blkpipe-gen OUTDIR`: the build step that writes the man pages and shell completions of the
//! six blkpipe tools from the same clap definitions their `--help` comes from
//! (`tools/<tool>/args.rs`), plus the hand-written `blkpipe(7)` overview.
//!
//! Not one of the tools and never installed: `packaging/build-docs` runs it.
//!
//! ```text
//! OUTDIR/man/man1/<tool>.1            one page per tool
//! OUTDIR/man/man7/blkpipe.7           formats and pipelines
//! OUTDIR/completions/bash/<tool>      for /usr/share/bash-completion/completions
//! OUTDIR/completions/zsh/_<tool>      for /usr/share/zsh/vendor-completions
//! OUTDIR/completions/fish/<tool>.fish for /usr/share/fish/vendor_completions.d
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

// The tools' own argument definitions, compiled here a second time. They refer to
// `crate::common` for shared options and value parsers.
#[allow(dead_code)]
#[path = "../../../tools/blkdiff/args.rs"]
mod blkdiff;
#[allow(dead_code)]
#[path = "../../../tools/blkhash/args.rs"]
mod blkhash;
#[allow(dead_code)]
#[path = "../../../tools/blkmerge/args.rs"]
mod blkmerge;
#[allow(dead_code)]
#[path = "../../../tools/blkpatch/args.rs"]
mod blkpatch;
#[allow(dead_code)]
#[path = "../../../tools/blkread-chunks/args.rs"]
mod blkread_chunks;
#[path = "../../../tools/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../../tools/cowlist/args.rs"]
mod cowlist;

/// The overview page, hand-written; `@VERSION@` and `@DATE@` are replaced.
const OVERVIEW_7: &str = include_str!("../../../packaging/blkpipe.7");

/// Every tool's command, in the order the pipelines use them.
fn tools() -> Vec<clap::Command> {
    vec![
        blkhash::Args::command(),
        blkdiff::Args::command(),
        cowlist::Args::command(),
        blkread_chunks::Args::command(),
        blkpatch::Args::command(),
        blkmerge::Args::command(),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [out] if !out.starts_with('-') => generate(Path::new(out)),
        _ => {
            eprintln!(
                "usage: blkpipe-gen OUTDIR   (man pages and completions of the blkpipe tools)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("blkpipe-gen: {e:#}");
        std::process::exit(1);
    }
}

fn generate(out: &Path) -> anyhow::Result<()> {
    let tools = tools();
    let names: Vec<String> = tools.iter().map(|c| c.get_name().to_owned()).collect();
    let man1 = mkdir(&out.join("man/man1"))?;
    let man7 = mkdir(&out.join("man/man7"))?;
    for cmd in &tools {
        let name = cmd.get_name().to_owned();
        let see_also: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != name)
            .collect();
        let page = man_page(cmd.clone(), &see_also)?;
        write(&man1.join(format!("{name}.1")), &page)?;
    }
    let overview = OVERVIEW_7
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@DATE@", &page_date());
    write(&man7.join("blkpipe.7"), overview.as_bytes())?;

    for (shell, dir, file) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let dir = mkdir(&out.join("completions").join(dir))?;
        for cmd in &tools {
            let name = cmd.get_name().to_owned();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            write(&dir.join(file.replace("{}", &name)), &buf)?;
        }
    }
    Ok(())
}

/// A tool's page: NAME, SYNOPSIS and the option sections come from clap_mangen; DESCRIPTION,
/// EXAMPLES and EXIT STATUS from the same help text `--help` prints, keeping its indented
/// blocks (streams, pipelines, exit codes) as literal lines instead of filling them.
fn man_page(cmd: clap::Command, see_also: &[&str]) -> anyhow::Result<Vec<u8>> {
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let description = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|s| s.to_string());
    let after = cmd.get_after_long_help().map(|s| s.to_string());
    let man = Man::new(cmd)
        .date(page_date())
        .source(format!("blkpipe {version}"))
        .manual("blkpipe manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    let mut roff = Roff::new();
    if let Some(text) = description {
        roff.control("SH", ["DESCRIPTION"]);
        help_text(&mut roff, &text, false)?;
    }
    page.extend(roff.render().into_bytes());
    man.render_options_section(&mut page)?;
    let mut roff = Roff::new();
    if let Some(text) = after {
        help_text(&mut roff, &text, true)?;
    }
    roff.control("SH", ["SEE ALSO"]);
    let refs: Vec<String> = std::iter::once("blkpipe(7)".to_owned())
        .chain(see_also.iter().map(|t| format!("{t}(1)")))
        .collect();
    roff.text([roman(refs.join(", "))]);
    page.extend(roff.render().into_bytes());
    Ok(page)
}

/// Help text to roff. Unindented lines are prose (filled); a blank line starts a paragraph; an
/// unindented line ending in `:` followed by indented lines is a heading (`.SH` when `top`,
/// else `.SS`); indented lines are kept as they are.
fn help_text(roff: &mut Roff, text: &str, top: bool) -> anyhow::Result<()> {
    let mut literal = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let indented = line.starts_with(' ');
        if literal && !indented {
            roff.control("fi", []).control("RE", []);
            literal = false;
        }
        let next_indented = lines.get(i + 1).is_some_and(|l| l.starts_with(' '));
        if line.trim().is_empty() {
            if !literal {
                roff.control("PP", []);
            }
        } else if !indented && line.ends_with(':') && next_indented {
            let heading = line.trim_end_matches(':');
            let heading = match heading {
                "Exit codes" => "EXIT STATUS".to_owned(),
                h if top => h.to_uppercase(),
                h => h.to_owned(),
            };
            roff.control(if top { "SH" } else { "SS" }, [heading.as_str()]);
        } else if indented {
            if !literal {
                roff.control("RS", ["2"]).control("nf", []);
                literal = true;
            }
            roff.text([roman(line.strip_prefix("  ").unwrap_or(line))]);
        } else {
            roff.text([roman(*line)]);
        }
    }
    if literal {
        roff.control("fi", []).control("RE", []);
    }
    Ok(())
}

/// The date in the pages' footer: `SOURCE_DATE_EPOCH` (reproducible builds; build-docs sets
/// it to the last commit's time), else today.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn mkdir(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("{}: create", dir.display()))?;
    Ok(dir.to_owned())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("{}: create", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .with_context(|| format!("{}: write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_dates() {
        std::env::set_var("SOURCE_DATE_EPOCH", "1709251199"); // 2024-02-29 23:59:59 UTC
        assert_eq!(page_date(), "2024-02-29");
        std::env::set_var("SOURCE_DATE_EPOCH", "0");
        assert_eq!(page_date(), "1970-01-01");
        std::env::remove_var("SOURCE_DATE_EPOCH");
    }

    #[test]
    fn writes_every_page_and_completion() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        for cmd in tools() {
            let name = cmd.get_name();
            let page = fs::read_to_string(dir.path().join(format!("man/man1/{name}.1"))).unwrap();
            assert!(page.starts_with(".ie"), "{name}.1 is roff");
            for want in [
                ".SH DESCRIPTION",
                ".SH SAFETY",
                ".SH EXAMPLES",
                ".SH \"EXIT STATUS\"",
            ] {
                assert!(page.contains(want), "{name}.1 lacks {want}");
            }
            for arg in cmd.get_arguments().filter_map(|a| a.get_long()) {
                assert!(
                    page.contains(&arg.replace('-', "\\-")),
                    "{name}.1 lacks --{arg}"
                );
            }
            for file in [
                format!("completions/bash/{name}"),
                format!("completions/zsh/_{name}"),
                format!("completions/fish/{name}.fish"),
            ] {
                let text = fs::read_to_string(dir.path().join(&file)).unwrap();
                assert!(text.contains(name), "{file}");
            }
        }
        let overview = fs::read_to_string(dir.path().join("man/man7/blkpipe.7")).unwrap();
        assert!(overview.contains(env!("CARGO_PKG_VERSION")) && !overview.contains('@'));
    }
}
