//! `convoy reconcile --once`: the selected sites run through the controller loop until each
//! is done, `--timeout` or a signal; each site's block is printed as it finishes, and the
//! worst site decides the exit code. Passes, retries and the loop live elsewhere; this only
//! sets them up, reports and ends.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::run::{Controller, Out, Sources};
use super::{Mode, RunOptions, STOP_GRACE, Shared, context, worst};
use crate::desired::DesiredState;
use crate::execute::SiteReport;
use crate::exit_code;
use crate::progress::{self, Progress};
use crate::state::{self, StateDir};
use crate::status::{Phase, SiteStatus};

/// A site's result as the run reports it.
pub struct SiteResult {
    pub name: String,
    pub report: SiteReport,
    pub status: SiteStatus,
}

/// `convoy reconcile --once`: every selected site, in parallel; prints each site's block
/// (per host, never interleaved) as it finishes. Returns the exit code.
pub async fn run_once(
    desired: &DesiredState,
    state: Arc<StateDir>,
    options: &RunOptions,
    out: &mut dyn std::io::Write,
) -> u8 {
    let mut shared = match Shared::new(options, &state) {
        Ok(shared) => shared,
        Err(e) => {
            let _ = writeln!(
                out,
                "error: failed to create a private directory for SSH control sockets: {e}"
            );
            return exit_code::FAILED;
        }
    };
    if std::io::stderr().is_terminal() {
        shared.progress = Some(Arc::new(Progress::default()));
    }
    // The manifests were loaded and validated before this run started.
    shared.metrics.manifests_loaded(true);
    super::desired_loaded(&shared.metrics, &state, desired, options.site.as_deref());
    let mut desired = desired.clone();
    if let Some(only) = &options.site {
        desired.sites.retain(|name, _| name == only);
    }
    let sites: Vec<String> = desired.sites.keys().cloned().collect();
    let ctx = context(&desired, options, &shared, None);
    let started = Instant::now();
    let redraw = shared.progress.is_some();
    let mut controller = Controller::new(Mode::Once, state, shared, Out::Print(out));
    controller.deadline = Some((started + options.timeout, options.timeout));
    controller.desired = Some(Arc::new(desired));
    controller.ctx = Some(Arc::new(ctx));
    controller.enqueue(sites.iter().cloned());
    let mut sources = once_sources(redraw);
    let stopped = controller.run(&mut sources).await;
    if let Some(why) = &stopped {
        // Every pass abandons its round trips, ends its commands on the hosts and releases
        // its leases; they get a bounded time to do so.
        controller.stop(why, &mut sources, STOP_GRACE).await;
    }
    if redraw {
        progress::clear(&mut std::io::stderr());
    }
    let mut codes: Vec<u8> = controller.codes.values().copied().collect();
    if let Some(why) = &stopped {
        report_unfinished(&mut controller, &sites, why);
        codes.push(exit_code::FAILED);
    }
    if !finish(&mut controller, options, sites.len(), started).await {
        codes.push(exit_code::FAILED);
    }
    worst(codes)
}

/// What `--once` listens to besides its passes: SIGTERM, SIGINT and, when a terminal shows
/// the progress, its redraw tick.
fn once_sources(redraw: bool) -> Sources {
    use tokio::signal::unix::{SignalKind, signal};
    Sources {
        sigterm: signal(SignalKind::terminate()).ok(),
        sigint: signal(SignalKind::interrupt()).ok(),
        redraw: redraw.then(|| tokio::time::interval(Duration::from_millis(200))),
        ..Sources::default()
    }
}

/// After a stop (`why`): which of `sites` never finished.
fn report_unfinished(controller: &mut Controller<'_>, sites: &[String], why: &str) {
    let pending: Vec<&str> = sites
        .iter()
        .map(String::as_str)
        .filter(|n| !controller.codes.contains_key(*n))
        .collect();
    controller.say(&format!(
        "error: {why}: stopped the commands under way on the hosts and released the leases; unfinished: {}",
        if pending.is_empty() {
            "none".to_string()
        } else {
            pending.join(", ")
        }
    ));
}

/// The end of a run: the metrics textfile (when asked for), the SSH masters closed, and
/// the summary line. False when the textfile could not be written.
async fn finish(
    controller: &mut Controller<'_>,
    options: &RunOptions,
    sites: usize,
    started: Instant,
) -> bool {
    let written = match &options.metrics_textfile {
        Some(path) => controller
            .shared
            .metrics
            .write_textfile(path)
            .map_err(|e| {
                controller.say(&format!(
                    "error: --metrics-textfile: {}",
                    state::error_chain(&e)
                ))
            })
            .is_ok(),
        None => true,
    };
    controller.shared.close().await;
    controller.say(&format!(
        "{sites} site{} in {:.1}s",
        if sites == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    ));
    written
}

/// One site's block of output: what happened per host, then the phase line.
pub fn render_site(result: &SiteResult) -> String {
    let mut text = String::new();
    let mut per_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for event in &result.report.events {
        let mut line = format!("{} {}", event.kind, event.release);
        if let Some(detail) = &event.detail {
            line.push_str(": ");
            line.push_str(detail.lines().last().unwrap_or(""));
        }
        per_host.entry(&event.host).or_default().push(line);
    }
    for host in &result.report.hosts {
        let lines = per_host.remove(host.name.as_str()).unwrap_or_default();
        let live = host.release.as_deref().unwrap_or("-");
        let state = if host.reachable {
            format!("live {live}")
        } else {
            "unreachable".to_string()
        };
        text.push_str(&format!(
            "{}: {} ({}): {state}\n",
            result.name, host.name, host.stage
        ));
        let explained = result
            .report
            .events
            .iter()
            .any(|e| e.host == host.name && e.detail.is_some());
        for line in lines {
            text.push_str(&format!("    {line}\n"));
        }
        if let (Some(error), false) = (&host.last_error, explained) {
            let tail: Vec<&str> = error.lines().rev().take(5).collect();
            for line in tail.into_iter().rev() {
                text.push_str(&format!("    | {line}\n"));
            }
        }
    }
    let status = &result.status;
    text.push_str(&format!(
        "{}: {:?}: {}\n",
        result.name, status.phase, status.message
    ));
    if status.phase == Phase::Degraded {
        text.push_str(&format!("warning: {}: {}\n", result.name, status.message));
    }
    text
}
