//! The concurrency limits on `/metrics`: each limit and how much of it is in use, read from
//! the controller's current limits at every scrape (nothing to keep in step). Fleet-wide
//! limits are `convoy_limit{limit}` / `convoy_limit_in_use{limit}`; each ServerGroup's
//! `maxParallel` is `convoy_group_limit{group}` / `convoy_group_limit_in_use{group}`, and each Site's
//! `rollout.maxParallel` is `convoy_site_limit{site}` / `convoy_site_limit_in_use{site}`. A limit
//! that is not set (`--max-sites` by default, a group without `maxParallel`) has no
//! `..._limit` series, only its in-use one. Not in the `--once` textfile: at the end of a run
//! nothing is in use.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// One limit as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReading {
    /// `max_parallel`, `max_sites`, `max_builds_per_host`, or `max_parallel` of a group.
    pub limit: &'static str,
    /// The ServerGroup, for a group's `maxParallel`.
    pub group: Option<String>,
    /// The Site, for a site's `rollout.maxParallel`.
    pub site: Option<String>,
    /// Its size; `None`: no limit.
    pub cap: Option<usize>,
    /// Held now (`max_builds_per_host`: on the busiest host).
    pub in_use: usize,
}

impl LimitReading {
    pub fn fleet(limit: &'static str, cap: Option<usize>, in_use: usize) -> Self {
        LimitReading {
            limit,
            group: None,
            site: None,
            cap,
            in_use,
        }
    }

    pub fn group(group: &str, cap: Option<usize>, in_use: usize) -> Self {
        LimitReading {
            limit: "max_parallel",
            group: Some(group.to_string()),
            site: None,
            cap,
            in_use,
        }
    }

    pub fn site(site: &str, cap: Option<usize>, in_use: usize) -> Self {
        LimitReading {
            limit: "max_parallel",
            group: None,
            site: Some(site.to_string()),
            cap,
            in_use,
        }
    }
}

/// What can say how the limits stand right now.
pub trait LimitSource: Send + Sync {
    fn readings(&self) -> Vec<LimitReading>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabel {
    site: String,
}

/// The limits of the current desired state; replaced on every reload.
#[derive(Clone, Default)]
pub(super) struct LimitsCollector {
    source: Arc<Mutex<Option<Arc<dyn LimitSource>>>>,
}

impl std::fmt::Debug for LimitsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitsCollector")
    }
}

impl LimitsCollector {
    pub(super) fn show(&self, source: Arc<dyn LimitSource>) {
        *self.source.lock().expect("not poisoned") = Some(source);
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One reading as its in-use series, and its limit series when it has a limit.
fn show<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug>(
    caps: &Family<L, Gauge>,
    in_use: &Family<L, Gauge>,
    label: L,
    reading: &LimitReading,
) {
    in_use.get_or_create(&label).set(to_i64(reading.in_use));
    if let Some(cap) = reading.cap {
        caps.get_or_create(&label).set(to_i64(cap));
    }
}

impl Collector for LimitsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self.source.lock().expect("not poisoned").clone();
        let Some(source) = source else { return Ok(()) };
        let fleet_cap: Family<LimitLabel, Gauge> = Family::default();
        let fleet_use: Family<LimitLabel, Gauge> = Family::default();
        let group_cap: Family<GroupLabel, Gauge> = Family::default();
        let group_use: Family<GroupLabel, Gauge> = Family::default();
        let site_cap: Family<SiteLabel, Gauge> = Family::default();
        let site_use: Family<SiteLabel, Gauge> = Family::default();
        for r in source.readings() {
            match (&r.site, &r.group) {
                (Some(site), _) => show(&site_cap, &site_use, SiteLabel { site: site.clone() }, &r),
                (None, Some(group)) => show(
                    &group_cap,
                    &group_use,
                    GroupLabel {
                        group: group.clone(),
                    },
                    &r,
                ),
                (None, None) => show(
                    &fleet_cap,
                    &fleet_use,
                    LimitLabel {
                        limit: r.limit.to_string(),
                    },
                    &r,
                ),
            }
        }
        let families: [(&str, &str, &dyn EncodeMetric); 6] = [
            (
                "convoy_limit",
                "Fleet-wide concurrency limits (--max-parallel, --max-sites, --max-builds-per-host); absent when unlimited",
                &fleet_cap,
            ),
            (
                "convoy_limit_in_use",
                "How much of each fleet-wide limit is held now (max_builds_per_host: on the busiest host)",
                &fleet_use,
            ),
            (
                "convoy_group_limit",
                "Each ServerGroup's maxParallel (absent for a group without one)",
                &group_cap,
            ),
            (
                "convoy_group_limit_in_use",
                "Round trips on hosts of each ServerGroup under way now",
                &group_use,
            ),
            (
                "convoy_site_limit",
                "Each Site's rollout.maxParallel",
                &site_cap,
            ),
            (
                "convoy_site_limit_in_use",
                "Round trips of each Site under way now",
                &site_use,
            ),
        ];
        for (name, help, family) in families {
            if family.is_empty() {
                continue;
            }
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        Ok(())
    }
}
