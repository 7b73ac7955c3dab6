//! `fold` case by case, as tables: what an answer means for the pass, and what the planner
//! does next with it. No network: the answers are what hosts print, typed.

use super::tests::{TWO_STAGES, live, observed, site, view_mut};
use super::*;
use crate::host::protocol::{Answer, HostAnswer, LeaseFact, LeaseState, Op, OpStatus, StepReport};

/// An answer whose operations ended as listed (`0` = done).
fn ran(ops: &[(Op, i32)]) -> HostAnswer {
    let status = |code| match code {
        0 => OpStatus::Done,
        75 => OpStatus::Fenced,
        73 => OpStatus::LeaseHeld,
        n => OpStatus::Failed(n),
    };
    let exit = ops.iter().map(|(_, c)| *c).find(|c| *c != 0).unwrap_or(0);
    let said = if exit == 0 { "" } else { "it broke" };
    HostAnswer {
        exit,
        ops: ops.iter().map(|(op, c)| (op.clone(), status(*c))).collect(),
        tail: if exit == 0 {
            "exit status 0".into()
        } else {
            said.into()
        },
        output: said.into(),
        ..HostAnswer::default()
    }
}

fn report(host: &str, answer: HostAnswer) -> StepReport {
    StepReport {
        host: host.into(),
        answer: Answer::Ran(Box::new(answer)),
    }
}

fn lease(state: LeaseState, holder: &str, generation: u64) -> Option<LeaseFact> {
    Some(LeaseFact {
        state,
        holder: Some(holder.into()),
        generation: Some(generation),
        expires: Some(100),
        renewed: None,
    })
}

fn switch(hosts: &[&str], cleanup: &[(&str, &[&str])]) -> Step {
    Step::Switch {
        stage: "frontend".into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        pause: std::time::Duration::ZERO,
        cleanup: cleanup
            .iter()
            .map(|(h, ids)| (h.to_string(), ids.iter().map(|i| i.to_string()).collect()))
            .collect(),
    }
}

const LIVE: &[(Op, i32)] = &[
    (Op::Pending, 0),
    (Op::Switch, 0),
    (Op::Activate, 0),
    (Op::Health, 0),
    (Op::Settled, 0),
];

/// Every host built r1; s1 (scheduler) already runs it and its `once` ran.
fn ready() -> (DesiredSite, Observed, PassState) {
    let s = site("r1", TWO_STAGES);
    let o = observed(&[
        ("s1", live("r1", &["r0", "r1"])),
        ("w1", live("r0", &["r0", "r1"])),
        ("w2", live("r0", &["r0", "r1"])),
    ]);
    let pass = PassState {
        once_done: ["scheduler".to_string()].into(),
        ..PassState::default()
    };
    (s, o, pass)
}

fn kinds(events: &[Event]) -> Vec<(String, EventKind)> {
    events.iter().map(|e| (e.host.clone(), e.kind)).collect()
}

struct Case {
    name: &'static str,
    step: Step,
    answers: Vec<StepReport>,
    /// Events in order.
    events: &'static [(&'static str, EventKind)],
    failed_attempt: bool,
    /// Hosts with an error, and a word of it.
    errors: &'static [(&'static str, &'static str)],
    /// What the planner does next.
    next: fn(&Plan) -> bool,
}

/// Answers to a switch round trip and to a clean-up.
fn live_cases() -> Vec<Case> {
    let mut w2_unhealthy = ran(&[
        (Op::Pending, 0),
        (Op::Switch, 0),
        (Op::Activate, 0),
        (Op::Health, 7),
    ]);
    w2_unhealthy.tail = "curl: 500".into();
    w2_unhealthy.output = "curl: 500".into();
    let mut cleanup_failed = ran(LIVE);
    cleanup_failed.ops.push((Op::Cleanup, OpStatus::Failed(1)));
    cleanup_failed.exit = 1;
    cleanup_failed.removed = vec![];
    vec![
        Case {
            name: "a host that fails its health check after going live rolls back its whole stage",
            step: switch(&["w1", "w2"], &[]),
            answers: vec![report("w1", ran(LIVE)), report("w2", w2_unhealthy)],
            events: &[
                ("w1", EventKind::Switched),
                ("w2", EventKind::Switched),
                ("w2", EventKind::HealthFailed),
            ],
            failed_attempt: true,
            errors: &[("w2", "health (exit 7) failed on host `w2`: curl: 500")],
            next: |p| {
                p.steps
                    == vec![Step::Rollback {
                        stage: "frontend".into(),
                        hosts: vec!["w1".into(), "w2".into()],
                    }]
            },
        },
        Case {
            name: "a switch that never happened fails the attempt with nothing to roll back",
            step: switch(&["w2"], &[]),
            answers: vec![report("w2", ran(&[(Op::Pending, 1)]))],
            events: &[],
            failed_attempt: true,
            errors: &[("w2", "pending (exit 1) failed")],
            next: |p| matches!(&p.outcome, Outcome::Failed { reason, .. } if reason.starts_with("health check failed")),
        },
        Case {
            name: "a failed clean-up never rolls a healthy host back",
            step: switch(&["w1", "w2"], &[("w1", &["r0"])]),
            answers: vec![report("w1", cleanup_failed), report("w2", ran(LIVE))],
            events: &[("w1", EventKind::Switched), ("w2", EventKind::Switched)],
            failed_attempt: false,
            errors: &[("w1", "cleanup (exit 1) failed")],
            next: |p| p.outcome == Outcome::Converged,
        },
        Case {
            name: "a failed clean-up step is reported, not retried in the pass",
            step: Step::Cleanup {
                host: "s1".into(),
                remove: vec!["r0".into()],
            },
            answers: vec![report(
                "s1",
                ran(&[(Op::LeaseAcquire, 0), (Op::Cleanup, 1)]),
            )],
            events: &[],
            failed_attempt: false,
            errors: &[("s1", "clean-up failed: it broke")],
            next: |p| p.steps.iter().all(|s| !matches!(s, Step::Cleanup { .. })),
        },
        Case {
            name: "a switch fenced by a lost lease blocks the host, it is no failure",
            step: switch(&["w1", "w2"], &[]),
            answers: vec![
                report("w1", ran(LIVE)),
                report("w2", ran(&[(Op::Pending, 0), (Op::Switch, 75)])),
            ],
            events: &[("w1", EventKind::Switched)],
            failed_attempt: false,
            errors: &[("w2", "lease lost")],
            next: |p| {
                p.outcome == Outcome::Converged || matches!(p.outcome, Outcome::Degraded { .. })
            },
        },
    ]
}

/// Answers to a build round trip, and a host that did not answer.
fn build_cases() -> Vec<Case> {
    let mut held = ran(&[(Op::LeaseAcquire, 73)]);
    held.lease = lease(LeaseState::Held, "other:9", 4);
    let mut build_fenced = ran(&[(Op::LeaseAcquire, 0), (Op::Build, 75)]);
    build_fenced.fenced = true;
    vec![
        Case {
            name: "a build fenced by a takeover is discarded, not failed",
            step: Step::Build { host: "w1".into() },
            answers: vec![report("w1", build_fenced)],
            events: &[],
            failed_attempt: false,
            errors: &[("w1", "lease lost")],
            // The frontend stage is optional: the rest of it goes on without w1.
            next: |p| p.steps == vec![switch(&["w2"], &[])],
        },
        Case {
            name: "a host locked by another controller blocks its build, it is no failure",
            step: Step::Build { host: "s1".into() },
            answers: vec![report("s1", held)],
            events: &[],
            failed_attempt: false,
            errors: &[],
            next: |p| matches!(&p.outcome, Outcome::Blocked { reason, .. } if reason.contains("other:9")),
        },
        Case {
            name: "a failed build fails the attempt and stops every switch",
            step: Step::Build { host: "w2".into() },
            answers: vec![report("w2", ran(&[(Op::LeaseAcquire, 0), (Op::Build, 2)]))],
            events: &[("w2", EventKind::BuildFailed)],
            failed_attempt: true,
            errors: &[("w2", "build (exit 2) on host `w2`: it broke")],
            next: |p| matches!(&p.outcome, Outcome::Failed { reason, .. } if reason.starts_with("build failed")),
        },
        Case {
            name: "an unreachable host stays out of the rollout",
            step: switch(&["w2"], &[]),
            answers: vec![StepReport {
                host: "w2".into(),
                answer: Answer::Unreachable("host `w2` is unreachable: refused".into()),
            }],
            events: &[],
            failed_attempt: false,
            errors: &[("w2", "unreachable")],
            next: |p| p.steps == vec![switch(&["w1"], &[])],
        },
    ]
}

#[test]
fn fold_table() {
    for case in live_cases().into_iter().chain(build_cases()) {
        let (s, mut o, mut pass) = ready();
        let events = fold(&s, &mut o, &mut pass, &case.step, &case.answers);
        let want: Vec<(String, EventKind)> = case
            .events
            .iter()
            .map(|(h, k)| (h.to_string(), *k))
            .collect();
        assert_eq!(kinds(&events), want, "{}", case.name);
        assert_eq!(pass.failed_attempt, case.failed_attempt, "{}", case.name);
        for (host, word) in case.errors {
            let error = pass.errors.get(*host).map(ToString::to_string);
            assert!(
                error.as_deref().is_some_and(|e| e.contains(word)),
                "{}: {host}: {error:?}",
                case.name
            );
        }
        assert_eq!(
            pass.errors.len(),
            case.errors.len(),
            "{}: {:?}",
            case.name,
            pass.errors
        );
        let next = plan(&s, &o, &pass);
        assert!((case.next)(&next), "{}: then {next:?}", case.name);
    }
}

#[test]
fn the_rollback_step_puts_every_switched_host_back_and_the_site_fails() {
    let (s, mut o, mut pass) = ready();
    let mut unhealthy = ran(&[(Op::Pending, 0), (Op::Switch, 0), (Op::Activate, 3)]);
    unhealthy.tail = "activate broke".into();
    unhealthy.output = "activate broke".into();
    let step = switch(&["w1", "w2"], &[]);
    fold(
        &s,
        &mut o,
        &mut pass,
        &step,
        &[report("w1", ran(LIVE)), report("w2", unhealthy)],
    );
    let rollback = plan(&s, &o, &pass).steps.remove(0);
    let answers = [
        report("w1", ran(&[(Op::Rollback, 0), (Op::Activate, 0)])),
        report("w2", ran(&[(Op::Rollback, 0), (Op::Activate, 0)])),
    ];
    let events = fold(&s, &mut o, &mut pass, &rollback, &answers);
    assert_eq!(
        kinds(&events),
        vec![
            ("w1".to_string(), EventKind::RolledBack),
            ("w2".to_string(), EventKind::RolledBack)
        ]
    );
    assert!(events.iter().all(|e| e.release == "r0"), "{events:?}");
    for host in ["w1", "w2"] {
        assert_eq!(view_mut(&mut o, host).current.as_deref(), Some("r0"));
    }
    assert!(!pass.rolled_back.is_empty());
    let end = plan(&s, &o, &pass);
    assert!(end.steps.is_empty());
    assert!(
        matches!(&end.outcome, Outcome::Failed { reason, host: Some(h) } if h == "w2" && reason.contains("activate broke")),
        "{end:?}"
    );
}

#[test]
fn a_lease_that_moved_between_two_acquisitions_is_lost() {
    let (s, mut o, mut pass) = ready();
    let mut first = ran(&[(Op::LeaseAcquire, 0)]);
    first.lease = lease(LeaseState::Acquired, "me:1", 4);
    fold_lease(&s, &mut o, &mut pass, &[report("w1", first.clone())]);
    assert_eq!(pass.fences.get("w1"), Some(&4));
    fold_lease(&s, &mut o, &mut pass, &[report("w1", first)]);
    assert_eq!(
        pass.fences.get("w1"),
        Some(&4),
        "same generation: still ours"
    );
    let mut moved = ran(&[(Op::LeaseAcquire, 0)]);
    moved.lease = lease(LeaseState::Acquired, "me:1", 6);
    fold_lease(&s, &mut o, &mut pass, &[report("w1", moved)]);
    assert_eq!(pass.fences.get("w1"), None);
    assert!(view_mut(&mut o, "w1").locked_by.is_some());
    assert!(!pass.failed_attempt);
}

#[test]
fn a_host_that_cannot_write_its_lease_fails_the_attempt_with_its_words() {
    let (s, mut o, mut pass) = ready();
    let mut full = ran(&[(Op::LeaseAcquire, 1)]);
    full.tail = "No space left on device".into();
    full.output = "No space left on device".into();
    fold_lease(&s, &mut o, &mut pass, &[report("w1", full)]);
    assert!(pass.failed_attempt);
    let p = plan(&s, &o, &pass);
    assert!(
        matches!(&p.outcome, Outcome::Failed { reason, .. } if reason.contains("host error") && reason.contains("No space left")),
        "{p:?}"
    );
}

#[test]
fn once_answers_record_success_failure_or_an_unfinished_run() {
    let s = site("r1", TWO_STAGES);
    let step = Step::Once {
        stage: "scheduler".into(),
        host: "s1".into(),
    };
    let start = || observed(&[("s1", live("r0", &["r0", "r1"]))]);
    for (status, ran_ok, attempt_failed) in [
        (Some(0), true, false),
        (Some(4), false, true),
        (None, false, false),
    ] {
        let mut o = start();
        let mut pass = PassState::default();
        let mut answer = ran(&[(Op::Once, status.unwrap_or(124))]);
        answer.once = status;
        fold(&s, &mut o, &mut pass, &step, &[report("s1", answer)]);
        assert_eq!(pass.once_done.contains("scheduler"), ran_ok, "{status:?}");
        assert_eq!(pass.failed_attempt, attempt_failed, "{status:?}");
        assert_eq!(pass.once_failed.is_some(), !ran_ok, "{status:?}");
    }
}

#[test]
fn a_cancelled_round_trip_changes_nothing() {
    let (s, mut o, mut pass) = ready();
    let before = (o.clone(), pass.clone());
    let cancelled = StepReport {
        host: "w1".into(),
        answer: Answer::Cancelled,
    };
    let events = fold(&s, &mut o, &mut pass, &switch(&["w1"], &[]), &[cancelled]);
    assert!(events.is_empty());
    assert_eq!((o, pass), before);
}
