//! The three concurrency limits that hold at once: the whole run, each site, each
//! ServerGroup. Permits are always taken in the same order (site, group, global), so two
//! passes can never wait on each other.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct Limits {
    global: (usize, Arc<Semaphore>),
    groups: BTreeMap<String, (usize, Arc<Semaphore>)>,
}

impl Limits {
    pub fn new(global: usize, groups: &BTreeMap<String, usize>) -> Self {
        let cap = |n: usize| (n.max(1), Arc::new(Semaphore::new(n.max(1))));
        Limits {
            global: cap(global),
            groups: groups.iter().map(|(g, n)| (g.clone(), cap(*n))).collect(),
        }
    }

    /// The limits of a new desired state, keeping every semaphore whose size did not change:
    /// passes still running under the old state keep counting toward the same caps.
    pub fn carried_over(&self, global: usize, groups: &BTreeMap<String, usize>) -> Self {
        let mut next = Limits::new(global, groups);
        if self.global.0 == next.global.0 {
            next.global = self.global.clone();
        }
        for (group, limit) in &mut next.groups {
            if let Some(old) = self.groups.get(group).filter(|old| old.0 == limit.0) {
                *limit = old.clone();
            }
        }
        next
    }

    /// Takes the site, group and global permits, in that order everywhere (no deadlock).
    pub async fn acquire(&self, site: &Arc<Semaphore>, group: &str) -> Vec<OwnedSemaphorePermit> {
        let take = |s: &Arc<Semaphore>| s.clone().acquire_owned();
        let mut permits = vec![take(site).await.expect("never closed")];
        if let Some((_, group)) = self.groups.get(group) {
            permits.push(take(group).await.expect("never closed"));
        }
        permits.push(take(&self.global.1).await.expect("never closed"));
        permits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_limits_survive_a_reload() {
        let groups = |n: usize| BTreeMap::from([("web".to_string(), n), ("db".to_string(), 1)]);
        let before = Limits::new(8, &groups(2));
        let same = before.carried_over(8, &groups(2));
        assert!(Arc::ptr_eq(&before.global.1, &same.global.1));
        assert!(Arc::ptr_eq(&before.groups["web"].1, &same.groups["web"].1));
        let changed = before.carried_over(4, &groups(3));
        assert!(
            !Arc::ptr_eq(&before.global.1, &changed.global.1),
            "a new global cap starts fresh"
        );
        assert!(!Arc::ptr_eq(
            &before.groups["web"].1,
            &changed.groups["web"].1
        ));
        assert!(
            Arc::ptr_eq(&before.groups["db"].1, &changed.groups["db"].1),
            "an untouched group keeps its cap"
        );
        assert_eq!(changed.groups["web"].0, 3);
    }
}
