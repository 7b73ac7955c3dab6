//! `rollout.maxFailed` as tables: whole passes planned and folded with builds or health
//! checks failing on chosen hosts, and where every host ends.

use std::collections::BTreeMap;

use super::tests::{StageDef, live, observed, site};
use super::*;
use crate::desired::{DesiredStage, MaxFailed};
use crate::host::protocol::{Answer, HostAnswer, Op, OpStatus, StepReport};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fail {
    Build,
    Health,
    /// Health fails, then the rollback fails too.
    Stuck,
}

/// A required scheduler, then an optional frontend of four.
const STAGES: &[StageDef] = &[
    ("scheduler", false, &["s1"], true),
    ("frontend", true, &["w1", "w2", "w3", "w4"], false),
];

fn failing(step: &Step, host: &str, fail: Option<Fail>) -> Option<HostAnswer> {
    let ops: &[(Op, OpStatus)] = match (step, fail) {
        (Step::Build { .. }, Some(Fail::Build)) => &[
            (Op::LeaseAcquire, OpStatus::Done),
            (Op::Prepare, OpStatus::Done),
            (Op::Build, OpStatus::Failed(1)),
        ],
        (Step::Switch { .. }, Some(Fail::Health | Fail::Stuck)) => &[
            (Op::Pending, OpStatus::Done),
            (Op::Switch, OpStatus::Done),
            (Op::Activate, OpStatus::Done),
            (Op::Health, OpStatus::Failed(7)),
        ],
        (Step::Rollback { .. }, Some(Fail::Stuck)) => &[(Op::Rollback, OpStatus::Failed(1))],
        _ => return None,
    };
    Some(HostAnswer {
        exit: 1,
        ops: ops.to_vec(),
        tail: format!("it broke on {host}"),
        output: format!("it broke on {host}"),
        ..HostAnswer::default()
    })
}

/// Plans and folds one whole pass; every step succeeds except on the hosts in `fails`.
fn pass(site: &DesiredSite, o: &mut Observed, fails: &[(&str, Fail)]) -> (Outcome, Vec<Step>) {
    let fails: BTreeMap<&str, Fail> = fails.iter().copied().collect();
    let mut pass = PassState::default();
    let mut steps = vec![];
    for _ in 0..100 {
        let next = plan(site, o, &pass);
        if next.steps.is_empty() {
            return (next.outcome, steps);
        }
        for step in &next.steps {
            let reports: Vec<StepReport> = reports_of_success(step)
                .into_iter()
                .map(
                    |r| match failing(step, &r.host, fails.get(r.host.as_str()).copied()) {
                        Some(answer) => StepReport {
                            host: r.host,
                            answer: Answer::Ran(Box::new(answer)),
                        },
                        None => r,
                    },
                )
                .collect();
            fold(site, o, &mut pass, step, &reports);
        }
        steps.extend(next.steps);
    }
    panic!("the pass never ended: {steps:?}");
}

/// Every host on r0 (built), the site asking for r1.
fn fleet(max_failed: MaxFailed, batch: usize) -> (DesiredSite, Observed) {
    let mut s = site("r1", STAGES);
    s.rollout.max_failed = max_failed;
    s.rollout.batch = batch;
    let o = observed(&[
        ("s1", live("r0", &["r0"])),
        ("w1", live("r0", &["r0"])),
        ("w2", live("r0", &["r0"])),
        ("w3", live("r0", &["r0"])),
        ("w4", live("r0", &["r0"])),
    ]);
    (s, o)
}

fn current(o: &Observed) -> BTreeMap<String, String> {
    o.iter()
        .map(|(h, r)| {
            let release = match r {
                Reach::Reachable(v) => v.current.clone().unwrap_or_default(),
                _ => "down".into(),
            };
            (h.clone(), release)
        })
        .collect()
}

fn releases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(h, r)| (h.to_string(), r.to_string()))
        .collect()
}

fn degraded(failed: &[&str]) -> Outcome {
    Outcome::Degraded {
        skipped: vec![],
        failed: failed.iter().map(|h| h.to_string()).collect(),
    }
}

struct Row {
    name: &'static str,
    max_failed: MaxFailed,
    batch: usize,
    fails: &'static [(&'static str, Fail)],
    /// `None`: the pass must end Failed.
    outcome: Option<Outcome>,
    /// The release each host runs afterwards (s1, w1..w4).
    ends_on: [&'static str; 5],
}

/// Rows whose failures the budget tolerates.
fn tolerated_rows() -> Vec<Row> {
    use Fail::{Build, Health};
    use MaxFailed::{Count, Percent};
    vec![
        Row {
            name: "within budget: one build fails, the other three switch",
            max_failed: Count(1),
            batch: 0,
            fails: &[("w2", Build)],
            outcome: Some(degraded(&["w2"])),
            ends_on: ["r1", "r1", "r0", "r1", "r1"],
        },
        Row {
            name: "within budget: one health failure is rolled back alone",
            max_failed: Count(1),
            batch: 0,
            fails: &[("w3", Health)],
            outcome: Some(degraded(&["w3"])),
            ends_on: ["r1", "r1", "r1", "r0", "r1"],
        },
        Row {
            name: "exactly at budget: a build and a health failure",
            max_failed: Count(2),
            batch: 0,
            fails: &[("w2", Build), ("w3", Health)],
            outcome: Some(degraded(&["w2", "w3"])),
            ends_on: ["r1", "r1", "r0", "r0", "r1"],
        },
        Row {
            name: "percent rounds down: 25% of 4 hosts allows one",
            max_failed: Percent(25),
            batch: 0,
            fails: &[("w1", Build)],
            outcome: Some(degraded(&["w1"])),
            ends_on: ["r1", "r0", "r1", "r1", "r1"],
        },
    ]
}

/// Rows whose failures stop the rollout.
fn stopping_rows() -> Vec<Row> {
    use Fail::{Build, Health};
    use MaxFailed::{Count, Percent};
    vec![
        Row {
            name: "over by build failures: nothing switches anywhere",
            max_failed: Count(1),
            batch: 0,
            fails: &[("w2", Build), ("w3", Build)],
            outcome: None,
            ends_on: ["r0", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "over by health failures: the whole optional stage goes back, the scheduler keeps r1",
            max_failed: Count(1),
            batch: 0,
            fails: &[("w2", Health), ("w3", Health)],
            outcome: None,
            ends_on: ["r1", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "over by health in a later batch: hosts of earlier batches go back too",
            max_failed: Count(1),
            batch: 1,
            fails: &[("w2", Health), ("w4", Health)],
            outcome: None,
            ends_on: ["r1", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "build and health failures add up: over budget once health fails",
            max_failed: Count(1),
            batch: 0,
            fails: &[("w2", Build), ("w3", Health)],
            outcome: None,
            ends_on: ["r1", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "a required stage is strict whatever the budget: a build failure",
            max_failed: Percent(100),
            batch: 0,
            fails: &[("s1", Build)],
            outcome: None,
            ends_on: ["r0", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "a required stage is strict whatever the budget: a health failure",
            max_failed: Count(4),
            batch: 0,
            fails: &[("s1", Health)],
            outcome: None,
            ends_on: ["r0", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "percent rounds down: 20% of 4 hosts allows none",
            max_failed: Percent(20),
            batch: 0,
            fails: &[("w1", Build)],
            outcome: None,
            ends_on: ["r0", "r0", "r0", "r0", "r0"],
        },
        Row {
            name: "the default budget is 0: any failure stops the rollout",
            max_failed: MaxFailed::default(),
            batch: 0,
            fails: &[("w4", Build)],
            outcome: None,
            ends_on: ["r0", "r0", "r0", "r0", "r0"],
        },
    ]
}

#[test]
fn each_row_ends_as_the_budget_says() {
    for row in tolerated_rows().into_iter().chain(stopping_rows()) {
        let (s, mut o) = fleet(row.max_failed, row.batch);
        let (outcome, steps) = pass(&s, &mut o, row.fails);
        match &row.outcome {
            Some(expected) => assert_eq!(&outcome, expected, "{}: {steps:?}", row.name),
            None => assert!(
                matches!(outcome, Outcome::Failed { .. }),
                "{}: {outcome:?} {steps:?}",
                row.name
            ),
        }
        let hosts = ["s1", "w1", "w2", "w3", "w4"];
        let expected: Vec<(&str, &str)> = hosts.into_iter().zip(row.ends_on).collect();
        assert_eq!(current(&o), releases(&expected), "{}: {steps:?}", row.name);
        // Never a second rollback of a host in one pass.
        let mut rolled: Vec<&String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Rollback { hosts, .. } => Some(hosts),
                _ => None,
            })
            .flatten()
            .collect();
        let all = rolled.len();
        rolled.sort();
        rolled.dedup();
        assert_eq!(rolled.len(), all, "{}: {steps:?}", row.name);
    }
}

#[test]
fn a_tolerated_host_whose_rollback_fails_fails_the_site() {
    let (s, mut o) = fleet(MaxFailed::Count(1), 0);
    let (outcome, _) = pass(&s, &mut o, &[("w2", Fail::Stuck)]);
    assert!(
        matches!(&outcome, Outcome::Failed { host: Some(h), reason }
            if h == "w2" && reason.contains("rollback failed") && reason.contains("still runs")),
        "{outcome:?}"
    );
    assert_eq!(current(&o)["w2"], "r1");
}

#[test]
fn percentages_round_down_and_counts_never_exceed_the_stage() {
    use MaxFailed::{Count, Percent};
    let rows = [
        (Percent(10), 5, 0),
        (Percent(20), 5, 1),
        (Percent(25), 4, 1),
        (Percent(50), 5, 2),
        (Percent(99), 3, 2),
        (Percent(100), 3, 3),
        (Percent(0), 10, 0),
        (Count(0), 10, 0),
        (Count(2), 10, 2),
        (Count(5), 3, 3),
        (Percent(50), 0, 0),
    ];
    for (max, hosts, allowed) in rows {
        assert_eq!(
            failure_budget::allowed(max, hosts),
            allowed,
            "{max} of {hosts}"
        );
    }
}

#[test]
fn a_failed_stop_names_the_budget_it_exceeded() {
    let (s, mut o) = fleet(MaxFailed::Count(1), 0);
    let (outcome, _) = pass(&s, &mut o, &[("w2", Fail::Build), ("w3", Fail::Build)]);
    let Outcome::Failed { reason, host } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(host.as_deref(), Some("w2"));
    assert!(
        reason.contains("2 of 4 hosts of stage `frontend` failed, rollout.maxFailed 1 allows 1"),
        "{reason}"
    );
    let (s, mut o) = fleet(MaxFailed::Count(1), 0);
    let (outcome, _) = pass(&s, &mut o, &[("s1", Fail::Build)]);
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("stage `scheduler` is required")),
        "{outcome:?}"
    );
}

#[test]
fn unreachable_hosts_are_skipped_not_counted_as_failures() {
    let (s, mut o) = fleet(MaxFailed::Count(1), 0);
    o.insert(
        "w1".into(),
        Reach::Unreachable {
            reason: "connection refused".into(),
        },
    );
    let (outcome, _) = pass(&s, &mut o, &[("w2", Fail::Build)]);
    assert_eq!(
        outcome,
        Outcome::Degraded {
            skipped: vec!["w1".into()],
            failed: vec!["w2".into()],
        }
    );
}

#[test]
fn a_failed_host_is_tried_again_by_the_next_pass_and_converges() {
    let (s, mut o) = fleet(MaxFailed::Count(1), 0);
    assert_eq!(
        pass(&s, &mut o, &[("w2", Fail::Build)]).0,
        degraded(&["w2"])
    );
    let (outcome, steps) = pass(&s, &mut o, &[]);
    assert_eq!(outcome, Outcome::Converged, "{steps:?}");
    assert!(
        steps.contains(&Step::Build { host: "w2".into() }),
        "{steps:?}"
    );
    assert_eq!(current(&o)["w2"], "r1");
}

#[test]
fn once_of_an_optional_stage_runs_on_a_host_that_did_not_fail() {
    let mut s = site("r1", &[("frontend", true, &["w1", "w2", "w3", "w4"], true)]);
    s.rollout.max_failed = MaxFailed::Count(1);
    let mut o = observed(&[
        ("w1", live("r0", &["r0"])),
        ("w2", live("r0", &["r0"])),
        ("w3", live("r0", &["r0"])),
        ("w4", live("r0", &["r0"])),
    ]);
    let (outcome, steps) = pass(&s, &mut o, &[("w1", Fail::Build)]);
    assert_eq!(outcome, degraded(&["w1"]));
    assert!(
        steps.contains(&Step::Once {
            stage: "frontend".into(),
            host: "w2".into()
        }),
        "{steps:?}"
    );
}

#[test]
fn the_preview_states_each_stage_budget() {
    let (s, _) = fleet(MaxFailed::Percent(50), 0);
    assert_eq!(
        failure_budget::describe(&s),
        [
            "stage scheduler: required, every host must succeed",
            "stage frontend: up to 2 of 4 hosts may fail (rollout.maxFailed 50%)",
        ]
    );
    let (s, _) = fleet(MaxFailed::default(), 0);
    assert!(failure_budget::describe(&s).is_empty());
}

mod invariants {
    use proptest::prelude::*;

    use super::*;

    fn arb_max_failed() -> impl Strategy<Value = MaxFailed> {
        prop_oneof![
            (0u32..6).prop_map(MaxFailed::Count),
            (0u32..=100).prop_map(MaxFailed::Percent),
        ]
    }

    fn arb_fail() -> impl Strategy<Value = Option<Fail>> {
        prop_oneof![3 => Just(None), 1 => Just(Some(Fail::Build)), 1 => Just(Some(Fail::Health))]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Whatever fails: a pass ends; a required stage is never split; an optional stage
        /// is whole, or lacks at most its budget; a stage goes live only after every earlier
        /// required stage; Degraded names exactly the hosts left behind.
        #[test]
        fn every_stage_ends_whole_or_within_its_budget(
            max in arb_max_failed(),
            batch in 0usize..3,
            fails in prop::collection::vec(arb_fail(), 5),
        ) {
            let (s, mut o) = fleet(max, batch);
            let names = ["s1", "w1", "w2", "w3", "w4"];
            let fails: Vec<(&str, Fail)> = names
                .iter()
                .zip(&fails)
                .filter_map(|(h, f)| f.map(|f| (*h, f)))
                .collect();
            let (outcome, _) = pass(&s, &mut o, &fails);
            let on = current(&o);
            let behind = |stage: &DesiredStage| -> Vec<String> {
                stage.hosts.iter().filter(|h| on[*h] != "r1").cloned().collect()
            };
            let mut earlier_whole = true;
            for stage in &s.stages {
                let left = behind(stage);
                if left.len() < stage.hosts.len() {
                    prop_assert!(earlier_whole, "{} went live after a split stage", stage.name);
                }
                if stage.optional {
                    let allowed = failure_budget::allowed(max, stage.hosts.len());
                    prop_assert!(left.is_empty() || left.len() == stage.hosts.len() || left.len() <= allowed,
                        "{} split beyond its budget: {left:?}", stage.name);
                } else {
                    prop_assert!(left.is_empty() || left.len() == stage.hosts.len(), "{} split", stage.name);
                }
                earlier_whole &= stage.optional || left.is_empty();
            }
            prop_assert!(on.values().all(|r| r == "r0" || r == "r1"), "{on:?}");
            match &outcome {
                Outcome::Degraded { failed, skipped } => {
                    prop_assert!(skipped.is_empty());
                    let left: Vec<String> = s.stages.iter().flat_map(behind).collect();
                    prop_assert_eq!(failed, &left);
                }
                Outcome::Converged => prop_assert!(fails.is_empty()),
                other => prop_assert!(matches!(other, Outcome::Failed { .. }), "{other:?}"),
            }
        }
    }
}
