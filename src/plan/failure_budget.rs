//! `rollout.maxFailed`: how many hosts of an optional stage may fail their build or health
//! check (switch and activate included) in one pass while the rollout goes on. Within the
//! budget a failed host keeps its previous release (one that went live is rolled back on
//! its own), the rest of the stage and the later stages go on, and the site ends Degraded
//! naming it. Over the budget, and in a required stage whatever the budget, a failure stops
//! the pass as it always did: a build failure before anything switches anywhere, a health
//! failure after every host of its stage switched in this attempt is rolled back (earlier
//! stages keep the new release).
//!
//! Only this pass's failures count: the next pass tries the failed hosts afresh. Unreachable
//! hosts are not failures (an optional one is skipped, see `builds`). A percentage is of the
//! stage's hosts, rounded down: 10% of 5 hosts allows none, so a budget never tolerates
//! more than it says. This file decides; `fold` only records which hosts failed.

use std::collections::BTreeSet;

use super::{HealthFailure, Member, PassState, Plan, Step, StepError};
use crate::desired::{DesiredSite, DesiredStage, MaxFailed};

/// How many of a stage's `hosts` may fail: the count as written (never more than the stage
/// has), or the percentage rounded down.
pub fn allowed(max: MaxFailed, hosts: usize) -> usize {
    match max {
        MaxFailed::Count(n) => (n as usize).min(hosts),
        MaxFailed::Percent(p) => hosts * p.min(100) as usize / 100,
    }
}

/// How many failed hosts `stage` tolerates: none in a required stage.
fn budget(site: &DesiredSite, stage: &DesiredStage) -> usize {
    if stage.optional {
        allowed(site.rollout.max_failed, stage.hosts.len())
    } else {
        0
    }
}

/// Every host that failed its build, switch, activate or health check in this pass: no
/// more work on it this pass (its stage goes on without it, or the pass stops).
pub(super) fn failed_hosts(pass: &PassState) -> BTreeSet<&str> {
    let live = pass.live_failed.values().chain(&pass.health_failed);
    pass.build_failed
        .keys()
        .map(String::as_str)
        .chain(live.map(|f| f.host.as_str()))
        .collect()
}

fn failed_in<'p>(stage: &DesiredStage, pass: &'p PassState) -> Vec<&'p str> {
    failed_hosts(pass)
        .into_iter()
        .filter(|h| stage.hosts.iter().any(|s| s == h))
        .collect()
}

/// The stage's failures so far leave the rollout going.
fn tolerated(site: &DesiredSite, stage: &DesiredStage, pass: &PassState) -> bool {
    failed_in(stage, pass).len() <= budget(site, stage)
}

fn stage_of<'s>(site: &'s DesiredSite, host: &str) -> Option<&'s DesiredStage> {
    site.stages
        .iter()
        .find(|s| s.hosts.iter().any(|h| h == host))
}

/// The rollback a health failure calls for, once per host: the failed hosts that went live
/// when their stage tolerates them, else every host of the stage switched in this attempt.
pub(super) fn rollback(site: &DesiredSite, pass: &PassState) -> Option<Plan> {
    site.stages.iter().find_map(|stage| {
        let live_failed: Vec<&str> = pass
            .live_failed
            .values()
            .chain(&pass.health_failed)
            .filter(|f| f.stage == stage.name)
            .map(|f| f.host.as_str())
            .collect();
        if live_failed.is_empty() {
            return None;
        }
        let whole_stage = !tolerated(site, stage, pass);
        let hosts: Vec<String> = pass
            .switched
            .get(&stage.name)?
            .iter()
            .filter(|h| whole_stage || live_failed.contains(&h.as_str()))
            .filter(|h| !pass.rolled_back.contains(*h))
            .cloned()
            .collect();
        (!hosts.is_empty()).then(|| {
            Plan::progress(vec![Step::Rollback {
                stage: stage.name.clone(),
                hosts,
            }])
        })
    })
}

/// The first build failure the budget does not cover, with what the budget says about it.
pub(super) fn stopping_build_failure<'p>(
    site: &DesiredSite,
    pass: &'p PassState,
) -> Option<(&'p str, &'p StepError, String)> {
    pass.build_failed.iter().find_map(|(host, error)| {
        let stage = stage_of(site, host)?;
        (!tolerated(site, stage, pass)).then(|| (host.as_str(), error, why_stop(site, stage, pass)))
    })
}

/// The first health failure the budget does not cover (the one `fold` named first, if it
/// is), with what the budget says about it.
pub(super) fn stopping_health_failure<'p>(
    site: &DesiredSite,
    pass: &'p PassState,
) -> Option<(&'p HealthFailure, String)> {
    let mut failures = pass.health_failed.iter().chain(pass.live_failed.values());
    failures.find_map(|failure| {
        let stage = site.stages.iter().find(|s| s.name == failure.stage)?;
        (!tolerated(site, stage, pass)).then(|| (failure, why_stop(site, stage, pass)))
    })
}

/// A host the budget tolerated whose rollback did not bring it back: it still runs the
/// release that failed on it, so it did not keep its previous release, and the budget
/// cannot cover it. (Beyond the budget the site fails anyway.)
pub(super) fn stuck_on_failed_release<'m>(
    site: &DesiredSite,
    members: &[Member<'m>],
    pass: &PassState,
) -> Option<&'m str> {
    let within = |stage: &str| {
        let stage = site.stages.iter().find(|s| s.name == stage);
        stage.is_some_and(|stage| tolerated(site, stage, pass))
    };
    members
        .iter()
        .filter(|m| m.failed && pass.rolled_back.contains(m.host) && within(m.stage))
        .find(|m| {
            m.view()
                .is_some_and(|v| v.current.as_deref() == Some(&site.release))
        })
        .map(|m| m.host)
}

/// What the budget adds to a Failed message: nothing when no budget was set.
fn why_stop(site: &DesiredSite, stage: &DesiredStage, pass: &PassState) -> String {
    let max = site.rollout.max_failed;
    if max == MaxFailed::default() {
        return String::new();
    }
    if !stage.optional {
        return format!(
            "; stage `{}` is required: rollout.maxFailed applies to optional stages only",
            stage.name
        );
    }
    format!(
        "; {} of {} hosts of stage `{}` failed, rollout.maxFailed {max} allows {}",
        failed_in(stage, pass).len(),
        stage.hosts.len(),
        stage.name,
        budget(site, stage)
    )
}

/// The budget of each stage in words, for `convoy plan`: empty when no budget was set.
pub fn describe(site: &DesiredSite) -> Vec<String> {
    let max = site.rollout.max_failed;
    if max == MaxFailed::default() {
        return vec![];
    }
    site.stages
        .iter()
        .map(|stage| match stage.optional {
            true => format!(
                "stage {}: up to {} of {} hosts may fail (rollout.maxFailed {max})",
                stage.name,
                budget(site, stage),
                stage.hosts.len()
            ),
            false => format!("stage {}: required, every host must succeed", stage.name),
        })
        .collect()
}
