//! `convoy unlock SITE [HOST...]`: breaks the host leases of a site (a controller that
//! died holding them), sparing a holder that still renews unless `--force`.

use std::io::Write;

use super::{desired_without_upload, one_off, runtime};
use crate::cli::Cli;
use crate::exit_code;
use crate::state::StateDir;

pub(super) fn unlock(
    cli: &Cli,
    site: &str,
    hosts: &[String],
    force: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let desired = match desired_without_upload(cli, site, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    // `desired` refused an unknown site already.
    let target = &desired.sites[site];
    let members: Vec<&String> = target.stages.iter().flat_map(|s| &s.hosts).collect();
    if let Some(unknown) = hosts.iter().find(|h| !members.contains(h)) {
        writeln!(
            err,
            "error: host `{unknown}` is not a host of site `{site}` (its hosts: {})",
            members
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        return Ok(exit_code::INVALID);
    }
    let selected: Vec<&String> = members
        .into_iter()
        .filter(|h| hosts.is_empty() || hosts.contains(h))
        .collect();
    let state = StateDir::open_read_only(&cli.state_dir);
    let (_, shared) = one_off(cli, &state, None, 32)?;
    let runtime = runtime()?;
    let results = runtime.block_on(crate::execute::break_leases(
        &shared.pool,
        &desired.hosts,
        target,
        &selected,
        force,
    ));
    runtime.block_on(shared.close());
    let mut code = exit_code::OK;
    for (host, result) in results {
        match result {
            Ok(line) => writeln!(out, "{host}: {line}")?,
            Err(line) => {
                code = exit_code::FAILED;
                writeln!(err, "{host}: {line}")?;
            }
        }
    }
    Ok(code)
}
