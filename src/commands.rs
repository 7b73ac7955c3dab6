//! What each subcommand does, returning the process exit code. Output goes to the given
//! writers so tests can capture it.

use std::io::Write;
use std::path::Path;

use crate::cli::{Cli, Command};
use crate::exit_code;
use crate::manifest::{self, Catalog, crd, types::Kind};

pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match &cli.command {
        Command::Validate => validate(&cli.manifests, out, err),
        Command::Crds { out_dir } => crds(out_dir.as_deref(), out),
        Command::Reconcile { .. } => not_built_yet("reconcile", &cli.manifests, err),
        Command::Plan { .. } => not_built_yet("plan", &cli.manifests, err),
        Command::Status { .. } => not_built_yet("status", &cli.manifests, err),
        Command::History { .. } => not_built_yet("history", &cli.manifests, err),
    };
    result.unwrap_or_else(|e| {
        let _ = writeln!(err, "error: {e:#}");
        exit_code::FAILED
    })
}

/// Loads and validates, printing every problem; `None` means invalid (exit 2).
fn load(path: &Path, err: &mut dyn Write) -> anyhow::Result<Option<Catalog>> {
    match manifest::load(path) {
        Ok(catalog) => Ok(Some(catalog)),
        Err(diagnostics) => {
            writeln!(err, "{diagnostics}")?;
            Ok(None)
        }
    }
}

fn validate(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(catalog) = load(path, err)? else {
        return Ok(exit_code::INVALID);
    };
    writeln!(out, "{}: valid", catalog.summary())?;
    Ok(exit_code::OK)
}

fn crds(out_dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<u8> {
    use anyhow::Context;
    match out_dir {
        None => out.write_all(crd::all_yaml().as_bytes())?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            for kind in Kind::ALL {
                let path = dir.join(crd::file_name(kind));
                std::fs::write(&path, crd::to_yaml(kind))
                    .with_context(|| format!("failed to write `{}`", path.display()))?;
            }
        }
    }
    Ok(exit_code::OK)
}

/// The subcommands whose engine has not landed yet say so plainly instead of pretending.
fn not_built_yet(command: &str, path: &Path, err: &mut dyn Write) -> anyhow::Result<u8> {
    if load(path, err)?.is_none() {
        return Ok(exit_code::INVALID);
    }
    writeln!(
        err,
        "error: `convoy {command}` is not built yet in this version; the manifests are valid and nothing was changed on any host"
    )?;
    Ok(exit_code::FAILED)
}
