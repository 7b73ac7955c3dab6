//! `reconcile --once --host NAME`: a run that changes only the hosts it names (typically a
//! server that was off and catches up with a fleet that already converged). Every host of
//! the site is still observed, because the rules need the whole site: the two-phase gate
//! (every required host built), whether `once` already ran, and the stage order.
//!
//! What the rule says, and where the other rules honour it:
//! - build, switch, rollback and clean-up only on targeted hosts (`builds.rs`, `switch.rs`,
//!   `cleanup.rs`; a rollback only touches hosts this attempt switched);
//! - the gate stays whole: a required host this run may not build and that lacks the build
//!   keeps it shut ([`unbuilt`]): Blocked, no `once`, nothing switches;
//! - `once` runs where it always does, once the gate is open, when the run targets its
//!   whole stage; otherwise the release never went live there and the targeted hosts wait
//!   ([`once_follows`]): migrations run for a deploy, not for a catch-up;
//! - stage order stays whole: a targeted host never goes live while an earlier stage has a
//!   host not live on the desired release ([`stage_order`]); it waits (Blocked) instead;
//! - a targeted host follows its stage, never leads it: while `--host` leaves hosts of the
//!   stage alone, it switches only to a release one of them already runs
//!   ([`follows_the_fleet`]). A release a controller rolled back and holds Failed runs on
//!   none of them, and a run with another state dir (the boot catch-up) cannot see the hold;
//! - the outcome (and so the exit code) is the targeted hosts' (`settled` in `mod.rs`).
//!
//! The waits here name hosts that are reachable: only another run can change them, so
//! `--once` reports them at once rather than retrying.

use super::switch::to_switch;
use super::{Member, Outcome, PassState, Plan, host_names};
use crate::desired::{DesiredSite, DesiredStage};

/// Whether this run may change `host` (every host when no `--host` was given).
pub fn targeted(pass: &PassState, host: &str) -> bool {
    pass.targets
        .as_ref()
        .is_none_or(|targets| targets.contains(host))
}

/// The gate for hosts this run may not build: each required one must have the build already.
pub(super) fn unbuilt(site: &DesiredSite, members: &[Member]) -> Option<Plan> {
    let missing: Vec<&Member> = members
        .iter()
        .filter(|m| !m.targeted && !m.optional)
        .filter(|m| {
            m.workable()
                .is_some_and(|v| !v.complete.contains_key(&site.release))
        })
        .collect();
    (!missing.is_empty()).then(|| {
        Plan::done(Outcome::Blocked {
            hosts: host_names(&missing),
            reason: format!(
                "waiting for required hosts that --host leaves alone to build {} (nothing switches before every required host has built; add them with --host or run without it)",
                site.release
            ),
        })
    })
}

/// `stage` still has hosts to switch, none of them targeted (`others`): a targeted host of a
/// later stage that is not live waits for them; with none, there is nothing to wait for.
pub(super) fn stage_order(
    site: &DesiredSite,
    stage: &DesiredStage,
    others: &[&Member],
    members: &[Member],
) -> Option<Plan> {
    let later: Vec<&str> = site
        .stages
        .iter()
        .skip_while(|s| s.name != stage.name)
        .skip(1)
        .map(|s| s.name.as_str())
        .collect();
    let waiting: Vec<&Member> = members
        .iter()
        .filter(|m| m.targeted && later.contains(&m.stage) && to_switch(m, &site.release))
        .collect();
    (!waiting.is_empty()).then(|| {
        Plan::done(Outcome::Blocked {
            hosts: host_names(others),
            reason: format!(
                "{} wait{}: stage `{}` goes live on {} first (convoy never switches out of stage order) and --host leaves these hosts of it alone",
                host_names(&waiting).join(", "),
                if waiting.len() == 1 { "s" } else { "" },
                stage.name,
                site.release
            ),
        })
    })
}

/// `once` has not run for the release on a stage `--host` leaves hosts of alone: the release
/// never went live there, so the targeted hosts have nothing to follow; they wait, and the
/// `once` commands (migrations) wait for a run that deploys the whole stage.
pub(super) fn once_follows(members: &[Member], once: Option<Plan>) -> Option<Plan> {
    let plan = once?;
    let stage = plan.steps.iter().find_map(|s| match s {
        super::Step::Once { stage, .. } => Some(stage.as_str()),
        _ => None,
    });
    let Some(stage) = stage else {
        return Some(plan);
    };
    if members.iter().all(|m| m.stage != stage || m.targeted) {
        return Some(plan);
    }
    let targeted: Vec<&Member> = members.iter().filter(|m| m.targeted).collect();
    Some(Plan::done(Outcome::Blocked {
        hosts: host_names(&targeted),
        reason: format!(
            "the release has not gone live on stage `{stage}` (its `once` has not run): --host catches a host up to a release its stage already runs (deploy it without --host first)"
        ),
    }))
}

/// `pending`: targeted hosts of `stage` to switch. While the run leaves other hosts of the
/// stage alone and none of those is live (and verified) on the desired release, they wait:
/// `--host` catches a host up, it does not lead its stage onto a release.
pub(super) fn follows_the_fleet(
    site: &DesiredSite,
    stage: &DesiredStage,
    pending: &[&Member],
    members: &[Member],
) -> Option<Plan> {
    let left_alone: Vec<&Member> = members
        .iter()
        .filter(|m| m.stage == stage.name && !m.targeted)
        .collect();
    let runs_it = |m: &&Member| {
        m.view().is_some_and(|v| {
            v.current.as_deref() == Some(&site.release)
                && v.pending.as_deref() != Some(&site.release)
        })
    };
    if left_alone.is_empty() || left_alone.iter().any(runs_it) {
        return None;
    }
    let hosts = host_names(pending);
    Some(Plan::done(Outcome::Blocked {
        reason: format!(
            "{} wait{}: --host catches a host up to a release its stage already runs, and no other host of stage `{}` runs {} (deploy it without --host first)",
            hosts.join(", "),
            if pending.len() == 1 { "s" } else { "" },
            stage.name,
            site.release
        ),
        hosts,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::tests::{live, observed, site};
    use super::super::{Observed, Outcome, PassState, Reach, Step, plan};
    use crate::desired::DesiredSite;

    fn only(hosts: &[&str]) -> PassState {
        PassState {
            targets: Some(hosts.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>()),
            ..PassState::default()
        }
    }

    fn unbuilt() -> Reach {
        Reach::Reachable(Default::default())
    }

    fn down() -> Reach {
        Reach::Unreachable {
            reason: "connection refused".into(),
        }
    }

    /// scheduler (s1, s2, `once`) then an optional frontend (w1, w2); desired r2.
    fn fleet() -> DesiredSite {
        site(
            "r2",
            &[
                ("scheduler", false, &["s1", "s2"], true),
                ("frontend", true, &["w1", "w2"], false),
            ],
        )
    }

    fn switch(stage: &str, hosts: &[&str]) -> Step {
        Step::Switch {
            stage: stage.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            pause: std::time::Duration::ZERO,
            cleanup: Default::default(),
        }
    }

    fn blocked_on(hosts: &[&str]) -> impl Fn(&Outcome) -> bool {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        move |o| matches!(o, Outcome::Blocked { hosts: h, .. } if *h == hosts)
    }

    /// A host that was off while r2 went live everywhere else.
    fn caught_up_elsewhere(offline: Reach) -> Observed {
        let mut o = observed(&[
            ("s1", live("r2", &["r1", "r2"])),
            ("s2", live("r2", &["r1", "r2"])),
            ("w1", live("r2", &["r1", "r2"])),
            ("w2", offline),
        ]);
        if let Some(Reach::Reachable(v)) = o.get_mut("s1") {
            v.once
                .insert("r2".into(), super::super::OnceState::Done { status: 0 });
        }
        o
    }

    #[test]
    fn steps_and_outcomes_under_host_targeting() {
        let ok = |o: &Outcome| *o == Outcome::Converged;
        let progressing = |o: &Outcome| *o == Outcome::Progressing;
        // (case, observed, targets, expected steps, expected outcome)
        type Check = Box<dyn Fn(&Outcome) -> bool>;
        let rows: Vec<(&str, Observed, PassState, Vec<Step>, Check)> = vec![
            (
                "an offline host back builds, alone, without `once` again",
                caught_up_elsewhere(live("r1", &["r1"])),
                only(&["w2"]),
                vec![Step::Build { host: "w2".into() }],
                Box::new(progressing),
            ),
            (
                "then it switches, alone",
                caught_up_elsewhere(live("r1", &["r1", "r2"])),
                only(&["w2"]),
                vec![switch("frontend", &["w2"])],
                Box::new(progressing),
            ),
            (
                "once it runs r2, the targeted outcome is Converged",
                caught_up_elsewhere(live("r2", &["r1", "r2"])),
                only(&["w2"]),
                vec![],
                Box::new(ok),
            ),
            (
                "r2 built everywhere, `once` done, but no other frontend host runs it (a controller rolled it back and holds it): w2 does not lead its stage onto r2",
                {
                    let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
                    o.insert("w1".into(), live("r1", &["r1", "r2"]));
                    o
                },
                only(&["w2"]),
                vec![],
                Box::new(blocked_on(&["w2"])),
            ),
            (
                "every host of the stage targeted: a full run of it, nothing to follow",
                {
                    let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
                    o.insert("w1".into(), live("r1", &["r1", "r2"]));
                    o
                },
                only(&["w1", "w2"]),
                vec![switch("frontend", &["w1", "w2"])],
                Box::new(progressing),
            ),
            (
                "a fresh release: untargeted required hosts lack the build, the gate stays shut, no `once`",
                observed(&[
                    ("s1", live("r1", &["r1"])),
                    ("s2", live("r1", &["r1", "r2"])),
                    ("w1", live("r1", &["r1"])),
                    ("w2", live("r1", &["r1"])),
                ]),
                only(&["s2"]),
                vec![],
                Box::new(blocked_on(&["s1"])),
            ),
            (
                "only the targeted hosts build; untargeted hosts are never built",
                observed(&[
                    ("s1", live("r1", &["r1"])),
                    ("s2", live("r1", &["r1"])),
                    ("w1", live("r1", &["r1"])),
                    ("w2", live("r1", &["r1"])),
                ]),
                only(&["s2", "w1"]),
                vec![
                    Step::Build { host: "s2".into() },
                    Step::Build { host: "w1".into() },
                ],
                Box::new(progressing),
            ),
            (
                "gate open but r2 never went live (its `once` has not run): w2 has nothing to follow, no `once`",
                observed(&[
                    ("s1", live("r1", &["r1", "r2"])),
                    ("s2", live("r1", &["r1", "r2"])),
                    ("w1", live("r1", &["r1"])),
                    ("w2", live("r1", &["r1", "r2"])),
                ]),
                only(&["w2"]),
                vec![],
                Box::new(blocked_on(&["w2"])),
            ),
            (
                "the whole `once` stage targeted: `once` runs where it always does",
                observed(&[
                    ("s1", live("r1", &["r1", "r2"])),
                    ("s2", live("r1", &["r1", "r2"])),
                    ("w1", live("r1", &["r1"])),
                    ("w2", live("r1", &["r1", "r2"])),
                ]),
                only(&["s1", "s2"]),
                vec![Step::Once {
                    stage: "scheduler".into(),
                    host: "s1".into(),
                }],
                Box::new(progressing),
            ),
            (
                "a stage-2 host waits while stage 1 is not live, naming what it waits for",
                {
                    let mut o = observed(&[
                        ("s1", live("r1", &["r1", "r2"])),
                        ("s2", live("r2", &["r1", "r2"])),
                        ("w1", live("r1", &["r1"])),
                        ("w2", live("r1", &["r1", "r2"])),
                    ]);
                    if let Some(Reach::Reachable(v)) = o.get_mut("s1") {
                        v.once
                            .insert("r2".into(), super::super::OnceState::Done { status: 0 });
                    }
                    o
                },
                only(&["w2"]),
                vec![],
                Box::new(blocked_on(&["s1"])),
            ),
            (
                "an unverified switch in stage 1 is not live either",
                {
                    let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
                    if let Some(Reach::Reachable(v)) = o.get_mut("s2") {
                        v.pending = Some("r2".into());
                    }
                    o
                },
                only(&["w2"]),
                vec![],
                Box::new(blocked_on(&["s2"])),
            ),
            (
                "a stage-1 host switches though stage 2 is untouched: exit reflects it alone",
                {
                    let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
                    o.insert("s2".into(), live("r1", &["r1", "r2"]));
                    o
                },
                only(&["s2"]),
                vec![switch("scheduler", &["s2"])],
                Box::new(progressing),
            ),
            (
                "an untargeted optional host that is down changes nothing: Converged",
                caught_up_elsewhere(down()),
                only(&["w1"]),
                vec![],
                Box::new(ok),
            ),
            (
                "a targeted optional host that is down: Degraded, naming it",
                caught_up_elsewhere(down()),
                only(&["w2"]),
                vec![],
                Box::new(
                    |o: &Outcome| matches!(o, Outcome::Degraded { skipped, .. } if skipped == &["w2"]),
                ),
            ),
            (
                "an untargeted required host that is down keeps the gate shut (retried)",
                {
                    let mut o = caught_up_elsewhere(live("r1", &["r1"]));
                    o.insert("s1".into(), down());
                    o
                },
                only(&["w2"]),
                vec![Step::Build { host: "w2".into() }],
                Box::new(progressing),
            ),
            (
                "clean-up only where targeted",
                {
                    let mut o = caught_up_elsewhere(live("r2", &["r0", "r1", "r2"]));
                    o.insert("w1".into(), live("r2", &["q", "r0", "r1", "r2"]));
                    o
                },
                only(&["w2"]),
                vec![],
                Box::new(ok),
            ),
            (
                "no targets: the whole site, as ever (clean-up on w1)",
                {
                    let mut o = caught_up_elsewhere(live("r2", &["r1", "r2"]));
                    o.insert("w1".into(), live("r2", &["q", "r0", "r1", "r2"]));
                    o
                },
                PassState::default(),
                vec![Step::Cleanup {
                    host: "w1".into(),
                    remove: vec!["q".into()],
                }],
                Box::new(progressing),
            ),
        ];
        let s = fleet();
        for (case, o, pass, steps, outcome) in rows {
            let p = plan(&s, &o, &pass);
            assert_eq!(p.steps, steps, "{case}");
            assert!(outcome(&p.outcome), "{case}: {:?}", p.outcome);
        }
    }

    #[test]
    fn an_untargeted_required_host_that_is_down_blocks_the_switch() {
        let s = fleet();
        let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
        o.insert("s1".into(), down());
        let p = plan(&s, &o, &only(&["w2"]));
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(
            matches!(&p.outcome, Outcome::Blocked { hosts, reason } if hosts == &["s1"] && reason.contains("unreachable")),
            "{:?}",
            p.outcome
        );
    }

    #[test]
    fn the_waits_name_what_the_targeted_host_waits_for() {
        let s = fleet();
        let mut o = caught_up_elsewhere(live("r1", &["r1", "r2"]));
        if let Some(Reach::Reachable(v)) = o.get_mut("s1") {
            v.current = Some("r1".into());
        }
        let Outcome::Blocked { reason, .. } = plan(&s, &o, &only(&["w2"])).outcome else {
            panic!("not blocked")
        };
        assert!(
            reason.starts_with("w2 waits: stage `scheduler` goes live on r2 first"),
            "{reason}"
        );
        let fresh = observed(&[
            ("s1", live("r1", &["r1"])),
            ("s2", live("r1", &["r1"])),
            ("w1", live("r1", &["r1"])),
            ("w2", live("r1", &["r1", "r2"])),
        ]);
        let Outcome::Blocked { hosts, reason } = plan(&s, &fresh, &only(&["w2"])).outcome else {
            panic!("not blocked")
        };
        assert_eq!(hosts, ["s1", "s2"]);
        assert!(reason.contains("leaves alone to build r2"), "{reason}");
    }

    #[test]
    fn no_targets_means_every_host() {
        assert!(super::targeted(&PassState::default(), "anything"));
        assert!(super::targeted(&only(&["a"]), "a"));
        assert!(!super::targeted(&only(&["a"]), "b"));
    }

    #[test]
    fn untargeted_hosts_are_never_unbuilt_blockers_when_built() {
        // The two-phase gate counts builds, not targets: built untargeted hosts let it open.
        let s = fleet();
        let o = caught_up_elsewhere(unbuilt());
        let p = plan(&s, &o, &only(&["w2"]));
        assert_eq!(p.steps, vec![Step::Build { host: "w2".into() }]);
    }
}
