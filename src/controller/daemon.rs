//! `convoy reconcile` without `--once`: the long-running controller. It watches the
//! manifest directory, reloads on every change (or SIGHUP), queues only the sites whose
//! desired state changed, resyncs everything periodically to correct drift, probes the
//! hosts of Blocked sites cheaply (TCP connect) so a server that boots catches up within
//! seconds, serves metrics, and on SIGTERM/SIGINT lets running host steps finish and exits 0.
//!
//! The loop: one reconcile per site at a time (a queued site is never queued twice), sites
//! in parallel under the global limit, per-site exponential backoff with jitter.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use super::{RunOptions, Shared, backoff, context, pass_once, publish, render_site};
use crate::desired::{DesiredSite, DesiredState};
use crate::execute::{Action, Context, SiteReport};
use crate::exit_code;
use crate::host::Host;
use crate::manifest;
use crate::plan::Outcome;
use crate::state::{self, HistoryEvent, StateDir};

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
const SETTLE: Duration = Duration::from_millis(300);
/// How long running passes may take to finish their current steps at shutdown.
const SHUTDOWN_GRACE: Duration = super::STOP_GRACE;

/// How long the loop may go without turning before `/healthz` reports it stalled: twice the
/// resync interval, between 5 s and 60 s. The probe timer turns it every 0.5 s, and every
/// step it takes is bounded in seconds, so a longer silence means it is stuck.
fn stale_after(resync: Duration) -> Duration {
    (resync * 2).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// Per-site scheduling: queued, running, dirty (changed while running), retry timers.
#[derive(Default)]
struct Queue {
    queued: BTreeSet<String>,
    running: BTreeSet<String>,
    dirty: BTreeSet<String>,
    /// Blocked sites: when to retry, their backoff, and the hosts to probe meanwhile.
    retry: BTreeMap<String, Retry>,
}

struct Retry {
    at: Instant,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    probes: Vec<(String, u16)>,
    retries: u32,
    /// A probe answered since the last pass: only a change from silent to answering
    /// triggers a pass early (a host that answers TCP but fails SSH waits for backoff).
    answered: bool,
}

impl Queue {
    fn enqueue(&mut self, site: &str) {
        if self.running.contains(site) {
            self.dirty.insert(site.to_string());
        } else {
            self.queued.insert(site.to_string());
        }
    }

    fn finished(&mut self, site: &str) {
        self.running.remove(site);
        if self.dirty.remove(site) {
            self.queued.insert(site.to_string());
        }
    }
}

fn log(line: &str) {
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
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
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
    let (mut sigterm, mut sigint, mut sighup) = match (
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

    let mut daemon = Daemon {
        options,
        state,
        shared,
        ready,
        desired: None,
        ctx: None,
        queue: Queue::default(),
        converged: BTreeMap::new(),
        reload_retry: None,
    };
    daemon.reload();
    let mut running: JoinSet<(String, SiteReport, bool)> = JoinSet::new();
    let mut resync = tokio::time::interval(daemon.options.resync);
    resync.tick().await;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let mut resyncing: BTreeSet<String> = BTreeSet::new();

    loop {
        heartbeat.beat();
        daemon.start_queued(&mut running, &mut resyncing);
        tokio::select! {
            _ = sigterm.recv() => { log("SIGTERM: stopping the host steps under way, releasing leases"); break; }
            _ = sigint.recv() => { log("SIGINT: stopping the host steps under way, releasing leases"); break; }
            _ = sighup.recv() => daemon.reload(),
            Some(()) = reload_rx.recv() => {
                // A burst (git checkout, editor save) arrives as several signals: settle first.
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, reload_rx.recv()).await {}
                daemon.reload();
            }
            _ = resync.tick() => {
                let sites: Vec<String> = daemon.desired.as_ref().map(|d| d.sites.keys().cloned().collect()).unwrap_or_default();
                for site in sites {
                    resyncing.insert(site.clone());
                    daemon.queue.enqueue(&site);
                }
            }
            _ = probe.tick() => {
                if daemon.reload_retry.as_ref().is_some_and(|r| r.at <= Instant::now()) {
                    daemon.reload();
                }
                daemon.probe().await;
            }
            Some(joined) = running.join_next() => {
                if let Ok((site, report, resync_pass)) = joined {
                    daemon.finished(&site, report, resync_pass);
                }
            }
        }
    }

    daemon.shared.cancel.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(joined) = running.join_next().await {
            if let Ok((site, report, resync_pass)) = joined {
                daemon.finished(&site, report, resync_pass);
            }
        }
    })
    .await;
    if drained.is_err() {
        log(
            "shutdown grace period over; leaving the remaining passes (their hosts keep a complete release)",
        );
    }
    daemon.shared.close().await;
    log("stopped");
    exit_code::OK
}

struct Daemon {
    options: DaemonOptions,
    state: Arc<StateDir>,
    shared: Shared,
    ready: Arc<AtomicBool>,
    desired: Option<Arc<DesiredState>>,
    ctx: Option<Arc<Context>>,
    queue: Queue,
    /// Desired key of each site's last Converged/Degraded pass: a later pass of the same key
    /// that had to change a host corrected drift.
    converged: BTreeMap<String, String>,
    /// Set while the manifests could not be read (an I/O error, not invalid content): no
    /// file event may ever announce the cure (descriptors freed, a mount back), so the
    /// reload is retried on backoff until one succeeds.
    reload_retry: Option<ReloadRetry>,
}

struct ReloadRetry {
    at: Instant,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Daemon {
    /// Loads and validates the manifests; if valid, queues the sites whose desired state
    /// changed. If not, keeps acting on the last valid state and reports the errors.
    fn reload(&mut self) {
        let state = &self.state;
        let loaded = manifest::load_classified(&self.options.manifests, &self.options.load)
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
                self.shared.metrics.manifests_loaded(false);
                let errors: Vec<String> = diagnostics.0.iter().map(ToString::to_string).collect();
                let _ = self.state.save_manifests(false, &errors);
                self.ready.store(false, Ordering::SeqCst);
                let retry = if failure.read_failed {
                    let retry = self.reload_retry.get_or_insert_with(|| ReloadRetry {
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
                    self.reload_retry = None;
                    String::new()
                };
                log(&format!(
                    "manifests invalid; still acting on the last valid state{retry}:\n{diagnostics}"
                ));
                return;
            }
        };
        self.reload_retry = None;
        self.shared.metrics.manifests_loaded(true);
        let _ = self.state.save_manifests(true, &[]);
        self.ready.store(true, Ordering::SeqCst);
        let mut new = DesiredState::from_catalog(&catalog);
        if let Some(only) = &self.options.run.site {
            new.sites.retain(|name, _| name == only);
        }
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
                self.queue.queued.remove(name);
                self.queue.retry.remove(name);
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
            &self.options.run,
            &self.shared,
            self.ctx.as_deref(),
        )));
        self.desired = Some(new);
        for name in changed {
            self.queue.retry.remove(&name);
            self.queue.enqueue(&name);
        }
    }

    fn start_queued(
        &mut self,
        running: &mut JoinSet<(String, SiteReport, bool)>,
        resyncing: &mut BTreeSet<String>,
    ) {
        let (Some(desired), Some(ctx)) = (&self.desired, &self.ctx) else {
            return;
        };
        let queued: Vec<String> = std::mem::take(&mut self.queue.queued).into_iter().collect();
        for name in queued {
            let Some(site) = desired.sites.get(&name).cloned() else {
                continue;
            };
            if self.queue.running.contains(&name) {
                self.queue.dirty.insert(name);
                continue;
            }
            self.queue.running.insert(name.clone());
            let resync_pass = resyncing.remove(&name);
            let (ctx, state) = (ctx.clone(), self.state.clone());
            running.spawn(async move {
                let report = pass_once(&ctx, &site, &state).await;
                (name, report, resync_pass)
            });
        }
    }

    fn finished(&mut self, name: &str, report: SiteReport, resync_pass: bool) {
        self.queue.finished(name);
        let (Some(desired), Some(ctx)) = (&self.desired, &self.ctx) else {
            return;
        };
        let Some(site) = desired.sites.get(name) else {
            return;
        };
        let key = super::desired_key(site);
        let changes = report
            .events
            .iter()
            .filter(|e| matches!(e.action, Action::Switched | Action::Built))
            .count();
        if self.converged.get(name) == Some(&key) && changes > 0 {
            let hosts: BTreeSet<&str> = report
                .events
                .iter()
                .filter(|e| e.action == Action::Switched)
                .map(|e| e.host.as_str())
                .collect();
            ctx.metrics.drift_corrected(name, hosts.len().max(1) as u64);
            let detail = format!(
                "drift corrected on {}",
                hosts.into_iter().collect::<Vec<_>>().join(", ")
            );
            let _ = self.state.append_history(&[HistoryEvent::new(
                name,
                &site.release,
                Action::Converged,
            )
            .detail(&detail)]);
            log(&format!(
                "site {name}: {detail}{}",
                if resync_pass { " (resync)" } else { "" }
            ));
        }
        // Blocked sites wait for their required hosts; Degraded ones for their skipped
        // optional hosts. Both are retried on backoff, or at once when a probe answers.
        let waiting_for = match &report.outcome {
            Outcome::Blocked { hosts, .. } => Some(hosts),
            Outcome::Degraded { skipped } => Some(skipped),
            _ => None,
        };
        let retrying = match waiting_for {
            Some(hosts) => {
                let retry = self
                    .queue
                    .retry
                    .entry(name.to_string())
                    .or_insert_with(|| Retry {
                        at: Instant::now(),
                        delays: Box::new(backoff()),
                        probes: vec![],
                        retries: 0,
                        answered: true,
                    });
                let delay = retry.delays.next().unwrap_or(Duration::from_secs(30));
                retry.at = Instant::now() + delay;
                retry.retries += 1;
                retry.probes = hosts
                    .iter()
                    .filter_map(|h| probe_target(ctx.hosts.get(h)?))
                    .collect();
                matches!(report.outcome, Outcome::Blocked { .. }).then_some((retry.retries, delay))
            }
            _ => {
                self.queue.retry.remove(name);
                None
            }
        };
        match &report.outcome {
            Outcome::Converged | Outcome::Degraded { .. } => {
                self.converged.insert(name.to_string(), key);
            }
            _ => {
                self.converged.remove(name);
            }
        }
        let status = publish(ctx, &self.state, site, &report, retrying);
        let result = super::SiteResult {
            name: name.to_string(),
            report,
            status,
        };
        for line in render_site(&result).lines() {
            log(line);
        }
    }

    /// Retries Blocked sites whose backoff is over, or whose unreachable hosts answer TCP.
    async fn probe(&mut self) {
        let now = Instant::now();
        let waiting: Vec<(String, Vec<(String, u16)>)> = self
            .queue
            .retry
            .iter()
            .filter(|(name, _)| {
                !self.queue.running.contains(*name) && !self.queue.queued.contains(*name)
            })
            .map(|(name, retry)| (name.clone(), retry.probes.clone()))
            .collect();
        // All sites' probes at once, each bounded: the loop never stalls on a silent host.
        let answers =
            futures_util::future::join_all(waiting.iter().map(|(_, probes)| any_answers(probes)))
                .await;
        for ((name, _), answers) in waiting.into_iter().zip(answers) {
            let Some(retry) = self.queue.retry.get_mut(&name) else {
                continue;
            };
            let came_back = answers && !retry.answered;
            retry.answered = answers;
            if retry.at <= now || came_back {
                self.queue.enqueue(&name);
            }
        }
    }
}

/// Where to probe a host: its SSH address and port (local hosts are always there).
fn probe_target(host: &Host) -> Option<(String, u16)> {
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
