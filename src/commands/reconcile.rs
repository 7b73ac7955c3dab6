//! `convoy reconcile`: checks its flags, then hands over to the daemon, or to
//! `reconcile --once` with the validated desired state. The controller does the work.

use std::io::Write;
use std::time::Duration;

use super::{desired, runtime, unknown_manifest_site};
use crate::cli::Cli;
use crate::controller::{self, RunOptions};
use crate::desired::DesiredState;
use crate::exit_code;
use crate::manifest::{self, LoadOptions};
use crate::state::{StateDir, error_chain};

/// The `reconcile` flags as given: durations and the address are still text, checked here.
pub(super) struct ReconcileArgs<'a> {
    pub(super) once: bool,
    pub(super) site: Option<String>,
    /// `--host`: the only hosts to change.
    pub(super) hosts: Vec<String>,
    pub(super) timeout: &'a str,
    pub(super) wait_unreachable: &'a str,
    pub(super) max_parallel: usize,
    pub(super) max_sites: Option<usize>,
    pub(super) max_builds_per_host: usize,
    pub(super) resync: &'a str,
    pub(super) metrics_addr: &'a str,
    pub(super) metrics_textfile: Option<std::path::PathBuf>,
    pub(super) load: LoadOptions,
}

/// A positive duration from the command line, or the usage error to print.
fn duration_arg(flag: &str, text: &str) -> Result<Duration, String> {
    match manifest::Duration::parse(text) {
        // At most a year: far enough for any operator, and no overflow adding it to a clock.
        Ok(d) if !d.as_std().is_zero() && d.as_std() <= Duration::from_secs(365 * 86_400) => {
            Ok(d.as_std())
        }
        _ => Err(format!(
            "error: invalid {flag} `{text}`: expected a duration from 1s to 365d, such as `15m`"
        )),
    }
}

pub(super) fn reconcile(
    cli: &Cli,
    args: ReconcileArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let (timeout, wait_unreachable, resync) = match (
        duration_arg("--timeout", args.timeout),
        duration_arg("--wait-unreachable", args.wait_unreachable),
        duration_arg("--resync", args.resync),
    ) {
        (Ok(t), Ok(w), Ok(r)) => (t, w, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            writeln!(err, "{e}")?;
            return Ok(exit_code::INVALID);
        }
    };
    log_start(cli, args.once);
    let mut options = RunOptions {
        site: args.site.clone(),
        timeout,
        wait_unreachable,
        max_parallel: args.max_parallel,
        max_sites: args.max_sites,
        max_builds_per_host: args.max_builds_per_host,
        known_hosts: cli.known_hosts.clone(),
        metrics_textfile: args.metrics_textfile,
        hosts: args.hosts.clone(),
        notifications: vec![],
    };
    if !args.once {
        if options.metrics_textfile.is_some() {
            writeln!(
                err,
                "error: --metrics-textfile needs --once; the daemon serves its metrics on --metrics-addr"
            )?;
            return Ok(exit_code::INVALID);
        }
        let Ok(addr) = args.metrics_addr.parse::<std::net::SocketAddr>() else {
            writeln!(
                err,
                "error: invalid --metrics-addr `{}`: expected HOST:PORT, e.g. 127.0.0.1:9469",
                args.metrics_addr
            )?;
            return Ok(exit_code::INVALID);
        };
        let state = StateDir::lock(&cli.state_dir)?;
        let daemon = controller::daemon::DaemonOptions {
            manifests: cli.manifests.clone(),
            load: args.load.clone(),
            resync,
            metrics_addr: addr,
            run: options,
        };
        return Ok(runtime()?.block_on(controller::daemon::run(daemon, state, err)));
    }
    if let Some(path) = &options.metrics_textfile
        && let Some(problem) = textfile_problem(path)
    {
        writeln!(err, "{problem}")?;
        return Ok(exit_code::INVALID);
    }
    let desired = match desired(cli, None, &args.load, err)? {
        Ok(desired) => desired,
        Err(code) => {
            // Invalid manifests: the textfile says so, or the ConvoyManifestsInvalid alert
            // of a cron user could never fire.
            if let Some(path) = &options.metrics_textfile {
                let metrics = crate::metrics::Metrics::new();
                metrics.manifests_loaded(false);
                if let Err(e) = metrics.write_textfile(path) {
                    writeln!(err, "error: --metrics-textfile: {}", error_chain(&e))?;
                }
            }
            return Ok(code);
        }
    };
    if let Some(code) = selection_problem(cli, &desired, &options, err)? {
        return Ok(code);
    }
    match webhook_urls(&desired, err)? {
        Ok(targets) => options.notifications = targets,
        Err(code) => return Ok(code),
    }
    let state = std::sync::Arc::new(StateDir::lock(&cli.state_dir)?);
    let code = runtime()?.block_on(controller::run_once(&desired, state.clone(), &options, out));
    for warning in state.take_warnings() {
        tracing::warn!("{warning}");
    }
    Ok(code)
}

/// The Notifications with their webhook URLs, read now: a missing one stops the run before
/// any host is touched (exit 2), naming the Notification and the variable or file.
fn webhook_urls(
    desired: &crate::desired::DesiredState,
    err: &mut dyn Write,
) -> anyhow::Result<Result<Vec<crate::notify::Target>, u8>> {
    match crate::notify::resolve(&desired.notifications) {
        Ok(targets) => Ok(Ok(targets)),
        Err(errors) => {
            for e in &errors {
                writeln!(err, "error: {}", error_chain(e))?;
            }
            Ok(Err(exit_code::INVALID))
        }
    }
}

/// Why `--metrics-textfile PATH` cannot be written, found before any host is touched: its
/// directory must exist (node_exporter's collector directory is never created by convoy).
fn textfile_problem(path: &std::path::Path) -> Option<String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if path.file_name().is_none() || path.is_dir() {
        return Some(format!(
            "error: --metrics-textfile `{}`: expected a file path, such as /var/lib/node_exporter/textfile/convoy.prom",
            path.display()
        ));
    }
    (!dir.is_dir()).then(|| {
        format!(
            "error: --metrics-textfile `{}`: directory `{}` does not exist",
            path.display(),
            dir.display()
        )
    })
}

/// The first log line: the version, and where the manifests and the state dir really are.
/// Relative paths (the defaults are) resolve against the current directory, which under
/// cron or systemd is rarely the one the operator had in mind.
fn log_start(cli: &Cli, once: bool) {
    tracing::info!(
        manifests = %crate::cli::resolved(&cli.manifests).display(),
        state_dir = %crate::cli::resolved(&cli.state_dir).display(),
        "convoy {} reconcile{}",
        crate::cli::VERSION,
        if once { " --once" } else { "" }
    );
}

/// `--site` or `--host` names the manifests do not have: exit 2, before any host is touched.
fn selection_problem(
    cli: &Cli,
    desired: &DesiredState,
    options: &RunOptions,
    err: &mut dyn Write,
) -> anyhow::Result<Option<u8>> {
    if let Some(code) = unknown_manifest_site(cli, desired, options.site.as_deref(), err)? {
        return Ok(Some(code));
    }
    match host_problem(desired, options.site.as_deref(), &options.hosts) {
        Some(problem) => {
            writeln!(err, "{problem}")?;
            Ok(Some(exit_code::INVALID))
        }
        None => Ok(None),
    }
}

/// Why `--host` names cannot be used, found before any host is touched: a name no
/// ServerGroup has (with the closest one, if it looks like a typo), or hosts that no
/// selected site deploys to.
fn host_problem(desired: &DesiredState, site: Option<&str>, hosts: &[String]) -> Option<String> {
    if hosts.is_empty() {
        return None;
    }
    let known = desired.hosts.keys().map(String::as_str);
    if let Some(unknown) = hosts.iter().find(|h| !desired.hosts.contains_key(*h)) {
        let hint = match crate::manifest::suggest::closest(unknown, known) {
            Some(close) => format!("; did you mean `{close}`?"),
            None => String::new(),
        };
        return Some(format!(
            "error: --host `{unknown}`: no ServerGroup has a host of that name{hint}"
        ));
    }
    let used = desired
        .sites
        .values()
        .filter(|s| site.is_none_or(|only| only == s.name))
        .any(|s| controller::uses_any(s, hosts));
    (!used).then(|| {
        format!(
            "error: --host {}: no selected Site deploys to {}",
            hosts.join(", "),
            if hosts.len() == 1 { "it" } else { "them" }
        )
    })
}
