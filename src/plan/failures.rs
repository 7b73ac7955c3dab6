//! Rules that stop a pass before any new work: a changed host key, a suspended or held
//! site, and a failure earlier in this pass. A failed switch, activate or health check first
//! rolls back every host of its stage switched in this attempt (the failing ones included),
//! as one step, then fails the site. Which failures stop the pass, and what a health
//! failure rolls back, is `rollout.maxFailed`'s to say ([`failure_budget`]).

use super::{Member, Outcome, PassState, Plan, Reach, failure_budget};
use crate::desired::DesiredSite;

pub(super) fn plan(site: &DesiredSite, members: &[Member], pass: &PassState) -> Option<Plan> {
    // First: whatever else went wrong, hosts switched in this attempt must not stay on a
    // release whose stage failed.
    if let Some(rollback) = failure_budget::rollback(site, pass) {
        return Some(rollback);
    }
    // A changed host key may be an attacker: the whole site stops, even for an optional host.
    if let Some((m, reason)) = members.iter().find_map(|m| match m.reach {
        Some(Reach::Refused { reason }) => Some((m, reason)),
        _ => None,
    }) {
        return Some(failed(reason.clone(), m.host));
    }
    // After the key check: a suspended site must not hide a changed host key.
    if site.suspend {
        return Some(Plan::done(Outcome::Suspended));
    }
    if pass.attempts >= site.rollout.failure_retries {
        return Some(Plan::done(Outcome::Failed {
            reason: format!(
                "release `{}` is held after {} failed attempts; change the desired state or run `convoy retry {}`",
                site.release, pass.attempts, site.name
            ),
            host: None,
        }));
    }
    if let Some((host, error, budget)) = failure_budget::stopping_build_failure(site, pass) {
        let reason = format!("build failed: {}{budget}", error.headline());
        return Some(failed(reason, host));
    }
    if let Some((host, error)) = pass.host_errors.iter().next() {
        return Some(failed(format!("host error: {}", error.headline()), host));
    }
    if let Some(once) = &pass.once_failed {
        return Some(failed(
            format!("`once` commands of stage `{}` failed", once.stage),
            &once.host,
        ));
    }
    if let Some(host) = failure_budget::stuck_on_failed_release(site, members, pass) {
        let error = pass
            .errors
            .get(host)
            .map(|e| e.headline())
            .unwrap_or_default();
        let reason =
            format!("{error}; the host still runs the release that failed its health check");
        return Some(failed(reason, host));
    }
    failure_budget::stopping_health_failure(site, pass).map(|(health, budget)| {
        failed(
            format!("health check failed: {}{budget}", health.error.headline()),
            &health.host,
        )
    })
}

fn failed(reason: String, host: &str) -> Plan {
    Plan::done(Outcome::Failed {
        reason,
        host: Some(host.to_string()),
    })
}
