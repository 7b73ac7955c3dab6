//! Switch stage by stage, in stage order, batch by batch, with the pause between batches
//! of a stage. A batch carries the clean-up its hosts will need once on the new release,
//! so it costs no round trip of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{HostView, Member, PassState, Plan, Step, releases_to_remove};
use crate::desired::{DesiredSite, DesiredStage};

pub(super) fn plan(site: &DesiredSite, members: &[Member], pass: &PassState) -> Option<Plan> {
    site.stages
        .iter()
        .find_map(|stage| batch(site, stage, members, pass))
}

fn batch(
    site: &DesiredSite,
    stage: &DesiredStage,
    members: &[Member],
    pass: &PassState,
) -> Option<Plan> {
    let desired = site.release.as_str();
    let pending: Vec<&Member> = members
        .iter()
        .filter(|m| m.stage == stage.name && to_switch(m, desired))
        .collect();
    if pending.is_empty() {
        return None;
    }
    // `--host`: only targeted hosts switch, and never ahead of an earlier stage.
    let (pending, others): (Vec<&Member>, Vec<&Member>) =
        pending.into_iter().partition(|m| m.targeted);
    if pending.is_empty() {
        return super::targeting::stage_order(site, stage, &others, members);
    }
    if let Some(wait) = super::targeting::follows_the_fleet(site, stage, &pending, members) {
        return Some(wait);
    }
    let size = match site.rollout.batch {
        0 => pending.len(),
        batch => batch.min(pending.len()),
    };
    let hosts: Vec<String> = pending[..size].iter().map(|m| m.host.to_string()).collect();
    let started = pass
        .switched
        .get(&stage.name)
        .is_some_and(|s| !s.is_empty());
    let pause = if started {
        site.rollout.pause
    } else {
        Duration::ZERO
    };
    let cleanup = hosts
        .iter()
        .filter_map(|host| {
            let view = members.iter().find(|m| m.host == host)?.view()?;
            let remove =
                releases_to_remove(&after_switch(view, desired), desired, site.keep_releases);
            (!remove.is_empty()).then(|| (host.clone(), remove))
        })
        .collect::<BTreeMap<_, _>>();
    Some(Plan::progress(vec![Step::Switch {
        stage: stage.name.clone(),
        hosts,
        pause,
        cleanup,
    }]))
}

/// Workable and not live yet, or switched by a pass that died before activate + health passed.
pub(super) fn to_switch(m: &Member, desired: &str) -> bool {
    m.workable().is_some_and(|v| {
        v.current.as_deref() != Some(desired) || v.pending.as_deref() == Some(desired)
    })
}

/// A host's view once `current` points at `desired`: the old current becomes previous.
fn after_switch(view: &HostView, desired: &str) -> HostView {
    HostView {
        previous: match &view.current {
            // Re-verifying: the switch changes nothing, previous stays.
            Some(current) if current == desired => view.previous.clone(),
            current => current.clone().or_else(|| view.previous.clone()),
        },
        current: Some(desired.to_string()),
        ..view.clone()
    }
}
