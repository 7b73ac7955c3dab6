//! The deployment rules, as pure functions: (desired site, what each host reported, what
//! this pass and earlier runs did) → the next steps, and (a step, what the hosts answered)
//! → the new state. No I/O, no clock, no async: every rule can be read and tested without a
//! network. The executor runs the steps, hands the answers to [`fold`], and asks again
//! until no step is left.
//!
//! One call plans one phase: the rollback of a failed stage (or host), or a stop on a
//! failure ([`failures`]; which failures an optional stage tolerates: [`failure_budget`]);
//! all builds, then the gate ([`builds`]); then `once` ([`once`]); then one batch of one
//! stage ([`switch`]), both held while a site this one depends on is not Converged
//! ([`depends`]); then clean-up ([`cleanup`]). Re-planning after each phase keeps every
//! decision on fresh facts while costing no extra round trip.

mod builds;
mod cleanup;
mod depends;
mod failure_budget;
#[cfg(test)]
mod failure_budget_tests;
mod failures;
mod fold;
#[cfg(test)]
mod fold_tests;
mod model;
mod once;
mod preview;
mod switch;
mod targeting;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use crate::desired::DesiredSite;

pub use cleanup::releases_to_remove;
pub use depends::{Dependency, order, waiting_message};
pub use failure_budget::describe as describe_failure_budget;
pub use fold::{fold, fold_lease, fold_release, fold_unsent, observe};
pub use model::*;
pub use once::once_interrupted_reason;
pub use preview::{preview, reports_of_success};
pub use targeting::targeted;

/// Decides the next steps for one site.
pub fn plan(site: &DesiredSite, observed: &Observed, pass: &PassState) -> Plan {
    let members = members(site, observed, pass);
    failures::plan(site, &members, pass)
        .or_else(|| builds::plan(site, &members))
        .or_else(|| {
            let next = targeting::once_follows(&members, once::plan(site, &members, pass))
                .or_else(|| switch::plan(site, &members, pass));
            depends::hold(next, &pass.dependencies)
        })
        .or_else(|| cleanup::plan(site, &members))
        .unwrap_or_else(|| settled(&members))
}

/// Nothing left to do: converged, or converged but for optional hosts that were unreachable
/// or failed within `rollout.maxFailed`. Only the hosts this run may change count (`--host`:
/// the exit code is theirs).
fn settled(members: &[Member]) -> Plan {
    let skipped: Vec<&Member> = members
        .iter()
        .filter(|m| m.targeted && m.free().is_none())
        .collect();
    let failed: Vec<&Member> = members
        .iter()
        .filter(|m| m.targeted && m.failed && m.free().is_some())
        .collect();
    if skipped.is_empty() && failed.is_empty() {
        Plan::done(Outcome::Converged)
    } else {
        Plan::done(Outcome::Degraded {
            skipped: host_names(&skipped),
            failed: host_names(&failed),
        })
    }
}

/// A host of the site with the stage it belongs to.
struct Member<'a> {
    host: &'a str,
    stage: &'a str,
    optional: bool,
    reach: Option<&'a Reach>,
    /// This run may change the host (`--host`; every host without it).
    targeted: bool,
    /// Failed its build or health check in this pass ([`failure_budget`]): nothing more is
    /// done on it until the next pass.
    failed: bool,
}

impl Member<'_> {
    fn view(&self) -> Option<&HostView> {
        match self.reach {
            Some(Reach::Reachable(view)) => Some(view),
            _ => None,
        }
    }

    /// Reachable and not held by another controller: what it holds is known.
    fn free(&self) -> Option<&HostView> {
        self.view().filter(|v| v.locked_by.is_none())
    }

    /// Free and not failed in this pass: convoy may act on it.
    fn workable(&self) -> Option<&HostView> {
        self.free().filter(|_| !self.failed)
    }
}

fn members<'a>(site: &'a DesiredSite, observed: &'a Observed, pass: &PassState) -> Vec<Member<'a>> {
    let failed = failure_budget::failed_hosts(pass);
    site.stages
        .iter()
        .flat_map(|stage| {
            let failed = &failed;
            stage.hosts.iter().map(move |host| Member {
                host,
                stage: &stage.name,
                optional: stage.optional,
                reach: observed.get(host),
                targeted: targeted(pass, host),
                failed: failed.contains(host.as_str()),
            })
        })
        .collect()
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
