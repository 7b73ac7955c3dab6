//! Rules that stop a pass before any new work: a changed host key, a suspended or held
//! site, and a failure earlier in this pass. A failed switch, activate or health check first
//! rolls back every host of its stage switched in this attempt (the failing ones included),
//! as one step, then fails the site.

use super::{Member, Outcome, PassState, Plan, Reach, Step};
use crate::desired::DesiredSite;

pub(super) fn plan(site: &DesiredSite, members: &[Member], pass: &PassState) -> Option<Plan> {
    // First: whatever else went wrong, hosts switched in this attempt must not stay on a
    // release whose stage failed.
    if let Some(rollback) = rollback(pass) {
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
    if let Some((host, error)) = pass.build_failed.iter().next() {
        return Some(failed(format!("build failed: {}", error.headline()), host));
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
    pass.health_failed.as_ref().map(|health| {
        failed(
            format!("health check failed: {}", health.error.headline()),
            &health.host,
        )
    })
}

/// The rollback of the failed stage's switched hosts, once.
fn rollback(pass: &PassState) -> Option<Plan> {
    let health = pass.health_failed.as_ref().filter(|_| !pass.rolled_back)?;
    let hosts = pass.switched.get(&health.stage).filter(|h| !h.is_empty())?;
    Some(Plan::progress(vec![Step::Rollback {
        stage: health.stage.clone(),
        hosts: hosts.clone(),
    }]))
}

fn failed(reason: String, host: &str) -> Plan {
    Plan::done(Outcome::Failed {
        reason,
        host: Some(host.to_string()),
    })
}
