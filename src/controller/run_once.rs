//! `convoy reconcile --once`: the selected sites run through the controller loop until each
//! is done, `--timeout` or a signal; each site's block is printed as it finishes, and the
//! worst site decides the exit code. Passes, retries and the loop live elsewhere; this only
//! sets them up, reports and ends.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use super::run::{Controller, Out, Sources};
use super::{Mode, RunOptions, STOP_GRACE, Shared, context, worst};
use crate::desired::DesiredState;
use crate::execute::SiteReport;
use crate::exit_code;
use crate::progress::Progress;
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
    // The manifests were loaded and validated before this run started.
    shared.metrics.manifests_loaded(true);
    super::desired_loaded(&shared.metrics, &state, desired, options.site.as_deref());
    let mut desired = desired.clone();
    if let Some(only) = &options.site {
        desired.sites.retain(|name, _| name == only);
    }
    // `--host`: a site none of whose hosts is targeted is not touched, not even observed.
    if !options.hosts.is_empty() {
        desired
            .sites
            .retain(|_, site| super::uses_any(site, &options.hosts));
    }
    shared.progress = Some(Arc::new(Progress::new(
        desired.sites.len(),
        std::io::stderr().is_terminal(),
        Box::new(print_line),
    )));
    let sites: Vec<String> = desired.sites.keys().cloned().collect();
    let ctx = context(&desired, options, &shared, None);
    let started = Instant::now();
    let mut controller = Controller::new(Mode::Once, state, shared, Out::Print(out));
    controller.deadline = Some((started + options.timeout, options.timeout));
    controller.wait_unreachable = Some(options.wait_unreachable);
    controller.desired = Some(Arc::new(desired));
    controller.ctx = Some(Arc::new(ctx));
    controller.notifier = Some(crate::notify::Notifier::start(
        options.notifications.clone(),
        controller.shared.metrics.clone(),
        crate::notify::Memory::default(),
    ));
    controller.enqueue(sites.iter().cloned());
    let mut sources = once_sources();
    let stopped = controller.run(&mut sources).await;
    if let Some(why) = &stopped {
        // Every pass abandons its round trips, ends its commands on the hosts and releases
        // its leases; they get a bounded time to do so.
        controller.stop(why, STOP_GRACE).await;
    }
    let mut codes: Vec<u8> = controller.codes.values().copied().collect();
    if let Some(why) = &stopped {
        report_unfinished(&mut controller, &sites, why);
        codes.push(exit_code::FAILED);
    }
    // Messages of the last passes get a moment to leave; a slow receiver never more.
    if let Some(notifier) = controller.notifier.take() {
        notifier.close(crate::notify::ONCE_GRACE).await;
    }
    if !finish(&mut controller, options, sites.len(), started).await {
        codes.push(exit_code::FAILED);
    }
    worst(codes)
}

/// What `--once` listens to besides its passes: SIGTERM and SIGINT.
fn once_sources() -> Sources {
    use tokio::signal::unix::{SignalKind, signal};
    Sources {
        sigterm: signal(SignalKind::terminate()).ok(),
        sigint: signal(SignalKind::interrupt()).ok(),
        ..Sources::default()
    }
}

/// A finished line of `--once` output, on stdout.
fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
    let seconds = started.elapsed().as_secs_f64();
    let plural = if sites == 1 { "" } else { "s" };
    let summary = if controller.quiet == sites && sites > 0 {
        format!("{sites} site{plural} converged, nothing to do ({seconds:.1}s)")
    } else {
        format!("{sites} site{plural} in {seconds:.1}s")
    };
    controller.say(&summary);
    if let Some(p) = &controller.shared.progress {
        p.clear();
    }
    written
}

/// A site's state in one line: `shop: Converged: every host runs r7`.
pub fn state_line(result: &SiteResult) -> String {
    let status = &result.status;
    format!("{}: {:?}: {}", result.name, status.phase, status.message)
}

/// A site's closing lines: its state, then per host an error no event explained (an
/// unreachable host, a failed lease release...). The events were printed as they happened.
pub fn render_site(result: &SiteResult) -> String {
    let mut text = state_line(result) + "\n";
    for host in &result.report.hosts {
        let explained = result
            .report
            .events
            .iter()
            .any(|e| e.host == host.name && e.detail.is_some());
        let Some(error) = host.last_error.as_ref().filter(|_| !explained) else {
            continue;
        };
        let tail: Vec<&str> = error.lines().rev().take(5).collect();
        for line in tail.into_iter().rev() {
            text.push_str(&format!("{}: {}: | {line}\n", result.name, host.name));
        }
    }
    for event in &result.report.events {
        if let Some(path) = &event.kept {
            text.push_str(&format!(
                "{}: {}: {} {}: full output: {}\n",
                result.name,
                event.host,
                event.kind,
                event.release,
                path.display()
            ));
        }
    }
    if result.status.phase == Phase::Degraded {
        text.push_str(&format!(
            "warning: {}: {}\n",
            result.name, result.status.message
        ));
    }
    text
}
