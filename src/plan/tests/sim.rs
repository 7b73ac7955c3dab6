//! Whole passes against an in-memory model of the hosts: the planner's steps answered by
//! perfect hosts through `fold`, with what a real host would refuse checked on the way.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

// ------------------------------------------------------------------ simulation model

/// Applies a plan's steps to the in-memory hosts as a perfect executor would.
pub(super) struct Sim {
    pub(super) observed: Observed,
    pass: PassState,
    /// Runs of `once` per (release, stage).
    pub(super) once_runs: BTreeMap<(String, String), usize>,
    clock: u64,
    /// Every release each host's `current` ever pointed at, in order.
    pub(super) trail: BTreeMap<String, Vec<String>>,
}

impl Sim {
    pub(super) fn new(observed: Observed) -> Self {
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
        let reports = reports_of_success(step);
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
    pub(super) fn run(&mut self, site: &DesiredSite) -> Outcome {
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
                skipped: vec!["w2".into()],
                failed: vec![],
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
