//! The reconcile loop, one for both modes: start the sites the [`Queue`] says are ready
//! (one pass per site at a time, in parallel under the global limits), and when a pass ends
//! publish its status and ask [`requeue`] whether and when the site runs again. `--once`
//! feeds it the selected sites and stops when the queue is idle or at `--timeout`; the
//! daemon also feeds it reloads, resyncs and probes (see `daemon.rs`). On SIGTERM/SIGINT or
//! at the deadline it cancels the passes and gives them a grace period to end their
//! commands and release their leases.
//!
//! This module decides nothing about deployments: the outcome comes from the pass, the
//! retry rule from [`requeue`], the schedule from the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::depends::Wait;
use super::queue::{Queue, Requeue};
use super::{
    Ending, Mode, Pass, Retry, Shared, SiteResult, exit_code_of, interrupted, pass_once, publish,
    render_site, requeue, waits_for_another_run, wrote,
};
use crate::desired::{DesiredSite, DesiredState};
use crate::execute::{Context, SiteReport};
use crate::exit_code;
use crate::plan::EventKind;
use crate::plan::Outcome;
use crate::state::{HistoryEvent, StateDir};

/// After a pass: when the site runs again, its retry as the queue has it (when, how many
/// so far, the delay), and why a retry that will not come was dropped.
type Rescheduled = (
    Option<Instant>,
    Option<(Instant, u32, Duration)>,
    Option<String>,
);

/// Where each pass's result goes.
pub(super) enum Out<'o> {
    /// `--once`: a site's block, printed once when it is done.
    Print(&'o mut dyn Write),
    /// The daemon: every pass, logged.
    Log(super::log::PassLog),
}

/// Everything besides finished passes that wakes the loop; `None` where a mode has none.
#[derive(Default)]
pub(super) struct Sources {
    pub sigterm: Option<tokio::signal::unix::Signal>,
    pub sigint: Option<tokio::signal::unix::Signal>,
    pub sighup: Option<tokio::signal::unix::Signal>,
    /// The manifest watcher.
    pub reloads: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
    pub resync: Option<tokio::time::Interval>,
    /// Probes of the hosts of waiting sites, and a due manifest reload retry.
    pub probe: Option<tokio::time::Interval>,
    pub heartbeat: Option<Arc<super::http::Heartbeat>>,
    /// When to look for requests of commands (`convoy retry`) in the state dir.
    pub requests: Option<tokio::time::Interval>,
}

/// The loop's state: the queue, the passes under way, and where results go.
pub(super) struct Controller<'o> {
    pub mode: Mode,
    pub state: Arc<StateDir>,
    pub shared: Shared,
    pub desired: Option<Arc<DesiredState>>,
    pub ctx: Option<Arc<Context>>,
    pub queue: Queue,
    /// Each pass with the desired state it ran for (a reload may replace it meanwhile).
    passes: JoinSet<(DesiredSite, Pass)>,
    /// The desired state of each site whose pass is under way.
    running: BTreeMap<String, DesiredSite>,
    /// Sites whose next pass a resync asked for, and the running passes a resync started.
    pub resyncing: BTreeSet<String>,
    resync_passes: BTreeSet<String>,
    /// Desired key of each site's last Converged/Degraded pass: a later pass of the same key
    /// that had to change a host corrected drift.
    converged: BTreeMap<String, String>,
    /// `--once`: the deadline and the `--timeout` it comes from.
    pub deadline: Option<(Instant, Duration)>,
    /// `--once`: how long a site waits for an unreachable required host, and since when
    /// each site has been waiting.
    pub wait_unreachable: Option<Duration>,
    blocked_since: BTreeMap<String, Instant>,
    /// Why the loop stopped: from then on no retry is made or promised.
    stopped: Option<String>,
    /// The last result of each site waiting for a retry, to report if the retry never comes.
    waiting: BTreeMap<String, SiteResult>,
    /// Sites waiting for a dependency (`dependsOn`), run again when it ends a pass.
    pub dependents: super::depends::Dependents,
    /// `--once`: the exit code of each site that is done.
    pub codes: BTreeMap<String, u8>,
    /// `--once`: sites that were converged and stayed so (nothing printed for them).
    pub quiet: usize,
    out: Out<'o>,
    /// The daemon's manifest source; `None` for `--once`.
    pub manifests: Option<super::daemon::Manifests>,
    /// Who hears about each pass (`notify`); `None` until set up.
    pub notifier: Option<crate::notify::Notifier>,
}

impl<'o> Controller<'o> {
    pub fn new(mode: Mode, state: Arc<StateDir>, shared: Shared, out: Out<'o>) -> Self {
        Controller {
            mode,
            state,
            shared,
            desired: None,
            ctx: None,
            queue: Queue::default(),
            passes: JoinSet::new(),
            running: BTreeMap::new(),
            resyncing: BTreeSet::new(),
            resync_passes: BTreeSet::new(),
            converged: BTreeMap::new(),
            deadline: None,
            wait_unreachable: None,
            blocked_since: BTreeMap::new(),
            stopped: None,
            waiting: BTreeMap::new(),
            dependents: Default::default(),
            codes: BTreeMap::new(),
            quiet: 0,
            out,
            manifests: None,
            notifier: None,
        }
    }

    /// The run is stopping: no retry is made or promised any more.
    pub(super) fn stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Writes a line to the `--once` output (above the status line of a terminal), or logs it.
    pub fn say(&mut self, line: &str) {
        match &mut self.out {
            Out::Print(_) if self.shared.progress.is_some() => {
                if let Some(p) = &self.shared.progress {
                    p.say(line);
                }
            }
            Out::Print(out) => {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Out::Log(_) => tracing::info!("{line}"),
        }
    }

    /// A line about one site: printed by `--once`, logged with the site as a field.
    fn say_about(&mut self, site: &str, line: &str) {
        match &mut self.out {
            Out::Print(_) => self.say(&format!("site {site}: {line}")),
            Out::Log(_) => tracing::info!(site = %site, "{line}"),
        }
    }

    /// Runs until `--once` has nothing left to do (`None`), or until a signal or the
    /// deadline stops it (`Some(why)`); then call [`Controller::stop`].
    pub async fn run(&mut self, src: &mut Sources) -> Option<String> {
        loop {
            if let Some(heartbeat) = &src.heartbeat {
                heartbeat.beat();
            }
            self.start_ready();
            if self.mode == Mode::Once && self.queue.is_idle() {
                return None;
            }
            let retry = self.queue.next_retry();
            let deadline = self.deadline.map(|(at, _)| at);
            tokio::select! {
                () = recv(&mut src.sigterm) => return Some("SIGTERM received".into()),
                () = recv(&mut src.sigint) => return Some("SIGINT received".into()),
                () = until(deadline) => {
                    let timeout = self.deadline.map_or(0, |(_, t)| t.as_secs());
                    return Some(format!("--timeout of {timeout}s reached"));
                }
                () = recv(&mut src.sighup) => self.reload(),
                Some(()) = recv_reload(&mut src.reloads) => {
                    // A burst (git checkout, editor save) arrives as several signals: settle first.
                    if let Some(rx) = &mut src.reloads {
                        while let Ok(Some(())) = tokio::time::timeout(super::daemon::SETTLE, rx.recv()).await {}
                    }
                    self.reload();
                }
                () = tick(&mut src.resync) => self.resync(),
                () = tick(&mut src.probe) => self.probe().await,
                () = tick(&mut src.requests) => self.take_requests(),
                () = until(retry) => {}
                Some(joined) = self.passes.join_next() => {
                    if let Ok((site, pass)) = joined {
                        self.finished(&site, pass);
                    }
                }
            }
        }
    }

    /// Stops: no retry is made or promised any more, the sites waiting for one are
    /// reported as they are, and the passes under way are cancelled and get `grace` to end
    /// their commands and release their leases. False when some did not end in time (they
    /// are abandoned; their hosts keep a complete release).
    pub async fn stop(&mut self, why: &str, grace: Duration) -> bool {
        self.stopped = Some(why.to_string());
        self.shared.cancel.cancel();
        for name in self.queue.waiting() {
            let n = self.queue.retry_at(&name).map_or(0, |(_, n, _)| n);
            self.queue.remove(&name);
            let (Some(mut result), Some(ctx), Some(site)) = (
                self.waiting.remove(&name),
                self.ctx.clone(),
                self.site(&name),
            ) else {
                continue;
            };
            if matches!(result.report.outcome, Outcome::Blocked { .. }) {
                let ending = Ending {
                    retry: Retry::Dropped {
                        n,
                        why: why.to_string(),
                    },
                    hold_lost: None,
                    stopped: Some(why),
                };
                result.status = publish(&ctx, &self.state, &site, &result.report, &ending);
            }
            if self.mode == Mode::Once {
                self.report(&result, true, false);
            }
        }
        let end = tokio::time::Instant::now() + grace;
        loop {
            tokio::select! {
                joined = self.passes.join_next() => match joined {
                    None => return true,
                    Some(Ok((site, pass))) => self.finished(&site, pass),
                    Some(Err(_)) => {}
                },
                () = tokio::time::sleep_until(end) => {
                    self.passes.abort_all();
                    // Their statuses must not keep saying what the pass before them found.
                    for site in std::mem::take(&mut self.running).into_values() {
                        interrupted(&self.shared.metrics, &self.state, &site, why);
                    }
                    return false;
                }
            }
        }
    }

    /// Asks for a pass of each of `sites`.
    pub fn enqueue(&mut self, sites: impl IntoIterator<Item = String>) {
        for site in sites {
            self.queue.enqueue(&site);
        }
    }

    fn site(&self, name: &str) -> Option<DesiredSite> {
        self.desired.as_ref()?.sites.get(name).cloned()
    }

    /// Starts a pass of every site the queue has ready.
    fn start_ready(&mut self) {
        let now = Instant::now();
        while let Some(name) = self.queue.next(now) {
            let (Some(site), Some(ctx)) = (self.site(&name), self.ctx.clone()) else {
                // Removed from the manifests meanwhile.
                self.queue.finished(&name, Requeue::Done, now);
                continue;
            };
            self.waiting.remove(&name);
            if self.resyncing.remove(&name) {
                self.resync_passes.insert(name.clone());
            }
            let state = self.state.clone();
            let desired = self.desired.clone().unwrap_or_default();
            self.running.insert(name.clone(), site.clone());
            self.passes.spawn(async move {
                let pass = pass_once(&ctx, &site, &desired.releases, &state).await;
                (site, pass)
            });
        }
    }

    /// A pass of `site` ended: requeue it as [`requeue`] says, publish its status (for the
    /// desired state the pass ran for; a reload meanwhile has queued the new one), report it.
    fn finished(&mut self, site: &DesiredSite, pass: Pass) {
        let now = Instant::now();
        let name = site.name.clone();
        let resync_pass = self.resync_passes.remove(&name);
        self.running.remove(&name);
        let (Some(_), Some(ctx)) = (self.site(&name), self.ctx.clone()) else {
            // Removed from the manifests meanwhile: what the pass counted goes with it.
            self.shared.metrics.forget_site(&name);
            self.queue.finished(&name, Requeue::Done, now);
            return;
        };
        self.note_drift(&ctx, site, &pass, resync_pass);
        let Pass { report, hold_lost } = pass;
        let (mut again, scheduled, dropped) = self.reschedule(&name, &ctx, &report, now);
        // dependsOn: a site waiting for one that still has a pass to come is not done.
        let wait = self.after_dependencies(site, &report.outcome, &mut again, now);
        let retry = match (&report.outcome, scheduled, dropped) {
            (Outcome::Blocked { .. }, Some((_, n, _)), Some(why)) => Retry::Dropped { n, why },
            (Outcome::Blocked { .. }, Some((_, n, delay)), None) => Retry::Due { n, delay },
            _ => Retry::None,
        };
        let ending = Ending {
            retry,
            hold_lost: hold_lost.as_deref(),
            stopped: self.stopped.as_deref(),
        };
        let status = publish(&ctx, &self.state, site, &report, &ending);
        if let Some(notifier) = &self.notifier {
            let commit = self.desired.as_ref().and_then(|d| d.commit.as_deref());
            notifier.after_pass(&self.state, &name, commit, &report, &status);
        }
        let result = SiteResult {
            name: name.clone(),
            report,
            status,
        };
        let done = again.is_none() && wait != Wait::Parked;
        self.report(&result, done, hold_lost.is_some());
        match again {
            None if done => self.release_dependents(&name),
            None => {}
            Some(_) => drop(self.waiting.insert(name, result)),
        }
    }

    /// When `name` runs again after a pass that ended with `report` ([`requeue`], lease
    /// expiry, `--wait-unreachable`), its retry as scheduled, and why a retry that will not
    /// come was dropped.
    fn reschedule(
        &mut self,
        name: &str,
        ctx: &Context,
        report: &SiteReport,
        now: Instant,
    ) -> Rescheduled {
        let rule = match requeue(&report.outcome, self.mode, &ctx.hosts) {
            _ if ctx.targets.is_some() && waits_for_another_run(report) => Requeue::Done,
            rule => rule,
        };
        let mut again = self.queue.finished(name, rule, now);
        // Locked by a controller that stopped renewing: retry right after its lease expires.
        if let (Some(_), Some(expiry)) = (again, report.lease_expires_in) {
            again = self
                .queue
                .retry_no_later(name, now + expiry + Duration::from_secs(1))
                .or(again);
        }
        // --once waits for an unreachable host only so long: a last retry at the limit.
        let mut waited_out = None;
        if let (Some(at), Some((limit, wait))) = (again, self.unreachable_limit(name, report, now))
            && at > limit
        {
            if now < limit {
                again = self.queue.retry_no_later(name, limit).or(again);
            } else {
                waited_out = Some(wait);
            }
        }
        let scheduled = self.queue.retry_at(name);
        // A retry that will not come is not promised.
        let dropped = match (&self.stopped, self.deadline) {
            (Some(why), _) => Some(why.clone()),
            _ if waited_out.is_some() => Some(format!(
                "the host stayed unreachable for the --wait-unreachable of {}s",
                waited_out.unwrap_or_default().as_secs()
            )),
            (None, Some((deadline, timeout))) if again.is_some_and(|at| at >= deadline) => {
                Some(format!(
                    "it would come after the --timeout of {}s",
                    timeout.as_secs()
                ))
            }
            _ => None,
        };
        if dropped.is_some() && again.is_some() {
            self.queue.remove(name);
            again = None;
        }
        (again, scheduled, dropped)
    }

    /// `--once` and a site Blocked by an unreachable (not a locked) host: until when it may
    /// wait, and the wait it was given. Forgets the wait once the site is not so blocked.
    fn unreachable_limit(
        &mut self,
        name: &str,
        report: &SiteReport,
        now: Instant,
    ) -> Option<(Instant, Duration)> {
        let wait = self.wait_unreachable?;
        let unreachable =
            matches!(report.outcome, Outcome::Blocked { .. }) && report.lease_expires_in.is_none();
        if !unreachable {
            self.blocked_since.remove(name);
            return None;
        }
        let since = *self.blocked_since.entry(name.to_string()).or_insert(now);
        Some((since + wait, wait))
    }

    /// `--once`: a site's closing lines when it is `done` (nothing for a site that was
    /// converged and stayed so; host events were printed as they happened), a line per retry
    /// while it waits. The daemon: the pass's log lines (at info only on a change).
    fn report(&mut self, result: &SiteResult, done: bool, hold_lost: bool) {
        match &mut self.out {
            Out::Log(log) => log.pass(result),
            Out::Print(_) if done => {
                if let Some(p) = &self.shared.progress {
                    p.finish(&result.name);
                }
                let quiet = matches!(result.report.outcome, Outcome::Converged)
                    && result.report.events.is_empty();
                if quiet {
                    self.quiet += 1;
                } else {
                    for line in render_site(result).lines() {
                        self.say(line);
                    }
                }
                // A failed attempt the hold did not count must not pass for a recorded one.
                let code = if hold_lost {
                    exit_code::FAILED
                } else {
                    exit_code_of(&result.report.outcome)
                };
                self.codes.insert(result.name.clone(), code);
            }
            // Waiting for a retry: say so each time, naming the hosts and their errors.
            Out::Print(_) => {
                for line in render_site(result).lines() {
                    self.say(line);
                }
            }
        }
    }

    /// A pass of a site that had converged with the same desired state changed hosts:
    /// drift (a hand edit, a restored backup) was corrected. Logged, counted, recorded.
    fn note_drift(&mut self, ctx: &Context, site: &DesiredSite, pass: &Pass, resync_pass: bool) {
        let name = &site.name;
        let key = super::desired_key(site);
        let report = &pass.report;
        let changes = report
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Switched | EventKind::Built))
            .count();
        if self.converged.get(name) == Some(&key) && changes > 0 {
            let hosts: BTreeSet<&str> = report
                .events
                .iter()
                .filter(|e| e.kind == EventKind::Switched)
                .map(|e| e.host.as_str())
                .collect();
            ctx.metrics.drift_corrected(name, hosts.len().max(1) as u64);
            let detail = format!(
                "drift corrected on {}",
                hosts.into_iter().collect::<Vec<_>>().join(", ")
            );
            let event =
                HistoryEvent::new(name, &site.release, EventKind::Converged).detail(&detail);
            let _ = wrote(&ctx.metrics, "history", self.state.append_history(&[event]));
            self.say_about(
                name,
                &format!("{detail}{}", if resync_pass { " (resync)" } else { "" }),
            );
        }
        match &report.outcome {
            Outcome::Converged | Outcome::Degraded { .. } => {
                self.converged.insert(name.clone(), key);
            }
            _ => {
                self.converged.remove(name);
            }
        }
    }
}

/// Resolves on the next delivery of a signal whose handler could be installed; never otherwise.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => drop(signal.recv().await),
        None => std::future::pending().await,
    }
}

async fn recv_reload(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
