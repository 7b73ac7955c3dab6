//! Build everywhere the desired release is not complete, then the two-phase gate: nothing
//! goes further until every host of every required stage is reachable, free, and built.

use super::{Member, Outcome, Plan, Step, dedup_hosts, host_names};
use crate::desired::DesiredSite;

pub(super) fn plan(site: &DesiredSite, members: &[Member]) -> Option<Plan> {
    let desired = site.release.as_str();
    let builds: Vec<Step> = members
        .iter()
        .filter(|m| {
            m.targeted
                && m.workable()
                    .is_some_and(|v| !v.complete.contains_key(desired))
        })
        .map(|m| Step::Build {
            host: m.host.to_string(),
        })
        .collect();
    if !builds.is_empty() {
        return Some(Plan::progress(dedup_hosts(builds)));
    }
    gate(members).or_else(|| super::targeting::unbuilt(site, members))
}

/// Every host of every required stage must be reachable (and so, built).
fn gate(members: &[Member]) -> Option<Plan> {
    let blocked: Vec<&Member> = members
        .iter()
        .filter(|m| !m.optional && m.workable().is_none())
        .collect();
    if blocked.is_empty() {
        return None;
    }
    let locked = blocked
        .iter()
        .find_map(|m| m.view().and_then(|v| v.locked_by.clone()));
    let reason = match locked {
        Some(holder) => format!("locked by another controller ({holder})"),
        None => {
            "required host unreachable; nothing switches until every required host has built".into()
        }
    };
    Some(Plan::done(Outcome::Blocked {
        hosts: host_names(&blocked),
        reason,
    }))
}
