//! Every metric convoy exports, registered in one place. Labels are bounded: site, host,
//! stage, release, operation, result, phase — never an error string. Served as OpenMetrics
//! text on `/metrics` by the daemon, or written to a node_exporter textfile by `--once`.
//!
//! Beside this file: `declare.rs` (every series the manifests make known, present from the
//! first scrape, and removed with its site), `textfile.rs` (the classic text format and the
//! `--metrics-textfile` of `--once`, gauges only). Nothing here decides or stores anything.

mod declare;
mod git;
mod limits;
mod textfile;

pub use declare::{DECLARED_OPERATIONS, KnownSite};
pub use limits::{LimitReading, LimitSource};

use std::collections::{BTreeMap, BTreeSet};
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

/// A Notification (by name) and what became of a message: one of [`NOTIFICATION_RESULTS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub notification: String,
    pub result: String,
}

/// What can become of a notification message: `sent` (the receiver answered 2xx), `failed`
/// (one attempt failed; it is retried), `gave_up` (every retry failed), `dropped` (the queue
/// was full and this, the oldest, made room; or `--once` ended before it was handed over).
pub const NOTIFICATION_RESULTS: [&str; 4] = ["sent", "failed", "gave_up", "dropped"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabel {
    pub commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// The phases a managed site can be in, as label values (an Unmanaged site has no series).
pub fn phases() -> impl Iterator<Item = Phase> {
    Phase::ALL.into_iter().filter(|p| *p != Phase::Unmanaged)
}

/// Every `result` label value: [`result_label`] of each outcome.
pub const RESULTS: [&str; 7] = [
    "converged",
    "progressing",
    "degraded",
    "blocked",
    "failed",
    "suspended",
    "waiting",
];

/// Every `kind` of state-dir file whose writes are counted (see `controller::wrote`).
pub const STATE_FILE_KINDS: [&str; 10] = [
    "status",
    "labels",
    "attempts",
    "revisions",
    "applied",
    "history",
    "manifests",
    "instance",
    "notified",
    "source",
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
    notifications: Family<NotificationLabels, Counter>,
    /// The manifest commit being served (git source): one series at a time.
    manifest_info: Family<CommitLabel, Gauge>,
    manifest_commit: Mutex<Option<CommitLabel>>,
    webhook_requests: Family<ResultLabel, Counter>,
    git_fetches: Family<ResultLabel, Counter>,
    /// The gauges again, alone: what a `--once` textfile holds.
    gauges: Registry,
    /// Label sets in use per site, so its series can be replaced or removed (families
    /// cannot be listed).
    sites: Mutex<BTreeMap<String, SiteSeries>>,
    /// Hosts of the declared sites: their `convoy_host_up` series.
    hosts_declared: Mutex<BTreeSet<String>>,
    /// The concurrency limits, read at each scrape.
    limits: limits::LimitsCollector,
}

/// The label sets of one site's series that are not fixed by the site name alone.
#[derive(Default)]
struct SiteSeries {
    desired: Option<SiteReleaseLabels>,
    hosts: Vec<HostReleaseLabels>,
    /// Operations with a failure series for this site.
    operations: BTreeSet<String>,
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
        Outcome::Waiting { .. } => "waiting",
    }
}

impl Metrics {
    pub fn new() -> Self {
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
            notifications: Family::default(),
            manifest_info: Family::default(),
            manifest_commit: Mutex::default(),
            webhook_requests: Family::default(),
            git_fetches: Family::default(),
            sites: Mutex::default(),
            hosts_declared: Mutex::default(),
            limits: limits::LimitsCollector::default(),
            registry: Registry::default(),
            gauges: Registry::default(),
        };
        let mut registry = Registry::default();
        let mut gauges = Registry::default();
        register_site_gauges(&mut registry, &m);
        register_site_gauges(&mut gauges, &m);
        register_site_counters(&mut registry, &m);
        register_host_gauges(&mut registry, &m);
        register_host_gauges(&mut gauges, &m);
        register_host_counters(&mut registry, &m);
        register_controller_gauges(&mut registry, &m);
        register_controller_gauges(&mut gauges, &m);
        register_controller_counters(&mut registry, &m);
        registry.register_collector(Box::new(m.limits.clone()));
        m.declare_fixed();
        Metrics {
            registry,
            gauges,
            ..m
        }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not ask for
    /// OpenMetrics (curl, promtool).
    pub fn encode_text(&self) -> String {
        textfile::to_text_format(&self.encode())
    }

    /// Shows `source`'s limits from the next scrape on (the limits of a new desired state).
    pub fn show_limits(&self, source: std::sync::Arc<dyn LimitSource>) {
        self.limits.show(source);
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
    }

    /// When the site last reconciled to Converged or Degraded (as its status says); an
    /// earlier time than the one recorded changes nothing.
    pub fn last_success(&self, site: &str, at: SystemTime) {
        let seconds = at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let gauge = self
            .last_success
            .get_or_create(&SiteLabel { site: site.into() });
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    pub fn site_state(&self, site: &str, phase: Phase, desired: &str) {
        let label = SiteLabel { site: site.into() };
        self.site_converged
            .get_or_create(&label)
            .set(i64::from(phase == Phase::Converged));
        for p in phases() {
            self.site_phase
                .get_or_create(&phase_labels(site, p))
                .set(i64::from(p == phase));
        }
        self.desired_release(site, desired);
    }

    /// Replaces the site's desired release series.
    fn desired_release(&self, site: &str, desired: &str) {
        let labels = SiteReleaseLabels {
            site: site.into(),
            release: desired.into(),
        };
        let mut sites = self.sites.lock().expect("not poisoned");
        let series = sites.entry(site.into()).or_default();
        if let Some(previous) = series.desired.replace(labels.clone())
            && previous != labels
        {
            self.desired_release.remove(&previous);
        }
        self.desired_release.get_or_create(&labels).set(1);
    }

    /// Replaces the site's per-host release series with what was just observed.
    pub fn hosts(&self, site: &str, hosts: &[crate::status::HostStatus]) {
        let mut sites = self.sites.lock().expect("not poisoned");
        let series = sites.entry(site.into()).or_default();
        for old in series.hosts.drain(..) {
            self.host_release.remove(&old);
        }
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
                series.hosts.push(labels);
            }
        }
    }

    pub fn operation(&self, operation: &str, duration: Duration) {
        self.operation_duration
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn operation_failed(&self, site: &str, operation: &str) {
        let mut sites = self.sites.lock().expect("not poisoned");
        let series = sites.entry(site.into()).or_default();
        series.operations.insert(operation.into());
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

    /// A notification message of `notification` was `result` (one of
    /// [`NOTIFICATION_RESULTS`]).
    pub fn notification(&self, notification: &str, result: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                notification: notification.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Every result of `notification` at 0, so `increase()` sees the first failure.
    pub fn declare_notification(&self, notification: &str) {
        for result in NOTIFICATION_RESULTS {
            drop(self.notifications.get_or_create(&NotificationLabels {
                notification: notification.into(),
                result: result.into(),
            }));
        }
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

fn phase_labels(site: &str, phase: Phase) -> SitePhaseLabels {
    SitePhaseLabels {
        site: site.into(),
        phase: phase.as_str().into(),
    }
}

/// Per site: phase, desired release, retry backoff, last success.
fn register_site_gauges(r: &mut Registry, m: &Metrics) {
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
        "convoy_site_backoff_seconds",
        "Current retry backoff of the site (0 when not backing off)",
        m.backoff.clone(),
    );
    r.register(
        "convoy_site_last_success_timestamp_seconds",
        "When the site last reconciled to Converged or Degraded (0: never)",
        m.last_success.clone(),
    );
}

/// Per site: passes, their durations, rollbacks, drift.
fn register_site_counters(r: &mut Registry, m: &Metrics) {
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
        "convoy_rollbacks",
        "Hosts rolled back after a failed activate or health check",
        m.rollbacks.clone(),
    );
    r.register(
        "convoy_drift_corrections",
        "Hosts found off their desired release by a resync and corrected",
        m.drift_corrections.clone(),
    );
}

/// Per host: the live release, reachability.
fn register_host_gauges(r: &mut Registry, m: &Metrics) {
    r.register(
        "convoy_host_release_info",
        "The release live on each host of each site",
        m.host_release.clone(),
    );
    r.register(
        "convoy_host_up",
        "1 when the host answered its last observe (0 until it first answers)",
        m.host_up.clone(),
    );
}

/// Per host operation: durations and failures.
fn register_host_counters(r: &mut Registry, m: &Metrics) {
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

/// The controller's own state: manifests, version.
fn register_controller_gauges(r: &mut Registry, m: &Metrics) {
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
    let build_info: Family<VersionLabel, Gauge> = Family::default();
    build_info
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    r.register("convoy_build_info", "convoy's version", build_info);
    r.register(
        "convoy_manifest_info",
        "The manifest commit being served (git source)",
        m.manifest_info.clone(),
    );
}

/// The controller's own errors: manifest loads, state dir writes.
fn register_controller_counters(r: &mut Registry, m: &Metrics) {
    r.register(
        "convoy_manifest_load_errors",
        "Manifest loads that failed validation",
        m.manifest_load_errors.clone(),
    );
    r.register(
        "convoy_state_write_errors",
        "Writes to the state directory that failed, by file kind",
        m.state_write_errors.clone(),
    );
    r.register(
        "convoy_notifications",
        "Notification messages by Notification and result (sent, failed attempt, gave_up, dropped)",
        m.notifications.clone(),
    );
    r.register(
        "convoy_webhook_requests",
        "Requests to /hooks/git by result (accepted, missing_signature, bad_signature, too_large, timeout)",
        m.webhook_requests.clone(),
    );
    r.register(
        "convoy_git_fetches",
        "Fetches of the git source's branch by result (ok, failed)",
        m.git_fetches.clone(),
    );
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
        let classic = m.encode_text();
        assert!(!classic.contains("# EOF"));
        assert!(
            classic.contains("# TYPE convoy_manifest_load_errors_total counter"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE convoy_site_phase gauge"));
    }
}
