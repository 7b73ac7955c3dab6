//! `dependsOn` in the loop: which sites wait for which (their last pass ended Waiting), and
//! who runs again when a pass ends. A dependent runs again at once when a site it waits for
//! ends a pass with no retry pending (the daemon: a fixed dependency releases its dependents
//! without a restart); `--once` keeps a dependent open while a site it waits for still has a
//! pass to come in this run, and closes it, exit 1 naming that site, when none has.
//! What waits, and for what, is the planner's rule (`plan/depends.rs`); this only schedules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::dependencies;
use super::run::Controller;
use crate::desired::DesiredSite;
use crate::plan::{Dependency, Outcome};

/// Sites whose last pass ended waiting, with the sites they wait for, and those of them
/// parked: their next pass comes when a site they wait for ends one.
#[derive(Debug, Default)]
pub struct Dependents {
    waiting: BTreeMap<String, BTreeSet<String>>,
    parked: BTreeSet<String>,
}

impl Dependents {
    /// Whether `site` is parked: it has a pass to come, after a site it waits for.
    pub fn parked(&self, site: &str) -> bool {
        self.parked.contains(site)
    }

    /// Records how `site`'s pass ended: waiting for the sites `on`, or not waiting (`None`).
    pub fn record(&mut self, site: &str, on: Option<&[Dependency]>) {
        self.parked.remove(site);
        match on {
            Some(on) => {
                let sites = on.iter().map(|d| d.site.clone()).collect();
                self.waiting.insert(site.to_string(), sites);
            }
            None => {
                self.waiting.remove(site);
            }
        }
    }

    /// A pass of `site` ended with no pass of it to come: the sites that waited for it,
    /// which run again now (and are forgotten until they wait again).
    pub fn released_by(&mut self, site: &str) -> Vec<String> {
        let released: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, on)| on.contains(site))
            .map(|(dependent, _)| dependent.clone())
            .collect();
        for dependent in &released {
            self.waiting.remove(dependent);
            self.parked.remove(dependent);
        }
        released
    }
}

/// What becomes of a site whose pass ended waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Not waiting, or waiting for sites that will not move in this run: the site is done.
    Done,
    /// A site it waits for has a pass to come: it runs again after that one.
    Parked,
    /// A site it waits for changed while its pass ran: it runs again now.
    Again,
}

/// `on`: what the pass waited for; `now`: those sites' records today (not ready ones);
/// `pending`: whether a site still has a pass to come.
pub fn decide(on: &[Dependency], now: &[Dependency], pending: impl Fn(&str) -> bool) -> Wait {
    if on != now {
        Wait::Again
    } else if on.iter().any(|d| pending(&d.site)) {
        Wait::Parked
    } else {
        Wait::Done
    }
}

impl Controller<'_> {
    /// After `site`'s pass: whether it waits for a dependency, and what becomes of it.
    /// [`Wait::Again`] queues it again (`again`: when it runs again). Nothing once the run
    /// is stopping. Call before [`Controller::release_dependents`].
    pub(super) fn after_dependencies(
        &mut self,
        site: &DesiredSite,
        outcome: &Outcome,
        again: &mut Option<Instant>,
        now: Instant,
    ) -> Wait {
        if self.stopped() {
            return Wait::Done;
        }
        let Outcome::Waiting { on } = outcome else {
            self.dependents.record(&site.name, None);
            return Wait::Done;
        };
        self.dependents.record(&site.name, Some(on));
        let releases = self
            .desired
            .as_ref()
            .map(|d| d.releases.clone())
            .unwrap_or_default();
        let today: Vec<Dependency> = dependencies(site, &releases, &self.state)
            .into_iter()
            .filter(|d| !d.ready())
            .collect();
        // A parked site has a pass to come too: a chain waits for its first link.
        let pending = |s: &str| self.queue.pending(s) || self.dependents.parked(s);
        let wait = decide(on, &today, pending);
        match wait {
            Wait::Again => {
                self.queue.enqueue(&site.name);
                *again = Some(now);
            }
            Wait::Parked => drop(self.dependents.parked.insert(site.name.clone())),
            Wait::Done => {}
        }
        wait
    }

    /// `site`'s pass ended with no pass of it to come (no retry, not parked): the sites
    /// waiting for it run again now.
    pub(super) fn release_dependents(&mut self, site: &str) {
        for dependent in self.dependents.released_by(site) {
            self.queue.enqueue(&dependent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;

    fn dep(site: &str, phase: Phase) -> Dependency {
        Dependency {
            site: site.into(),
            phase: Some(phase),
            recorded_release: Some("r2".into()),
            desired_release: "r2".into(),
        }
    }

    #[test]
    fn a_dependent_is_done_parked_or_run_again() {
        let progressing = dep("licensing", Phase::Progressing);
        let failed = dep("licensing", Phase::Failed);
        let on = [progressing.clone()];
        // (records now, licensing has a pass to come, expected)
        let rows = [
            (vec![progressing.clone()], true, Wait::Parked),
            (vec![progressing.clone()], false, Wait::Done),
            (vec![failed.clone()], false, Wait::Again),
            // Converged meanwhile: no longer among the not-ready ones.
            (vec![], false, Wait::Again),
            (vec![], true, Wait::Again),
        ];
        for (now, pending, expected) in rows {
            assert_eq!(
                decide(&on, &now, |_| pending),
                expected,
                "{now:?} {pending}"
            );
        }
    }

    #[test]
    fn a_pass_that_ends_releases_the_sites_waiting_for_it_once() {
        let mut dependents = Dependents::default();
        dependents.record("shop", Some(&[dep("licensing", Phase::Progressing)]));
        dependents.record(
            "jobs",
            Some(&[
                dep("billing", Phase::Failed),
                dep("licensing", Phase::Progressing),
            ]),
        );
        dependents.record("api", Some(&[dep("billing", Phase::Failed)]));
        assert_eq!(dependents.released_by("licensing"), vec!["jobs", "shop"]);
        assert_eq!(dependents.released_by("licensing"), Vec::<String>::new());
        // A site whose pass no longer waits is not released.
        dependents.record("api", None);
        assert_eq!(dependents.released_by("billing"), Vec::<String>::new());
    }

    #[test]
    fn a_parked_site_stays_parked_until_released_or_its_next_pass() {
        let mut dependents = Dependents::default();
        dependents.record("shop", Some(&[dep("licensing", Phase::Progressing)]));
        dependents.parked.insert("shop".into());
        assert!(dependents.parked("shop"));
        dependents.record("shop", Some(&[dep("licensing", Phase::Progressing)]));
        assert!(!dependents.parked("shop"), "a new pass decides again");
        dependents.parked.insert("shop".into());
        dependents.released_by("licensing");
        assert!(!dependents.parked("shop"));
    }
}
