//! What each subcommand does, returning the process exit code. Output goes to the given
//! writers so tests can capture it. This file dispatches and holds what several commands
//! share (loading the desired state, the async runtime, one-off SSH setup); each command
//! family has its file: `manifests.rs` (validate, crds), `reconcile.rs`, `plan.rs`,
//! `status.rs` (status, history), `retry.rs`, `unlock.rs`, `docs.rs` (completions, man).
//! Commands report and exit; deciding and doing belong to the planner, the executor and
//! the controller.

mod docs;
mod manifests;
mod plan;
mod reconcile;
mod retry;
mod status;
mod unlock;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{Cli, Command};
use crate::controller::{self, RunOptions};
use crate::desired::DesiredState;
use crate::exit_code;
use crate::manifest::{self, Catalog, LoadOptions};
use crate::state::StateDir;

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match &cli.command {
        Command::Validate { archive_roots } => {
            manifests::validate(&cli.manifests, archive_roots, out, err)
        }
        Command::Crds { out_dir } => manifests::crds(out_dir.as_deref(), out),
        Command::Reconcile {
            once,
            site,
            hosts,
            timeout,
            wait_unreachable,
            max_parallel,
            max_sites,
            max_builds_per_host,
            resync,
            metrics_addr,
            metrics_textfile,
            archive_roots,
            git,
        } => {
            let args = reconcile::ReconcileArgs {
                once: *once,
                site: site.clone(),
                hosts: hosts.clone(),
                timeout,
                wait_unreachable,
                max_parallel: *max_parallel,
                max_sites: max_sites.map(|n| n as usize),
                max_builds_per_host: *max_builds_per_host as usize,
                resync,
                metrics_addr,
                metrics_textfile: metrics_textfile.clone(),
                load: LoadOptions {
                    archive_roots: archive_roots.clone(),
                },
                git,
            };
            reconcile::reconcile(cli, args, out, err)
        }
        Command::Plan {
            site,
            max_parallel,
            archive_roots,
        } => {
            let load = LoadOptions {
                archive_roots: archive_roots.clone(),
            };
            plan::plan(cli, site.as_deref(), *max_parallel, &load, out, err)
        }
        Command::Status {
            site,
            selector,
            output,
        } => {
            let which = match (site, selector) {
                (Some(site), _) => status::Which::Site(site),
                (None, Some(selector)) => status::Which::Selected(selector),
                (None, None) => status::Which::All,
            };
            status::status(&cli.state_dir, which, *output, out, err)
        }
        Command::History { site } => status::history(&cli.state_dir, site, out, err),
        Command::Retry {
            site,
            once_interrupted: false,
            ..
        } => retry::retry(&cli.state_dir, site, out, err),
        Command::Retry {
            site,
            once_interrupted: true,
            yes,
        } => retry::retry_once_interrupted(cli, site, *yes, out, err),
        Command::Unlock { site, hosts, force } => {
            unlock::unlock(cli, site, hosts, *force, out, err)
        }
        Command::Completions { shell } => docs::completions(*shell, out),
        Command::Man { out_dir } => docs::man(out_dir.as_deref(), out),
    };
    result.unwrap_or_else(|e| {
        let _ = writeln!(err, "error: {e:#}");
        exit_code::FAILED
    })
}

/// Loads and validates, printing every problem; `None` means invalid (exit 2).
fn load(
    path: &Path,
    options: &LoadOptions,
    err: &mut dyn Write,
) -> anyhow::Result<Option<Catalog>> {
    match manifest::load_with(path, options) {
        Ok(catalog) => Ok(Some(catalog)),
        Err(diagnostics) => {
            writeln!(err, "{diagnostics}")?;
            Ok(None)
        }
    }
}

/// The desired state, or the exit code that ends the command (invalid manifests, unknown site).
fn desired(
    cli: &Cli,
    site: Option<&str>,
    options: &LoadOptions,
    err: &mut dyn Write,
) -> anyhow::Result<Result<DesiredState, u8>> {
    let Some(catalog) = load(&cli.manifests, options, err)? else {
        return Ok(Err(exit_code::INVALID));
    };
    let state = StateDir::open_read_only(&cli.state_dir);
    if let Err(diagnostics) = manifest::validate::check_immutable(&catalog, |site, release| {
        state.applied_revision(site, release)
    }) {
        writeln!(err, "{diagnostics}")?;
        return Ok(Err(exit_code::INVALID));
    }
    let desired = DesiredState::from_catalog(&catalog);
    if let Some(code) = unknown_manifest_site(cli, &desired, site, err)? {
        return Ok(Err(code));
    }
    Ok(Ok(desired))
}

/// A `--site` the manifests do not have: exit 2, naming it and the manifests.
fn unknown_manifest_site(
    cli: &Cli,
    desired: &DesiredState,
    site: Option<&str>,
    err: &mut dyn Write,
) -> anyhow::Result<Option<u8>> {
    match site {
        Some(site) if !desired.sites.contains_key(site) => {
            writeln!(
                err,
                "error: no Site named `{site}` in {}",
                cli.manifests.display()
            )?;
            Ok(Some(exit_code::INVALID))
        }
        _ => Ok(None),
    }
}

/// The desired state for a command that uploads nothing (`unlock`, `retry`): where an
/// archive may come from does not matter there.
fn desired_without_upload(
    cli: &Cli,
    site: &str,
    err: &mut dyn Write,
) -> anyhow::Result<Result<DesiredState, u8>> {
    let anywhere = LoadOptions {
        archive_roots: vec![std::path::PathBuf::from("/")],
    };
    desired(cli, Some(site), &anywhere, err)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// Options and SSH masters for a command that talks to hosts once (`plan`, `unlock`,
/// `retry --once-interrupted`): a minute per round trip, no textfile.
fn one_off(
    cli: &Cli,
    state: &StateDir,
    site: Option<&str>,
    max_parallel: usize,
) -> anyhow::Result<(RunOptions, controller::Shared)> {
    let options = RunOptions {
        site: site.map(str::to_string),
        timeout: Duration::from_secs(60),
        wait_unreachable: Duration::from_secs(60),
        max_parallel,
        max_sites: None,
        max_builds_per_host: 1,
        known_hosts: cli.known_hosts.clone(),
        metrics_textfile: None,
        hosts: vec![],
        notifications: vec![],
    };
    let shared = controller::Shared::new(&options, state)
        .context("failed to create a private directory for SSH control sockets")?;
    Ok((options, shared))
}

/// A site the state dir has never heard of: exit 2, saying what was looked for and where
/// (a cron job's relative `--state-dir` is the usual cause).
fn unknown_site(state: &StateDir, site: &str, err: &mut dyn Write) -> anyhow::Result<Option<u8>> {
    let known = state.site_names();
    if known.iter().any(|s| s == site) {
        return Ok(None);
    }
    let dir = crate::cli::resolved(state.path());
    writeln!(
        err,
        "error: no site `{site}` in the state dir `{}` ({}); check the site name and --state-dir",
        dir.display(),
        if known.is_empty() {
            "it holds no site".to_string()
        } else {
            format!("it holds: {}", known.join(", "))
        }
    )?;
    Ok(Some(exit_code::INVALID))
}
