//! `blkpipe-gen OUTDIR`: the build step that writes the man pages and shell completions of the
//! six blkpipe tools from the same clap definitions their `--help` comes from
//! (`blkpipe_cli::args`), the man pages of the shell workflows (blksync, lvmigrate,
//! lvbackup, vmsync) from the `--help` text in each script, plus the hand-written `blkpipe(7)`
//! overview.
//!
//! Not one of the tools and never installed: `packaging/build-docs` runs it.
//!
//! ```text
//! OUTDIR/man/man1/<tool>.1            one page per tool and per shell workflow
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

use blkpipe_cli::args::{blkdiff, blkhash, blkmerge, blkpatch, blkread_chunks, cowlist};

/// The overview page, hand-written; `@VERSION@` and `@DATE@` are replaced.
const OVERVIEW_7: &str = include_str!("../../../packaging/blkpipe.7");

/// The shell workflows: name, the NAME line's summary, the script (its `usage()` text, a
/// quoted here-document, is the page) and the pages it refers to.
const SCRIPTS: [(&str, &str, &str, &[&str]); 4] = [
    (
        "blksync",
        "make a device or image file, on another host or this one, equal to a local one",
        include_str!("../../../shell/blksync"),
        &["blkhash", "blkdiff", "blkpatch", "ssh"],
    ),
    (
        "lvmigrate",
        "move a logical volume to another host while it stays in use",
        include_str!("../../../shell/lvmigrate"),
        &[
            "cowlist",
            "blkread-chunks",
            "blkpatch",
            "blkhash",
            "blkdiff",
            "lvcreate",
        ],
    ),
    (
        "lvbackup",
        "incremental backups of a logical volume with a rotating snapshot",
        include_str!("../../../shell/lvbackup"),
        &[
            "cowlist",
            "blkread-chunks",
            "blkpatch",
            "blkmerge",
            "lvcreate",
        ],
    ),
    (
        "vmsync",
        "copy a running qemu VM's disk, then only what changed, from its dirty bitmaps over NBD",
        include_str!("../../../shell/vmsync"),
        &["cowlist", "blkread-chunks", "blkpatch"],
    ),
];

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
    for (name, summary, script, refs) in SCRIPTS {
        let page = script_page(name, summary, script, refs)?;
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
    let cmd_for_synopsis = cmd.clone();
    let man = Man::new(cmd)
        .date(page_date())
        .source(format!("blkpipe {version}"))
        .manual("blkpipe manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    let mut roff = Roff::new();
    synopsis(&mut roff, &cmd_for_synopsis);
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

/// SYNOPSIS with every option's value name (`[--input FILE]`, `[--progress[=WHEN]]`), which
/// clap_mangen leaves out.
fn synopsis(roff: &mut Roff, cmd: &clap::Command) {
    use clap_mangen::roff::{bold, italic, Inline};
    roff.control("SH", ["SYNOPSIS"]);
    let mut cmd = cmd.clone();
    cmd.build(); // fills in each argument's number of values
    let mut line: Vec<Inline> = vec![bold(cmd.get_name().to_owned())];
    // Options first, then the operands, as clap's own usage line has them.
    let args = cmd.get_arguments().filter(|a| !a.is_positional());
    for arg in args.chain(cmd.get_arguments().filter(|a| a.is_positional())) {
        if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let values: Vec<String> = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| n.to_string()).collect())
            .unwrap_or_else(|| vec![arg.get_id().as_str().to_uppercase()]);
        line.push(roman(" "));
        if arg.is_positional() {
            let v = values.join(" ");
            if arg.is_required_set() {
                line.push(italic(v));
            } else {
                line.extend([roman("["), italic(v), roman("]")]);
            }
            continue;
        }
        line.push(roman("["));
        match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) => line.push(bold(format!("-{s}|--{l}"))),
            (Some(s), None) => line.push(bold(format!("-{s}"))),
            (None, Some(l)) => line.push(bold(format!("--{l}"))),
            (None, None) => {}
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        if takes_value {
            let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            if optional {
                line.extend([roman("[="), italic(values.join(" ")), roman("]")]);
            } else {
                line.extend([roman(" "), italic(values.join(" "))]);
            }
        }
        line.push(roman("]"));
    }
    roff.text(line);
}

/// The text of a script's `usage()`: the lines of its `cat <<'EOF'` here-document.
fn script_usage(script: &str) -> Option<&str> {
    let start = script.find("usage() {")?;
    let body = &script[start..];
    let open = body.find("<<'EOF'\n")? + "<<'EOF'\n".len();
    let len = body[open..].find("\nEOF\n")?;
    Some(&body[open..open + len])
}

/// A shell workflow's page from its `--help` text: the `Usage:` lines are the SYNOPSIS, the
/// prose up to the first heading the DESCRIPTION, `Options:` and `Examples:` blocks their own
/// sections, and the closing `Exit status:` paragraph EXIT STATUS.
fn script_page(name: &str, summary: &str, script: &str, refs: &[&str]) -> anyhow::Result<Vec<u8>> {
    let usage =
        script_usage(script).with_context(|| format!("shell/{name}: no usage() here-document"))?;
    let mut lines = usage.lines().peekable();
    let mut synopsis = Vec::new();
    while let Some(line) = lines.next_if(|l| !l.trim().is_empty()) {
        // Continuation lines keep their indentation under the first, without `Usage: `.
        let line = line.strip_prefix("Usage: ").unwrap_or(line);
        synopsis.push(line.strip_prefix("       ").unwrap_or(line).to_owned());
    }
    let rest: Vec<&str> = lines.collect();
    let rest = rest.join("\n");
    let (body, exit) = match rest.find("\nExit status: ") {
        Some(at) => (&rest[..at], Some(&rest[at + "\nExit status: ".len()..])),
        None => (rest.as_str(), None),
    };
    let mut roff = Roff::new();
    roff.control(
        "TH",
        [
            name.to_uppercase().as_str(),
            "1",
            page_date().as_str(),
            &format!("blkpipe {}", env!("CARGO_PKG_VERSION")),
            "blkpipe manual",
        ],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!("{name} - {summary}"))]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.control("nf", []);
    for line in &synopsis {
        roff.text([roman(line.as_str())]);
    }
    roff.control("fi", []);
    roff.control("SH", ["DESCRIPTION"]);
    help_text(&mut roff, body.trim_start_matches('\n'), true)?;
    if let Some(exit) = exit {
        roff.control("SH", ["EXIT STATUS"]);
        help_text(&mut roff, exit, true)?;
    }
    roff.control("SH", ["SEE ALSO"]);
    let see: Vec<String> = std::iter::once("blkpipe(7)".to_owned())
        .chain(refs.iter().map(|r| match *r {
            "lvcreate" => "lvcreate(8)".to_owned(),
            r => format!("{r}(1)"),
        }))
        .collect();
    roff.text([roman(see.join(", "))]);
    Ok(roff.render().into_bytes())
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
            // SYNOPSIS names each option's value: `[--undo FILE]`.
            let synopsis = page.split(".SH DESCRIPTION").next().unwrap();
            let mut built = cmd.clone();
            built.build();
            for arg in built.get_arguments().filter(|a| {
                a.get_long().is_some() && a.get_num_args().is_some_and(|n| n.takes_values())
            }) {
                let long = arg.get_long().unwrap().replace('-', "\\-");
                if let Some(value) = arg.get_value_names().and_then(|v| v.first()) {
                    let want_plain = format!("\\-{long}\\fR \\fI{value}\\fR]");
                    let want_optional = format!("\\-{long}\\fR[=\\fI{value}\\fR]]");
                    assert!(
                        synopsis.contains(&want_plain) || synopsis.contains(&want_optional),
                        "{name}.1 SYNOPSIS lacks the value of --{long}: {synopsis}"
                    );
                }
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
        for (name, ..) in SCRIPTS {
            let page = fs::read_to_string(dir.path().join(format!("man/man1/{name}.1"))).unwrap();
            for want in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                ".SH OPTIONS",
                ".SH EXAMPLES",
                ".SH \"EXIT STATUS\"",
                "blkpipe(7)",
                "\\-\\-help",
            ] {
                assert!(page.contains(want), "{name}.1 lacks {want}");
            }
            // Every option of the script's --help is on its page.
            let usage = script_usage(SCRIPTS.iter().find(|s| s.0 == name).unwrap().2).unwrap();
            for opt in usage.split_whitespace().filter(|w| w.starts_with("--")) {
                let opt = opt.split(['=', '[', ',', ')', '.']).next().unwrap();
                assert!(
                    page.contains(&opt.replace('-', "\\-")),
                    "{name}.1 lacks {opt}"
                );
            }
        }
        let overview = fs::read_to_string(dir.path().join("man/man7/blkpipe.7")).unwrap();
        for name in ["blksync(1)", "lvmigrate(1)", "lvbackup(1)", "vmsync(1)"] {
            let (page, section) = name.split_once('(').unwrap();
            assert!(
                overview.contains(&format!(".BR {page} ({section}")),
                "blkpipe.7 does not mention {name}"
            );
        }
        assert!(overview.contains(env!("CARGO_PKG_VERSION")) && !overview.contains('@'));
    }
}
