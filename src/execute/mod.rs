//! Runs the planner's steps on real hosts for one site: permits, transport calls, metrics,
//! reports. No decisions: every answer goes to `plan::fold`, and the next steps come from
//! `plan::plan`. Few round trips per host: observe in one (with the build, for git), lease +
//! build in one, switch + activate + health + clean-up in one.

mod archive;
mod limits;
mod round_trip;
mod steps;
mod unlock;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cancel::Cancel;
use crate::desired::{DesiredSite, FetchSpec};
use crate::host::Host;
use crate::host::protocol::{LeaseState, StepReport};
use crate::host::script::Attempt;
use crate::host::ssh::SshPool;
use crate::metrics::Metrics;
use crate::plan::{self, Event, Outcome, PassState, Reach, Step};
use crate::progress::Progress;
use crate::status::HostStatus;

pub use limits::{FleetLimits, Limits, groups_in_use};
pub use unlock::break_leases;

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
    /// `--once --host`: the only hosts a pass may change; `None` = every host.
    pub targets: Option<BTreeSet<String>>,
    /// The manifest commit of the desired state this context serves (git source), for
    /// status and history.
    pub commit: Option<String>,
}

/// What a site run ended with.
#[derive(Debug, Clone)]
pub struct SiteReport {
    pub outcome: Outcome,
    /// Per host: stage, live release, reachable, last error.
    pub hosts: Vec<HostStatus>,
    pub events: Vec<Event>,
    /// The commit the desired release resolved to, when a host reported it.
    pub revision: Option<String>,
    /// This pass found a build, once or health failure (counts toward failureRetries).
    pub failed_attempt: bool,
    /// Some host is locked by another controller: how long until the last such lease
    /// expires unless renewed (a retry need not wait longer).
    pub lease_expires_in: Option<Duration>,
}

/// What a pass has learned so far, folded from the hosts' answers. Behind a lock so an
/// answer is folded (and its events shown) the moment it arrives while other round trips
/// are still under way; never held across an await.
#[derive(Default)]
struct Book {
    observed: plan::Observed,
    pass: PassState,
    /// When this pass last took the lease on each host (its fence is in `pass.fences`).
    taken: BTreeMap<String, Instant>,
    events: Vec<Event>,
}

/// Per-pass state of one site while it is being reconciled.
struct SiteRun<'a> {
    ctx: &'a Context,
    site: &'a DesiredSite,
    site_limit: Arc<Semaphore>,
    book: Mutex<Book>,
    /// This pass as host scripts know it: lease holder and attempt token.
    attempt: Attempt,
    /// Hosts where this pass may hold the lease or have commands running: released (and
    /// their commands ended) when the pass ends, whichever way it ends.
    leased: Mutex<BTreeSet<String>>,
    /// When the background renewal last extended the lease on a host.
    renewed: Mutex<BTreeMap<String, Instant>>,
    /// Host → (stage, group) within this site.
    membership: BTreeMap<String, (String, String)>,
    /// This site's `--max-sites` slot, from before its first change on a host to the end
    /// of its steps.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Observes the site's hosts and returns what each reported (used by `plan` and `status`).
pub async fn observe_site(ctx: &Context, site: &DesiredSite) -> plan::Observed {
    let run = SiteRun::new(ctx, site, PassState::default());
    let reports: Vec<StepReport> = run
        .observe_hosts(false)
        .await
        .into_iter()
        .map(|(report, _)| report)
        .collect();
    plan::observe(site, &ctx.holder, &mut run.book().pass, &reports)
}

/// One reconcile pass of one site: observe, then plan and execute until nothing is left.
/// `revision`: the commit this release already resolved to (state dir), if any.
pub async fn reconcile_site(
    ctx: &Context,
    site: &DesiredSite,
    mut pass: PassState,
    revision: Option<String>,
) -> SiteReport {
    pass.revision = revision;
    let run = SiteRun::new(ctx, site, pass);
    if let Some(progress) = &ctx.progress {
        progress.start(&site.name, run.membership.len());
    }
    run.first_round_trip().await;
    let outcome = run.converge().await;
    drop(run.slot.lock().expect("not poisoned").take());
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
            site_limit: ctx.limits.site_cap(&site.name, site.rollout.max_parallel),
            book: Mutex::new(Book {
                pass,
                ..Book::default()
            }),
            attempt: Attempt::new(&ctx.holder),
            leased: Mutex::default(),
            renewed: Mutex::default(),
            membership,
            slot: Mutex::default(),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().expect("not poisoned")
    }

    /// Observes every host; for git, hosts lacking the release build it in the same round
    /// trip (see [`SiteRun::speculates`]) where their build permit is free. Building there
    /// needs a site slot: without a free one the pass only observes, and waits for a slot
    /// only if the planner finds something to do.
    async fn first_round_trip(&self) {
        let speculate = self.speculates() && self.take_free_slot();
        let (reports, built): (Vec<StepReport>, Vec<bool>) =
            self.observe_hosts(speculate).await.into_iter().unzip();
        {
            let mut book = self.book();
            let Book { observed, pass, .. } = &mut *book;
            *observed = plan::observe(self.site, &self.ctx.holder, pass, &reports);
        }
        for (report, built) in reports.into_iter().zip(built) {
            if built && report.ran().is_some_and(|a| a.observed().is_ok()) {
                let step = Step::Build {
                    host: report.host.clone(),
                };
                self.fold(&step, &[report]);
            }
        }
    }

    fn take_free_slot(&self) -> bool {
        let mut slot = self.slot.lock().expect("not poisoned");
        if slot.is_none() {
            *slot = self.ctx.limits.try_site_slot();
        }
        slot.is_some()
    }

    /// Waits for this pass's `--max-sites` slot unless it holds one (it holds no round-trip
    /// permit here: see `limits.rs` for why that order matters). False when a shutdown
    /// came first.
    async fn hold_slot(&self) -> bool {
        if self.slot.lock().expect("not poisoned").is_some() {
            return true;
        }
        tokio::select! {
            slot = self.ctx.limits.site_slot() => {
                *self.slot.lock().expect("not poisoned") = Some(slot);
                true
            }
            () = self.ctx.cancel.cancelled() => false,
        }
    }

    /// Plans and runs steps until the planner has none left.
    async fn converge(&self) -> Outcome {
        let mut previous: Option<Vec<Step>> = None;
        loop {
            let next = {
                let book = self.book();
                plan::plan(self.site, &book.observed, &book.pass)
            };
            if next.steps.is_empty() {
                return next.outcome;
            }
            if self.ctx.cancel.is_cancelled() {
                // Shutting down: round trips under way were abandoned; stop before the next.
                return Outcome::Progressing;
            }
            if previous.as_ref() == Some(&next.steps) {
                // The same steps again: the last run of them changed nothing (e.g. a lease
                // lost between two round trips). Never spin: report, let backoff retry.
                return Outcome::Blocked {
                    hosts: step_hosts(&next.steps),
                    reason: "no progress: the last steps changed nothing on these hosts".into(),
                };
            }
            previous = Some(next.steps.clone());
            if !self.hold_slot().await {
                return Outcome::Progressing;
            }
            self.execute(next.steps).await;
        }
    }

    /// Whether the first round trip may also build: the planner's only reasons not to build
    /// on a reachable host lacking the release are known before observing (suspended, held),
    /// and a git fetch needs nothing uploaded (an archive would go to every host each pass).
    fn speculates(&self) -> bool {
        !self.site.suspend
            && self.book().pass.attempts < self.site.rollout.failure_retries
            && matches!(self.site.fetch, FetchSpec::Git { .. })
    }

    /// Hands a step's answers to the planner, and keeps (and shows) the events it found.
    fn fold(&self, step: &Step, reports: &[StepReport]) {
        let mut book = self.book();
        let Book { observed, pass, .. } = &mut *book;
        let events = plan::fold(self.site, observed, pass, step, reports);
        self.record(&mut book, reports, events);
    }

    /// Notes the leases the answers took, and keeps and shows the events.
    fn record(&self, book: &mut Book, reports: &[StepReport], events: Vec<Event>) {
        for report in reports {
            let acquired = report
                .ran()
                .and_then(|a| a.lease.as_ref())
                .is_some_and(|l| l.state == LeaseState::Acquired);
            if acquired && book.pass.fences.contains_key(&report.host) {
                book.taken.insert(report.host.clone(), Instant::now());
            }
        }
        if let Some(progress) = &self.ctx.progress {
            for event in &events {
                progress.record(&self.site.name, event);
            }
        }
        book.events.extend(events);
    }

    fn report(self, outcome: Outcome) -> SiteReport {
        let Book {
            observed,
            pass,
            events,
            ..
        } = self.book.into_inner().expect("not poisoned");
        let hosts = self
            .site
            .stages
            .iter()
            .flat_map(|stage| stage.hosts.iter().map(move |h| (h, stage)))
            .map(|(host, stage)| {
                let reach = observed.get(host);
                let release = match reach {
                    Some(Reach::Reachable(view)) => view.current.clone(),
                    _ => None,
                };
                let last_error =
                    pass.errors
                        .get(host)
                        .map(ToString::to_string)
                        .or_else(|| match reach {
                            Some(Reach::Unreachable { reason } | Reach::Refused { reason }) => {
                                Some(reason.clone())
                            }
                            Some(Reach::Reachable(view)) => {
                                view.locked_by.as_ref().map(|h| format!("locked by {h}"))
                            }
                            None => None,
                        });
                HostStatus {
                    name: host.clone(),
                    stage: stage.name.clone(),
                    release,
                    reachable: matches!(reach, Some(Reach::Reachable(_))),
                    last_error,
                }
            })
            .collect();
        SiteReport {
            outcome,
            hosts,
            events,
            revision: pass.revision,
            failed_attempt: pass.failed_attempt,
            lease_expires_in: pass
                .locked_for
                .values()
                .max()
                .map(|secs| Duration::from_secs(*secs)),
        }
    }
}

/// Every host a list of steps works on, sorted, once each.
fn step_hosts(steps: &[Step]) -> Vec<String> {
    let mut hosts: Vec<String> = steps.iter().flat_map(Step::hosts).cloned().collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

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
