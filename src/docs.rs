//! Shell completions and the man page, generated from the clap definitions in `cli`, so they
//! name exactly the verbs and flags of the build that prints them.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::Cli;

/// `tether completions SHELL`: the script on stdout.
pub fn completions(shell: Shell) -> i32 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tether", &mut out);
    emit(&out)
}

/// `tether man`: the page (roff) on stdout.
pub fn man() -> i32 {
    let mut out = Vec::new();
    match man_page(&mut out) {
        Ok(()) => emit(&out),
        Err(e) => {
            eprintln!("tether: rendering the man page failed: {e}");
            1
        }
    }
}

/// Write to stdout; a reader that went away (`tether man | head`) is not an error.
fn emit(bytes: &[u8]) -> i32 {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("tether: writing to stdout failed: {e}");
            1
        }
    }
}

/// One page for the whole tool: tether's own synopsis and options, the list of verbs, then
/// a section per verb (and per verb of a verb, e.g. `serve hash-token`) with its synopsis
/// and every flag, then exit status and files.
fn man_page(out: &mut Vec<u8>) -> io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone()).title("TETHER");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    let mut intro = Roff::new();
    intro.control("SH", ["DESCRIPTION"]);
    intro.text([roman(
        "tether keeps a running program in step with live configuration. It renders values \
         from files, directories and tether nodes to files and/or a child's environment, and \
         signals, restarts or runs a hook when they change. Each verb below takes its own \
         flags; most flags can also be set in the config file or by an environment variable.",
    )]);
    intro.to_writer(out)?;
    man.render_options_section(out)?;

    let mut list = Roff::new();
    list.control("SH", ["COMMANDS"]);
    for verb in verbs(&cmd) {
        list.control("TP", []);
        list.text([bold(bin_name(verb))]);
        if let Some(about) = verb.get_about() {
            list.text([roman(about.to_string())]);
        }
    }
    list.to_writer(out)?;
    for verb in verbs(&cmd) {
        verb_section(out, verb)?;
    }

    closing_sections().to_writer(out)?;
    man.render_version_section(out)
}

fn verbs(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|c| !c.is_hide_set())
}

fn bin_name(cmd: &clap::Command) -> &str {
    cmd.get_bin_name().unwrap_or_else(|| cmd.get_name())
}

/// `.SH "TETHER RUN"`, its usage, description and options (as `.SS` subsections).
fn verb_section(out: &mut Vec<u8>, verb: &clap::Command) -> io::Result<()> {
    let mut head = Roff::new();
    head.control("SH", [bin_name(verb).to_uppercase().as_str()]);
    head.to_writer(out)?;
    // clap's own usage line (`tether run [OPTIONS] [CMD]...`): the flags follow one by one.
    let usage = verb.clone().render_usage().to_string();
    let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage);
    let mut synopsis = Roff::new();
    synopsis.text([bold(usage)]);
    synopsis.control("PP", []);
    synopsis.to_writer(out)?;
    let man = Man::new(verb.clone());
    let mut body = Vec::new();
    man.render_description_section(&mut body)?;
    if verb
        .get_arguments()
        .any(|a| !a.is_hide_set() && !a.is_positional())
    {
        man.render_options_section(&mut body)?;
    }
    out.extend_from_slice(demote_headings(&String::from_utf8_lossy(&body)).as_bytes());
    for sub in verbs(verb) {
        verb_section(out, sub)?;
    }
    Ok(())
}

/// Inside a verb's section the description needs no heading of its own, and the option
/// headings (OPTIONS, or a custom help heading) become subsections.
fn demote_headings(roff: &str) -> String {
    let mut text = String::with_capacity(roff.len());
    for line in roff.lines() {
        match line.strip_prefix(".SH ") {
            Some("SYNOPSIS" | "DESCRIPTION") => {}
            Some(heading) => {
                let heading = heading.trim_matches('"');
                let mut chars = heading.chars();
                let title: String = chars
                    .next()
                    .into_iter()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect();
                text.push_str(&format!(".SS \"{title}\"\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

fn closing_sections() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    let mut codes = vec![
        ("0", "Success."),
        (
            "64",
            "Bad usage or configuration: every problem is printed with its key or flag.",
        ),
    ];
    #[cfg(feature = "node")]
    codes.push((
        "65",
        "serve: the node's store was there and is now empty or damaged; restore a backup or \
         start once with --reset-store.",
    ));
    codes.push((
        "1",
        "Any other failure, printed with its cause. run: the child's own exit code, or 128+N \
         when a signal N killed it.",
    ));
    for (code, meaning) in codes {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.text([
        bold("TETHER_LOG"),
        roman(
            " sets the log level or filter when --log-level is not given. Most flags can also \
             be set by a TETHER_* variable, named at each flag above; flags win over variables, \
             and variables over the config file.",
        ),
    ]);
    roff.control("SH", ["FILES"]);
    let store = (
        "/var/lib/tether/",
        "The node's embedded store (serve), kept 0600.",
    );
    let files = [
        (
            "/etc/tether/run.toml, watch.toml, serve.toml",
            "The configs the packaged systemd units read (tether-app, tether-sidecar, \
             tether-node).",
        ),
        ("/usr/share/doc/tether/examples/", "Example configs."),
    ];
    for (path, meaning) in files
        .into_iter()
        .chain(cfg!(feature = "node").then_some(store))
    {
        roff.control("TP", []);
        roff.text([bold(path)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), systemd.service(5), systemd.exec(5), systemd-analyze(1)",
    )]);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_inside_a_verb_become_subsections() {
        let text = ".SH SYNOPSIS\n\\fBtether run\\fR\n.SH DESCRIPTION\nSupervise.\n.SH OPTIONS\n.TP\n.SH \"LOG OUTPUT\"\n";
        assert_eq!(
            demote_headings(text),
            "\\fBtether run\\fR\nSupervise.\n.SS \"Options\"\n.TP\n.SS \"Log output\"\n"
        );
    }

    #[test]
    fn the_page_has_a_section_for_every_verb_and_verb_of_a_verb() {
        let mut out = Vec::new();
        man_page(&mut out).expect("renders");
        let page = String::from_utf8(out).expect("utf-8");
        let mut cmd = Cli::command();
        cmd.build();
        for verb in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            let heading = format!(".SH \"TETHER {}\"", verb.get_name().to_uppercase());
            assert!(page.contains(&heading), "no {heading} in the page");
            for sub in verb.get_subcommands().filter(|c| c.get_name() != "help") {
                let heading = format!(
                    ".SH \"TETHER {} {}\"",
                    verb.get_name().to_uppercase(),
                    sub.get_name().to_uppercase()
                );
                assert!(page.contains(&heading), "no {heading} in the page");
            }
        }
    }
}
