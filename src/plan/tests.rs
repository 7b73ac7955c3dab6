//! Rules one by one, then invariants over random fleets (proptest), then whole passes
//! simulated against an in-memory model of the hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::desired::{DesiredSite, DesiredStage, FetchSpec, RolloutSpec};
use crate::host::protocol::{Answer, StepReport};

/// (stage name, optional, hosts, has once)
type StageDef<'a> = (&'a str, bool, &'a [&'a str], bool);

fn site(release: &str, stages: &[StageDef]) -> DesiredSite {
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
        },
        keep_releases: 3,
        suspend: false,
    }
}

const TWO_STAGES: &[StageDef] = &[
    ("scheduler", false, &["s1"], true),
    ("frontend", true, &["w1", "w2"], false),
];

fn live(release: &str, built: &[&str]) -> Reach {
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

fn observed(hosts: &[(&str, Reach)]) -> Observed {
    hosts
        .iter()
        .map(|(h, r)| (h.to_string(), r.clone()))
        .collect()
}

fn view_mut<'a>(o: &'a mut Observed, host: &str) -> &'a mut HostView {
    match o.get_mut(host) {
        Some(Reach::Reachable(v)) => v,
        _ => panic!("{host} not reachable"),
    }
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
    let s = site("r1", &[("scheduler", false, &["s1", "s2"], true)]);
    let mut o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("s2", live("r0", &["r0", "r1"])),
    ]);
    view_mut(&mut o, "s2")
        .once
        .insert("r1".into(), OnceState::Done { status: 0 });
    let p = plan(&s, &o, &PassState::default());
    assert!(matches!(&p.steps[..], [Step::Switch { .. }]), "{p:?}");
}

#[test]
fn a_running_once_is_waited_for_on_its_host() {
    let s = site("r1", &[("scheduler", false, &["s1", "s2"], true)]);
    let mut o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("s2", live("r0", &["r0", "r1"])),
    ]);
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
            skipped: vec!["w1".into()]
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
    pass.rolled_back = true;
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

// ------------------------------------------------------------------ simulation model

/// Applies a plan's steps to the in-memory hosts as a perfect executor would.
struct Sim {
    observed: Observed,
    pass: PassState,
    /// Runs of `once` per (release, stage).
    once_runs: BTreeMap<(String, String), usize>,
    clock: u64,
    /// Every release each host's `current` ever pointed at, in order.
    trail: BTreeMap<String, Vec<String>>,
}

impl Sim {
    fn new(observed: Observed) -> Self {
        Sim {
            observed,
            pass: PassState::default(),
            once_runs: BTreeMap::new(),
            clock: 100,
            trail: BTreeMap::new(),
        }
    }

    /// Folds a perfect host's answers to `step`, checking first what a real host would
    /// refuse, and counting `once` runs and the releases each host went live with.
    fn apply(&mut self, site: &DesiredSite, step: &Step) {
        let desired = site.release.clone();
        self.clock += 1;
        match step {
            Step::Once { stage, host } => {
                let v = view_mut(&mut self.observed, host);
                if !matches!(v.once.get(&desired), Some(OnceState::Done { .. })) {
                    *self
                        .once_runs
                        .entry((desired.clone(), stage.clone()))
                        .or_default() += 1;
                }
            }
            Step::Switch { hosts, .. } => {
                for host in hosts {
                    let v = view_mut(&mut self.observed, host);
                    assert!(
                        v.complete.contains_key(&desired),
                        "switch to an unbuilt release on {host}"
                    );
                    self.trail
                        .entry(host.clone())
                        .or_default()
                        .push(desired.clone());
                }
            }
            _ => {}
        }
        let reports: Vec<StepReport> = step
            .hosts()
            .into_iter()
            .map(|host| StepReport {
                host: host.clone(),
                answer: Answer::Ran(Box::new(answer_of_success(step, host))),
            })
            .collect();
        fold(site, &mut self.observed, &mut self.pass, step, &reports);
        match step {
            Step::Build { host } => {
                // Build times as a host would record them: later builds are newer.
                let v = view_mut(&mut self.observed, host);
                v.complete.insert(desired.clone(), self.clock);
            }
            Step::Switch { cleanup, .. } => {
                for (host, remove) in cleanup {
                    self.check_removal(host, remove, &desired);
                }
            }
            Step::Cleanup { host, remove } => self.check_removal(host, remove, &desired),
            _ => {}
        }
    }

    fn check_removal(&mut self, host: &str, remove: &[String], desired: &str) {
        let v = view_mut(&mut self.observed, host);
        for id in remove {
            assert_ne!(
                Some(id),
                v.current.as_ref(),
                "cleanup removed current on {host}"
            );
            assert_ne!(
                Some(id),
                v.previous.as_ref(),
                "cleanup removed previous on {host}"
            );
            assert_ne!(id, desired, "cleanup removed the desired release on {host}");
        }
    }

    /// Plans and applies until no step is left; returns the final outcome.
    fn run(&mut self, site: &DesiredSite) -> Outcome {
        self.pass = PassState {
            once_done: BTreeSet::new(),
            ..PassState::default()
        };
        for _ in 0..100 {
            let p = plan(site, &self.observed, &self.pass);
            if p.steps.is_empty() {
                return p.outcome;
            }
            for step in &p.steps {
                self.apply(site, step);
            }
        }
        panic!("no convergence in 100 plans");
    }
}

#[test]
fn a_full_deploy_converges_and_a_second_pass_plans_nothing() {
    let s = site("r1", TWO_STAGES);
    let mut sim = Sim::new(observed(&[
        ("s1", live("r0", &["r0"])),
        ("w1", live("r0", &["r0"])),
        ("w2", fresh()),
    ]));
    assert_eq!(sim.run(&s), Outcome::Converged);
    assert_eq!(
        sim.once_runs
            .get(&("r1".to_string(), "scheduler".to_string())),
        Some(&1)
    );
    assert_eq!(
        plan(&s, &sim.observed, &PassState::default()),
        Plan::done(Outcome::Converged)
    );
}

#[test]
fn an_offline_host_goes_straight_to_the_newest_release() {
    let mut sim = Sim::new(observed(&[
        ("s1", live("r0", &["r0"])),
        ("w1", live("r0", &["r0"])),
        ("w2", live("r0", &["r0"])),
    ]));
    let saved = sim.observed.insert("w2".into(), down()).unwrap();
    for release in ["r1", "r2", "r3"] {
        assert_eq!(
            sim.run(&site(release, TWO_STAGES)),
            Outcome::Degraded {
                skipped: vec!["w2".into()]
            }
        );
    }
    sim.observed.insert("w2".into(), saved);
    assert_eq!(sim.run(&site("r3", TWO_STAGES)), Outcome::Converged);
    assert_eq!(
        sim.trail["w2"],
        vec!["r3"],
        "w2 never ran an intermediate release"
    );
    assert!(
        sim.once_runs.values().all(|n| *n == 1),
        "{:?}",
        sim.once_runs
    );
}

// ------------------------------------------------------------------ invariants

fn arb_reach() -> impl Strategy<Value = Reach> {
    let release = prop::sample::select(vec!["r0", "r1", "r2", "r3"]);
    let view = (
        prop::option::of(release.clone()),
        prop::option::of(release.clone()),
        prop::collection::btree_map(release.clone().prop_map(String::from), 0u64..10, 0..4),
        prop::collection::btree_set(release.clone().prop_map(String::from), 0..2),
        prop::collection::btree_map(
            release.prop_map(String::from),
            prop_oneof![
                Just(OnceState::Running),
                Just(OnceState::Done { status: 0 }),
                Just(OnceState::Done { status: 1 })
            ],
            0..2,
        ),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(current, previous, complete, half_built, once, locked, unverified)| {
                let half_built = half_built
                    .into_iter()
                    .filter(|r| !complete.contains_key(r))
                    .collect();
                Reach::Reachable(HostView {
                    pending: current.filter(|_| unverified).map(String::from),
                    current: current.map(String::from),
                    previous: previous.map(String::from),
                    complete,
                    half_built,
                    once,
                    locked_by: locked.then(|| "other".to_string()),
                })
            },
        );
    prop_oneof![8 => view, 2 => Just(down()), 1 => Just(Reach::Refused { reason: "key changed".into() })]
}

/// A random site of 1-3 stages with 1-3 hosts each, and what every host reports.
fn arb_fleet() -> impl Strategy<Value = (DesiredSite, Observed)> {
    let stage = (any::<bool>(), 1usize..4, any::<bool>());
    (
        prop::collection::vec(stage, 1..4),
        0usize..3,
        prop::sample::select(vec!["r1", "r2", "r3"]),
    )
        .prop_flat_map(|(stages, batch, release)| {
            let mut next = 0;
            let mut s = site(release, &[]);
            s.rollout.batch = batch;
            for (i, (optional, n, once)) in stages.into_iter().enumerate() {
                let hosts: Vec<String> = (next..next + n).map(|h| format!("h{h}")).collect();
                next += n;
                s.stages.push(DesiredStage {
                    name: format!("st{i}"),
                    group: format!("g{i}"),
                    optional,
                    once: if once { vec!["migrate".into()] } else { vec![] },
                    activate: vec![],
                    hosts,
                });
            }
            let reaches = prop::collection::vec(arb_reach(), next);
            (Just(s), reaches).prop_map(|(s, reaches)| {
                let observed = reaches
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (format!("h{i}"), r))
                    .collect();
                (s, observed)
            })
        })
}

fn reach_of<'a>(o: &'a Observed, host: &str) -> Option<&'a HostView> {
    match o.get(host) {
        Some(Reach::Reachable(v)) if v.locked_by.is_none() => Some(v),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn nothing_switches_unless_every_required_host_has_a_complete_build((s, o) in arb_fleet()) {
        let p = plan(&s, &o, &PassState::default());
        if p.steps.iter().any(|st| matches!(st, Step::Switch { .. })) {
            for stage in s.stages.iter().filter(|st| !st.optional) {
                for host in &stage.hosts {
                    let v = reach_of(&o, host);
                    prop_assert!(v.is_some_and(|v| v.complete.contains_key(&s.release)), "{host} not built");
                }
            }
            prop_assert!(!o.values().any(|r| matches!(r, Reach::Refused { .. })), "switched despite a refused host");
        }
    }

    #[test]
    fn stages_go_live_in_order((s, o) in arb_fleet()) {
        let p = plan(&s, &o, &PassState::default());
        for step in &p.steps {
            if let Step::Switch { stage, hosts, .. } = step {
                let index = s.stages.iter().position(|st| &st.name == stage).unwrap();
                for earlier in &s.stages[..index] {
                    for host in &earlier.hosts {
                        if let Some(v) = reach_of(&o, host) {
                            prop_assert_eq!(v.current.as_deref(), Some(s.release.as_str()));
                        }
                    }
                }
                let stage_hosts = &s.stages[index].hosts;
                prop_assert!(hosts.iter().all(|h| stage_hosts.contains(h)));
                prop_assert!(s.rollout.batch == 0 || hosts.len() <= s.rollout.batch);
            }
        }
    }

    #[test]
    fn once_is_never_started_where_a_record_exists((s, o) in arb_fleet()) {
        let p = plan(&s, &o, &PassState::default());
        let once_steps: Vec<_> = p.steps.iter().filter(|st| matches!(st, Step::Once { .. })).collect();
        prop_assert!(once_steps.len() <= 1);
        if let Some(Step::Once { stage, host }) = once_steps.first() {
            let st = s.stages.iter().find(|st| &st.name == stage).unwrap();
            let done = st.hosts.iter().any(|h| reach_of(&o, h).is_some_and(|v| matches!(v.once.get(&s.release), Some(OnceState::Done { .. }))));
            prop_assert!(!done, "once planned although a host recorded it");
            // Either the step waits for the run already under way on `host` (a workable host),
            // or it is a fresh start: then no host of the stage may hold any record, and every
            // host must have been seen, so no hidden record can exist.
            let view = reach_of(&o, host);
            prop_assert!(view.is_some(), "once planned on a host convoy cannot work on");
            let fresh_start = view.is_some_and(|v| !v.once.contains_key(&s.release));
            if fresh_start {
                let any_record = st.hosts.iter().any(|h| match o.get(h) {
                    Some(Reach::Reachable(v)) => v.once.contains_key(&s.release),
                    _ => false,
                });
                prop_assert!(!any_record, "fresh once start although a record exists");
                prop_assert!(st.hosts.iter().all(|h| matches!(o.get(h), Some(Reach::Reachable(_)))));
            }
        }
    }

    #[test]
    fn cleanup_never_removes_current_previous_or_desired((s, o) in arb_fleet(), keep in 2usize..4) {
        for (host, reach) in &o {
            if let Reach::Reachable(v) = reach {
                let remove = releases_to_remove(v, &s.release, keep);
                prop_assert!(!remove.contains(&s.release), "{host}");
                prop_assert!(v.current.as_ref().is_none_or(|c| !remove.contains(c)));
                prop_assert!(v.previous.as_ref().is_none_or(|p| !remove.contains(p)));
                let kept = v.complete.keys().filter(|r| !remove.contains(r)).count();
                prop_assert!(kept >= keep.min(v.complete.len()));
                // Whatever goes is older than everything kept, protected releases aside.
                for gone in remove.iter().filter_map(|r| v.complete.get(r)) {
                    let newer_kept = v.complete.iter().filter(|(r, at)| !remove.contains(r) && *at >= gone).count();
                    prop_assert!(newer_kept >= keep, "removed a release among the newest {keep}");
                }
            }
        }
    }

    /// From any state, with every host reachable and nothing failing, passes converge:
    /// every host ends on the desired release, `once` ran at most once, and a further
    /// pass plans nothing.
    #[test]
    fn passes_converge_from_any_reachable_state((s, o) in arb_fleet()) {
        let healthy: Observed = o
            .into_iter()
            .map(|(h, r)| match r {
                Reach::Reachable(mut v) => {
                    v.locked_by = None;
                    v.once.clear();
                    (h, Reach::Reachable(v))
                }
                _ => (h, fresh()),
            })
            .collect();
        let mut sim = Sim::new(healthy);
        prop_assert_eq!(sim.run(&s), Outcome::Converged);
        for stage in &s.stages {
            for host in &stage.hosts {
                prop_assert_eq!(reach_of(&sim.observed, host).unwrap().current.as_deref(), Some(s.release.as_str()));
            }
        }
        prop_assert!(sim.once_runs.values().all(|n| *n <= 1));
        prop_assert!(sim.trail.values().flatten().all(|r| r == &s.release), "only the desired release ever goes live");
        let again = plan(&s, &sim.observed, &PassState::default());
        prop_assert_eq!(again, Plan::done(Outcome::Converged));
    }
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
            skipped: vec!["w2".into()]
        }
    );
}

#[test]
fn a_once_running_under_another_controller_blocks_instead_of_waiting_forever() {
    let s = site("r1", &[("scheduler", false, &["s1", "s2"], true)]);
    let mut o = observed(&[
        ("s1", live("r0", &["r0", "r1"])),
        ("s2", live("r0", &["r0", "r1"])),
    ]);
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
