//! What the hosts' answers mean: the only place a result is interpreted. Each function
//! takes typed [`StepReport`]s and updates the planner's view ([`Observed`]) and the pass
//! ([`PassState`]): a failed attempt or not, the rollback set, fencing loss, a clean-up
//! failure that must never roll a healthy host back. Pure: the preview and the planner's
//! tests fold made-up successful answers through the same code.

use super::{
    Event, EventKind, HealthFailure, HostView, Observed, OnceFailure, OnceState, PassState, Reach,
    Step, StepError,
};
use crate::desired::DesiredSite;
use crate::host::observe::Snapshot;
use crate::host::protocol::{Answer, HostAnswer, LeaseState, Op, OpStatus, StepReport};

/// Folds the answers to one planned step.
pub fn fold(
    site: &DesiredSite,
    observed: &mut Observed,
    pass: &mut PassState,
    step: &Step,
    reports: &[StepReport],
) -> Vec<Event> {
    let mut f = Folder::new(site, observed, pass);
    let mut unhealthy = None;
    for report in reports {
        let host = report.host.as_str();
        let Some(answer) = f.absorb(report) else {
            continue;
        };
        match step {
            Step::Build { .. } => f.build(host, answer),
            Step::Once { stage, .. } => f.once(stage, host, answer),
            Step::Switch { stage, cleanup, .. } => {
                let removed = cleanup.get(host).map_or(&[][..], Vec::as_slice);
                if let Some(error) = f.switch(stage, host, answer, removed) {
                    unhealthy.get_or_insert((host.to_string(), error));
                }
            }
            Step::Rollback { .. } => f.rollback(host, answer),
            Step::Cleanup { remove, .. } => f.cleanup(host, answer, remove),
        }
    }
    match step {
        Step::Switch { stage, .. } => {
            // A host went live and then failed: its whole stage goes back (see `failures`).
            // It names the failure, unless a host that went live and failed already does
            // (a batch's answers may be folded one by one, as they arrive).
            if let Some((host, error)) = unhealthy {
                let went_live = |h: &HealthFailure| {
                    f.pass
                        .switched
                        .get(&h.stage)
                        .is_some_and(|s| s.contains(&h.host))
                };
                if !f.pass.health_failed.as_ref().is_some_and(went_live) {
                    f.pass.health_failed = Some(HealthFailure {
                        stage: stage.clone(),
                        host,
                        error,
                    });
                }
                f.pass.failed_attempt = true;
            }
        }
        Step::Rollback { hosts, .. } => f.pass.rolled_back.extend(hosts.iter().cloned()),
        _ => {}
    }
    f.events
}

/// Folds lease acquisitions made before a step (hosts that needed no build hold no lease
/// yet). A host that cannot even write its lease (full disk, read-only file system) fails
/// the attempt with its own words rather than stalling.
pub fn fold_lease(
    site: &DesiredSite,
    observed: &mut Observed,
    pass: &mut PassState,
    reports: &[StepReport],
) -> Vec<Event> {
    let mut f = Folder::new(site, observed, pass);
    for report in reports {
        let Some(answer) = f.absorb(report) else {
            continue;
        };
        if !answer.success() && answer.lease.is_none() {
            let error = operation_error(&report.host, answer);
            f.pass.errors.insert(report.host.clone(), error.clone());
            f.pass.host_errors.insert(report.host.clone(), error);
            f.pass.failed_attempt = true;
        }
    }
    f.events
}

/// Folds the end of a pass on its hosts: commands ended, leases given back.
pub fn fold_release(
    site: &DesiredSite,
    pass: &mut PassState,
    reports: &[StepReport],
) -> Vec<Event> {
    let mut events = vec![];
    for report in reports {
        let reason = match &report.answer {
            Answer::Ran(answer) if answer.success() => {
                if answer.stopped > 0 {
                    events.push(event(
                        site,
                        &report.host,
                        site.release.clone(),
                        EventKind::Stopped,
                        Some(format!(
                            "{} command group(s) ended on the host",
                            answer.stopped
                        )),
                    ));
                }
                continue;
            }
            Answer::Ran(answer) => answer.tail.clone(),
            Answer::Unreachable(reason) | Answer::Refused(reason) => reason.clone(),
            Answer::Cancelled => "convoy is shutting down".into(),
        };
        pass.errors
            .entry(report.host.clone())
            .or_insert(StepError::Release { reason });
    }
    events
}

/// The planner's view of every host from the first round trip's answers, and how long
/// other controllers' leases still run (a Blocked site is retried then, not later).
pub fn observe(
    site: &DesiredSite,
    me: &str,
    pass: &mut PassState,
    reports: &[StepReport],
) -> Observed {
    reports
        .iter()
        .map(|report| {
            let host = report.host.clone();
            let reach = match &report.answer {
                Answer::Ran(answer) => match answer.observed() {
                    Ok(snapshot) => {
                        if let Some(secs) = foreign_lease_left(snapshot, me) {
                            pass.locked_for.insert(host.clone(), secs);
                        }
                        Reach::Reachable(view(site, me, &host, snapshot))
                    }
                    Err(e) => Reach::Unreachable {
                        reason: format!("{e}: {}", answer.tail),
                    },
                },
                Answer::Refused(reason) => Reach::Refused {
                    reason: reason.clone(),
                },
                Answer::Unreachable(reason) => Reach::Unreachable {
                    reason: reason.clone(),
                },
                Answer::Cancelled => Reach::Unreachable {
                    reason: format!("stopped on host `{host}`: convoy is shutting down"),
                },
            };
            (host, reach)
        })
        .collect()
}

fn foreign_lease_left(snapshot: &Snapshot, me: &str) -> Option<u64> {
    let lease = snapshot.lease.as_ref()?;
    (lease.holder != me && lease.expires > snapshot.now).then(|| lease.expires - snapshot.now)
}

/// One host's snapshot as the rules see it: only its own stage's `once` records, and
/// another controller's live lease as a lock.
fn view(site: &DesiredSite, me: &str, host: &str, snapshot: &Snapshot) -> HostView {
    let stage = stage_of(site, host);
    HostView {
        current: snapshot.current.clone(),
        previous: snapshot.previous.clone(),
        pending: snapshot.pending.clone(),
        complete: snapshot
            .releases
            .iter()
            .filter(|r| r.complete)
            .map(|r| (r.id.clone(), r.built_at.unwrap_or(0)))
            .collect(),
        half_built: snapshot
            .releases
            .iter()
            .filter(|r| !r.complete)
            .map(|r| r.id.clone())
            .collect(),
        once: snapshot
            .once
            .iter()
            .filter(|o| o.stage == stage && o.state != OnceState::NotStarted)
            .map(|o| (o.release.clone(), o.state))
            .collect(),
        locked_by: snapshot
            .lease
            .as_ref()
            .filter(|l| l.holder != me && l.expires > snapshot.now)
            .map(|l| l.holder.clone()),
    }
}

fn stage_of<'s>(site: &'s DesiredSite, host: &str) -> &'s str {
    site.stages
        .iter()
        .find(|s| s.hosts.iter().any(|h| h == host))
        .map_or("", |s| s.name.as_str())
}

fn event(
    site: &DesiredSite,
    host: &str,
    release: String,
    kind: EventKind,
    detail: Option<String>,
) -> Event {
    Event {
        host: host.to_string(),
        stage: stage_of(site, host).to_string(),
        release,
        kind,
        detail,
        output: None,
        kept: None,
    }
}

/// A build or bookkeeping operation that exited non-zero, in the host's words.
fn operation_error(host: &str, answer: &HostAnswer) -> StepError {
    StepError::Operation {
        host: host.to_string(),
        op: answer.failure(),
        tail: answer.said(),
    }
}

struct Folder<'a> {
    site: &'a DesiredSite,
    observed: &'a mut Observed,
    pass: &'a mut PassState,
    events: Vec<Event>,
}

impl<'a> Folder<'a> {
    fn new(site: &'a DesiredSite, observed: &'a mut Observed, pass: &'a mut PassState) -> Self {
        Folder {
            site,
            observed,
            pass,
            events: vec![],
        }
    }

    /// What every answer says regardless of the step: the transport's verdict, the lease,
    /// removed directories. `None` when the script did not run.
    fn absorb<'r>(&mut self, report: &'r StepReport) -> Option<&'r HostAnswer> {
        let host = report.host.as_str();
        let reach = match &report.answer {
            Answer::Ran(answer) => {
                self.note_lease(host, answer);
                self.note_removals(host, answer);
                return Some(answer);
            }
            // Still reachable as far as anyone knows: the pass simply stops.
            Answer::Cancelled => return None,
            Answer::Unreachable(reason) => Reach::Unreachable {
                reason: reason.clone(),
            },
            Answer::Refused(reason) => Reach::Refused {
                reason: reason.clone(),
            },
        };
        let (Reach::Unreachable { reason } | Reach::Refused { reason }) = &reach else {
            unreachable!("built above");
        };
        self.pass
            .errors
            .insert(host.to_string(), StepError::Host(reason.clone()));
        self.observed.insert(host.to_string(), reach);
        None
    }

    fn view(&mut self, host: &str) -> Option<&mut HostView> {
        match self.observed.get_mut(host) {
            Some(Reach::Reachable(view)) => Some(view),
            _ => None,
        }
    }

    fn free(&mut self, host: &str) -> bool {
        self.view(host).is_some_and(|v| v.locked_by.is_none())
    }

    fn record(&mut self, host: &str, kind: EventKind, detail: Option<String>) {
        let release = match kind {
            EventKind::RolledBack => self
                .view(host)
                .and_then(|v| v.current.clone())
                .unwrap_or_default(),
            _ => self.site.release.clone(),
        };
        self.events
            .push(event(self.site, host, release, kind, detail));
    }

    /// A failure event: its headline, and the command's whole output to keep.
    fn record_failure(
        &mut self,
        host: &str,
        kind: EventKind,
        error: &StepError,
        answer: &HostAnswer,
    ) {
        self.record(host, kind, Some(error.headline()));
        if let Some(event) = self.events.last_mut() {
            event.output = (!answer.output.is_empty()).then(|| answer.output.clone());
        }
    }

    fn fail(&mut self, host: &str, error: StepError) {
        self.pass.errors.insert(host.to_string(), error);
    }

    /// Remembers the fence of an acquired lease, or marks the host as held by another
    /// controller. A re-acquire that finds another generation means the lease moved.
    fn note_lease(&mut self, host: &str, answer: &HostAnswer) {
        let Some(lease) = &answer.lease else { return };
        match lease.state {
            LeaseState::Acquired => {
                let Some(generation) = lease.generation else {
                    return;
                };
                match self.pass.fences.get(host) {
                    Some(held) if *held != generation => self.lose_lease(host),
                    _ => drop(self.pass.fences.insert(host.to_string(), generation)),
                }
            }
            LeaseState::Held => {
                let holder = lease
                    .holder
                    .clone()
                    .unwrap_or_else(|| "another controller".into());
                if let Some(view) = self.view(host) {
                    view.locked_by = Some(holder);
                }
            }
            _ => {}
        }
    }

    fn note_removals(&mut self, host: &str, answer: &HostAnswer) {
        if !answer.removed.is_empty() {
            let detail = format!("removed {}", answer.removed.join(", "));
            self.record(host, EventKind::CleanedUp, Some(detail));
        }
    }

    /// Another controller took the host over since this pass took its lease: stop working
    /// on it (the planner reports Blocked; backoff retries with fresh observations).
    fn lose_lease(&mut self, host: &str) {
        self.pass.fences.remove(host);
        self.fail(host, StepError::LeaseLost);
        if let Some(view) = self.view(host) {
            view.locked_by = Some("another controller (lease lost)".into());
        }
    }

    fn forget(&mut self, host: &str, ids: &[String]) {
        if let Some(view) = self.view(host) {
            for id in ids {
                view.complete.remove(id);
                view.half_built.remove(id);
            }
        }
    }

    fn build(&mut self, host: &str, answer: &HostAnswer) {
        if answer.fenced {
            // Taken over while building: not a failure of the build; the host discarded it.
            self.lose_lease(host);
            return;
        }
        if let Some(revision) = &answer.revision {
            self.pass.revision.get_or_insert(revision.clone());
        }
        if answer.built && answer.op(&Op::Build) == Some(OpStatus::Done) {
            let desired = self.site.release.clone();
            if let Some(view) = self.view(host) {
                view.half_built.remove(&desired);
                view.complete.insert(desired, u64::MAX);
            }
            self.record(host, EventKind::Built, None);
        } else if answer.failed_op().is_some() && self.free(host) {
            let error = operation_error(host, answer);
            self.fail(host, error.clone());
            self.pass
                .build_failed
                .insert(host.to_string(), error.clone());
            self.pass.failed_attempt = true;
            self.record_failure(host, EventKind::BuildFailed, &error, answer);
        }
    }

    fn once(&mut self, stage: &str, host: &str, answer: &HostAnswer) {
        let failure = OnceFailure {
            stage: stage.to_string(),
            host: host.to_string(),
        };
        let Some(status) = answer.once else {
            self.fail(
                host,
                StepError::OnceUnfinished {
                    host: host.to_string(),
                    tail: answer.tail.clone(),
                },
            );
            self.pass.once_failed = Some(failure);
            return;
        };
        let release = self.site.release.clone();
        if let Some(view) = self.view(host) {
            view.once.insert(release, OnceState::Done { status });
        }
        if status == 0 {
            self.pass.once_done.insert(stage.to_string());
            self.record(host, EventKind::OnceRan, None);
            return;
        }
        let error = StepError::Once {
            stage: stage.to_string(),
            host: host.to_string(),
            tail: answer.said(),
        };
        self.fail(host, error.clone());
        self.pass.once_failed = Some(failure);
        self.pass.failed_attempt = true;
        self.record_failure(host, EventKind::OnceFailed, &error, answer);
    }

    /// Returns the error of a host that went live and then failed activate or health.
    fn switch(
        &mut self,
        stage: &str,
        host: &str,
        answer: &HostAnswer,
        removed: &[String],
    ) -> Option<StepError> {
        let switched = answer.op(&Op::Switch) == Some(OpStatus::Done);
        if switched {
            self.went_live(stage, host);
        }
        let live_error = || StepError::Live {
            host: host.to_string(),
            op: answer.failure(),
            tail: answer.said(),
        };
        match answer.failed_op() {
            // Live and healthy. A clean-up problem is reported, never a reason to roll a
            // healthy host back.
            None | Some((Op::Settled | Op::Cleanup | Op::LeaseRelease, _)) => {
                self.pass.fences.remove(host);
                if answer.failed_op().is_some() {
                    self.fail(host, live_error());
                }
                self.forget(host, removed);
                None
            }
            Some((Op::Switch, OpStatus::Fenced)) => {
                self.lose_lease(host);
                None
            }
            Some(_) if switched => {
                let error = live_error();
                self.fail(host, error.clone());
                self.live_failed(stage, host, &error);
                self.record_failure(host, EventKind::HealthFailed, &error, answer);
                Some(error)
            }
            Some(_) => {
                let error = live_error();
                self.fail(host, error.clone());
                self.live_failed(stage, host, &error);
                self.pass.health_failed.get_or_insert(HealthFailure {
                    stage: stage.to_string(),
                    host: host.to_string(),
                    error,
                });
                self.pass.failed_attempt = true;
                None
            }
        }
    }

    /// The host failed its switch, activate or health check (whether it went live or not).
    fn live_failed(&mut self, stage: &str, host: &str, error: &StepError) {
        let failure = HealthFailure {
            stage: stage.to_string(),
            host: host.to_string(),
            error: error.clone(),
        };
        self.pass.live_failed.insert(host.to_string(), failure);
    }

    /// `current` now points at the desired release; like the host, the old one becomes
    /// previous unless there was none or it was this release already.
    fn went_live(&mut self, stage: &str, host: &str) {
        let desired = self.site.release.clone();
        if let Some(view) = self.view(host) {
            if view.current.is_some() && view.current.as_ref() != Some(&desired) {
                view.previous = view.current.take();
            }
            view.current = Some(desired);
            view.pending = None;
        }
        self.pass
            .switched
            .entry(stage.to_string())
            .or_default()
            .push(host.to_string());
        self.record(host, EventKind::Switched, None);
    }

    fn rollback(&mut self, host: &str, answer: &HostAnswer) {
        if answer.op(&Op::Rollback) != Some(OpStatus::Done) {
            let tail = answer.tail.clone();
            self.fail(host, StepError::Rollback { tail });
            return;
        }
        if let Some(view) = self.view(host) {
            view.current = view.previous.clone();
        }
        self.pass.fences.remove(host);
        let detail = (!answer.success()).then(|| answer.tail.clone());
        self.record(host, EventKind::RolledBack, detail);
    }

    fn cleanup(&mut self, host: &str, answer: &HostAnswer, remove: &[String]) {
        if answer.success() {
            self.forget(host, remove);
        } else if self.free(host) {
            // Not fatal, but never retried forever within the pass either.
            let tail = answer.tail.clone();
            self.fail(host, StepError::Cleanup { tail });
            self.forget(host, remove);
        }
        self.pass.fences.remove(host);
    }
}

/// The controller could not even send `step` to `host` (the archive would not pack, no
/// rollback target is recorded): the host's error, and for a build a failed attempt.
pub fn fold_unsent(pass: &mut PassState, step: &Step, host: &str, error: StepError) {
    pass.errors.insert(host.to_string(), error.clone());
    if let Step::Build { .. } = step {
        pass.build_failed.insert(host.to_string(), error);
        pass.failed_attempt = true;
    }
}
