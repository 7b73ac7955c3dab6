//! `convoy completions SHELL` and `convoy man`: generated from the clap types in `cli.rs`,
//! so they cannot drift from the real flags. Written to stdout (or, for every man page,
//! into a directory); nothing else is touched.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;
use crate::exit_code;

pub(super) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "convoy", &mut script);
    out.write_all(&script)
        .context("failed to write the completion script")?;
    Ok(exit_code::OK)
}

/// `convoy.1` on `out`, or with `out_dir` every page: the main one names a page per
/// subcommand (`convoy-reconcile(1)`), and those are only there when written this way.
pub(super) fn man(out_dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
            .with_context(|| {
                format!("failed to write the manual pages into `{}`", dir.display())
            })?;
        return Ok(exit_code::OK);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("failed to render the manual page")?;
    out.write_all(&page)
        .context("failed to write the manual page")?;
    Ok(exit_code::OK)
}
