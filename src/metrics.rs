//! Every metric convoy exports, registered in one place. Labels are bounded: site, host,
//! stage, release, operation, result, phase — never an error string. Served as OpenMetrics
//! text on `/metrics` by the daemon, or written to a node_exporter textfile by `--once`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plan::Outcome;
use crate::status::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteResultLabels {
    pub site: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SitePhaseLabels {
    pub site: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteReleaseLabels {
    pub site: String,
    pub release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostReleaseLabels {
    pub site: String,
    pub host: String,
    pub stage: String,
    pub release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteOperationLabels {
    pub site: String,
    pub operation: String,
}

/// Which state-dir file a write was for: status, attempts, revisions, history, manifests,
/// instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateFileLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// The phases a site can be in, as label values.
pub const PHASES: [Phase; 6] = [
    Phase::Converged,
    Phase::Progressing,
    Phase::Degraded,
    Phase::Blocked,
    Phase::Failed,
    Phase::Suspended,
];

/// convoy's metrics. Cheap to share: every family is reference-counted inside.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<SiteResultLabels, Counter>,
    reconcile_duration: Family<SiteLabel, Histogram, fn() -> Histogram>,
    site_converged: Family<SiteLabel, Gauge>,
    site_phase: Family<SitePhaseLabels, Gauge>,
    desired_release: Family<SiteReleaseLabels, Gauge>,
    host_release: Family<HostReleaseLabels, Gauge>,
    host_up: Family<HostLabel, Gauge>,
    operation_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    operation_failures: Family<SiteOperationLabels, Counter>,
    rollbacks: Family<SiteLabel, Counter>,
    drift_corrections: Family<SiteLabel, Counter>,
    backoff: Family<SiteLabel, FloatGauge>,
    last_success: Family<SiteLabel, FloatGauge>,
    manifest_load_errors: Counter,
    manifests_valid: Gauge,
    manifest_last_success: FloatGauge,
    state_write_errors: Family<StateFileLabel, Counter>,
    /// Label sets in use, so stale info series can be removed (families cannot be listed).
    desired_seen: Mutex<HashMap<String, SiteReleaseLabels>>,
    hosts_seen: Mutex<HashMap<String, Vec<HostReleaseLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The label value of an outcome.
pub fn result_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Converged => "converged",
        Outcome::Progressing => "progressing",
        Outcome::Degraded { .. } => "degraded",
        Outcome::Blocked { .. } => "blocked",
        Outcome::Failed { .. } => "failed",
        Outcome::Suspended => "suspended",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(seconds_buckets),
            site_converged: Family::default(),
            site_phase: Family::default(),
            desired_release: Family::default(),
            host_release: Family::default(),
            host_up: Family::default(),
            operation_duration: Family::new_with_constructor(seconds_buckets),
            operation_failures: Family::default(),
            rollbacks: Family::default(),
            drift_corrections: Family::default(),
            backoff: Family::default(),
            last_success: Family::default(),
            manifest_load_errors: Counter::default(),
            manifests_valid: Gauge::default(),
            manifest_last_success: FloatGauge::default(),
            state_write_errors: Family::default(),
            desired_seen: Mutex::default(),
            hosts_seen: Mutex::default(),
            registry: Registry::default(),
        };
        register_sites(&mut registry, &m);
        register_hosts(&mut registry, &m);
        register_controller(&mut registry, &m);
        Metrics { registry, ..m }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Writes the metrics to `path` atomically (temp file + rename), for node_exporter's
    /// textfile collector. The textfile format is the classic text format: no `# EOF`.
    /// The classic Prometheus text format (0.0.4), for clients that do not ask for
    /// OpenMetrics (curl, promtool, node_exporter's textfile collector).
    pub fn encode_text(&self) -> String {
        to_text_format(&self.encode())
    }

    pub fn write_textfile(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = self.encode_text();
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    pub fn reconciled(&self, site: &str, outcome: &Outcome, duration: Duration) {
        let result = result_label(outcome).to_string();
        self.reconciles
            .get_or_create(&SiteResultLabels {
                site: site.into(),
                result,
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&SiteLabel { site: site.into() })
            .observe(duration.as_secs_f64());
        if matches!(outcome, Outcome::Converged | Outcome::Degraded { .. }) {
            self.last_success
                .get_or_create(&SiteLabel { site: site.into() })
                .set(now_seconds());
        }
    }

    pub fn site_state(&self, site: &str, phase: Phase, desired: &str) {
        let label = SiteLabel { site: site.into() };
        self.site_converged
            .get_or_create(&label)
            .set(i64::from(phase == Phase::Converged));
        for p in PHASES {
            let labels = SitePhaseLabels {
                site: site.into(),
                phase: format!("{p:?}"),
            };
            self.site_phase
                .get_or_create(&labels)
                .set(i64::from(p == phase));
        }
        let labels = SiteReleaseLabels {
            site: site.into(),
            release: desired.into(),
        };
        let previous = self
            .desired_seen
            .lock()
            .expect("not poisoned")
            .insert(site.into(), labels.clone());
        if let Some(previous) = previous.filter(|p| *p != labels) {
            self.desired_release.remove(&previous);
        }
        self.desired_release.get_or_create(&labels).set(1);
    }

    /// Replaces the site's per-host release series with what was just observed.
    pub fn hosts(&self, site: &str, hosts: &[crate::status::HostStatus]) {
        let mut seen = self.hosts_seen.lock().expect("not poisoned");
        for old in seen.remove(site).unwrap_or_default() {
            self.host_release.remove(&old);
        }
        let mut now = vec![];
        for h in hosts {
            self.host_up
                .get_or_create(&HostLabel {
                    host: h.name.clone(),
                })
                .set(i64::from(h.reachable));
            if let Some(release) = &h.release {
                let labels = HostReleaseLabels {
                    site: site.into(),
                    host: h.name.clone(),
                    stage: h.stage.clone(),
                    release: release.clone(),
                };
                self.host_release.get_or_create(&labels).set(1);
                now.push(labels);
            }
        }
        seen.insert(site.into(), now);
    }

    pub fn operation(&self, operation: &str, duration: Duration) {
        self.operation_duration
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn operation_failed(&self, site: &str, operation: &str) {
        self.operation_failures
            .get_or_create(&SiteOperationLabels {
                site: site.into(),
                operation: operation.into(),
            })
            .inc();
    }

    pub fn rolled_back(&self, site: &str) {
        self.rollbacks
            .get_or_create(&SiteLabel { site: site.into() })
            .inc();
    }

    pub fn drift_corrected(&self, site: &str, hosts: u64) {
        self.drift_corrections
            .get_or_create(&SiteLabel { site: site.into() })
            .inc_by(hosts);
    }

    pub fn backoff(&self, site: &str, delay: Duration) {
        self.backoff
            .get_or_create(&SiteLabel { site: site.into() })
            .set(delay.as_secs_f64());
    }

    /// A write to the state dir failed; `kind` is one of a fixed few file kinds.
    pub fn state_write_failed(&self, kind: &'static str) {
        self.state_write_errors
            .get_or_create(&StateFileLabel { kind: kind.into() })
            .inc();
    }

    pub fn manifests_loaded(&self, valid: bool) {
        self.manifests_valid.set(i64::from(valid));
        if valid {
            self.manifest_last_success.set(now_seconds());
        } else {
            self.manifest_load_errors.inc();
        }
    }
}

/// OpenMetrics → the classic text format node_exporter reads: no `# EOF`, and counters'
/// `# HELP`/`# TYPE` lines named like their `_total` samples.
fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Per site: passes, phase, releases, retries.
fn register_sites(r: &mut Registry, m: &Metrics) {
    r.register(
        "convoy_reconciles",
        "Reconcile passes by site and result",
        m.reconciles.clone(),
    );
    r.register(
        "convoy_reconcile_duration_seconds",
        "Duration of reconcile passes",
        m.reconcile_duration.clone(),
    );
    r.register(
        "convoy_site_converged",
        "1 when every host of the site runs the desired release",
        m.site_converged.clone(),
    );
    r.register(
        "convoy_site_phase",
        "1 for the site's current phase, 0 for the others",
        m.site_phase.clone(),
    );
    r.register(
        "convoy_site_desired_release_info",
        "The release each site asks for",
        m.desired_release.clone(),
    );
    r.register(
        "convoy_rollbacks",
        "Hosts rolled back after a failed activate or health check",
        m.rollbacks.clone(),
    );
    r.register(
        "convoy_drift_corrections",
        "Hosts found off their desired release by a resync and corrected",
        m.drift_corrections.clone(),
    );
    r.register(
        "convoy_site_backoff_seconds",
        "Current retry backoff of the site (0 when not backing off)",
        m.backoff.clone(),
    );
    r.register(
        "convoy_site_last_success_timestamp_seconds",
        "When the site last reconciled to Converged or Degraded",
        m.last_success.clone(),
    );
}

/// Per host and host operation.
fn register_hosts(r: &mut Registry, m: &Metrics) {
    r.register(
        "convoy_host_release_info",
        "The release live on each host of each site",
        m.host_release.clone(),
    );
    r.register(
        "convoy_host_up",
        "1 when the host answered its last observe",
        m.host_up.clone(),
    );
    r.register(
        "convoy_host_operation_duration_seconds",
        "Duration of host operations (observe, fetch, build, switch, once, activate, health, rollback, cleanup)",
        m.operation_duration.clone(),
    );
    r.register(
        "convoy_host_operation_failures",
        "Failed host operations by site and operation",
        m.operation_failures.clone(),
    );
}

/// The controller's own health: manifests, state dir, version.
fn register_controller(r: &mut Registry, m: &Metrics) {
    r.register(
        "convoy_manifest_load_errors",
        "Manifest loads that failed validation",
        m.manifest_load_errors.clone(),
    );
    r.register(
        "convoy_manifests_valid",
        "1 when the last manifest load was valid",
        m.manifests_valid.clone(),
    );
    r.register(
        "convoy_manifest_last_success_timestamp_seconds",
        "When the manifests last loaded and validated",
        m.manifest_last_success.clone(),
    );
    r.register(
        "convoy_state_write_errors",
        "Writes to the state directory that failed, by file kind",
        m.state_write_errors.clone(),
    );
    let build_info: Family<VersionLabel, Gauge> = Family::default();
    build_info
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    r.register("convoy_build_info", "convoy's version", build_info);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::HostStatus;

    fn host(name: &str, release: Option<&str>) -> HostStatus {
        HostStatus {
            name: name.into(),
            stage: "web".into(),
            release: release.map(String::from),
            reachable: release.is_some(),
            last_error: None,
        }
    }

    #[test]
    fn info_series_follow_the_latest_state() {
        let m = Metrics::new();
        m.site_state("shop", Phase::Progressing, "r1");
        m.hosts("shop", &[host("w1", Some("r0")), host("w2", None)]);
        m.site_state("shop", Phase::Converged, "r2");
        m.hosts("shop", &[host("w1", Some("r2")), host("w2", Some("r2"))]);
        let text = m.encode();
        assert!(
            text.contains(r#"convoy_site_desired_release_info{site="shop",release="r2"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"release="r1""#) && !text.contains(r#"release="r0""#),
            "stale series removed:\n{text}"
        );
        assert!(text.contains(
            r#"convoy_host_release_info{site="shop",host="w2",stage="web",release="r2"} 1"#
        ));
        assert!(text.contains(r#"convoy_site_phase{site="shop",phase="Converged"} 1"#));
        assert!(text.contains(r#"convoy_site_phase{site="shop",phase="Progressing"} 0"#));
        assert!(text.contains("convoy_build_info{version="));
        assert!(text.ends_with("# EOF\n"));
        let classic = to_text_format(&text);
        assert!(!classic.contains("# EOF"));
        assert!(
            classic.contains("# TYPE convoy_manifest_load_errors_total counter"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE convoy_site_phase gauge"));
    }
}
