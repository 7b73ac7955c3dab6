//! `once`: exactly once per release and stage, before any switch, on one host of the stage.
//! The host records the run itself; a record anywhere in the stage is proof, and a host
//! that cannot be seen might hold one, so the rule never risks a second run.

use super::{Member, OnceState, Outcome, PassState, Plan, Step, host_names};
use crate::desired::{DesiredSite, DesiredStage};

/// The reason a site stops at an interrupted `once` record: the controller recognises it
/// (exactly) to add when and where the commands started.
pub fn once_interrupted_reason(stage: &str) -> String {
    format!(
        "`once` commands of stage `{stage}` were interrupted: they were started but their end was never recorded"
    )
}

pub(super) fn plan(site: &DesiredSite, members: &[Member], pass: &PassState) -> Option<Plan> {
    site.stages
        .iter()
        .filter(|s| !s.once.is_empty() && !pass.once_done.contains(&s.name))
        .find_map(|stage| stage_plan(&site.release, stage, members))
}

fn stage_plan(desired: &str, stage: &DesiredStage, members: &[Member]) -> Option<Plan> {
    let stage_members: Vec<&Member> = members.iter().filter(|m| m.stage == stage.name).collect();
    let records: Vec<(&str, OnceState)> = stage_members
        .iter()
        .filter_map(|m| {
            m.view()
                .and_then(|v| v.once.get(desired))
                .map(|s| (m.host, *s))
        })
        .collect();
    if let Some(ended) = ended(&stage.name, &records) {
        return ended;
    }
    if let Some((host, _)) = records.first() {
        return Some(wait_for_run(&stage.name, host, &stage_members));
    }
    // Unreachable, or held by another controller (which may be starting it right now).
    let unseen: Vec<&Member> = stage_members
        .iter()
        .copied()
        .filter(|m| m.free().is_none())
        .collect();
    if !unseen.is_empty() {
        return Some(Plan::done(Outcome::Blocked {
            hosts: host_names(&unseen),
            reason: format!(
                "cannot prove the `once` commands of stage `{}` have not run",
                stage.name
            ),
        }));
    }
    stage_members
        .iter()
        .find(|m| m.workable().is_some())
        .map(|first| run_on(&stage.name, first.host))
}

/// A record that ended decides: success passes (`None` inside), anything else stops.
fn ended(stage: &str, records: &[(&str, OnceState)]) -> Option<Option<Plan>> {
    let (host, state) = records
        .iter()
        .find(|(_, s)| matches!(s, OnceState::Done { .. } | OnceState::Interrupted))?;
    let reason = match state {
        OnceState::Done { status: 0 } => return Some(None),
        OnceState::Interrupted => once_interrupted_reason(stage),
        _ => format!("`once` commands of stage `{stage}` failed on an earlier run"),
    };
    Some(Some(Plan::done(Outcome::Failed {
        reason,
        host: Some(host.to_string()),
    })))
}

/// A run under way: wait for it, unless another controller holds that host.
fn wait_for_run(stage: &str, host: &str, stage_members: &[&Member]) -> Plan {
    let workable = stage_members
        .iter()
        .any(|m| m.host == host && m.workable().is_some());
    if !workable {
        return Plan::done(Outcome::Blocked {
            hosts: vec![host.to_string()],
            reason: format!(
                "the `once` commands of stage `{stage}` are running under another controller"
            ),
        });
    }
    run_on(stage, host)
}

fn run_on(stage: &str, host: &str) -> Plan {
    Plan::progress(vec![Step::Once {
        stage: stage.to_string(),
        host: host.to_string(),
    }])
}
