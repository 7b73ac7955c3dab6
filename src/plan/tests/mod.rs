//! Rules one by one; invariants over random fleets (proptest) in `invariants`, whole passes
//! simulated against an in-memory model of the hosts in `sim`.

mod invariants;
mod sim;

use std::time::Duration;

use super::*;
use crate::desired::{DesiredSite, DesiredStage, FetchSpec, MaxFailed, RolloutSpec};

/// (stage name, optional, hosts, has once)
pub(super) type StageDef<'a> = (&'a str, bool, &'a [&'a str], bool);

pub(super) fn site(release: &str, stages: &[StageDef]) -> DesiredSite {
    DesiredSite {
        name: "app".into(),
        release: release.into(),
        revision: "v1".into(),
        path: "/srv/app".into(),
        stages: stages
            .iter()
            .map(|(name, optional, hosts, once)| DesiredStage {
                name: name.to_string(),
                group: name.to_string(),
                optional: *optional,
                once: if *once {
                    vec!["migrate".into()]
                } else {
                    vec![]
                },
                activate: vec![],
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
            })
            .collect(),
        fetch: FetchSpec::Git {
            repository: "git@x:y.git".into(),
        },
        build: vec![],
        shared: vec![],
        env: vec![],
        health: None,
        rollout: RolloutSpec {
            max_parallel: 10,
            batch: 0,
            pause: Duration::from_secs(5),
            failure_retries: 3,
            max_failed: MaxFailed::default(),
        },
        keep_releases: 3,
        suspend: false,
        depends_on: vec![],
    }
}

pub(super) const TWO_STAGES: &[StageDef] = &[
    ("scheduler", false, &["s1"], true),
    ("frontend", true, &["w1", "w2"], false),
];

pub(super) fn live(release: &str, built: &[&str]) -> Reach {
    Reach::Reachable(HostView {
        current: Some(release.into()),
        complete: built
            .iter()
            .enumerate()
            .map(|(i, r)| (r.to_string(), i as u64))
            .collect(),
        ..HostView::default()
    })
}

fn fresh() -> Reach {
    Reach::Reachable(HostView::default())
}

fn down() -> Reach {
    Reach::Unreachable {
        reason: "connection refused".into(),
    }
}

pub(super) fn observed(hosts: &[(&str, Reach)]) -> Observed {
    hosts
        .iter()
        .map(|(h, r)| (h.to_string(), r.clone()))
        .collect()
}

pub(super) fn view_mut<'a>(o: &'a mut Observed, host: &str) -> &'a mut HostView {
    match o.get_mut(host) {
        Some(Reach::Reachable(v)) => v,
        _ => panic!("{host} not reachable"),
    }
}

/// A scheduler stage of two hosts with `once`, both built r1 and live on r0.
fn two_schedulers_built() -> (DesiredSite, Observed) {
    let s = site("r1", &[("scheduler", false, &["s1", "s2"], true)]);
    let o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("s2", live("r0", &["r0", "r1"])),
    ]);
    (s, o)
}

// ------------------------------------------------------------------ rules

#[test]
fn fresh_fleet_builds_everywhere_first() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[("s1", fresh()), ("w1", fresh()), ("w2", fresh())]);
    let p = plan(&s, &o, &PassState::default());
    assert_eq!(
        p.steps,
        vec![
            Step::Build { host: "s1".into() },
            Step::Build { host: "w1".into() },
            Step::Build { host: "w2".into() }
        ]
    );
    assert_eq!(p.outcome, Outcome::Progressing);
}

#[test]
fn once_runs_on_the_first_host_of_its_stage_after_all_builds() {
    let s = site(
        "r1",
        &[
            ("scheduler", false, &["s1", "s2"], true),
            ("frontend", true, &["w1"], false),
        ],
    );
    let o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("s2", live("r0", &["r0", "r1"])),
        ("w1", live("r0", &["r0", "r1"])),
    ]);
    let p = plan(&s, &o, &PassState::default());
    assert_eq!(
        p.steps,
        vec![Step::Once {
            stage: "scheduler".into(),
            host: "s1".into()
        }]
    );
}

#[test]
fn once_already_recorded_on_any_host_is_not_repeated() {
    let (s, mut o) = two_schedulers_built();
    view_mut(&mut o, "s2")
        .once
        .insert("r1".into(), OnceState::Done { status: 0 });
    let p = plan(&s, &o, &PassState::default());
    assert!(matches!(&p.steps[..], [Step::Switch { .. }]), "{p:?}");
}

#[test]
fn a_running_once_is_waited_for_on_its_host() {
    let (s, mut o) = two_schedulers_built();
    view_mut(&mut o, "s2")
        .once
        .insert("r1".into(), OnceState::Running);
    let p = plan(&s, &o, &PassState::default());
    assert_eq!(
        p.steps,
        vec![Step::Once {
            stage: "scheduler".into(),
            host: "s2".into()
        }]
    );
}

#[test]
fn a_failed_once_record_fails_the_site() {
    let s = site("r1", &[("scheduler", false, &["s1"], true)]);
    let mut o = observed(&[("s1", live("r0", &["r0", "r1"]))]);
    view_mut(&mut o, "s1")
        .once
        .insert("r1".into(), OnceState::Done { status: 2 });
    assert!(matches!(
        plan(&s, &o, &PassState::default()).outcome,
        Outcome::Failed { .. }
    ));
}

#[test]
fn an_interrupted_once_record_is_reported_as_interrupted_not_failed() {
    let s = site("r1", &[("scheduler", false, &["s1"], true)]);
    let mut o = observed(&[("s1", live("r0", &["r0", "r1"]))]);
    view_mut(&mut o, "s1")
        .once
        .insert("r1".into(), OnceState::Interrupted);
    let p = plan(&s, &o, &PassState::default());
    assert!(p.steps.is_empty(), "never run again by itself: {p:?}");
    match p.outcome {
        Outcome::Failed { reason, host } => {
            assert_eq!(reason, super::once_interrupted_reason("scheduler"));
            assert!(reason.contains("interrupted") && !reason.contains("failed"));
            assert_eq!(host.as_deref(), Some("s1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn once_in_an_optional_stage_waits_when_a_host_that_may_hold_the_record_is_offline() {
    let s = site("r1", &[("web", true, &["w1", "w2"], true)]);
    let o = observed(&[("w1", down()), ("w2", live("r0", &["r0", "r1"]))]);
    let p = plan(&s, &o, &PassState::default());
    assert!(matches!(p.outcome, Outcome::Blocked { .. }), "{p:?}");
    assert!(p.steps.is_empty());
}

#[test]
fn stages_switch_in_order_whole_stage_when_batch_is_zero() {
    let s = site("r1", TWO_STAGES);
    let pass = PassState {
        once_done: ["scheduler".to_string()].into(),
        ..PassState::default()
    };
    let mut o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
    ]);
    let p = plan(&s, &o, &pass);
    assert!(
        matches!(&p.steps[..], [Step::Switch { stage, hosts, .. }] if stage == "scheduler" && hosts == &["s1"]),
        "{p:?}"
    );
    view_mut(&mut o, "s1").current = Some("r1".into());
    let p = plan(&s, &o, &pass);
    assert!(
        matches!(&p.steps[..], [Step::Switch { stage, hosts, .. }] if stage == "frontend" && hosts.len() == 2),
        "{p:?}"
    );
}

#[test]
fn batches_and_pause_between_them() {
    let mut s = site("r1", &[("web", false, &["w1", "w2", "w3"], false)]);
    s.rollout.batch = 2;
    let mut o = observed(&[
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
        ("w3", live("r0", &["r0", "r1"])),
    ]);
    let mut pass = PassState::default();
    let p = plan(&s, &o, &pass);
    assert!(
        matches!(&p.steps[..], [Step::Switch { hosts, pause, .. }] if hosts == &["w1", "w2"] && pause.is_zero()),
        "{p:?}"
    );
    for h in ["w1", "w2"] {
        view_mut(&mut o, h).current = Some("r1".into());
    }
    pass.switched
        .insert("web".into(), vec!["w1".into(), "w2".into()]);
    let p = plan(&s, &o, &pass);
    assert!(
        matches!(&p.steps[..], [Step::Switch { hosts, pause, .. }] if hosts == &["w3"] && *pause == Duration::from_secs(5)),
        "{p:?}"
    );
}

#[test]
fn unreachable_required_host_blocks_every_switch_but_not_builds() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[("s1", down()), ("w1", fresh()), ("w2", fresh())]);
    let p = plan(&s, &o, &PassState::default());
    assert_eq!(
        p.steps,
        vec![
            Step::Build { host: "w1".into() },
            Step::Build { host: "w2".into() }
        ]
    );
    let o = observed(&[
        ("s1", down()),
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
    ]);
    let p = plan(&s, &o, &PassState::default());
    assert!(
        matches!(&p.outcome, Outcome::Blocked { hosts, .. } if hosts == &["s1"]),
        "{p:?}"
    );
    assert!(p.steps.is_empty());
}

#[test]
fn unreachable_optional_host_is_skipped_and_the_site_is_degraded() {
    let s = site("r1", TWO_STAGES);
    let pass = PassState {
        once_done: ["scheduler".to_string()].into(),
        ..PassState::default()
    };
    let o = observed(&[
        ("s1", live("r1", &["r0", "r1"])),
        ("w1", down()),
        ("w2", live("r1", &["r0", "r1"])),
    ]);
    assert_eq!(
        plan(&s, &o, &pass).outcome,
        Outcome::Degraded {
            skipped: vec!["w1".into()],
            failed: vec![],
        }
    );
}

#[test]
fn a_build_failure_anywhere_stops_every_switch() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0"])),
    ]);
    let pass = PassState {
        build_failed: [("w2".to_string(), StepError::Local("npm ci: exit 1".into()))].into(),
        ..PassState::default()
    };
    let p = plan(&s, &o, &pass);
    assert!(p.steps.is_empty());
    assert!(matches!(&p.outcome, Outcome::Failed { host: Some(h), .. } if h == "w2"));
}

#[test]
fn a_health_failure_rolls_back_every_switched_host_of_the_stage_then_fails() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[
        ("s1", live("r1", &["r0", "r1"])),
        ("w1", live("r1", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
    ]);
    let mut pass = PassState {
        switched: [(
            "frontend".to_string(),
            vec!["w1".to_string(), "w2".to_string()],
        )]
        .into(),
        health_failed: Some(HealthFailure {
            stage: "frontend".into(),
            host: "w2".into(),
            error: StepError::Local("curl: 500".into()),
        }),
        ..PassState::default()
    };
    let p = plan(&s, &o, &pass);
    assert_eq!(
        p.steps,
        vec![Step::Rollback {
            stage: "frontend".into(),
            hosts: vec!["w1".into(), "w2".into()]
        }]
    );
    pass.rolled_back = ["w1".to_string(), "w2".to_string()].into();
    assert!(matches!(
        plan(&s, &o, &pass).outcome,
        Outcome::Failed { .. }
    ));
}

#[test]
fn a_held_release_plans_nothing() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[("s1", fresh()), ("w1", fresh()), ("w2", fresh())]);
    let pass = PassState {
        attempts: 3,
        ..PassState::default()
    };
    let p = plan(&s, &o, &pass);
    assert!(p.steps.is_empty());
    assert!(matches!(&p.outcome, Outcome::Failed { reason, .. } if reason.contains("held")));
}

#[test]
fn a_refused_host_key_fails_the_site_even_in_an_optional_stage() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[
        ("s1", fresh()),
        (
            "w1",
            Reach::Refused {
                reason: "host key changed".into(),
            },
        ),
        ("w2", fresh()),
    ]);
    let p = plan(&s, &o, &PassState::default());
    assert!(p.steps.is_empty());
    assert!(matches!(&p.outcome, Outcome::Failed { host: Some(h), .. } if h == "w1"));
}

#[test]
fn a_host_locked_by_another_controller_blocks() {
    let s = site("r1", &[("web", false, &["w1"], false)]);
    let mut o = observed(&[("w1", live("r0", &["r0"]))]);
    view_mut(&mut o, "w1").locked_by = Some("ci-runner-7".into());
    let p = plan(&s, &o, &PassState::default());
    assert!(p.steps.is_empty());
    assert!(
        matches!(&p.outcome, Outcome::Blocked { reason, .. } if reason.contains("ci-runner-7"))
    );
}

#[test]
fn suspended_site_plans_nothing() {
    let mut s = site("r1", TWO_STAGES);
    s.suspend = true;
    let o = observed(&[("s1", fresh()), ("w1", fresh()), ("w2", fresh())]);
    assert_eq!(
        plan(&s, &o, &PassState::default()),
        Plan::done(Outcome::Suspended)
    );
}

#[test]
fn rollback_by_gitops_switches_without_a_rebuild() {
    // r1 is still built everywhere: pointing the site back at it is only a switch.
    let s = site("r1", &[("web", false, &["w1"], false)]);
    let mut o = observed(&[("w1", live("r2", &["r1", "r2"]))]);
    view_mut(&mut o, "w1").previous = Some("r1".into());
    let p = plan(&s, &o, &PassState::default());
    assert!(matches!(&p.steps[..], [Step::Switch { .. }]), "{p:?}");
}

#[test]
fn cleanup_keeps_newest_and_protected() {
    let view = HostView {
        current: Some("r5".into()),
        previous: Some("r1".into()),
        complete: [
            ("r1", 1),
            ("r2", 2),
            ("r3", 3),
            ("r4", 4),
            ("r5", 5),
            ("r6", 6),
        ]
        .into_iter()
        .map(|(r, t)| (r.to_string(), t))
        .collect(),
        half_built: ["r7".to_string(), "r9".to_string()].into(),
        ..HostView::default()
    };
    // The newest 4 by build time stay (r6, r5, r4, r3), and r1 as the recorded previous;
    // r2 is older than that, r7 a half build. r9 (desired, half built) is left to its build.
    assert_eq!(releases_to_remove(&view, "r9", 4), vec!["r2", "r7"]);
}

#[test]
fn preview_lists_a_whole_pass_in_order() {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[
        ("s1", live("r0", &["r0"])),
        ("w1", live("r0", &["r0"])),
        ("w2", down()),
    ]);
    let (steps, outcome) = preview(&s, &o, &PassState::default());
    let kinds: Vec<String> = steps
        .iter()
        .map(|s| match s {
            Step::Build { host } => format!("build {host}"),
            Step::Once { host, .. } => format!("once {host}"),
            Step::Switch { stage, hosts, .. } => format!("switch {stage} {}", hosts.join(",")),
            Step::Rollback { hosts, .. } => format!("rollback {}", hosts.join(",")),
            Step::Cleanup { host, .. } => format!("cleanup {host}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "build s1",
            "build w1",
            "once s1",
            "switch scheduler s1",
            "switch frontend w1"
        ]
    );
    assert_eq!(
        outcome,
        Outcome::Degraded {
            skipped: vec!["w2".into()],
            failed: vec![],
        }
    );
}

#[test]
fn a_once_running_under_another_controller_blocks_instead_of_waiting_forever() {
    let (s, mut o) = two_schedulers_built();
    view_mut(&mut o, "s1")
        .once
        .insert("r1".into(), OnceState::Running);
    view_mut(&mut o, "s1").locked_by = Some("ci-7".into());
    // s1 is in a required stage and locked: the gate reports it before `once` is considered.
    assert!(matches!(
        plan(&s, &o, &PassState::default()).outcome,
        Outcome::Blocked { .. }
    ));
    let s = site("r1", &[("web", true, &["w1", "w2"], true)]);
    let mut o = observed(&[
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
    ]);
    view_mut(&mut o, "w1")
        .once
        .insert("r1".into(), OnceState::Running);
    view_mut(&mut o, "w1").locked_by = Some("ci-7".into());
    let p = plan(&s, &o, &PassState::default());
    assert!(p.steps.is_empty(), "{p:?}");
    assert!(
        matches!(&p.outcome, Outcome::Blocked { reason, .. } if reason.contains("another controller")),
        "{p:?}"
    );
}

#[test]
fn a_switch_that_was_never_verified_is_activated_and_checked_again() {
    let s = site("r1", &[("web", false, &["w1", "w2"], false)]);
    let mut o = observed(&[
        ("w1", live("r1", &["r0", "r1"])),
        ("w2", live("r1", &["r0", "r1"])),
    ]);
    view_mut(&mut o, "w1").previous = Some("r0".into());
    view_mut(&mut o, "w1").pending = Some("r1".into());
    let p = plan(&s, &o, &PassState::default());
    assert!(
        matches!(&p.steps[..], [Step::Switch { hosts, .. }] if hosts == &["w1"]),
        "{p:?}"
    );
    view_mut(&mut o, "w1").pending = None;
    assert_eq!(
        plan(&s, &o, &PassState::default()),
        Plan::done(Outcome::Converged)
    );
}
