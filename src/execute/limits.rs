//! The concurrency limits that all hold at once:
//!
//! - `--max-sites`: sites being changed at once. A pass takes its site's slot before its
//!   first step that changes a host (build, once, switch, clean-up) and keeps it to the end
//!   of the pass; observing alone needs no slot, so a pass that finds nothing to do never
//!   waits for one.
//! - per round trip, in this order: the site's `rollout.maxParallel`, the host's build
//!   permit (`--max-builds-per-host`, build round trips only, catch-up builds included),
//!   the ServerGroup's `maxParallel`, the global `--max-parallel`.
//!
//! No deadlock: a site slot is only ever waited for while the pass holds no round-trip
//! permit, and round-trip permits are always taken in the one order above and given back
//! when the round trip ends. The order goes from what concerns the fewest (the site's own
//! hosts, then one host) to what the whole fleet shares, so a round trip waiting for a
//! narrow permit never sits on a wide one that others could use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{LimitReading, LimitSource};

/// The fleet-wide limits, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLimits {
    /// `--max-parallel`: hosts worked on at once, across all sites.
    pub max_parallel: usize,
    /// `--max-sites`: sites changed at once (build through switch); `None`: no limit.
    pub max_sites: Option<usize>,
    /// `--max-builds-per-host`: builds running at once on one host, whatever their site.
    pub max_builds_per_host: usize,
}

impl Default for FleetLimits {
    fn default() -> Self {
        FleetLimits {
            max_parallel: 32,
            max_sites: None,
            max_builds_per_host: 1,
        }
    }
}

/// Whether a round trip needs its host's build permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPermit {
    /// No build in it (observe, switch, `once`, clean-up).
    None,
    /// A build: wait for the permit.
    Wait,
    /// A build only if the host has a permit free right now (the observe round trip that
    /// builds where the release is missing); otherwise observe only.
    IfFree,
}

/// The permits one round trip holds; given back when dropped.
pub struct Permits {
    _held: Vec<OwnedSemaphorePermit>,
    /// The host's build permit is among them.
    pub may_build: bool,
}

/// One limit: its size (`None`: no limit) and the semaphore that counts its holders.
#[derive(Clone)]
struct Cap {
    limit: Option<usize>,
    semaphore: Arc<Semaphore>,
}

impl Cap {
    fn new(limit: Option<usize>) -> Self {
        let size = limit.map_or(Semaphore::MAX_PERMITS, |n| n.max(1));
        Cap {
            limit: limit.map(|n| n.max(1)),
            semaphore: Arc::new(Semaphore::new(size)),
        }
    }

    fn size(&self) -> usize {
        self.limit.unwrap_or(Semaphore::MAX_PERMITS)
    }

    fn in_use(&self) -> usize {
        self.size()
            .saturating_sub(self.semaphore.available_permits())
    }

    /// This cap, or `old`'s when it has the same size: holders under the old desired
    /// state keep counting toward it.
    fn or_same(self, old: Option<&Cap>) -> Cap {
        match old {
            Some(old) if old.limit == self.limit => old.clone(),
            _ => self,
        }
    }

    async fn take(&self) -> OwnedSemaphorePermit {
        self.semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }
}

/// Every limit of one desired state. Cheap to clone: clones count toward the same caps.
#[derive(Clone)]
pub struct Limits {
    global: Cap,
    sites: Cap,
    max_builds_per_host: usize,
    /// Per host: its build permits.
    builds: BTreeMap<String, Cap>,
    /// Per ServerGroup used by a site: its `maxParallel` (`None`: no limit, still counted).
    groups: BTreeMap<String, Cap>,
    /// Per Site: its `rollout.maxParallel` (one pass per site at a time holds it).
    site_caps: BTreeMap<String, Cap>,
}

impl Limits {
    /// `groups`: every ServerGroup a site uses, with its `maxParallel` if it has one.
    pub fn new<'h>(
        fleet: &FleetLimits,
        groups: &BTreeMap<String, Option<usize>>,
        hosts: impl IntoIterator<Item = &'h String>,
    ) -> Self {
        let per_host = Some(fleet.max_builds_per_host);
        Limits {
            global: Cap::new(Some(fleet.max_parallel)),
            sites: Cap::new(fleet.max_sites),
            max_builds_per_host: fleet.max_builds_per_host.max(1),
            builds: hosts
                .into_iter()
                .map(|h| (h.clone(), Cap::new(per_host)))
                .collect(),
            groups: groups
                .iter()
                .map(|(g, n)| (g.clone(), Cap::new(*n)))
                .collect(),
            site_caps: BTreeMap::new(),
        }
    }

    /// These limits with each Site's `rollout.maxParallel` (`sites`: name -> cap), keeping
    /// the caps of `old` whose size did not change (a pass under way keeps counting).
    pub fn with_sites(mut self, sites: &BTreeMap<String, usize>, old: Option<&Limits>) -> Self {
        self.site_caps = sites
            .iter()
            .map(|(name, n)| {
                let cap = Cap::new(Some(*n)).or_same(old.and_then(|o| o.site_caps.get(name)));
                (name.clone(), cap)
            })
            .collect();
        self
    }

    /// The semaphore of `site`'s `rollout.maxParallel`: its own one for a site these
    /// limits do not know (a test, a pass started before a reload removed it).
    pub fn site_cap(&self, site: &str, max_parallel: usize) -> Arc<Semaphore> {
        match self.site_caps.get(site) {
            Some(cap) => cap.semaphore.clone(),
            None => Arc::new(Semaphore::new(max_parallel.max(1))),
        }
    }

    /// The limits of a new desired state, keeping every cap whose size did not change:
    /// passes still running under the old state keep counting toward the same caps.
    pub fn carried_over<'h>(
        &self,
        fleet: &FleetLimits,
        groups: &BTreeMap<String, Option<usize>>,
        hosts: impl IntoIterator<Item = &'h String>,
    ) -> Self {
        let next = Limits::new(fleet, groups, hosts);
        let keep = |caps: BTreeMap<String, Cap>, old: &BTreeMap<String, Cap>| {
            caps.into_iter()
                .map(|(name, cap)| {
                    let cap = cap.or_same(old.get(&name));
                    (name, cap)
                })
                .collect()
        };
        Limits {
            global: next.global.or_same(Some(&self.global)),
            sites: next.sites.or_same(Some(&self.sites)),
            max_builds_per_host: next.max_builds_per_host,
            builds: keep(next.builds, &self.builds),
            groups: keep(next.groups, &self.groups),
            site_caps: BTreeMap::new(),
        }
    }

    /// A site slot if one is free now.
    pub fn try_site_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.sites.semaphore.clone().try_acquire_owned().ok()
    }

    /// Waits for a site slot. Call only while holding no round-trip permit.
    pub async fn site_slot(&self) -> OwnedSemaphorePermit {
        self.sites.take().await
    }

    /// Takes one round trip's permits on `host` of `group`, in the documented order.
    pub async fn acquire(
        &self,
        site: &Arc<Semaphore>,
        host: &str,
        group: &str,
        build: BuildPermit,
    ) -> Permits {
        let mut held = vec![site.clone().acquire_owned().await.expect("never closed")];
        let may_build = match self.builds.get(host) {
            Some(cap) => {
                let permit = match build {
                    BuildPermit::None => None,
                    BuildPermit::Wait => Some(cap.take().await),
                    BuildPermit::IfFree => cap.semaphore.clone().try_acquire_owned().ok(),
                };
                let taken = permit.is_some();
                held.extend(permit);
                taken
            }
            // A host unknown to these limits (never in practice): nothing to count it in.
            None => build != BuildPermit::None,
        };
        if let Some(cap) = self.groups.get(group) {
            held.push(cap.take().await);
        }
        held.push(self.global.take().await);
        Permits {
            _held: held,
            may_build,
        }
    }
}

impl LimitSource for Limits {
    fn readings(&self) -> Vec<LimitReading> {
        let busiest = self.builds.values().map(Cap::in_use).max().unwrap_or(0);
        let mut readings = vec![
            LimitReading::fleet("max_parallel", self.global.limit, self.global.in_use()),
            LimitReading::fleet("max_sites", self.sites.limit, self.sites.in_use()),
            LimitReading::fleet(
                "max_builds_per_host",
                Some(self.max_builds_per_host),
                busiest,
            ),
        ];
        readings.extend(
            self.groups
                .iter()
                .map(|(name, cap)| LimitReading::group(name, cap.limit, cap.in_use())),
        );
        readings.extend(
            self.site_caps
                .iter()
                .map(|(name, cap)| LimitReading::site(name, cap.limit, cap.in_use())),
        );
        readings
    }
}

/// Every ServerGroup the sites use, with its `maxParallel` if it has one.
pub fn groups_in_use(desired: &crate::desired::DesiredState) -> BTreeMap<String, Option<usize>> {
    let used: BTreeSet<&String> = desired
        .sites
        .values()
        .flat_map(|s| s.stages.iter().map(|st| &st.group))
        .chain(desired.group_limits.keys())
        .collect();
    used.into_iter()
        .map(|g| (g.clone(), desired.group_limits.get(g).copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn groups(web: usize) -> BTreeMap<String, Option<usize>> {
        BTreeMap::from([
            ("web".to_string(), Some(web)),
            ("db".to_string(), Some(1)),
            ("free".to_string(), None),
        ])
    }

    fn hosts() -> Vec<String> {
        vec!["h1".into(), "h2".into()]
    }

    fn fleet(max_parallel: usize) -> FleetLimits {
        FleetLimits {
            max_parallel,
            max_sites: Some(2),
            max_builds_per_host: 1,
        }
    }

    #[test]
    fn unchanged_limits_survive_a_reload() {
        let before = Limits::new(&fleet(8), &groups(2), &hosts());
        let same = before.carried_over(&fleet(8), &groups(2), &hosts());
        assert!(Arc::ptr_eq(
            &before.global.semaphore,
            &same.global.semaphore
        ));
        assert!(Arc::ptr_eq(&before.sites.semaphore, &same.sites.semaphore));
        assert!(Arc::ptr_eq(
            &before.builds["h1"].semaphore,
            &same.builds["h1"].semaphore
        ));
        assert!(Arc::ptr_eq(
            &before.groups["web"].semaphore,
            &same.groups["web"].semaphore
        ));
        let changed = before.carried_over(&fleet(4), &groups(3), &hosts());
        assert!(
            !Arc::ptr_eq(&before.global.semaphore, &changed.global.semaphore),
            "a new global cap starts fresh"
        );
        assert!(!Arc::ptr_eq(
            &before.groups["web"].semaphore,
            &changed.groups["web"].semaphore
        ));
        assert!(
            Arc::ptr_eq(
                &before.groups["db"].semaphore,
                &changed.groups["db"].semaphore
            ),
            "an untouched group keeps its cap"
        );
        assert_eq!(changed.groups["web"].limit, Some(3));
    }

    fn reading(limits: &Limits, limit: &str) -> (Option<usize>, usize) {
        let r = limits
            .readings()
            .into_iter()
            .find(|r| r.limit == limit && r.group.is_none())
            .unwrap();
        (r.cap, r.in_use)
    }

    #[tokio::test]
    async fn a_build_permit_is_taken_only_for_builds_and_counted() {
        let limits = Limits::new(&fleet(8), &groups(2), &hosts());
        let site = Arc::new(Semaphore::new(10));
        let build = limits.acquire(&site, "h1", "web", BuildPermit::Wait).await;
        assert!(build.may_build);
        assert_eq!(reading(&limits, "max_builds_per_host"), (Some(1), 1));
        // Observing or switching the same host needs no build permit.
        let observe = limits.acquire(&site, "h1", "web", BuildPermit::None).await;
        assert!(!observe.may_build);
        // An observe that would build if it could: the permit is taken, so it only observes.
        let speculative = limits
            .acquire(&site, "h1", "free", BuildPermit::IfFree)
            .await;
        assert!(!speculative.may_build);
        assert_eq!(reading(&limits, "max_parallel"), (Some(8), 3));
        let group = |name: &str| {
            let r = limits.readings();
            let r = r.iter().find(|r| r.group.as_deref() == Some(name)).unwrap();
            (r.cap, r.in_use)
        };
        assert_eq!(group("web"), (Some(2), 2));
        assert_eq!(
            group("free"),
            (None, 1),
            "a group without a limit is counted"
        );
        // A second build on h1 waits until the first ends.
        let second = limits.acquire(&site, "h1", "db", BuildPermit::Wait);
        tokio::pin!(second);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "two builds on one host at once");
        drop(build);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(second.is_ok_and(|p| p.may_build));
        drop((observe, speculative));
        assert_eq!(reading(&limits, "max_parallel"), (Some(8), 0));
    }

    #[tokio::test]
    async fn site_slots_are_bounded_and_unlimited_when_unset() {
        let limits = Limits::new(&fleet(8), &groups(2), &hosts());
        let a = limits.try_site_slot().unwrap();
        let _b = limits.site_slot().await;
        assert!(limits.try_site_slot().is_none());
        assert_eq!(reading(&limits, "max_sites"), (Some(2), 2));
        drop(a);
        assert!(limits.try_site_slot().is_some());
        let unlimited = Limits::new(&FleetLimits::default(), &groups(2), &hosts());
        let slots: Vec<_> = (0..100).map(|_| unlimited.try_site_slot()).collect();
        assert!(slots.iter().all(Option::is_some));
        assert_eq!(reading(&unlimited, "max_sites"), (None, 100));
    }
}
