//! The deployment rules, as a pure function: (desired site, what each host reported, what
//! this pass and earlier runs did) → the next steps. No I/O, no clock, no async: every rule
//! can be read and tested without a network. The executor runs the steps, folds their
//! results back into [`Observed`] and [`PassState`], and asks again until no step is left.
//!
//! One call plans one phase: all builds; then `once`; then one batch of one stage; then the
//! rollback of a failed stage; then clean-up. Re-planning after each phase keeps every
//! decision on fresh facts while costing no extra round trip (results update the view).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::desired::DesiredSite;

/// What one host reported (or why it could not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Reachable(HostView),
    /// Connection refused or timed out: retried with backoff.
    Unreachable {
        reason: String,
    },
    /// Host key changed or unknown: never retried quietly.
    Refused {
        reason: String,
    },
}

/// A reachable host's state for one site path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Release `current` points at.
    pub current: Option<String>,
    /// Rollback target recorded before the last switch.
    pub previous: Option<String>,
    /// A release switched to but never verified (activate + health did not complete).
    pub pending: Option<String>,
    /// Complete releases (marker present) and when each was built (epoch seconds).
    pub complete: BTreeMap<String, u64>,
    /// Release dirs without a completion marker: half builds.
    pub half_built: BTreeSet<String>,
    /// `once` records of this host, by release.
    pub once: BTreeMap<String, OnceState>,
    /// Another controller's live lease on this site path, if any.
    pub locked_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceState {
    Running,
    Done { status: i32 },
}

/// The status the host layer gives a `once` record whose commands were started but whose
/// end was never recorded (the wrapper died with its host). The planner sees it as
/// `Done { status }`; a user command that itself exits with this status reads the same,
/// which is why the controller verifies the record on the host before explaining it.
pub const ONCE_INTERRUPTED: i32 = crate::host::script::EXIT_ONCE_INTERRUPTED;

/// The reason a site stops at an interrupted `once` record: the controller recognises it
/// (exactly) to add when and where the commands started.
pub fn once_interrupted_reason(stage: &str) -> String {
    format!(
        "`once` commands of stage `{stage}` were interrupted: they were started but their end was never recorded"
    )
}

/// Every host of the site, by name.
pub type Observed = BTreeMap<String, Reach>;

/// What happened earlier in this pass, and what the state dir remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassState {
    /// Hosts whose build of the desired release failed, with the error.
    pub build_failed: BTreeMap<String, String>,
    /// Per stage, hosts switched to the desired release in this attempt.
    pub switched: BTreeMap<String, Vec<String>>,
    /// A host whose activate or health check failed (it rolled itself back).
    pub health_failed: Option<(String, String, String)>,
    /// The rest of that stage was rolled back too.
    pub rolled_back: bool,
    /// The `once` commands of these stages failed on a host.
    pub once_failed: Option<(String, String)>,
    /// Stages whose `once` is known done from the state dir (a second proof besides hosts).
    pub once_done: BTreeSet<String>,
    /// Failed attempts of this desired release in earlier runs.
    pub attempts: u32,
    /// A host failed an operation of convoy's own (a lease write on a full disk, ...): the
    /// attempt fails with the host's error rather than spinning.
    pub host_errors: BTreeMap<String, String>,
}

/// One unit of work for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Prepare, fetch, link shared, build, write the completion marker.
    Build { host: String },
    /// Run the stage's `once` commands on this host (or wait for the run already there).
    Once { stage: String, host: String },
    /// Per host: switch `current`, activate, health check; a failing host rolls itself back.
    /// Then clean up what the plan listed. `pause` is waited before this batch starts.
    Switch {
        stage: String,
        hosts: Vec<String>,
        pause: Duration,
        cleanup: BTreeMap<String, Vec<String>>,
    },
    /// Roll these hosts (switched earlier in this attempt) back to their recorded previous.
    Rollback { stage: String, hosts: Vec<String> },
    /// Remove these release directories (never current, previous or desired).
    Cleanup { host: String, remove: Vec<String> },
}

/// Where the site stands when the plan has no step left (or why it stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Steps remain: the executor runs them and plans again.
    Progressing,
    Converged,
    /// Converged except these optional hosts, unreachable.
    Degraded {
        skipped: Vec<String>,
    },
    /// A required host is unreachable (or locked by another controller): retry with backoff.
    Blocked {
        hosts: Vec<String>,
        reason: String,
    },
    /// Build, once or health failed, a host key was refused, or the release is held.
    Failed {
        reason: String,
        host: Option<String>,
    },
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl Plan {
    fn done(outcome: Outcome) -> Self {
        Plan {
            steps: vec![],
            outcome,
        }
    }

    fn progress(steps: Vec<Step>) -> Self {
        Plan {
            steps,
            outcome: Outcome::Progressing,
        }
    }
}

/// A host of the site with the stage it belongs to.
struct Member<'a> {
    host: &'a str,
    stage: &'a str,
    optional: bool,
    reach: Option<&'a Reach>,
}

impl Member<'_> {
    fn view(&self) -> Option<&HostView> {
        match self.reach {
            Some(Reach::Reachable(view)) => Some(view),
            _ => None,
        }
    }

    /// Reachable and not held by another controller: convoy may act on it.
    fn workable(&self) -> Option<&HostView> {
        self.view().filter(|v| v.locked_by.is_none())
    }
}

fn members<'a>(site: &'a DesiredSite, observed: &'a Observed) -> Vec<Member<'a>> {
    site.stages
        .iter()
        .flat_map(|stage| {
            stage.hosts.iter().map(move |host| Member {
                host,
                stage: &stage.name,
                optional: stage.optional,
                reach: observed.get(host),
            })
        })
        .collect()
}

/// Decides the next steps for one site.
pub fn plan(site: &DesiredSite, observed: &Observed, pass: &PassState) -> Plan {
    let desired = site.release.as_str();
    let members = members(site, observed);

    // A changed host key may be an attacker: the whole site stops, even for an optional host.
    if let Some((m, reason)) = members.iter().find_map(|m| match m.reach {
        Some(Reach::Refused { reason }) => Some((m, reason)),
        _ => None,
    }) {
        return Plan::done(Outcome::Failed {
            reason: reason.clone(),
            host: Some(m.host.to_string()),
        });
    }
    // After the key check: a suspended site must not hide a changed host key.
    if site.suspend {
        return Plan::done(Outcome::Suspended);
    }
    if pass.attempts >= site.rollout.failure_retries {
        return Plan::done(Outcome::Failed {
            reason: format!(
                "release `{desired}` is held after {} failed attempts; change the desired state or run `convoy retry {}`",
                pass.attempts, site.name
            ),
            host: None,
        });
    }
    if let Some((host, error)) = pass.build_failed.iter().next() {
        return Plan::done(Outcome::Failed {
            reason: format!("build failed: {error}"),
            host: Some(host.clone()),
        });
    }
    if let Some((host, error)) = pass.host_errors.iter().next() {
        return Plan::done(Outcome::Failed {
            reason: format!("host error: {error}"),
            host: Some(host.clone()),
        });
    }
    if let Some((stage, host)) = &pass.once_failed {
        return Plan::done(Outcome::Failed {
            reason: format!("`once` commands of stage `{stage}` failed"),
            host: Some(host.clone()),
        });
    }
    if let Some((stage, host, error)) = &pass.health_failed {
        let pending: Vec<String> = pass
            .switched
            .get(stage)
            .into_iter()
            .flatten()
            .filter(|h| *h != host)
            .cloned()
            .collect();
        if !pass.rolled_back && !pending.is_empty() {
            return Plan::progress(vec![Step::Rollback {
                stage: stage.clone(),
                hosts: pending,
            }]);
        }
        return Plan::done(Outcome::Failed {
            reason: format!("health check failed: {error}"),
            host: Some(host.clone()),
        });
    }

    // 1. Build wherever the desired release is not complete yet.
    let builds: Vec<Step> = members
        .iter()
        .filter(|m| {
            m.workable()
                .is_some_and(|v| !v.complete.contains_key(desired))
        })
        .map(|m| Step::Build {
            host: m.host.to_string(),
        })
        .collect();
    if !builds.is_empty() {
        return Plan::progress(dedup_hosts(builds));
    }

    // 2. Gate: every host of every required stage must be reachable (and so, built).
    let blocked: Vec<&Member> = members
        .iter()
        .filter(|m| !m.optional && m.workable().is_none())
        .collect();
    if !blocked.is_empty() {
        let locked = blocked
            .iter()
            .find_map(|m| m.view().and_then(|v| v.locked_by.clone()));
        let reason = match locked {
            Some(holder) => format!("locked by another controller ({holder})"),
            None => {
                "required host unreachable; nothing switches until every required host has built"
                    .into()
            }
        };
        return Plan::done(Outcome::Blocked {
            hosts: host_names(&blocked),
            reason,
        });
    }

    // 3. `once`, exactly once per release, before any switch.
    for stage in site.stages.iter().filter(|s| !s.once.is_empty()) {
        if pass.once_done.contains(&stage.name) {
            continue;
        }
        let stage_members: Vec<&Member> =
            members.iter().filter(|m| m.stage == stage.name).collect();
        let records: Vec<(&str, OnceState)> = stage_members
            .iter()
            .filter_map(|m| {
                m.view()
                    .and_then(|v| v.once.get(desired))
                    .map(|s| (m.host, *s))
            })
            .collect();
        match records
            .iter()
            .find(|(_, s)| matches!(s, OnceState::Done { .. }))
        {
            Some((_, OnceState::Done { status: 0 })) => continue,
            Some((host, OnceState::Done { status })) if *status == ONCE_INTERRUPTED => {
                return Plan::done(Outcome::Failed {
                    reason: once_interrupted_reason(&stage.name),
                    host: Some(host.to_string()),
                });
            }
            Some((host, _)) => {
                return Plan::done(Outcome::Failed {
                    reason: format!(
                        "`once` commands of stage `{}` failed on an earlier run",
                        stage.name
                    ),
                    host: Some(host.to_string()),
                });
            }
            None => {}
        }
        if let Some((host, _)) = records.first() {
            // A run under way: wait for it, unless another controller holds that host.
            let workable = stage_members
                .iter()
                .any(|m| m.host == *host && m.workable().is_some());
            if !workable {
                return Plan::done(Outcome::Blocked {
                    hosts: vec![host.to_string()],
                    reason: format!(
                        "the `once` commands of stage `{}` are running under another controller",
                        stage.name
                    ),
                });
            }
            return Plan::progress(vec![Step::Once {
                stage: stage.name.clone(),
                host: host.to_string(),
            }]);
        }
        // A host we cannot see might hold the record: never risk a second run.
        // Unreachable or held by another controller (which may be starting it right now).
        let unseen: Vec<&Member> = stage_members
            .iter()
            .copied()
            .filter(|m| m.workable().is_none())
            .collect();
        if !unseen.is_empty() {
            return Plan::done(Outcome::Blocked {
                hosts: host_names(&unseen),
                reason: format!(
                    "cannot prove the `once` commands of stage `{}` have not run",
                    stage.name
                ),
            });
        }
        if let Some(first) = stage_members.iter().find(|m| m.workable().is_some()) {
            return Plan::progress(vec![Step::Once {
                stage: stage.name.clone(),
                host: first.host.to_string(),
            }]);
        }
    }

    // 4. Switch, stage by stage, batch by batch.
    for stage in &site.stages {
        let pending: Vec<&Member> = members
            .iter()
            .filter(|m| m.stage == stage.name)
            // Not live yet, or switched by a pass that died before activate + health passed.
            .filter(|m| {
                m.workable().is_some_and(|v| {
                    v.current.as_deref() != Some(desired) || v.pending.as_deref() == Some(desired)
                })
            })
            .collect();
        if pending.is_empty() {
            continue;
        }
        let size = if site.rollout.batch == 0 {
            pending.len()
        } else {
            site.rollout.batch.min(pending.len())
        };
        let batch: Vec<String> = pending[..size].iter().map(|m| m.host.to_string()).collect();
        let pause = if pass
            .switched
            .get(&stage.name)
            .is_some_and(|s| !s.is_empty())
        {
            site.rollout.pause
        } else {
            Duration::ZERO
        };
        let cleanup = batch
            .iter()
            .filter_map(|host| {
                let view = members.iter().find(|m| m.host == host)?.view()?;
                // After the switch, `current` is the desired release and the old one is previous.
                let after = HostView {
                    previous: match &view.current {
                        // Re-verifying: the switch changes nothing, previous stays.
                        Some(current) if current == desired => view.previous.clone(),
                        current => current.clone().or_else(|| view.previous.clone()),
                    },
                    current: Some(desired.to_string()),
                    ..view.clone()
                };
                let remove = releases_to_remove(&after, desired, site.keep_releases);
                (!remove.is_empty()).then(|| (host.clone(), remove))
            })
            .collect();
        return Plan::progress(vec![Step::Switch {
            stage: stage.name.clone(),
            hosts: batch,
            pause,
            cleanup,
        }]);
    }

    // 5. Clean up hosts that are converged but keep too much.
    let cleanups: Vec<Step> = members
        .iter()
        .filter_map(|m| {
            let remove = releases_to_remove(m.workable()?, desired, site.keep_releases);
            (!remove.is_empty()).then(|| Step::Cleanup {
                host: m.host.to_string(),
                remove,
            })
        })
        .collect();
    if !cleanups.is_empty() {
        return Plan::progress(dedup_hosts(cleanups));
    }

    let skipped: Vec<&Member> = members.iter().filter(|m| m.workable().is_none()).collect();
    if skipped.is_empty() {
        Plan::done(Outcome::Converged)
    } else {
        Plan::done(Outcome::Degraded {
            skipped: host_names(&skipped),
        })
    }
}

/// Which release dirs to delete on a host: half builds (except the desired one, which its
/// build replaces), and complete releases older than the newest `keep` by build time.
/// Never current, the recorded previous, or the desired release.
pub fn releases_to_remove(view: &HostView, desired: &str, keep: usize) -> Vec<String> {
    let protected = |id: &str| {
        id == desired || view.current.as_deref() == Some(id) || view.previous.as_deref() == Some(id)
    };
    let mut remove: Vec<String> = view
        .half_built
        .iter()
        .filter(|id| !protected(id))
        .cloned()
        .collect();
    let mut complete: Vec<(&u64, &String)> =
        view.complete.iter().map(|(id, at)| (at, id)).collect();
    // Newest first by build time; ties broken by name so the choice is stable.
    complete.sort_by(|a, b| b.cmp(a));
    for (_, id) in complete.into_iter().skip(keep) {
        if !protected(id) {
            remove.push(id.clone());
        }
    }
    remove.sort();
    remove
}

fn host_names(members: &[&Member]) -> Vec<String> {
    let mut names: Vec<String> = members.iter().map(|m| m.host.to_string()).collect();
    names.sort();
    names.dedup();
    names
}

/// A host listed in two stages is validated away, but keep steps unique regardless.
fn dedup_hosts(steps: Vec<Step>) -> Vec<Step> {
    let mut seen = BTreeSet::new();
    steps
        .into_iter()
        .filter(|s| match s {
            Step::Build { host } | Step::Cleanup { host, .. } => seen.insert(host.clone()),
            _ => true,
        })
        .collect()
}

/// Every step a pass would take if each one succeeded, and where it would end: what
/// `convoy plan` prints. Pure: applies the steps to a copy of the observed state.
pub fn preview(site: &DesiredSite, observed: &Observed, pass: &PassState) -> (Vec<Step>, Outcome) {
    let mut observed = observed.clone();
    let mut pass = pass.clone();
    let mut all = vec![];
    // Each phase changes the state, so a pass needs at most a few rounds per host.
    for _ in 0..4 * observed.len() + 8 {
        let next = plan(site, &observed, &pass);
        if next.steps.is_empty() {
            return (all, next.outcome);
        }
        for step in &next.steps {
            assume_success(site, &mut observed, &mut pass, step);
        }
        all.extend(next.steps);
    }
    (all, Outcome::Progressing)
}

/// The state after `step` succeeded everywhere.
fn assume_success(site: &DesiredSite, observed: &mut Observed, pass: &mut PassState, step: &Step) {
    fn view<'o>(observed: &'o mut Observed, host: &str) -> Option<&'o mut HostView> {
        match observed.get_mut(host) {
            Some(Reach::Reachable(view)) => Some(view),
            _ => None,
        }
    }
    let desired = &site.release;
    match step {
        Step::Build { host } => {
            if let Some(v) = view(observed, host) {
                v.half_built.remove(desired);
                v.complete.insert(desired.clone(), u64::MAX);
            }
        }
        Step::Once { stage, host } => {
            if let Some(v) = view(observed, host) {
                v.once
                    .insert(desired.clone(), OnceState::Done { status: 0 });
            }
            pass.once_done.insert(stage.clone());
        }
        Step::Switch {
            stage,
            hosts,
            cleanup,
            ..
        } => {
            for host in hosts {
                if let Some(v) = view(observed, host) {
                    v.pending = None;
                    if v.current.as_ref() != Some(desired) {
                        v.previous = v.current.replace(desired.clone()).or(v.previous.take());
                    }
                    for id in cleanup.get(host).into_iter().flatten() {
                        v.complete.remove(id);
                        v.half_built.remove(id);
                    }
                }
                pass.switched
                    .entry(stage.clone())
                    .or_default()
                    .push(host.clone());
            }
        }
        Step::Rollback { hosts, .. } => {
            for host in hosts {
                if let Some(v) = view(observed, host) {
                    v.current = v.previous.clone();
                }
            }
            pass.rolled_back = true;
        }
        Step::Cleanup { host, remove } => {
            if let Some(v) = view(observed, host) {
                for id in remove {
                    v.complete.remove(id);
                    v.half_built.remove(id);
                }
            }
        }
    }
}
