//! Clean-up: which release directories a host may lose (keepReleases), and the clean-up of
//! hosts that are converged but keep too much. The one rule for keepReleases.

use super::{HostView, Member, Plan, Step, dedup_hosts};
use crate::desired::DesiredSite;

pub(super) fn plan(site: &DesiredSite, members: &[Member]) -> Option<Plan> {
    let cleanups: Vec<Step> = members
        .iter()
        .filter(|m| m.targeted)
        .filter_map(|m| {
            let remove = releases_to_remove(m.workable()?, &site.release, site.keep_releases);
            (!remove.is_empty()).then(|| Step::Cleanup {
                host: m.host.to_string(),
                remove,
            })
        })
        .collect();
    (!cleanups.is_empty()).then(|| Plan::progress(dedup_hosts(cleanups)))
}

/// Which release dirs to delete on a host: half builds (except the desired one, which its
/// build replaces), and complete releases older than the newest `keep` by build time.
/// Never current, the recorded previous, or the desired release.
pub fn releases_to_remove(view: &HostView, desired: &str, keep: usize) -> Vec<String> {
    let protected = |id: &str| {
        id == desired || view.current.as_deref() == Some(id) || view.previous.as_deref() == Some(id)
    };
    let mut remove: Vec<String> = view
        .half_built
        .iter()
        .filter(|id| !protected(id))
        .cloned()
        .collect();
    let mut complete: Vec<(&u64, &String)> =
        view.complete.iter().map(|(id, at)| (at, id)).collect();
    // Newest first by build time; ties broken by name so the choice is stable.
    complete.sort_by(|a, b| b.cmp(a));
    for (_, id) in complete.into_iter().skip(keep) {
        if !protected(id) {
            remove.push(id.clone());
        }
    }
    remove.sort();
    remove
}
