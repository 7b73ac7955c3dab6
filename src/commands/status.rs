//! `convoy status` and `convoy history`: what the state dir holds, read without the
//! controller lock (a controller may be running). Rendering is `status::render`'s.

use std::io::Write;
use std::path::Path;

use super::unknown_site;
use crate::cli::OutputFormat;
use crate::exit_code;
use crate::state::StateDir;
use crate::status::render;

pub(super) fn status(
    state_dir: &Path,
    output: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = StateDir::open_read_only(state_dir);
    let statuses = state.all_statuses();
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
    match output {
        OutputFormat::Table => out.write_all(render::render_status_table(&statuses).as_bytes())?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&render::status_list(&statuses))?
        )?,
        OutputFormat::Yaml => {
            out.write_all(serde_saphyr::to_string(&render::status_list(&statuses))?.as_bytes())?
        }
    }
    for warning in state.take_warnings() {
        writeln!(err, "warning: {warning}")?;
    }
    if statuses.is_empty() {
        // An empty table from a cron job's wrong working directory must not look like "fine".
        let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        writeln!(
            err,
            "error: no site status in the state dir `{}`: no controller has reconciled with it yet (check --state-dir)",
            dir.display()
        )?;
        return Ok(exit_code::INVALID);
    }
    Ok(exit_code::OK)
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
