//! Invariants over random fleets: whatever the hosts report, the rules never switch before
//! every required host built, go live out of stage order, start a second `once`, or clean up
//! what must stay; and passes converge.

use proptest::prelude::*;

use super::sim::Sim;
use super::*;

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

    /// `--host`: whatever the targets, steps that change hosts touch targeted hosts only,
    /// and the gate and the stage order hold over the whole site.
    #[test]
    fn host_targeting_changes_only_targeted_hosts_and_keeps_gate_and_order(
        (s, o) in arb_fleet(),
        mask in any::<u16>(),
    ) {
        let targets: std::collections::BTreeSet<String> = o
            .keys()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, h)| h.clone())
            .collect();
        let pass = PassState { targets: Some(targets.clone()), ..PassState::default() };
        let p = plan(&s, &o, &pass);
        for step in &p.steps {
            if matches!(step, Step::Once { .. }) {
                continue;
            }
            for host in step.hosts() {
                prop_assert!(targets.contains(host), "{step:?} on untargeted {host}");
            }
            if let Step::Switch { stage, .. } = step {
                for required in s.stages.iter().filter(|st| !st.optional) {
                    for host in &required.hosts {
                        let v = reach_of(&o, host);
                        prop_assert!(v.is_some_and(|v| v.complete.contains_key(&s.release)), "{host} not built");
                    }
                }
                let index = s.stages.iter().position(|st| &st.name == stage).unwrap();
                for earlier in &s.stages[..index] {
                    for host in &earlier.hosts {
                        if let Some(v) = reach_of(&o, host) {
                            prop_assert_eq!(v.current.as_deref(), Some(s.release.as_str()), "{} not live", host);
                            prop_assert!(v.pending.as_deref() != Some(s.release.as_str()), "{} unverified", host);
                        }
                    }
                }
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
