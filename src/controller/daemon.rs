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
use crate::metrics::Metrics;
use crate::state::StateDir;

/// Settings of the daemon.
pub struct DaemonOptions {
    pub manifests: PathBuf,
    /// `--archive-root`s and the like, applied at every reload.
    pub load: manifest::LoadOptions,
    pub resync: Duration,
    pub metrics_addr: SocketAddr,
    pub run: RunOptions,
    /// `--git`: follow a branch instead of watching `manifests`.
    pub git: Option<GitOptions>,
}

/// `reconcile --git REPO`: the branch to follow, and the webhook's secret if it is served.
pub struct GitOptions {
    pub source: super::git::GitSource,
    /// `--webhook-secret-file`'s content: without it `/hooks/git` does not exist.
    pub webhook_secret: Option<Vec<u8>>,
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
    let git = options.git.as_ref().map(|g| {
        let git = super::from_git::GitFollow::new(g.source.clone(), &state);
        // An earlier run's exports, before the fetcher writes new ones.
        git.dir.prune_incoming();
        git
    });
    let (mut sources, _watch, serve) = match listen(&options, &shared, &ready, git.as_ref()).await {
        Ok(listening) => listening,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return exit_code::FAILED;
        }
    };
    match &git {
        Some(git) => tracing::info!(
            repository = %git.source.shown_repository(),
            branch = %git.source.branch,
            path = %git.source.path,
            "following the branch every {}s{}; metrics on http://{}/metrics",
            git.source.interval.as_secs(),
            if options.git.as_ref().is_some_and(|g| g.webhook_secret.is_some()) {
                format!(", and on signed POSTs to http://{}{}", options.metrics_addr, super::webhook::PATH)
            } else {
                String::new()
            },
            options.metrics_addr
        ),
        None => tracing::info!(
            "watching the manifests; metrics on http://{}/metrics",
            options.metrics_addr
        ),
    }
    if git.is_none() {
        let _ = wrote(&shared.metrics, "source", state.forget_source());
    }

    let mut resync = tokio::time::interval(options.resync);
    resync.tick().await;
    sources.resync = Some(resync);
    let out = Out::Log(super::log::PassLog::default());
    let mut controller = Controller::new(Mode::Daemon, state, shared, out);
    controller.manifests = Some(Manifests {
        options,
        ready,
        reload_retry: None,
        git,
    });
    controller.reload();
    // Only now: the first scrape already has every series the manifests make known.
    tokio::spawn(serve);
    // The daemon's loop ends only when a signal stops it.
    let why = controller
        .run(&mut sources)
        .await
        .unwrap_or_else(|| "stopped".into());
    tracing::info!("{why}: stopping the host steps under way, releasing leases");
    if !controller.stop(&why, SHUTDOWN_GRACE).await {
        tracing::warn!(
            "shutdown grace period over; leaving the remaining passes (their hosts keep a complete release)"
        );
    }
    if let Some(notifier) = controller.notifier.take() {
        notifier.close(crate::notify::ONCE_GRACE).await;
    }
    controller.shared.close().await;
    tracing::info!("stopped");
    exit_code::OK
}

/// Binds the address of `/metrics`, `/healthz` and `/readyz`, starts watching the manifests
/// and takes the signals: what wakes the daemon's loop, all but the resync, with the
/// watcher's handle (the watch ends when it is dropped) and the server to spawn (clients
/// wait in the listen backlog until then). `Err` says what could not be set up.
async fn listen(
    options: &DaemonOptions,
    shared: &Shared,
    ready: &Arc<AtomicBool>,
    git: Option<&super::from_git::GitFollow>,
) -> Result<
    (
        Sources,
        Option<super::watch::Watch>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    String,
> {
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|e| {
            format!(
                "failed to listen on {} for metrics: {e}",
                options.metrics_addr
            )
        })?;
    let heartbeat = Arc::new(super::http::Heartbeat::new(stale_after(options.resync)));
    heartbeat.beat();
    let hooks = match (
        git,
        options.git.as_ref().and_then(|g| g.webhook_secret.clone()),
    ) {
        (Some(git), Some(secret)) => Some(super::webhook::router(
            Arc::new(secret),
            git.feed.clone(),
            shared.metrics.clone(),
        )),
        _ => None,
    };
    let serve = super::http::serve(
        listener,
        shared.metrics.clone(),
        ready.clone(),
        heartbeat.clone(),
        hooks,
    );
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = match git {
        // The fetcher is the git source's watcher: it signals each new commit.
        Some(git) => {
            let follow = super::git::follow(
                git.dir.clone(),
                git.source.clone(),
                git.feed.clone(),
                reload_tx,
                shared.metrics.clone(),
            );
            tokio::spawn(follow);
            None
        }
        None => Some(
            super::watch::start(&options.manifests, reload_tx)
                .map_err(|e| format!("failed to watch `{}`: {e}", options.manifests.display()))?,
        ),
    };
    let (Ok(sigterm), Ok(sigint), Ok(sighup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return Err("failed to install signal handlers".to_string());
    };
    let sources = Sources {
        sigterm: Some(sigterm),
        sigint: Some(sigint),
        sighup: Some(sighup),
        reloads: Some(reload_rx),
        probe: Some(tokio::time::interval(PROBE_EVERY)),
        requests: Some(tokio::time::interval(super::requests::POLL)),
        heartbeat: Some(heartbeat),
        ..Sources::default()
    };
    Ok((sources, watch, serve))
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
    /// `--git`: the branch followed (then `options.manifests` is not read).
    git: Option<super::from_git::GitFollow>,
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
        let (catalog, commit) = match source.load(&self.state, &metrics) {
            Some(loaded) => loaded,
            None => return,
        };
        let mut new = DesiredState::from_catalog(&catalog);
        new.commit = commit;
        // A webhook URL that cannot be read makes the manifests unusable, as an error would.
        let targets = match crate::notify::resolve(&new.notifications) {
            Ok(targets) => targets,
            Err(errors) => {
                let diagnostics = unresolved(&catalog, &errors);
                let failure = manifest::LoadFailure {
                    diagnostics,
                    read_failed: false,
                };
                source.invalid(failure, &metrics, &self.state);
                return;
            }
        };
        source.reload_retry = None;
        metrics.manifests_loaded(true);
        let _ = wrote(&metrics, "manifests", self.state.save_manifests(true, &[]));
        source.ready.store(true, Ordering::SeqCst);
        let only = source.options.run.site.as_deref();
        super::desired_loaded(&metrics, &self.state, &new, only);
        if let Some(only) = &source.options.run.site {
            new.sites.retain(|name, _| name == only);
        }
        let run_options = source.options.run.clone();
        let old = self.desired.take();
        let changed = changed_sites(old.as_deref(), &new);
        if let Some(old) = &old {
            for name in old.sites.keys().filter(|n| !new.sites.contains_key(*n)) {
                self.queue.remove(name);
                tracing::info!(
                    site = %name,
                    "removed from the manifests; convoy stops managing it and deletes nothing on its hosts"
                );
            }
        }
        match &new.commit {
            Some(commit) => tracing::info!(
                commit = %commit,
                "manifests of commit {commit} loaded: {}; {} site(s) to reconcile",
                catalog.summary(),
                changed.len()
            ),
            None => tracing::info!(
                "manifests loaded: {}; {} site(s) to reconcile",
                catalog.summary(),
                changed.len()
            ),
        }
        let new = Arc::new(new);
        self.ctx = Some(Arc::new(context(
            &new,
            &run_options,
            &self.shared,
            self.ctx.as_deref(),
        )));
        self.desired = Some(new);
        let memory = self
            .notifier
            .as_ref()
            .map(|n| n.memory())
            .unwrap_or_default();
        if let Some(old) = self.notifier.take() {
            old.retire();
        }
        self.notifier = Some(crate::notify::Notifier::start(
            targets,
            metrics.clone(),
            memory,
        ));
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

impl Manifests {
    /// Loads the desired state from the directory, or from the git source's newest commit.
    /// `None` when there is nothing to act on: invalid (reported), or nothing new from git.
    fn load(
        &mut self,
        state: &StateDir,
        metrics: &Metrics,
    ) -> Option<(manifest::Catalog, Option<String>)> {
        let Some(git) = &mut self.git else {
            return match load_checked(&self.options.manifests, &self.options.load, state) {
                Ok(catalog) => Some((catalog, None)),
                Err(failure) => {
                    self.invalid(failure, metrics, state);
                    None
                }
            };
        };
        match git.load(&self.options.load, state, metrics) {
            super::from_git::Loaded::Nothing => None,
            super::from_git::Loaded::Valid { catalog, commit } => {
                git.valid(&commit, state, metrics);
                Some((catalog, Some(commit)))
            }
            super::from_git::Loaded::Invalid { failure, commit } => {
                let errors = failure
                    .diagnostics
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                git.invalid(&commit, errors, state, metrics);
                tracing::warn!(
                    commit = %commit,
                    "commit {commit} is invalid; still serving {}",
                    git.serving()
                );
                self.invalid(failure, metrics, state);
                None
            }
        }
    }

    /// The manifests did not load: says so (state dir, metrics, `/readyz`, log) while the
    /// last valid state stays in force. Invalid content waits for the edit the watcher
    /// reports; a failed read is retried on backoff.
    fn invalid(&mut self, failure: manifest::LoadFailure, metrics: &Metrics, state: &StateDir) {
        let diagnostics = failure.diagnostics;
        metrics.manifests_loaded(false);
        let errors: Vec<String> = diagnostics.0.iter().map(ToString::to_string).collect();
        let _ = wrote(metrics, "manifests", state.save_manifests(false, &errors));
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
            self.reload_retry = None;
            String::new()
        };
        let count = diagnostics.0.len();
        tracing::warn!(
            "manifests invalid; still acting on the last valid state{retry}: {count} error{}",
            if count == 1 { "" } else { "s" }
        );
        // One line per problem, as `convoy validate` prints them.
        for problem in &diagnostics.0 {
            tracing::warn!(file = %problem.file, "{problem}");
        }
    }
}

/// The manifests, loaded and validated, also against the revisions Releases were first
/// applied with (an edited `spec.revision` is invalid).
pub(super) fn load_checked(
    manifests: &std::path::Path,
    load: &manifest::LoadOptions,
    state: &StateDir,
) -> Result<manifest::Catalog, manifest::LoadFailure> {
    let catalog = manifest::load_classified(manifests, load)?;
    manifest::validate::check_immutable(&catalog, |site, release| {
        state.applied_revision(site, release)
    })
    .map_err(|diagnostics| manifest::LoadFailure {
        diagnostics,
        read_failed: false,
    })?;
    Ok(catalog)
}

/// Webhook URLs that could not be read, as located problems of their Notifications.
pub(super) fn unresolved(
    catalog: &manifest::Catalog,
    errors: &[crate::notify::ResolveError],
) -> manifest::diagnostic::Diagnostics {
    use manifest::types::Kind;
    use manifest::validate::ObjectKey;
    let diagnostics = errors
        .iter()
        .map(|e| {
            let name = e.notification();
            let key = ObjectKey::named(Kind::Notification, name);
            manifest::diagnostic::Diagnostic {
                file: catalog
                    .files
                    .get(&key)
                    .map(|f| f.to_string())
                    .unwrap_or_default(),
                pos: catalog
                    .notifications
                    .get(name)
                    .map(|n| n.spec.webhook.url_from.pos)
                    .unwrap_or_default(),
                object: Some(format!("Notification/{name}")),
                field: Some("spec.webhook.urlFrom".into()),
                message: crate::state::error_chain(e),
            }
        })
        .collect();
    manifest::diagnostic::Diagnostics(diagnostics)
}

/// The sites of `new` whose desired state differs from `old`'s: their spec, how their
/// hosts are reached, or the group limits. Every site when there is no `old`.
fn changed_sites(old: Option<&DesiredState>, new: &DesiredState) -> Vec<String> {
    new.sites
        .iter()
        .filter(|(name, site)| {
            !old.is_some_and(|old| {
                old.sites.get(*name) == Some(*site)
                    && hosts_of(old, site) == hosts_of(new, site)
                    && old.group_limits == new.group_limits
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
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
