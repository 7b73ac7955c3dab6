//! What each subcommand does, returning the process exit code. Output goes to the given
//! writers so tests can capture it.

use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{Cli, Command, OutputFormat};
use crate::controller::{self, RunOptions};
use crate::desired::DesiredState;
use crate::exit_code;
use crate::manifest::{self, Catalog, LoadOptions, crd, types::Kind};
use crate::plan::{self, Step};
use crate::state::StateDir;
use crate::status::render;

pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match &cli.command {
        Command::Validate { archive_roots } => validate(&cli.manifests, archive_roots, out, err),
        Command::Crds { out_dir } => crds(out_dir.as_deref(), out),
        Command::Reconcile {
            once,
            site,
            timeout,
            max_parallel,
            resync,
            metrics_addr,
            metrics_textfile,
            archive_roots,
        } => {
            let args = ReconcileArgs {
                once: *once,
                site: site.clone(),
                timeout,
                max_parallel: *max_parallel,
                resync,
                metrics_addr,
                metrics_textfile: metrics_textfile.clone(),
                load: LoadOptions {
                    archive_roots: archive_roots.clone(),
                },
            };
            reconcile(cli, args, out, err)
        }
        Command::Plan {
            site,
            max_parallel,
            archive_roots,
        } => {
            let load = LoadOptions {
                archive_roots: archive_roots.clone(),
            };
            plan(cli, site.as_deref(), *max_parallel, &load, out, err)
        }
        Command::Status { output } => status(&cli.state_dir, *output, out, err),
        Command::History { site } => history(&cli.state_dir, site, out, err),
        Command::Retry {
            site,
            once_interrupted: false,
            ..
        } => retry(&cli.state_dir, site, out, err),
        Command::Retry {
            site,
            once_interrupted: true,
            yes,
        } => retry_once_interrupted(cli, site, *yes, out, err),
        Command::Unlock { site, hosts, force } => unlock(cli, site, hosts, *force, out, err),
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

fn validate(
    path: &Path,
    archive_roots: &[std::path::PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let options = LoadOptions {
        archive_roots: archive_roots.to_vec(),
    };
    let Some(catalog) = load(path, &options, err)? else {
        return Ok(exit_code::INVALID);
    };
    writeln!(out, "{}: valid", catalog.summary())?;
    Ok(exit_code::OK)
}

fn crds(out_dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<u8> {
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
    if let Some(site) = site
        && !desired.sites.contains_key(site)
    {
        writeln!(
            err,
            "error: no Site named `{site}` in {}",
            cli.manifests.display()
        )?;
        return Ok(Err(exit_code::INVALID));
    }
    Ok(Ok(desired))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

struct ReconcileArgs<'a> {
    once: bool,
    site: Option<String>,
    timeout: &'a str,
    max_parallel: usize,
    resync: &'a str,
    metrics_addr: &'a str,
    metrics_textfile: Option<std::path::PathBuf>,
    load: LoadOptions,
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

fn reconcile(
    cli: &Cli,
    args: ReconcileArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let (timeout, resync) = match (
        duration_arg("--timeout", args.timeout),
        duration_arg("--resync", args.resync),
    ) {
        (Ok(t), Ok(r)) => (t, r),
        (Err(e), _) | (_, Err(e)) => {
            writeln!(err, "{e}")?;
            return Ok(exit_code::INVALID);
        }
    };
    let options = RunOptions {
        site: args.site.clone(),
        timeout,
        max_parallel: args.max_parallel,
        known_hosts: cli.known_hosts.clone(),
        metrics_textfile: args.metrics_textfile,
    };
    if !args.once {
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
    let desired = match desired(cli, args.site.as_deref(), &args.load, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    let state = std::sync::Arc::new(StateDir::lock(&cli.state_dir)?);
    let code = runtime()?.block_on(controller::run_once(&desired, state.clone(), &options, out));
    for warning in state.take_warnings() {
        writeln!(err, "warning: {warning}")?;
    }
    Ok(code)
}

fn plan(
    cli: &Cli,
    site: Option<&str>,
    max_parallel: usize,
    load: &LoadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let desired = match desired(cli, site, load, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    let state = StateDir::open_read_only(&cli.state_dir);
    let (options, shared) = one_off(cli, &state, None, max_parallel)?;
    let ctx = controller::context(&desired, &options, &shared, None);
    let runtime = runtime()?;
    for s in desired
        .sites
        .values()
        .filter(|s| site.is_none_or(|name| s.name == name))
    {
        let observed = runtime.block_on(crate::execute::observe_site(&ctx, s));
        let pass = controller::pass_state(s, &state);
        let (steps, outcome) = plan::preview(s, &observed, &pass);
        writeln!(out, "{}: desired {}", s.name, s.release)?;
        for (host, reach) in &observed {
            let seen = match reach {
                plan::Reach::Reachable(v) => {
                    format!("live {}", v.current.as_deref().unwrap_or("-"))
                }
                plan::Reach::Unreachable { reason } => format!("unreachable: {reason}"),
                plan::Reach::Refused { reason } => format!("refused: {reason}"),
            };
            writeln!(out, "  {host}: {seen}")?;
        }
        for step in &steps {
            writeln!(out, "  - {}", describe(step))?;
        }
        if steps.is_empty() {
            writeln!(out, "  nothing to do")?;
        }
        writeln!(out, "  => {outcome:?}")?;
    }
    runtime.block_on(shared.close());
    Ok(exit_code::OK)
}

/// One planned step in words.
fn describe(step: &Step) -> String {
    match step {
        Step::Build { host } => format!("build on {host}"),
        Step::Once { stage, host } => format!("run `once` of stage {stage} on {host}"),
        Step::Switch {
            stage,
            hosts,
            pause,
            cleanup,
        } => {
            let mut text = format!("switch stage {stage}: {}", hosts.join(", "));
            if !pause.is_zero() {
                text.push_str(&format!(" (after a {}s pause)", pause.as_secs()));
            }
            for (host, remove) in cleanup {
                text.push_str(&format!("; then remove {} on {host}", remove.join(", ")));
            }
            text
        }
        Step::Rollback { stage, hosts } => format!("roll back stage {stage}: {}", hosts.join(", ")),
        Step::Cleanup { host, remove } => format!("remove {} on {host}", remove.join(", ")),
    }
}

fn status(
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

/// A site the state dir has never heard of: exit 2, saying what was looked for and where
/// (a cron job's relative `--state-dir` is the usual cause).
fn unknown_site(state: &StateDir, site: &str, err: &mut dyn Write) -> anyhow::Result<Option<u8>> {
    let known = state.site_names();
    if known.iter().any(|s| s == site) {
        return Ok(None);
    }
    let dir = std::fs::canonicalize(state.path()).unwrap_or_else(|_| state.path().to_path_buf());
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

fn retry(
    state_dir: &Path,
    site: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = StateDir::lock(state_dir)?;
    if let Some(code) = unknown_site(&state, site, err)? {
        return Ok(code);
    }
    state.reset_attempts(site)?;
    writeln!(
        out,
        "{site}: failed attempts cleared; the next pass tries its desired release again"
    )?;
    Ok(exit_code::OK)
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
        max_parallel,
        known_hosts: cli.known_hosts.clone(),
        metrics_textfile: None,
    };
    let shared = controller::Shared::new(&options, state)
        .context("failed to create a private directory for SSH control sockets")?;
    Ok((options, shared))
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

fn unlock(
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

/// `retry SITE --once-interrupted`: lists the site's interrupted `once` records, asks,
/// clears those still interrupted over the normal transport, and lifts the Failed hold.
fn retry_once_interrupted(
    cli: &Cli,
    site: &str,
    yes: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    use controller::once_record;
    let desired = match desired_without_upload(cli, site, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    // Held for the whole command: no pass of this state dir can start `once` meanwhile.
    let state = StateDir::lock(&cli.state_dir)?;
    let (options, shared) = one_off(cli, &state, Some(site), 32)?;
    let ctx = controller::context(&desired, &options, &shared, None);
    let runtime = runtime()?;
    let target = &desired.sites[site];
    let (found, errors) = runtime.block_on(once_record::find(&ctx, target));
    let code = (|| -> anyhow::Result<u8> {
        for e in &errors {
            writeln!(err, "error: cannot check the `once` record: {e}")?;
        }
        if found.is_empty() {
            writeln!(
                out,
                "{site}: no interrupted `once` record of release {} on any host{}; nothing cleared",
                target.release,
                if errors.is_empty() {
                    ""
                } else {
                    " that answered"
                }
            )?;
            return Ok(if errors.is_empty() {
                exit_code::OK
            } else {
                exit_code::FAILED
            });
        }
        writeln!(
            out,
            "{site}: interrupted `once` records to clear (their commands will run again on the next pass):"
        )?;
        for record in &found {
            writeln!(out, "  {}", record.describe())?;
        }
        if !yes {
            if !std::io::stdin().is_terminal() {
                writeln!(
                    err,
                    "error: refusing to clear without confirmation: stdin is not a terminal; check the records, then pass --yes"
                )?;
                return Ok(exit_code::INVALID);
            }
            write!(out, "Clear these records? [y/N] ")?;
            out.flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                writeln!(out, "nothing cleared")?;
                return Ok(exit_code::FAILED);
            }
        }
        let mut failed = false;
        for record in &found {
            match runtime.block_on(once_record::clear(&ctx, target, record)) {
                Ok(None) => writeln!(
                    out,
                    "  host {}: cleared ({}/started moved aside; the log is kept)",
                    record.host, record.dir
                )?,
                Ok(Some(why)) => writeln!(out, "  host {}: left alone: {why}", record.host)?,
                Err(e) => {
                    failed = true;
                    writeln!(err, "error: host {}: failed to clear: {e}", record.host)?;
                }
            }
        }
        state.reset_attempts(site)?;
        writeln!(
            out,
            "{site}: failed attempts cleared; the next pass runs the `once` commands again"
        )?;
        Ok(if failed || !errors.is_empty() {
            exit_code::FAILED
        } else {
            exit_code::OK
        })
    })();
    runtime.block_on(shared.close());
    code
}

fn history(
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
