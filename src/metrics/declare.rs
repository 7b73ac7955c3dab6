//! The series the manifests make known, present from the first scrape (Prometheus practice:
//! a series that appears only with its first event defeats `increase()` and `absent()`), and
//! removed when their site leaves the manifests. Values already counted are kept.

use std::collections::BTreeSet;
use std::time::SystemTime;

use prometheus_client::metrics::family::{Family, MetricConstructor};

use super::{
    HostLabel, Metrics, OperationLabel, RESULTS, STATE_FILE_KINDS, SiteLabel, SiteOperationLabels,
    SiteResultLabels, StateFileLabel, phase_labels,
};

/// The host operations whose series exist before they first run or fail: those a rollout
/// can fail in. Others (lease renewals, ...) appear when they first happen.
pub const DECLARED_OPERATIONS: [&str; 10] = [
    "connect", "observe", "fetch", "build", "once", "switch", "activate", "health", "rollback",
    "cleanup",
];

/// A site as the manifests describe it, for [`Metrics::declare_sites`].
#[derive(Debug, Clone, PartialEq)]
pub struct KnownSite {
    pub name: String,
    pub release: String,
    pub hosts: Vec<String>,
    /// When it last reconciled to Converged or Degraded, if the state dir knows.
    pub last_success: Option<SystemTime>,
}

/// Creates the series `labels` of `family` at its zero value, or leaves it as it is.
fn create<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

impl Metrics {
    /// Series whose label values convoy knows without any manifest.
    pub(super) fn declare_fixed(&self) {
        for kind in STATE_FILE_KINDS {
            create(
                &self.state_write_errors,
                &StateFileLabel { kind: kind.into() },
            );
        }
        for operation in DECLARED_OPERATIONS.into_iter().chain(["round_trip"]) {
            create(
                &self.operation_duration,
                &OperationLabel {
                    operation: operation.into(),
                },
            );
        }
    }

    /// Makes `sites` the managed sites: each gets every per-site series (0 until counted,
    /// phase 0 for every phase until its first pass ends, its desired release, `host_up` 0
    /// for hosts not seen yet); sites and hosts no longer listed lose theirs.
    pub fn declare_sites(&self, sites: &[KnownSite]) {
        let listed: BTreeSet<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = {
            let known = self.sites.lock().expect("not poisoned");
            let gone = known.keys().filter(|s| !listed.contains(s.as_str()));
            gone.cloned().collect()
        };
        for site in gone {
            self.forget_site(&site);
        }
        for site in sites {
            self.declare_site(site);
        }
        let hosts: BTreeSet<String> = sites.iter().flat_map(|s| s.hosts.clone()).collect();
        let mut declared = self.hosts_declared.lock().expect("not poisoned");
        for host in declared.difference(&hosts) {
            self.host_up.remove(&HostLabel { host: host.clone() });
        }
        for host in &hosts {
            create(&self.host_up, &HostLabel { host: host.clone() });
        }
        *declared = hosts;
    }

    fn declare_site(&self, site: &KnownSite) {
        let name = site.name.as_str();
        let label = SiteLabel { site: name.into() };
        for result in RESULTS {
            create(
                &self.reconciles,
                &SiteResultLabels {
                    site: name.into(),
                    result: result.into(),
                },
            );
        }
        create(&self.reconcile_duration, &label);
        create(&self.site_converged, &label);
        for phase in super::phases() {
            create(&self.site_phase, &phase_labels(name, phase));
        }
        self.desired_release(name, &site.release);
        create(&self.backoff, &label);
        create(&self.rollbacks, &label);
        create(&self.drift_corrections, &label);
        for operation in DECLARED_OPERATIONS {
            create(
                &self.operation_failures,
                &SiteOperationLabels {
                    site: name.into(),
                    operation: operation.into(),
                },
            );
        }
        create(&self.last_success, &label);
        if let Some(at) = site.last_success {
            self.last_success(name, at);
        }
    }

    /// Removes every series of `site`: it left the manifests, convoy no longer manages it.
    pub fn forget_site(&self, site: &str) {
        let series = self.sites.lock().expect("not poisoned").remove(site);
        let label = SiteLabel { site: site.into() };
        for result in RESULTS {
            self.reconciles.remove(&SiteResultLabels {
                site: site.into(),
                result: result.into(),
            });
        }
        self.reconcile_duration.remove(&label);
        self.site_converged.remove(&label);
        for phase in super::phases() {
            self.site_phase.remove(&phase_labels(site, phase));
        }
        self.backoff.remove(&label);
        self.last_success.remove(&label);
        self.rollbacks.remove(&label);
        self.drift_corrections.remove(&label);
        let series = series.unwrap_or_default();
        if let Some(desired) = &series.desired {
            self.desired_release.remove(desired);
        }
        for host in &series.hosts {
            self.host_release.remove(host);
        }
        let operations = DECLARED_OPERATIONS.iter().map(|o| o.to_string());
        for operation in operations.chain(series.operations) {
            self.operation_failures.remove(&SiteOperationLabels {
                site: site.into(),
                operation,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Outcome;
    use crate::status::{HostStatus, Phase};
    use std::time::Duration;

    fn site(name: &str, release: &str, hosts: &[&str]) -> KnownSite {
        KnownSite {
            name: name.into(),
            release: release.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            last_success: None,
        }
    }

    #[test]
    fn declared_sites_have_every_series_and_keep_their_counts() {
        let m = Metrics::new();
        m.declare_sites(&[site("shop", "r1", &["w1", "w2"])]);
        let text = m.encode();
        for series in [
            r#"convoy_reconciles_total{site="shop",result="failed"} 0"#,
            r#"convoy_reconcile_duration_seconds_count{site="shop"} 0"#,
            r#"convoy_site_phase{site="shop",phase="Interrupted"} 0"#,
            r#"convoy_site_desired_release_info{site="shop",release="r1"} 1"#,
            r#"convoy_host_up{host="w2"} 0"#,
            r#"convoy_host_operation_failures_total{site="shop",operation="health"} 0"#,
            r#"convoy_site_last_success_timestamp_seconds{site="shop"} 0.0"#,
            r#"convoy_state_write_errors_total{kind="labels"} 0"#,
            r#"convoy_host_operation_duration_seconds_count{operation="build"} 0"#,
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        m.reconciled("shop", &Outcome::Converged, Duration::from_millis(5));
        m.rolled_back("shop");
        // A reload declares again: counts stay, the new release replaces the old.
        m.declare_sites(&[site("shop", "r2", &["w1", "w2"])]);
        let text = m.encode();
        assert!(text.contains(r#"convoy_reconciles_total{site="shop",result="converged"} 1"#));
        assert!(text.contains(r#"convoy_rollbacks_total{site="shop"} 1"#));
        assert!(text.contains(r#"convoy_site_desired_release_info{site="shop",release="r2"} 1"#));
        assert!(!text.contains(r#"release="r1""#), "{text}");
    }

    #[test]
    fn a_site_that_leaves_the_manifests_loses_every_series() {
        let m = Metrics::new();
        m.declare_sites(&[site("shop", "r1", &["w1"]), site("old", "r9", &["o1"])]);
        m.site_state("old", Phase::Converged, "r9");
        m.hosts(
            "old",
            &[HostStatus {
                name: "o1".into(),
                stage: "web".into(),
                release: Some("r9".into()),
                reachable: true,
                last_error: None,
            }],
        );
        m.operation_failed("old", "lease_renew");
        m.declare_sites(&[site("shop", "r1", &["w1"])]);
        let text = m.encode();
        assert!(!text.contains("old"), "{text}");
        assert!(!text.contains("o1"), "{text}");
        assert!(text.contains(r#"convoy_host_up{host="w1"} 0"#), "{text}");
    }

    #[test]
    fn the_recorded_last_success_is_kept_unless_a_later_one_is_known() {
        let m = Metrics::new();
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let recorded = KnownSite {
            last_success: Some(at(1_700_000_000)),
            ..site("shop", "r1", &[])
        };
        m.declare_sites(std::slice::from_ref(&recorded));
        let series = r#"convoy_site_last_success_timestamp_seconds{site="shop"}"#;
        assert!(m.encode().contains(&format!("{series} 1700000000.0")));
        m.last_success("shop", at(1_700_000_060));
        m.declare_sites(&[recorded]);
        assert!(m.encode().contains(&format!("{series} 1700000060.0")));
    }
}
