//! `dependsOn`: a site switches only while every site it depends on is Converged on its own
//! desired release. Builds are safe and go ahead; `once` and every switch wait. What a
//! dependency "is" comes from its last recorded status ([`Dependency`]); this rule decides
//! what that means for the dependent, and never looks at the dependency's hosts.

use std::collections::BTreeMap;

use super::{Outcome, Plan, Step};
use crate::status::Phase;

/// A site this one depends on, as its last recorded status shows it to the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub site: String,
    /// The phase its status records; `None` when it was never reconciled.
    pub phase: Option<Phase>,
    /// The release that recorded status is about.
    pub recorded_release: Option<String>,
    /// The release its manifest asks for now.
    pub desired_release: String,
}

impl Dependency {
    /// Converged on the release its manifest asks for now. Degraded counts: every required
    /// host runs that release, only hosts of optional stages are missing.
    pub fn ready(&self) -> bool {
        self.phase.is_some_and(Phase::is_success)
            && self.recorded_release.as_deref() == Some(self.desired_release.as_str())
    }

    /// Will not become ready by itself: a person (or a returning host) must act first.
    pub fn stuck(&self) -> bool {
        matches!(
            self.phase,
            Some(Phase::Failed | Phase::Blocked | Phase::Suspended | Phase::Unmanaged)
        )
    }

    /// Where it stands, in words: `Progressing`, `Failed`, `Converged on r1, not yet on r2`.
    pub fn standing(&self) -> String {
        match (self.phase, &self.recorded_release) {
            (None, _) => "not reconciled yet".to_string(),
            (Some(phase), Some(release))
                if phase.is_success() && *release != self.desired_release =>
            {
                format!("{phase} on {release}, not yet on {}", self.desired_release)
            }
            (Some(phase), _) => phase.to_string(),
        }
    }
}

/// The one line status and `convoy plan` show: `switch waits for site licensing (Failed)`.
pub fn waiting_message(on: &[Dependency]) -> String {
    let sites: Vec<String> = on
        .iter()
        .map(|d| format!("site {} ({})", d.site, d.standing()))
        .collect();
    format!("switch waits for {}", sites.join(", "))
}

/// The order sites go live in: every site after the sites it depends on, otherwise by
/// name. `sites`: each site with its `dependsOn` (validation refused cycles; a site left in
/// one anyway comes last rather than never).
pub fn order<'a>(sites: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Vec<&'a str> {
    let mut left: BTreeMap<&str, Vec<&str>> = sites
        .into_iter()
        .map(|(name, deps)| (name, deps.iter().map(String::as_str).collect()))
        .collect();
    let mut ordered = vec![];
    while !left.is_empty() {
        let ready: Vec<&str> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(name, _)| *name)
            .collect();
        let next = if ready.is_empty() {
            left.keys().copied().collect()
        } else {
            ready
        };
        for name in next {
            left.remove(name);
            ordered.push(name);
        }
    }
    ordered
}

/// Holds `next` (the `once` or switch phase) while a dependency is not ready: builds have
/// run by now; anything that would make a release live waits.
pub(super) fn hold(next: Option<Plan>, dependencies: &[Dependency]) -> Option<Plan> {
    let goes_live = next.as_ref().is_some_and(|p| {
        p.steps
            .iter()
            .any(|s| matches!(s, Step::Once { .. } | Step::Switch { .. }))
    });
    let waiting: Vec<Dependency> = dependencies
        .iter()
        .filter(|d| !d.ready())
        .cloned()
        .collect();
    if goes_live && !waiting.is_empty() {
        return Some(Plan::done(Outcome::Waiting { on: waiting }));
    }
    next
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::tests::{live, observed, site};
    use crate::plan::{PassState, Reach, plan};

    fn dep(phase: Option<Phase>, recorded: Option<&str>) -> Dependency {
        Dependency {
            site: "licensing".into(),
            phase,
            recorded_release: recorded.map(str::to_string),
            desired_release: "l2".into(),
        }
    }

    #[test]
    fn only_a_success_on_the_desired_release_is_ready() {
        use Phase::*;
        // (phase, recorded release, ready, stuck, standing)
        let rows = [
            (Some(Converged), Some("l2"), true, false, "Converged"),
            (Some(Degraded), Some("l2"), true, false, "Degraded"),
            (
                Some(Converged),
                Some("l1"),
                false,
                false,
                "Converged on l1, not yet on l2",
            ),
            (Some(Progressing), Some("l2"), false, false, "Progressing"),
            (Some(Interrupted), Some("l2"), false, false, "Interrupted"),
            (Some(Failed), Some("l2"), false, true, "Failed"),
            (Some(Blocked), Some("l2"), false, true, "Blocked"),
            (Some(Suspended), Some("l2"), false, true, "Suspended"),
            (Some(Unmanaged), Some("l2"), false, true, "Unmanaged"),
            (None, None, false, false, "not reconciled yet"),
        ];
        for (phase, recorded, ready, stuck, standing) in rows {
            let d = dep(phase, recorded);
            assert_eq!(d.ready(), ready, "{d:?}");
            assert_eq!(d.stuck(), stuck, "{d:?}");
            assert_eq!(d.standing(), standing, "{d:?}");
        }
    }

    fn switch() -> Plan {
        Plan::progress(vec![Step::Switch {
            stage: "web".into(),
            hosts: vec!["w1".into()],
            pause: Duration::ZERO,
            cleanup: Default::default(),
        }])
    }

    #[test]
    fn once_and_switch_wait_builds_and_endings_pass() {
        let once = Plan::progress(vec![Step::Once {
            stage: "web".into(),
            host: "w1".into(),
        }]);
        let build = Plan::progress(vec![Step::Build { host: "w1".into() }]);
        let failed = Plan::done(Outcome::Failed {
            reason: "x".into(),
            host: None,
        });
        let progressing = dep(Some(Phase::Progressing), Some("l2"));
        let converged = dep(Some(Phase::Converged), Some("l2"));
        let waits = |d: &Dependency| {
            Some(Plan::done(Outcome::Waiting {
                on: vec![d.clone()],
            }))
        };
        // (next phase, dependencies, expected)
        let rows = [
            (Some(switch()), vec![], Some(switch())),
            (Some(switch()), vec![converged.clone()], Some(switch())),
            (
                Some(switch()),
                vec![progressing.clone()],
                waits(&progressing),
            ),
            (
                Some(switch()),
                vec![converged.clone(), progressing.clone()],
                waits(&progressing),
            ),
            (
                Some(once.clone()),
                vec![progressing.clone()],
                waits(&progressing),
            ),
            (Some(build.clone()), vec![progressing.clone()], Some(build)),
            (
                Some(failed.clone()),
                vec![progressing.clone()],
                Some(failed),
            ),
            (None, vec![progressing.clone()], None),
        ];
        for (next, deps, expected) in rows {
            assert_eq!(hold(next.clone(), &deps), expected, "{next:?} {deps:?}");
        }
    }

    #[test]
    fn sites_go_live_after_what_they_depend_on_else_by_name() {
        let deps = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (none, lic, shop_api) = (deps(&[]), deps(&["licensing"]), deps(&["shop", "api"]));
        let sites = [
            ("shop", &lic[..]),
            ("licensing", &none[..]),
            ("api", &none[..]),
            ("jobs", &shop_api[..]),
        ];
        assert_eq!(order(sites), vec!["api", "licensing", "shop", "jobs"]);
    }

    #[test]
    fn the_message_names_every_site_waited_for_and_where_it_stands() {
        let mut other = dep(None, None);
        other.site = "billing".into();
        let on = [dep(Some(Phase::Failed), Some("l2")), other];
        assert_eq!(
            waiting_message(&on),
            "switch waits for site licensing (Failed), site billing (not reconciled yet)"
        );
    }

    #[test]
    fn a_dependent_builds_then_waits_and_a_converged_one_stays_converged() {
        let s = site("r1", &[("web", false, &["w1"], false)]);
        let mut pass = PassState {
            dependencies: vec![dep(Some(Phase::Failed), Some("l2"))],
            ..PassState::default()
        };
        let fresh = observed(&[("w1", Reach::Reachable(Default::default()))]);
        let p = plan(&s, &fresh, &pass);
        assert_eq!(p.steps, vec![Step::Build { host: "w1".into() }]);
        let built = observed(&[("w1", live("r0", &["r0", "r1"]))]);
        let p = plan(&s, &built, &pass);
        assert!(p.steps.is_empty(), "{p:?}");
        assert!(matches!(p.outcome, Outcome::Waiting { .. }), "{p:?}");
        // Nothing left to switch: nothing waits.
        let on_r1 = observed(&[("w1", live("r1", &["r0", "r1"]))]);
        assert_eq!(plan(&s, &on_r1, &pass).outcome, Outcome::Converged);
        pass.dependencies = vec![dep(Some(Phase::Converged), Some("l2"))];
        let p = plan(&s, &built, &pass);
        assert!(matches!(p.steps[..], [Step::Switch { .. }]), "{p:?}");
    }
}
