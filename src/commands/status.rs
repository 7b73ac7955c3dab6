//! `convoy status [SITE | -l SELECTOR]` and `convoy history`: what the state dir holds,
//! read without the controller lock (a controller may be running). Rendering is
//! `status::render`'s.

use std::io::Write;
use std::path::Path;

use super::unknown_site;
use crate::cli::OutputFormat;
use crate::exit_code;
use crate::state::StateDir;
use crate::status::{Selector, SiteObject, render};

/// Which sites `convoy status` shows.
pub(super) enum Which<'a> {
    All,
    /// `convoy status SITE`: one, in detail.
    Site(&'a str),
    /// `convoy status -l SELECTOR`.
    Selected(&'a str),
}

pub(super) fn status(
    state_dir: &Path,
    which: Which,
    output: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = StateDir::open_read_only(state_dir);
    let selector = match which {
        Which::Selected(text) => match Selector::parse(text) {
            Ok(selector) => Some(selector),
            Err(e) => {
                writeln!(err, "error: invalid -l selector {e}")?;
                return Ok(exit_code::INVALID);
            }
        },
        _ => None,
    };
    if let Which::Site(site) = which
        && let Some(code) = unknown_site(&state, site, err)?
    {
        return Ok(code);
    }
    warn_if_manifests_invalid(&state, err)?;
    let statuses = state.all_statuses();
    let any = !statuses.is_empty();
    let sites: Vec<SiteObject> = statuses
        .into_iter()
        .filter(|(name, _)| !matches!(which, Which::Site(site) if site != name))
        .map(|(name, status)| SiteObject {
            labels: state.site_labels(&name),
            name,
            status,
        })
        .filter(|site| selector.as_ref().is_none_or(|s| s.matches(&site.labels)))
        .collect();
    let code = match which {
        Which::Site(name) => match sites.first() {
            Some(site) => {
                print_source(&state, output, out)?;
                let detail = || render::render_site_detail(site);
                print(out, output, detail, || render::site_object(site))?;
                exit_code::OK
            }
            None => {
                writeln!(
                    err,
                    "error: site `{name}` has no readable status in the state dir `{}` yet",
                    state_dir.display()
                )?;
                exit_code::INVALID
            }
        },
        _ => {
            print_source(&state, output, out)?;
            let table = || render::render_status_table(&sites);
            print(out, output, table, || render::status_list(&sites))?;
            if let (Which::Selected(text), true, true) = (&which, sites.is_empty(), any) {
                writeln!(err, "no site matches -l {text}")?;
            }
            exit_code::OK
        }
    };
    for warning in state.take_warnings() {
        writeln!(err, "warning: {warning}")?;
    }
    if !any {
        // An empty table from a cron job's wrong working directory must not look like "fine".
        let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        writeln!(
            err,
            "error: no site status in the state dir `{}`: no controller has reconciled with it yet (check --state-dir)",
            dir.display()
        )?;
        return Ok(exit_code::INVALID);
    }
    Ok(code)
}

/// A controller following a git branch: which one, the commit served, and why a newer one
/// is not (the table's first lines; `-o json|yaml` carry `manifestCommit` per Site).
fn print_source(state: &StateDir, output: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    if let (Some(source), OutputFormat::Table) = (state.load_source(), output) {
        out.write_all(render::render_source(&source).as_bytes())?;
    }
    Ok(())
}

/// A daemon's last manifest load failed: what `status` shows is the last valid state's.
fn warn_if_manifests_invalid(state: &StateDir, err: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(manifests) = state.load_manifests().filter(|m| !m.valid) {
        writeln!(
            err,
            "warning: the manifests are invalid since {}; the controller still applies the last valid state:",
            manifests.since
        )?;
        for line in &manifests.errors {
            writeln!(err, "  {line}")?;
        }
    }
    Ok(())
}

/// Writes the table, or the object as JSON or YAML.
fn print(
    out: &mut dyn Write,
    output: OutputFormat,
    table: impl FnOnce() -> String,
    object: impl FnOnce() -> serde_json::Value,
) -> anyhow::Result<()> {
    match output {
        OutputFormat::Table => out.write_all(table().as_bytes())?,
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&object())?)?,
        OutputFormat::Yaml => out.write_all(serde_saphyr::to_string(&object())?.as_bytes())?,
    }
    Ok(())
}

pub(super) fn history(
    state_dir: &Path,
    site: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = StateDir::open_read_only(state_dir);
    if let Some(code) = unknown_site(&state, site, err)? {
        return Ok(code);
    }
    let events = state.history(site);
    if events.is_empty() {
        writeln!(
            out,
            "no history for site `{site}` in {}",
            state_dir.display()
        )?;
    } else {
        out.write_all(render::render_history(&events).as_bytes())?;
    }
    Ok(exit_code::OK)
}
