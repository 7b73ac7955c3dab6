//! Runs the planner's steps on real hosts for one site, under the concurrency limits that
//! hold at the same time (global, per site, per ServerGroup), folds every result back into
//! the observed state, and plans again until no step is left. Few round trips per host:
//! observe in one, lease + build in one, switch + activate + health + clean-up in one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cancel::Cancel;
use crate::desired::{DesiredSite, DesiredStage, FetchSpec};
use crate::host::observe::{self, OnceState as HostOnce};
use crate::host::script::{Attempt, Env, Fence, Script};
use crate::host::ssh::SshPool;
use crate::host::{CommandOutput, Host, HostError, RemoteCommand};
use crate::metrics::Metrics;
use crate::plan::{self, HostView, Outcome, PassState, Reach, Step};
use crate::progress::Progress;
pub use crate::state::Action;

/// How much of a failing command's output is kept in status and history.
const ERROR_TAIL: usize = 2048;
/// Bound for the round trip that ends a pass's commands and releases its lease on a host.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// The three limits that hold at once: whole run, per site, per ServerGroup.
#[derive(Clone)]
pub struct Limits {
    global: (usize, Arc<Semaphore>),
    groups: BTreeMap<String, (usize, Arc<Semaphore>)>,
}

impl Limits {
    pub fn new(global: usize, groups: &BTreeMap<String, usize>) -> Self {
        let cap = |n: usize| (n.max(1), Arc::new(Semaphore::new(n.max(1))));
        Limits {
            global: cap(global),
            groups: groups.iter().map(|(g, n)| (g.clone(), cap(*n))).collect(),
        }
    }

    /// The limits of a new desired state, keeping every semaphore whose size did not change:
    /// passes still running under the old state keep counting toward the same caps.
    pub fn carried_over(&self, global: usize, groups: &BTreeMap<String, usize>) -> Self {
        let mut next = Limits::new(global, groups);
        if self.global.0 == next.global.0 {
            next.global = self.global.clone();
        }
        for (group, limit) in &mut next.groups {
            if let Some(old) = self.groups.get(group).filter(|old| old.0 == limit.0) {
                *limit = old.clone();
            }
        }
        next
    }
}

/// Everything a site run needs from the controller.
pub struct Context {
    pub pool: Arc<SshPool>,
    pub hosts: BTreeMap<String, Host>,
    pub limits: Limits,
    /// This controller's identity in host leases: `hostname:pid`.
    pub holder: String,
    pub lease_ttl: Duration,
    /// Bound for one round trip that runs user commands (build, once, health).
    pub command_timeout: Duration,
    /// Bound for a round trip that runs no user command (observe, clean-up).
    pub observe_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Set on shutdown: round trips under way are abandoned, no new one starts, and each
    /// pass ends its commands on the hosts and releases its leases.
    pub cancel: Arc<Cancel>,
    /// Live counters for a terminal, when one is watching.
    pub progress: Option<Arc<Progress>>,
}

/// Something notable that happened on a host, for history and progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub host: String,
    pub stage: String,
    pub release: String,
    pub action: Action,
    pub detail: Option<String>,
}

/// What a site run ended with.
#[derive(Debug, Clone)]
pub struct SiteReport {
    pub outcome: Outcome,
    /// Per host: stage, live release, reachable, last error.
    pub hosts: Vec<HostReport>,
    pub events: Vec<Event>,
    /// The commit the desired release resolved to, when a host reported it.
    pub revision: Option<String>,
    /// This pass found a build, once or health failure (counts toward failureRetries).
    pub failed_attempt: bool,
    /// Some host is locked by another controller: how long until the last such lease
    /// expires unless renewed (a retry need not wait longer).
    pub lease_expires_in: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    pub name: String,
    pub stage: String,
    pub release: Option<String>,
    pub reachable: bool,
    pub last_error: Option<String>,
}

/// Per-pass state of one site while it is being reconciled.
struct SiteRun<'a> {
    ctx: &'a Context,
    site: &'a DesiredSite,
    site_limit: Arc<Semaphore>,
    observed: plan::Observed,
    pass: PassState,
    /// The lease generation held on each host this pass, and when it was last renewed.
    fences: BTreeMap<String, (Fence, Instant)>,
    /// This pass as host scripts know it: lease holder and attempt token.
    attempt: Attempt,
    /// Hosts where this pass may hold the lease or have commands running: released (and
    /// their commands ended) when the pass ends, whichever way it ends.
    leased: Mutex<BTreeSet<String>>,
    /// When the background renewal last extended the lease on a host.
    renewed: Mutex<BTreeMap<String, Instant>>,
    /// Hosts locked by another controller: seconds until that lease expires.
    locked_for: BTreeMap<String, u64>,
    errors: BTreeMap<String, String>,
    events: Vec<Event>,
    revision: Option<String>,
    failed_attempt: bool,
    /// Host → (stage, group) within this site.
    membership: BTreeMap<String, (String, String)>,
}

/// Observes the site's hosts and returns what each reported (used by `plan` and `status`).
pub async fn observe_site(ctx: &Context, site: &DesiredSite) -> plan::Observed {
    let run = SiteRun::new(ctx, site, PassState::default());
    run.observe_all().await
}

/// One reconcile pass of one site: observe, then plan and execute until nothing is left.
/// `revision`: the commit this release already resolved to (state dir), if any.
pub async fn reconcile_site(
    ctx: &Context,
    site: &DesiredSite,
    pass: PassState,
    revision: Option<String>,
) -> SiteReport {
    let mut run = SiteRun::new(ctx, site, pass);
    run.revision = revision;
    if let Some(progress) = &ctx.progress {
        progress.start(&site.name, run.membership.len());
    }
    let speculate = run.speculates();
    let results = run.observe_hosts(speculate).await;
    run.observed = results
        .iter()
        .map(|(host, result)| (host.clone(), run.to_reach(host, result)))
        .collect();
    run.note_foreign_leases(&results);
    if speculate {
        for (host, result) in &results {
            if let (Ok(out), Some(Reach::Reachable(_))) = (result, run.observed.get(host)) {
                run.fold_build(host, out);
            }
        }
    }
    let mut previous: Option<Vec<Step>> = None;
    let outcome = loop {
        let next = plan::plan(site, &run.observed, &run.pass);
        if next.steps.is_empty() {
            break next.outcome;
        }
        if ctx.cancel.is_cancelled() {
            // Shutting down: round trips under way were abandoned; stop before the next one.
            break Outcome::Progressing;
        }
        if previous.as_ref() == Some(&next.steps) {
            // The same steps again: the last run of them changed nothing (e.g. a lease lost
            // between two round trips). Never spin: report and let backoff retry later.
            break Outcome::Blocked {
                hosts: step_hosts(&next.steps),
                reason: "no progress: the last steps changed nothing on these hosts".into(),
            };
        }
        previous = Some(next.steps.clone());
        run.execute(next.steps).await;
    };
    run.release_leases().await;
    run.report(outcome)
}

impl<'a> SiteRun<'a> {
    fn new(ctx: &'a Context, site: &'a DesiredSite, pass: PassState) -> Self {
        let membership = site
            .stages
            .iter()
            .flat_map(|s| {
                s.hosts
                    .iter()
                    .map(move |h| (h.clone(), (s.name.clone(), s.group.clone())))
            })
            .collect();
        SiteRun {
            ctx,
            site,
            site_limit: Arc::new(Semaphore::new(site.rollout.max_parallel.max(1))),
            observed: BTreeMap::new(),
            pass,
            fences: BTreeMap::new(),
            attempt: Attempt::new(&ctx.holder),
            leased: Mutex::default(),
            renewed: Mutex::default(),
            locked_for: BTreeMap::new(),
            errors: BTreeMap::new(),
            events: vec![],
            revision: None,
            failed_attempt: false,
            membership,
        }
    }

    fn host(&self, name: &str) -> &Host {
        &self.ctx.hosts[name]
    }

    /// The `once` or `activate` commands of a stage of this site.
    fn stage_commands(
        &self,
        stage: &str,
        which: impl Fn(&DesiredStage) -> &Vec<String>,
    ) -> Vec<String> {
        self.site
            .stages
            .iter()
            .find(|s| s.name == stage)
            .map(|s| which(s).clone())
            .unwrap_or_default()
    }

    fn stage_of(&self, host: &str) -> &str {
        &self.membership[host].0
    }

    fn path_on(&self, host: &str) -> String {
        self.host(host).path(&self.site.path)
    }

    /// Takes the site, group and global permits, in that order everywhere (no deadlock).
    async fn permits(&self, host: &str) -> Vec<OwnedSemaphorePermit> {
        let mut permits = vec![
            self.site_limit
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        ];
        if let Some((_, group)) = self.ctx.limits.groups.get(&self.membership[host].1) {
            permits.push(group.clone().acquire_owned().await.expect("never closed"));
        }
        permits.push(
            self.ctx
                .limits
                .global
                .1
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        );
        permits
    }

    /// Runs `command` on `host` under the limits. `leased`: the script takes the lease (or
    /// holds it): the lease is renewed in the background while the round trip lasts, and
    /// released at the end of the pass. A cancel abandons the round trip at once.
    async fn run_on(
        &self,
        host: &str,
        command: RemoteCommand,
        leased: bool,
    ) -> Result<CommandOutput, HostError> {
        let cancelled = || HostError::Cancelled {
            host: host.to_string(),
        };
        let _permits = tokio::select! {
            permits = self.permits(host) => permits,
            () = self.ctx.cancel.cancelled() => return Err(cancelled()),
        };
        // Held before this round trip (a lease taken earlier in the pass)?
        let held_before = {
            let mut leases = self.leased.lock().expect("not poisoned");
            let before = leases.contains(host);
            if leased {
                leases.insert(host.to_string());
            }
            before
        };
        let started = Instant::now();
        let work = self.host(host).run(&self.ctx.pool, &command);
        tokio::pin!(work);
        let every = self.renew_every();
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                () = self.ctx.cancel.cancelled() => break Err(cancelled()),
                _ = renew.tick(), if leased => self.renew(host).await,
            }
        };
        let metrics = &self.ctx.metrics;
        match &result {
            Ok(out) => {
                let text = out.stdout_text();
                // The last word on the lease in this round trip decides; without one (e.g. a
                // build skipped because the release was there) nothing changed.
                let last = observe::facts(&text)
                    .into_iter()
                    .rfind(|(key, _)| key == "lease")
                    .map(|(_, v)| v);
                let mut leases = self.leased.lock().expect("not poisoned");
                match last.as_deref() {
                    Some("acquired" | "renewed") => drop(leases.insert(host.to_string())),
                    Some(_) => drop(leases.remove(host)),
                    None if !held_before => drop(leases.remove(host)),
                    None => {}
                }
                drop(leases);
                for (step, seconds) in observe::step_timings(&text) {
                    metrics.operation(&step, Duration::from_secs_f64(seconds));
                }
                for (step, status) in observe::steps(&text) {
                    if status != 0 {
                        metrics.operation_failed(&self.site.name, &step);
                    }
                }
            }
            Err(_) => metrics.operation_failed(&self.site.name, "connect"),
        }
        metrics.operation("round_trip", started.elapsed());
        result
    }

    /// A third of the lease time: two renewals may fail before the lease expires.
    fn renew_every(&self) -> Duration {
        (self.ctx.lease_ttl / 3).max(Duration::from_secs(1))
    }

    /// Extends this pass's lease on `host` while a long round trip runs there. Best effort:
    /// the host itself refuses a build or switch whose lease was lost.
    async fn renew(&self, host: &str) {
        let every = self.renew_every();
        let script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .lease_renew(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .finish();
        let command = RemoteCommand::new(script, every);
        let result =
            tokio::time::timeout(every, self.host(host).run(&self.ctx.pool, &command)).await;
        if let Ok(Ok(out)) = result
            && out.success()
        {
            self.renewed
                .lock()
                .expect("not poisoned")
                .insert(host.to_string(), Instant::now());
        }
    }

    /// Every exit of a pass but SIGKILL: end the commands this pass started on its hosts
    /// and give their leases back, so another controller never waits for an expiry.
    async fn release_leases(&mut self) {
        let hosts: Vec<String> = std::mem::take(&mut *self.leased.lock().expect("not poisoned"))
            .into_iter()
            .filter(|h| !matches!(self.observed.get(h), Some(Reach::Refused { .. })))
            .collect();
        let this = &*self;
        let results = join_all(hosts.iter().map(|host| async move {
            let script = Script::for_attempt(&this.path_on(host), &this.attempt)
                .stop()
                .lease_release(&this.ctx.holder);
            let command = RemoteCommand::of(script, RELEASE_TIMEOUT);
            let result = tokio::time::timeout(
                RELEASE_TIMEOUT,
                this.host(host).run(&this.ctx.pool, &command),
            )
            .await;
            (host.clone(), result)
        }))
        .await;
        for (host, result) in results {
            match result {
                Ok(Ok(out)) if out.success() => {
                    let stopped = observe::facts(&out.stdout_text())
                        .into_iter()
                        .filter(|(key, _)| key == "stopped")
                        .count();
                    if stopped > 0 {
                        self.event(
                            &host,
                            Action::Stopped,
                            Some(format!("{stopped} command group(s) ended on the host")),
                        );
                    }
                }
                Ok(Ok(out)) => {
                    self.errors
                        .entry(host.clone())
                        .or_insert(format!("failed to release the lease: {}", tail(&out)));
                }
                Ok(Err(e)) => {
                    self.errors
                        .entry(host.clone())
                        .or_insert(format!("failed to release the lease: {e}"));
                }
                Err(_) => {
                    self.errors.entry(host.clone()).or_insert(format!(
                        "failed to release the lease: no answer within {RELEASE_TIMEOUT:?}"
                    ));
                }
            }
        }
    }

    /// Remembers, per host locked by another controller, when that lease runs out (by the
    /// host's own clock): a Blocked site is retried then rather than after a long backoff.
    fn note_foreign_leases(&mut self, results: &[(String, Result<CommandOutput, HostError>)]) {
        for (host, result) in results {
            let Ok(out) = result else { continue };
            let Ok(report) = observe::parse(&out.stdout_text()) else {
                continue;
            };
            if let Some(lease) = &report.lease
                && lease.holder != self.ctx.holder
                && lease.expires > report.now
            {
                self.locked_for
                    .insert(host.clone(), lease.expires - report.now);
            }
        }
    }

    /// Reports every release directory a host script removed (clean-up, half builds,
    /// abandoned attempts), for the output and the history.
    fn note_removals(&mut self, host: &str, out: &CommandOutput) {
        let removed: Vec<String> = observe::facts(&out.stdout_text())
            .into_iter()
            .filter(|(key, _)| key == "removed")
            .map(|(_, id)| id)
            .collect();
        if !removed.is_empty() {
            self.event(
                host,
                Action::CleanedUp,
                Some(format!("removed {}", removed.join(", "))),
            );
        }
    }

    async fn observe_all(&self) -> plan::Observed {
        let results = self.observe_hosts(false).await;
        results
            .iter()
            .map(|(host, result)| (host.clone(), self.to_reach(host, result)))
            .collect()
    }

    /// Observes every host in one round trip each. With `speculate`, hosts that lack the
    /// desired release also build it in the same round trip (see [`SiteRun::speculates`]).
    async fn observe_hosts(
        &self,
        speculate: bool,
    ) -> Vec<(String, Result<CommandOutput, HostError>)> {
        let hosts: Vec<&String> = self.membership.keys().collect();
        join_all(hosts.iter().map(|host| async move {
            let command = if speculate {
                let release = &self.site.release;
                let script = self.build_ops(
                    Script::for_attempt(&self.path_on(host), &self.attempt)
                        .observe_release(release)
                        .if_incomplete(release),
                    host,
                    0,
                );
                RemoteCommand::of(script.end_if(), self.ctx.command_timeout)
            } else {
                RemoteCommand::new(
                    Script::new(&self.path_on(host))
                        .observe_release(&self.site.release)
                        .finish(),
                    self.ctx.observe_timeout,
                )
            };
            (
                host.to_string(),
                self.run_on(host, command, speculate).await,
            )
        }))
        .await
    }

    /// Whether the first round trip may also build: the planner's only reasons not to build
    /// on a reachable host lacking the release are known before observing (suspended, held),
    /// and a git fetch needs nothing uploaded (an archive would go to every host each pass).
    fn speculates(&self) -> bool {
        !self.site.suspend
            && self.pass.attempts < self.site.rollout.failure_retries
            && matches!(self.site.fetch, FetchSpec::Git { .. })
    }

    fn to_reach(&self, host: &str, result: &Result<CommandOutput, HostError>) -> Reach {
        match result {
            Ok(out) => match observe::parse(&out.stdout_text()) {
                Ok(report) => Reach::Reachable(self.view(host, &report)),
                Err(e) => Reach::Unreachable {
                    reason: format!("{e}: {}", tail(out)),
                },
            },
            Err(e @ (HostError::HostKeyChanged { .. } | HostError::HostKeyUnknown { .. })) => {
                Reach::Refused {
                    reason: e.to_string(),
                }
            }
            Err(e) => Reach::Unreachable {
                reason: e.to_string(),
            },
        }
    }

    /// The planner's view of one host's report.
    fn view(&self, host: &str, report: &observe::Observed) -> HostView {
        let stage = self.stage_of(host);
        let once = report
            .once
            .iter()
            .filter(|o| o.stage == stage)
            .filter_map(|o| {
                let state = match o.state {
                    HostOnce::Done { status } => plan::OnceState::Done { status },
                    HostOnce::Running => plan::OnceState::Running,
                    // Started, never recorded: convoy refuses to guess whether it ran.
                    HostOnce::Interrupted => plan::OnceState::Done {
                        status: crate::host::script::EXIT_ONCE_INTERRUPTED,
                    },
                    HostOnce::NotStarted => return None,
                };
                Some((o.release.clone(), state))
            })
            .collect();
        let locked_by = report
            .lease
            .as_ref()
            .filter(|l| l.holder != self.ctx.holder && l.expires > report.now)
            .map(|l| l.holder.clone());
        HostView {
            current: report.current.clone(),
            previous: report.previous.clone(),
            pending: report.pending.clone(),
            complete: report
                .releases
                .iter()
                .filter(|r| r.complete)
                .map(|r| (r.id.clone(), r.built_at.unwrap_or(0)))
                .collect(),
            half_built: report
                .releases
                .iter()
                .filter(|r| !r.complete)
                .map(|r| r.id.clone())
                .collect(),
            once,
            locked_by,
        }
    }

    fn view_mut(&mut self, host: &str) -> Option<&mut HostView> {
        match self.observed.get_mut(host) {
            Some(Reach::Reachable(view)) => Some(view),
            _ => None,
        }
    }

    /// The environment of user commands on `host` for `release`.
    fn env(&self, host: &str, release: &str) -> Env {
        self.env_in(
            host,
            release,
            &format!("{}/releases/{release}", self.path_on(host)),
        )
    }

    /// The environment of a build: `CONVOY_RELEASE_DIR` is this attempt's own directory,
    /// renamed to `releases/<id>` when the build succeeds.
    fn build_env(&self, host: &str) -> Env {
        let release = &self.site.release;
        let dir = format!(
            "{}/releases/.{release}.{}",
            self.path_on(host),
            self.attempt.token
        );
        self.env_in(host, release, &dir)
    }

    fn env_in(&self, host: &str, release: &str, dir: &str) -> Env {
        let mut vars = vec![
            ("CONVOY_SITE".to_string(), self.site.name.clone()),
            ("CONVOY_RELEASE".to_string(), release.to_string()),
            ("CONVOY_RELEASE_DIR".to_string(), dir.to_string()),
            (
                "CONVOY_REVISION".to_string(),
                self.revision
                    .clone()
                    .unwrap_or_else(|| self.site.revision.clone()),
            ),
            ("CONVOY_HOST".to_string(), host.to_string()),
            ("CONVOY_STAGE".to_string(), self.stage_of(host).to_string()),
        ];
        vars.extend(self.site.env.iter().cloned());
        Env(vars)
    }

    fn event(&mut self, host: &str, action: Action, detail: Option<String>) {
        if let Some(progress) = &self.ctx.progress {
            progress.record(&self.site.name, action);
        }
        let release = match action {
            Action::RolledBack => self
                .view_mut(host)
                .and_then(|v| v.current.clone())
                .unwrap_or_default(),
            _ => self.site.release.clone(),
        };
        self.events.push(Event {
            host: host.to_string(),
            stage: self.stage_of(host).to_string(),
            release,
            action,
            detail,
        });
    }

    /// A host error during a step: unreachable hosts become unreachable for the planner.
    fn host_failed(&mut self, host: &str, error: HostError) {
        self.errors.insert(host.to_string(), error.to_string());
        let reach = match error {
            HostError::HostKeyChanged { .. } | HostError::HostKeyUnknown { .. } => Reach::Refused {
                reason: error.to_string(),
            },
            // Still reachable as far as anyone knows: the pass simply stops.
            HostError::Cancelled { .. } => return,
            _ => Reach::Unreachable {
                reason: error.to_string(),
            },
        };
        self.observed.insert(host.to_string(), reach);
    }

    /// Reads the lease line of a script's output; remembers the fence, or marks the host
    /// as held by another controller.
    fn note_lease(&mut self, host: &str, out: &CommandOutput) {
        let text = out.stdout_text();
        let Some(line) = observe::fact_line(&text, "lease") else {
            return;
        };
        let get = |k: &str| {
            line.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        match get("lease").as_deref() {
            Some("acquired") => {
                if let Some(generation) = get("generation").and_then(|g| g.parse().ok()) {
                    let fence = Fence {
                        holder: self.ctx.holder.clone(),
                        generation,
                    };
                    match self.fences.get(host) {
                        // Renewed by the same holder: the generation must not have moved.
                        Some((held, _)) if held.generation != generation => self.lose_lease(host),
                        _ => drop(
                            self.fences
                                .insert(host.to_string(), (fence, Instant::now())),
                        ),
                    }
                }
            }
            Some("held") => {
                let holder = get("holder").unwrap_or_else(|| "another controller".into());
                if let Some(view) = self.view_mut(host) {
                    view.locked_by = Some(holder);
                }
            }
            _ => {}
        }
    }

    async fn execute(&mut self, steps: Vec<Step>) {
        let (builds, others): (Vec<Step>, Vec<Step>) = steps
            .into_iter()
            .partition(|s| matches!(s, Step::Build { .. }));
        if !builds.is_empty() {
            self.build_all(
                builds
                    .iter()
                    .map(|s| match s {
                        Step::Build { host } => host.clone(),
                        _ => unreachable!(),
                    })
                    .collect(),
            )
            .await;
        }
        for step in others {
            match step {
                Step::Build { .. } => unreachable!("partitioned"),
                Step::Once { stage, host } => self.once(&stage, &host).await,
                Step::Switch {
                    stage,
                    hosts,
                    pause,
                    cleanup,
                } => {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    self.switch_batch(&stage, &hosts, &cleanup).await;
                }
                Step::Rollback { hosts, .. } => {
                    // Rare, one round trip each: one after another keeps events in order.
                    for host in hosts {
                        self.rollback_host(host).await;
                    }
                    self.pass.rolled_back = true;
                }
                Step::Cleanup { host, remove } => self.cleanup(&host, &remove).await,
            }
        }
    }

    // ------------------------------------------------------------------ build

    async fn build_all(&mut self, hosts: Vec<String>) {
        let archive = match &self.site.fetch {
            FetchSpec::Archive { path, roots } => {
                // Its exact size goes to the hosts, which read just that much of stdin.
                let packed = pack_archive(path, roots, &self.site.release)
                    .await
                    .and_then(|archive| {
                        let len = std::fs::metadata(archive.path())
                            .map_err(|e| format!("failed to read the archive to upload: {e}"))?
                            .len();
                        Ok((archive, len))
                    });
                match packed {
                    Ok(archive) => Some(archive),
                    Err(e) => {
                        for host in &hosts {
                            self.pass.build_failed.insert(host.clone(), e.clone());
                        }
                        self.failed_attempt = true;
                        return;
                    }
                }
            }
            FetchSpec::Git { .. } => None,
        };
        let commands: Vec<(String, RemoteCommand)> = hosts
            .iter()
            .map(|h| (h.clone(), self.build_command(h, archive.as_ref())))
            .collect();
        let this = &*self;
        let results = join_all(commands.into_iter().map(|(host, command)| async move {
            let result = this.run_on(&host, command, true).await;
            (host, result)
        }))
        .await;
        for (host, result) in results {
            match result {
                Err(e) => self.host_failed(&host, e),
                Ok(out) => self.fold_build(&host, &out),
            }
        }
    }

    fn build_command(&self, host: &str, archive: Option<&(Archive, u64)>) -> RemoteCommand {
        let script = self.build_ops(
            Script::for_attempt(&self.path_on(host), &self.attempt),
            host,
            archive.map_or(0, |(_, len)| *len),
        );
        let command = RemoteCommand::of(script, self.ctx.command_timeout);
        match archive {
            Some((archive, len)) => command.with_stdin_file(archive.path().to_path_buf(), *len),
            None => command,
        }
    }

    /// Lease, prepare, fetch, link shared paths, build: appended to `script`.
    fn build_ops(&self, script: Script, host: &str, archive_len: u64) -> Script {
        let release = &self.site.release;
        let script = script
            .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .prepare(release);
        let script = match &self.site.fetch {
            FetchSpec::Git { repository } => {
                let revision = self
                    .revision
                    .clone()
                    .unwrap_or_else(|| self.site.revision.clone());
                script.fetch_git(release, repository, &revision)
            }
            FetchSpec::Archive { .. } => script.unpack_archive(release, archive_len),
        };
        script.link_shared(release, &self.site.shared).build(
            release,
            &self.site.build,
            &self.build_env(host),
        )
    }

    /// Folds the result of a build round trip (or of an observe that built) into the state.
    fn fold_build(&mut self, host: &str, out: &CommandOutput) {
        self.note_lease(host, out);
        self.note_removals(host, out);
        let text = out.stdout_text();
        if observe::fact_line(&text, "fenced").is_some() {
            // Another controller took the host over while this one built: not a failure
            // of the build, and the host discarded it.
            self.lose_lease(host);
            return;
        }
        if let Some(revision) = observe::fact(&text, "revision") {
            self.revision.get_or_insert(revision);
        }
        let steps = observe::steps(&text);
        let built = steps
            .iter()
            .any(|(name, status)| name == "build" && *status == 0)
            && observe::fact(&text, "build").as_deref() == Some("done");
        let failed = steps.iter().any(|(_, status)| *status != 0);
        if built {
            let desired = self.site.release.clone();
            if let Some(view) = self.view_mut(host) {
                view.half_built.remove(&desired);
                view.complete.insert(desired, u64::MAX);
            }
            self.event(host, Action::Built, None);
        } else if failed && self.view_mut(host).is_some_and(|v| v.locked_by.is_none()) {
            let error = format!("{} on host `{host}`: {}", failed_step(out), tail(out));
            self.errors.insert(host.to_string(), error.clone());
            self.pass
                .build_failed
                .insert(host.to_string(), error.clone());
            self.failed_attempt = true;
            self.event(host, Action::BuildFailed, Some(error));
        }
    }

    // ------------------------------------------------------------------ lease

    /// The fence for `host`, taking the lease first if this pass has not yet (a host that
    /// needed no build). `None` when the host is unreachable or held by someone else.
    async fn fence(&mut self, host: &str) -> Option<Fence> {
        // Renew after half the lease time: a long build phase must not let it expire.
        let renewed = self
            .renewed
            .lock()
            .expect("not poisoned")
            .get(host)
            .copied();
        if let Some((fence, taken)) = self.fences.get(host)
            && renewed.map_or(*taken, |r| r.max(*taken)).elapsed() < self.ctx.lease_ttl / 2
        {
            return Some(fence.clone());
        }
        let script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .finish();
        match self
            .run_on(
                host,
                RemoteCommand::new(script, self.ctx.observe_timeout),
                true,
            )
            .await
        {
            Ok(out) => {
                self.note_lease(host, &out);
                let text = out.stdout_text();
                if !out.success() && observe::fact_line(&text, "lease").is_none() {
                    // The host could not even write its lease (full disk, read-only fs):
                    // a failed attempt with the host's own words, never a silent stall.
                    let error = format!("{} on host `{host}`: {}", failed_step(&out), tail(&out));
                    self.errors.insert(host.to_string(), error.clone());
                    self.pass.host_errors.insert(host.to_string(), error);
                    self.failed_attempt = true;
                }
            }
            Err(e) => self.host_failed(host, e),
        }
        self.fences.get(host).map(|(fence, _)| fence.clone())
    }

    /// Another controller took the host over since this pass took its lease: stop working
    /// on it (the planner reports Blocked; backoff retries with fresh observations).
    fn lose_lease(&mut self, host: &str) {
        self.fences.remove(host);
        self.errors.insert(
            host.to_string(),
            "lease lost to another controller: nothing more done here this pass".into(),
        );
        if let Some(view) = self.view_mut(host) {
            view.locked_by = Some("another controller (lease lost)".into());
        }
    }

    // ------------------------------------------------------------------ once

    async fn once(&mut self, stage: &str, host: &str) {
        let Some(fence) = self.fence(host).await else {
            return;
        };
        let release = self.site.release.clone();
        let commands = self.stage_commands(stage, |s| &s.once);
        let script = Script::for_attempt(&self.path_on(host), &self.attempt).once(
            &release,
            stage,
            &commands,
            &self.env(host, &release),
            &fence,
        );
        match self
            .run_on(
                host,
                RemoteCommand::of(script, self.ctx.command_timeout),
                true,
            )
            .await
        {
            Err(e) => self.host_failed(host, e),
            Ok(out) => {
                let status = once_status(&out.stdout_text());
                match status {
                    Some(status) => {
                        if let Some(view) = self.view_mut(host) {
                            view.once
                                .insert(release.clone(), plan::OnceState::Done { status });
                        }
                        if status == 0 {
                            self.pass.once_done.insert(stage.to_string());
                            self.event(host, Action::OnceRan, None);
                        } else {
                            let error = format!(
                                "`once` of stage `{stage}` failed on host `{host}`: {}",
                                tail(&out)
                            );
                            self.errors.insert(host.to_string(), error.clone());
                            self.pass.once_failed = Some((stage.to_string(), host.to_string()));
                            self.failed_attempt = true;
                            self.event(host, Action::OnceFailed, Some(error));
                        }
                    }
                    None => {
                        // Fenced or still running past the wait: nothing recorded, stop.
                        let error =
                            format!("`once` did not finish on host `{host}`: {}", tail(&out));
                        self.errors.insert(host.to_string(), error);
                        self.pass.once_failed = Some((stage.to_string(), host.to_string()));
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ switch

    async fn switch_batch(
        &mut self,
        stage: &str,
        hosts: &[String],
        cleanup: &BTreeMap<String, Vec<String>>,
    ) {
        let mut fences = BTreeMap::new();
        for host in hosts {
            if let Some(fence) = self.fence(host).await {
                fences.insert(host.clone(), fence);
            }
        }
        let release = self.site.release.clone();
        let activate = self.stage_commands(stage, |s| &s.activate);
        let commands: Vec<(String, RemoteCommand)> = fences
            .iter()
            .map(|(host, fence)| {
                let env = self.env(host, &release);
                let mut script = Script::for_attempt(&self.path_on(host), &self.attempt)
                    .pending(&release)
                    .switch(&release, fence)
                    .activate(&release, &activate, &env);
                if let Some(health) = &self.site.health {
                    script = script.health(
                        &health.command,
                        &env,
                        health.timeout.as_secs().max(1),
                        health.retries,
                        health.interval.as_secs(),
                    );
                }
                script = script.settled();
                if let Some(remove) = cleanup.get(host) {
                    script = script.remove_releases(remove, std::slice::from_ref(&release));
                }
                let script = script.lease_release(&self.ctx.holder);
                (
                    host.clone(),
                    RemoteCommand::of(script, self.ctx.command_timeout),
                )
            })
            .collect();
        let this = &*self;
        let results = join_all(commands.into_iter().map(|(host, command)| async move {
            let result = this.run_on(&host, command, true).await;
            (host, result)
        }))
        .await;
        let mut unhealthy = vec![];
        for (host, result) in results {
            match result {
                Err(e) => self.host_failed(&host, e),
                Ok(out) => {
                    self.note_removals(&host, &out);
                    let steps = observe::steps(&out.stdout_text());
                    let switched = steps
                        .iter()
                        .any(|(name, status)| name == "switch" && *status == 0);
                    if switched {
                        if let Some(view) = self.view_mut(&host) {
                            if view.current.as_deref() != Some(&release) {
                                view.previous = view.current.take();
                            }
                            view.current = Some(release.clone());
                            view.pending = None;
                        }
                        self.pass
                            .switched
                            .entry(stage.to_string())
                            .or_default()
                            .push(host.clone());
                        self.event(&host, Action::Switched, None);
                    }
                    let failed = steps.iter().find(|(_, status)| *status != 0).cloned();
                    let error = || {
                        format!(
                            "{} failed on host `{host}`: {}",
                            failed_step(&out),
                            tail(&out)
                        )
                    };
                    match failed
                        .as_ref()
                        .map(|(name, status)| (name.as_str(), *status))
                    {
                        None | Some(("settled" | "cleanup" | "lease_release", _)) => {
                            // Live and healthy. A clean-up problem is reported, never a reason
                            // to roll a healthy host back.
                            self.fences.remove(&host);
                            if failed.is_some() {
                                self.errors.insert(host.clone(), error());
                            }
                            for id in cleanup.get(&host).into_iter().flatten() {
                                if let Some(view) = self.view_mut(&host) {
                                    view.complete.remove(id);
                                    view.half_built.remove(id);
                                }
                            }
                        }
                        Some(("switch", crate::host::script::EXIT_FENCED)) => {
                            self.lose_lease(&host)
                        }
                        Some(_) if switched => {
                            let error = error();
                            self.errors.insert(host.clone(), error.clone());
                            self.event(&host, Action::HealthFailed, Some(error.clone()));
                            unhealthy.push((host, error));
                        }
                        Some(_) => {
                            let error = error();
                            self.errors.insert(host.clone(), error.clone());
                            self.pass.health_failed.get_or_insert((
                                stage.to_string(),
                                host.clone(),
                                error,
                            ));
                            self.failed_attempt = true;
                        }
                    }
                }
            }
        }
        if let Some((host, error)) = unhealthy.first().cloned() {
            self.pass.health_failed = Some((stage.to_string(), host, error));
            self.failed_attempt = true;
            for (host, _) in unhealthy {
                // Rolled back here, so the planner's stage rollback must not do it again.
                if let Some(switched) = self.pass.switched.get_mut(stage) {
                    switched.retain(|h| *h != host);
                }
                self.rollback_host(host).await;
            }
        }
    }

    /// Back to the recorded previous release, then `activate` with that release's variables.
    async fn rollback_host(&mut self, host: String) {
        let Some(fence) = self.fence(&host).await else {
            return;
        };
        let Some(previous) = self.view_mut(&host).and_then(|v| v.previous.clone()) else {
            self.errors.insert(
                host.clone(),
                "no previous release recorded: cannot roll back".into(),
            );
            return;
        };
        let stage = self.stage_of(&host).to_string();
        let activate = self.stage_commands(&stage, |s| &s.activate);
        let env = self.env(&host, &previous);
        let script = Script::for_attempt(&self.path_on(&host), &self.attempt)
            .rollback(&fence)
            .activate(&previous, &activate, &env)
            .settled()
            .lease_release(&self.ctx.holder);
        match self
            .run_on(
                &host,
                RemoteCommand::of(script, self.ctx.command_timeout),
                true,
            )
            .await
        {
            Err(e) => self.host_failed(&host, e),
            Ok(out) => {
                let rolled = observe::steps(&out.stdout_text())
                    .iter()
                    .any(|(n, s)| n == "rollback" && *s == 0);
                if rolled {
                    if let Some(view) = self.view_mut(&host) {
                        view.current = Some(previous.clone());
                    }
                    self.fences.remove(&host);
                    self.event(
                        &host,
                        Action::RolledBack,
                        (!out.success()).then(|| tail(&out)),
                    );
                } else {
                    self.errors
                        .insert(host.clone(), format!("rollback failed: {}", tail(&out)));
                }
            }
        }
    }

    // ------------------------------------------------------------------ cleanup

    async fn cleanup(&mut self, host: &str, remove: &[String]) {
        let script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .remove_releases(remove, std::slice::from_ref(&self.site.release))
            .lease_release(&self.ctx.holder)
            .finish();
        match self
            .run_on(
                host,
                RemoteCommand::new(script, self.ctx.observe_timeout),
                true,
            )
            .await
        {
            Err(e) => self.host_failed(host, e),
            Ok(out) => {
                self.note_lease(host, &out);
                self.note_removals(host, &out);
                if out.success() {
                    if let Some(view) = self.view_mut(host) {
                        for id in remove {
                            view.complete.remove(id);
                            view.half_built.remove(id);
                        }
                    }
                } else if self.view_mut(host).is_some_and(|v| v.locked_by.is_none()) {
                    // Not fatal, but never retried forever within the pass either.
                    self.errors
                        .insert(host.to_string(), format!("clean-up failed: {}", tail(&out)));
                    if let Some(view) = self.view_mut(host) {
                        for id in remove {
                            view.complete.remove(id);
                            view.half_built.remove(id);
                        }
                    }
                }
                self.fences.remove(host);
            }
        }
    }

    fn report(self, outcome: Outcome) -> SiteReport {
        let hosts = self
            .site
            .stages
            .iter()
            .flat_map(|stage| stage.hosts.iter().map(move |h| (h, stage)))
            .map(|(host, stage)| {
                let (release, reachable) = match self.observed.get(host) {
                    Some(Reach::Reachable(view)) => (view.current.clone(), true),
                    _ => (None, false),
                };
                let last_error =
                    self.errors
                        .get(host)
                        .cloned()
                        .or_else(|| match self.observed.get(host) {
                            Some(Reach::Unreachable { reason } | Reach::Refused { reason }) => {
                                Some(reason.clone())
                            }
                            Some(Reach::Reachable(view)) => {
                                view.locked_by.as_ref().map(|h| format!("locked by {h}"))
                            }
                            None => None,
                        });
                HostReport {
                    name: host.clone(),
                    stage: stage.name.clone(),
                    release,
                    reachable,
                    last_error,
                }
            })
            .collect();
        SiteReport {
            outcome,
            hosts,
            events: self.events,
            revision: self.revision,
            failed_attempt: self.failed_attempt,
            lease_expires_in: self
                .locked_for
                .values()
                .max()
                .map(|secs| Duration::from_secs(*secs)),
        }
    }
}

/// `convoy unlock`: breaks the lease of `site` on each of `hosts`. Per host, `Ok` with what
/// was done (whose lease was broken, or that it was free), or `Err` with why not.
pub async fn break_leases(
    pool: &SshPool,
    all_hosts: &BTreeMap<String, Host>,
    site: &DesiredSite,
    hosts: &[&String],
    force: bool,
) -> Vec<(String, Result<String, String>)> {
    // Renewals come every third of the lease time: two missed in a row mean no live holder.
    let alive = (crate::controller::LEASE_TTL * 2 / 3).as_secs();
    join_all(hosts.iter().map(|name| async move {
        let host = &all_hosts[name.as_str()];
        let script = Script::new(&host.path(&site.path))
            .lease_break(alive, force)
            .finish();
        let command = RemoteCommand::new(script, Duration::from_secs(60));
        let result = match host.run(pool, &command).await {
            Err(e) => Err(e.to_string()),
            Ok(out) => describe_break(&out),
        };
        (name.to_string(), result)
    }))
    .await
}

fn describe_break(out: &CommandOutput) -> Result<String, String> {
    let text = out.stdout_text();
    let Some(line) = observe::fact_line(&text, "lease") else {
        return Err(format!("failed to break the lease: {}", tail(out)));
    };
    let get = |k: &str| {
        line.iter()
            .find(|(key, _)| key == k)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let when = |k: &str| {
        get(k)
            .parse::<u64>()
            .ok()
            .filter(|t| *t > 0)
            .map_or("never".to_string(), |t| {
                crate::state::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t))
            })
    };
    let stopped = observe::facts(&text)
        .iter()
        .filter(|(k, _)| k == "stopped")
        .count();
    match get("lease").as_str() {
        "free" => Ok("not locked; nothing to do".to_string()),
        "broken" => Ok(format!(
            "broke the lease of `{}` (generation {}, last renewed {}, would have expired {}); ended {stopped} command group(s) it left running",
            get("holder"),
            get("generation"),
            when("renewed"),
            when("expires")
        )),
        "renewing" => Err(format!(
            "refused: `{}` holds the lease and renewed it at {} (it is alive; expires {}); stop that controller, or use --force",
            get("holder"),
            when("renewed"),
            when("expires")
        )),
        other => Err(format!("unexpected answer `{other}`: {}", tail(out))),
    }
}

/// Every host a list of steps works on, sorted, once each.
fn step_hosts(steps: &[Step]) -> Vec<String> {
    let mut hosts: Vec<String> = steps
        .iter()
        .flat_map(|step| match step {
            Step::Build { host } | Step::Once { host, .. } | Step::Cleanup { host, .. } => {
                vec![host.clone()]
            }
            Step::Switch { hosts, .. } | Step::Rollback { hosts, .. } => hosts.clone(),
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The exit status the host recorded for `once` (`@@convoy once=done status=<n>`).
fn once_status(stdout: &str) -> Option<i32> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.strip_prefix("@@convoy once=done ")?;
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix("status="))?
            .parse()
            .ok()
    })
}

/// The name of the step that stopped a script, for messages.
fn failed_step(out: &CommandOutput) -> String {
    observe::steps(&out.stdout_text())
        .into_iter()
        .find(|(_, status)| *status != 0)
        .map(|(name, status)| format!("{name} (exit {status})"))
        .unwrap_or_else(|| format!("script (exit {})", out.status))
}

/// The end of a command's output, user output (stderr) first: what an operator needs.
pub fn tail(out: &CommandOutput) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim_end();
    let start = text.len().saturating_sub(ERROR_TAIL);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    let tail = &text[start..];
    if tail.is_empty() {
        format!("exit status {}", out.status)
    } else {
        tail.to_string()
    }
}

/// An archive ready to upload, on disk: each host's upload streams it from the file, so
/// memory stays flat whatever its size and however many hosts receive it.
enum Archive {
    /// The operator's `.tar.gz`, as is.
    Given(std::path::PathBuf),
    /// A directory packed once for this build round; removed when dropped.
    Packed(std::path::PathBuf),
}

impl Archive {
    fn path(&self) -> &std::path::Path {
        match self {
            Archive::Given(path) | Archive::Packed(path) => path,
        }
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        if let Archive::Packed(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The archive to upload: a `.tar.gz` file as is, or a directory packed with `tar` into a
/// private temporary file (`$TMPDIR`), once for all hosts.
/// `{release}` in the path is replaced by the release id. The path must still resolve inside
/// one of `roots` (a link made after validation must not ship the controller's own files).
async fn pack_archive(
    path: &str,
    roots: &[std::path::PathBuf],
    release: &str,
) -> Result<Archive, String> {
    let path = path.replace("{release}", release);
    let target = crate::manifest::validate::resolve_existing(std::path::Path::new(&path));
    if !roots.iter().any(|root| target.starts_with(root)) {
        return Err(format!(
            "refused to upload archive `{path}`: it resolves to `{}`, outside the directories archives may come from",
            target.display()
        ));
    }
    let meta = tokio::fs::metadata(&target)
        .await
        .map_err(|e| format!("failed to read archive `{path}`: {e}"))?;
    if meta.is_file() {
        // The resolved path, so a link swapped after the check cannot redirect the upload.
        return Ok(Archive::Given(target));
    }
    use std::os::unix::fs::OpenOptionsExt;
    static PACKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let file_name = format!(
        "convoy-archive-{}-{}-{}.tar.gz",
        std::process::id(),
        PACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let temp = std::env::temp_dir().join(file_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| {
            format!(
                "failed to create `{}` to pack `{path}`: {e}",
                temp.display()
            )
        })?;
    // From here on, the guard removes the file whatever happens.
    let archive = Archive::Packed(temp);
    let out = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(&target)
        .args(["-czf", "-", "."])
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Not `output()`: tokio's would replace the file with a pipe on stdout.
        .spawn()
        .map_err(|e| format!("failed to run tar on `{path}`: {e}"))?
        .wait_with_output()
        .await
        .map_err(|e| format!("failed to run tar on `{path}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed to pack `{path}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_limits_survive_a_reload() {
        let groups = |n: usize| BTreeMap::from([("web".to_string(), n), ("db".to_string(), 1)]);
        let before = Limits::new(8, &groups(2));
        let same = before.carried_over(8, &groups(2));
        assert!(Arc::ptr_eq(&before.global.1, &same.global.1));
        assert!(Arc::ptr_eq(&before.groups["web"].1, &same.groups["web"].1));
        let changed = before.carried_over(4, &groups(3));
        assert!(
            !Arc::ptr_eq(&before.global.1, &changed.global.1),
            "a new global cap starts fresh"
        );
        assert!(!Arc::ptr_eq(
            &before.groups["web"].1,
            &changed.groups["web"].1
        ));
        assert!(
            Arc::ptr_eq(&before.groups["db"].1, &changed.groups["db"].1),
            "an untouched group keeps its cap"
        );
        assert_eq!(changed.groups["web"].0, 3);
    }

    #[test]
    fn step_hosts_lists_each_host_once() {
        let steps = vec![
            Step::Build { host: "b".into() },
            Step::Switch {
                stage: "s".into(),
                hosts: vec!["a".into(), "b".into()],
                pause: Duration::ZERO,
                cleanup: BTreeMap::new(),
            },
        ];
        assert_eq!(step_hosts(&steps), vec!["a", "b"]);
    }
}
