//! `convoy reconcile` without `--once`: the long-running controller. It watches the
//! manifest directory, reloads on every change (or SIGHUP), queues only the sites whose
//! desired state changed, resyncs everything periodically to correct drift, probes the
//! hosts of Blocked sites cheaply (TCP connect) so a server that boots catches up within
//! seconds, serves metrics, and on SIGTERM/SIGINT lets running host steps finish and exits 0.
//!
//! The loop itself is the one `--once` runs too (`run.rs`, over `queue.rs`): one reconcile
//! per site at a time, sites in parallel under the global limit, per-site exponential
//! backoff with jitter. This file adds what only the daemon has: the manifest source
//! (reload, reload retry), the resync, the probes, the metrics endpoint.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use super::run::{Controller, Out, Sources};
use super::{Mode, RunOptions, Shared, backoff, context, wrote};
use crate::desired::{DesiredSite, DesiredState};
use crate::exit_code;
use crate::host::Host;
use crate::manifest;
use crate::state::{self, StateDir};

/// Settings of the daemon.
pub struct DaemonOptions {
    pub manifests: PathBuf,
    /// `--archive-root`s and the like, applied at every reload.
    pub load: manifest::LoadOptions,
    pub resync: Duration,
    pub metrics_addr: SocketAddr,
    pub run: RunOptions,
}

/// How often the hosts of Blocked sites are probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a burst of reload signals is collected into one reload.
pub(super) const SETTLE: Duration = Duration::from_millis(300);
/// How long running passes may take to finish their current steps at shutdown.
const SHUTDOWN_GRACE: Duration = super::STOP_GRACE;

/// How long the loop may go without turning before `/healthz` reports it stalled: twice the
/// resync interval, between 5 s and 60 s. The probe timer turns it every 0.5 s, and every
/// step it takes is bounded in seconds, so a longer silence means it is stuck.
fn stale_after(resync: Duration) -> Duration {
    (resync * 2).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

pub(super) fn log(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {line}", state::now_rfc3339());
}

/// Runs the controller until SIGTERM/SIGINT. Returns the exit code.
pub async fn run(options: DaemonOptions, state: StateDir, err: &mut dyn Write) -> u8 {
    let state = Arc::new(state);
    let shared = match Shared::new(&options.run, &state) {
        Ok(shared) => shared,
        Err(e) => {
            let _ = writeln!(
                err,
                "error: failed to create a private directory for SSH control sockets: {e}"
            );
            return exit_code::FAILED;
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    let listener = match tokio::net::TcpListener::bind(options.metrics_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = writeln!(
                err,
                "error: failed to listen on {} for metrics: {e}",
                options.metrics_addr
            );
            return exit_code::FAILED;
        }
    };
    let heartbeat = Arc::new(super::http::Heartbeat::new(stale_after(options.resync)));
    heartbeat.beat();
    tokio::spawn(super::http::serve(
        listener,
        shared.metrics.clone(),
        ready.clone(),
        heartbeat.clone(),
    ));
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watch = match super::watch::start(&options.manifests, reload_tx) {
        Ok(watch) => watch,
        Err(e) => {
            let _ = writeln!(
                err,
                "error: failed to watch `{}`: {e}",
                options.manifests.display()
            );
            return exit_code::FAILED;
        }
    };
    let (sigterm, sigint, sighup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            let _ = writeln!(err, "error: failed to install signal handlers");
            return exit_code::FAILED;
        }
    };
    log(&format!(
        "convoy {} controlling `{}`; metrics on http://{}/metrics",
        env!("CARGO_PKG_VERSION"),
        options.manifests.display(),
        options.metrics_addr
    ));

    let mut resync = tokio::time::interval(options.resync);
    resync.tick().await;
    let mut controller = Controller::new(Mode::Daemon, state, shared, Out::Log);
    controller.manifests = Some(Manifests {
        options,
        ready,
        reload_retry: None,
    });
    controller.reload();
    let mut sources = Sources {
        sigterm: Some(sigterm),
        sigint: Some(sigint),
        sighup: Some(sighup),
        reloads: Some(reload_rx),
        resync: Some(resync),
        probe: Some(tokio::time::interval(PROBE_EVERY)),
        heartbeat: Some(heartbeat),
        ..Sources::default()
    };
    // The daemon's loop ends only when a signal stops it.
    let why = controller
        .run(&mut sources)
        .await
        .unwrap_or_else(|| "stopped".into());
    log(&format!(
        "{why}: stopping the host steps under way, releasing leases"
    ));
    if !controller.stop(&why, &mut sources, SHUTDOWN_GRACE).await {
        log(
            "shutdown grace period over; leaving the remaining passes (their hosts keep a complete release)",
        );
    }
    controller.shared.close().await;
    log("stopped");
    exit_code::OK
}

/// Where the daemon's desired state comes from: the manifest directory.
pub(super) struct Manifests {
    options: DaemonOptions,
    /// Whether the last load was valid (`/healthz`).
    ready: Arc<AtomicBool>,
    /// Set while the manifests could not be read (an I/O error, not invalid content): no
    /// file event may ever announce the cure (descriptors freed, a mount back), so the
    /// reload is retried on backoff until one succeeds.
    reload_retry: Option<ReloadRetry>,
}

struct ReloadRetry {
    at: Instant,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Controller<'_> {
    /// Loads and validates the manifests; if valid, queues the sites whose desired state
    /// changed. If not, keeps acting on the last valid state and reports the errors.
    /// (`--once` has no manifest source: nothing to do.)
    pub(super) fn reload(&mut self) {
        let Some(source) = &mut self.manifests else {
            return;
        };
        let metrics = self.shared.metrics.clone();
        let state = &self.state;
        let loaded = manifest::load_classified(&source.options.manifests, &source.options.load)
            .and_then(|catalog| {
                manifest::validate::check_immutable(&catalog, |site, release| {
                    state.applied_revision(site, release)
                })
                .map(|()| catalog)
                .map_err(|diagnostics| manifest::LoadFailure {
                    diagnostics,
                    read_failed: false,
                })
            });
        let catalog = match loaded {
            Ok(catalog) => catalog,
            Err(failure) => {
                let diagnostics = failure.diagnostics;
                metrics.manifests_loaded(false);
                let errors: Vec<String> = diagnostics.0.iter().map(ToString::to_string).collect();
                let _ = wrote(
                    &metrics,
                    "manifests",
                    self.state.save_manifests(false, &errors),
                );
                source.ready.store(false, Ordering::SeqCst);
                let retry = if failure.read_failed {
                    let retry = source.reload_retry.get_or_insert_with(|| ReloadRetry {
                        at: Instant::now(),
                        delays: Box::new(backoff()),
                    });
                    let delay = retry.delays.next().unwrap_or(Duration::from_secs(30));
                    retry.at = Instant::now() + delay;
                    format!(
                        "; reading them failed, retrying in {:.1}s",
                        delay.as_secs_f64()
                    )
                } else {
                    // Invalid content is fixed by an edit, which the watcher reports.
                    source.reload_retry = None;
                    String::new()
                };
                log(&format!(
                    "manifests invalid; still acting on the last valid state{retry}:\n{diagnostics}"
                ));
                return;
            }
        };
        source.reload_retry = None;
        metrics.manifests_loaded(true);
        let _ = wrote(&metrics, "manifests", self.state.save_manifests(true, &[]));
        source.ready.store(true, Ordering::SeqCst);
        let mut new = DesiredState::from_catalog(&catalog);
        if let Some(only) = &source.options.run.site {
            new.sites.retain(|name, _| name == only);
        }
        let run_options = source.options.run.clone();
        let old = self.desired.take();
        let mut changed = vec![];
        for (name, site) in &new.sites {
            let same = old.as_ref().is_some_and(|old| {
                old.sites.get(name) == Some(site)
                    && hosts_of(old, site) == hosts_of(&new, site)
                    && old.group_limits == new.group_limits
            });
            if !same {
                changed.push(name.clone());
            }
        }
        if let Some(old) = &old {
            for name in old.sites.keys().filter(|n| !new.sites.contains_key(*n)) {
                self.queue.remove(name);
                log(&format!(
                    "site {name}: removed from the manifests; convoy stops managing it and deletes nothing on its hosts"
                ));
            }
        }
        log(&format!(
            "manifests loaded: {}; {} site(s) to reconcile",
            catalog.summary(),
            changed.len()
        ));
        let new = Arc::new(new);
        self.ctx = Some(Arc::new(context(
            &new,
            &run_options,
            &self.shared,
            self.ctx.as_deref(),
        )));
        self.desired = Some(new);
        for name in changed {
            // A new desired state starts a fresh backoff.
            self.queue.reset(&name);
            self.queue.enqueue(&name);
        }
    }

    /// Every site, again: corrects drift made by hand.
    pub(super) fn resync(&mut self) {
        let sites: Vec<String> = self
            .desired
            .as_ref()
            .map(|d| d.sites.keys().cloned().collect())
            .unwrap_or_default();
        for site in sites {
            self.resyncing.insert(site.clone());
            self.queue.enqueue(&site);
        }
    }

    /// Retries a manifest reload that is due, and probes the unreachable hosts of waiting
    /// sites: one that starts answering TCP makes its site's retry due at once.
    pub(super) async fn probe(&mut self) {
        let reload_due = self
            .manifests
            .as_ref()
            .and_then(|m| m.reload_retry.as_ref())
            .is_some_and(|r| r.at <= Instant::now());
        if reload_due {
            self.reload();
        }
        let waiting = self.queue.probes();
        // All sites' probes at once, each bounded: the loop never stalls on a silent host.
        let answers =
            futures_util::future::join_all(waiting.iter().map(|(_, probes)| any_answers(probes)))
                .await;
        let now = Instant::now();
        for ((name, _), answered) in waiting.into_iter().zip(answers) {
            self.queue.probed(&name, answered, now);
        }
    }
}

/// Where to probe a host: its SSH address and port (local hosts are always there).
pub(super) fn probe_target(host: &Host) -> Option<(String, u16)> {
    match host {
        Host::Ssh(ssh) => Some((
            ssh.address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            // Unset: ssh_config decides, which convoy does not parse; 22 is its default and
            // a probe only hastens a retry that backoff would make anyway.
            ssh.port.unwrap_or(crate::manifest::types::DEFAULT_SSH_PORT),
        )),
        Host::Local(_) => None,
    }
}

/// True when any target accepts a TCP connection within a short bound.
async fn any_answers(targets: &[(String, u16)]) -> bool {
    for (address, port) in targets {
        let connect = tokio::net::TcpStream::connect((address.as_str(), *port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            return true;
        }
    }
    false
}

/// How the site's hosts are reached: part of what makes a site "changed" on reload.
fn hosts_of(desired: &DesiredState, site: &DesiredSite) -> Vec<Option<Host>> {
    site.stages
        .iter()
        .flat_map(|s| &s.hosts)
        .map(|h| desired.hosts.get(h).cloned())
        .collect()
}
