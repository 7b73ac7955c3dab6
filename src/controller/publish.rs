//! The Site status objects in the state dir and the metrics that mirror them: after a pass
//! ([`publish`]), for a pass a stop abandoned ([`interrupted`]), and for a desired state just
//! loaded ([`desired_loaded`]: labels, every series from the first scrape, and `Unmanaged`
//! for sites whose manifest is gone). A status says what is known and since when; it never
//! shows an old phase as if it were current. Decides nothing about deployments.

use std::time::Duration;

use super::{Retry, desired_key, wrote};
use crate::desired::{DesiredSite, DesiredState};
use crate::execute::{Context, SiteReport};
use crate::metrics::{KnownSite, Metrics};
use crate::plan::{Dependency, Outcome, waiting_message};
use crate::state::{self, StateDir};
use crate::status::{HostStatus, Phase, SiteStatus, conditions};

/// How a pass ended besides its report: what the status says about it.
pub struct Ending<'a> {
    /// A Blocked site's next retry.
    pub retry: Retry,
    /// The failed attempt this pass made could not be recorded (the error).
    pub hold_lost: Option<&'a str>,
    /// The run was stopping (SIGTERM, SIGINT, `--timeout`): why.
    pub stopped: Option<&'a str>,
}

/// Saves the Site's status after a pass and mirrors it into the metrics.
pub fn publish(
    ctx: &Context,
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    ending: &Ending,
) -> SiteStatus {
    let mut status = status_of(state, site, report, ending);
    status.manifest_commit = ctx.commit.clone();
    save(&ctx.metrics, state, &site.name, &status);
    ctx.metrics.hosts(&site.name, &report.hosts);
    let backoff = match ending.retry {
        Retry::Due { delay, .. } => delay,
        _ => Duration::ZERO,
    };
    ctx.metrics.backoff(&site.name, backoff);
    status
}

/// A pass of `site` was abandoned when the run stopped (`why`) and its grace period ran out:
/// its status says Interrupted, with the hosts as last observed.
pub fn interrupted(metrics: &Metrics, state: &StateDir, site: &DesiredSite, why: &str) {
    let previous = state.load_status(&site.name);
    let status = SiteStatus {
        phase: Phase::Interrupted,
        desired_release: site.release.clone(),
        revision: state.revision(&site.name, &site.release),
        message: format!(
            "{}; the pass did not end within the grace period (hosts as last observed)",
            interrupted_message(why)
        ),
        manifest_commit: previous.as_ref().and_then(|p| p.manifest_commit.clone()),
        attempts: state.attempts(&site.name, &desired_key(site)).attempts,
        last_transition_time: None,
        last_success_time: None,
        conditions: vec![],
        hosts: previous
            .as_ref()
            .map(|p| p.hosts.clone())
            .unwrap_or_default(),
    };
    let status = stamped(status, Phase::Interrupted.as_str(), previous.as_ref());
    save(metrics, state, &site.name, &status);
}

/// A valid desired state was loaded: records every Site's labels, marks Unmanaged the sites
/// the state dir knows but the manifests no longer have, and declares the metrics of the
/// sites this controller runs (`only`: `--site`; all otherwise).
pub fn desired_loaded(
    metrics: &Metrics,
    state: &StateDir,
    desired: &DesiredState,
    only: Option<&str>,
) {
    metrics.manifest_commit(desired.commit.as_deref());
    for (name, labels) in &desired.site_labels {
        let _ = wrote(metrics, "labels", state.save_site_labels(name, labels));
    }
    for (name, previous) in state.all_statuses() {
        if !desired.sites.contains_key(&name) && previous.phase != Phase::Unmanaged {
            let status = unmanaged(previous);
            let _ = wrote(metrics, "status", state.save_status(&name, &status));
        }
    }
    let known: Vec<KnownSite> = desired
        .sites
        .values()
        .filter(|site| only.is_none_or(|only| only == site.name))
        .map(|site| KnownSite {
            name: site.name.clone(),
            release: site.release.clone(),
            hosts: site.stages.iter().flat_map(|s| s.hosts.clone()).collect(),
            last_success: state
                .load_status(&site.name)
                .as_ref()
                .and_then(last_success),
        })
        .collect();
    metrics.declare_sites(&known);
}

/// Writes `status` (a failed write is reported and counted) and mirrors it in the metrics.
fn save(metrics: &Metrics, state: &StateDir, site: &str, status: &SiteStatus) {
    let _ = wrote(metrics, "status", state.save_status(site, status));
    metrics.site_state(site, status.phase, &status.desired_release);
    if let Some(at) = last_success(status) {
        metrics.last_success(site, at);
    }
}

fn last_success(status: &SiteStatus) -> Option<std::time::SystemTime> {
    state::parse_rfc3339(status.last_success_time.as_deref()?)
}

/// The status of a site whose manifest is gone: Unmanaged, saying what it was.
fn unmanaged(previous: SiteStatus) -> SiteStatus {
    let status = SiteStatus {
        phase: Phase::Unmanaged,
        message: format!(
            "the Site's manifest was removed: convoy no longer manages it and deletes nothing on its hosts; last seen {}: {}",
            previous.phase, previous.message
        ),
        ..previous.clone()
    };
    stamped(status, Phase::Unmanaged.as_str(), Some(&previous))
}

/// `status` with its times and conditions after `previous`: a phase (or condition) that did
/// not change keeps its transition time; a success is stamped now.
fn stamped(mut status: SiteStatus, reason: &str, previous: Option<&SiteStatus>) -> SiteStatus {
    let now = state::now_rfc3339();
    status.last_transition_time = match previous {
        Some(p) if p.phase == status.phase && p.desired_release == status.desired_release => {
            p.last_transition_time.clone()
        }
        _ => Some(now.clone()),
    };
    status.last_success_time = if status.phase.is_success() {
        Some(now.clone())
    } else {
        previous.and_then(|p| p.last_success_time.clone())
    };
    let before = previous.map_or(&[][..], |p| &p.conditions);
    status.conditions = conditions(status.phase, reason, &status.message, before, &now);
    status
}

/// The Site's status object after a pass.
fn status_of(
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    ending: &Ending,
) -> SiteStatus {
    let (mut phase, mut message) = phase_and_message(site, &report.outcome, ending);
    if phase == Phase::Converged
        && let Some(others) = not_live(site, report)
    {
        // `--host`: converged are the targeted hosts, not the site: it stays Progressing,
        // so a site that `dependsOn` it does not take it for live everywhere.
        phase = Phase::Progressing;
        message = format!(
            "the targeted hosts run {}; hosts --host left alone and not on it: {others}",
            site.release
        );
    }
    let mut reason = phase.as_str();
    let attempts = state.attempts(&site.name, &desired_key(site));
    // A held release fails every pass without trying: the cause is the last attempt's.
    if phase == Phase::Failed
        && !report.failed_attempt
        && attempts.is_held(site.rollout.failure_retries)
    {
        reason = "Held";
        if let Some(cause) = &attempts.last_error {
            message.push_str(&format!("; last failure: {cause}"));
        }
    }
    if let Some(error) = ending.hold_lost {
        message.push_str(&format!(
            "; this failed attempt was not recorded, the failure hold does not count it: {error}"
        ));
    }
    let status = SiteStatus {
        phase,
        desired_release: site.release.clone(),
        revision: report
            .revision
            .clone()
            .or_else(|| state.revision(&site.name, &site.release)),
        message,
        manifest_commit: None,
        attempts: attempts.attempts,
        last_transition_time: None,
        last_success_time: None,
        conditions: vec![],
        hosts: report
            .hosts
            .iter()
            .map(|h| HostStatus {
                name: h.name.clone(),
                stage: h.stage.clone(),
                release: h.release.clone(),
                reachable: h.reachable,
                last_error: h.last_error.clone(),
            })
            .collect(),
    };
    stamped(status, reason, state.load_status(&site.name).as_ref())
}

/// The hosts not live on the desired release, with what they run (`h0 (r1)`), if any.
fn not_live(site: &DesiredSite, report: &SiteReport) -> Option<String> {
    let others: Vec<String> = report
        .hosts
        .iter()
        .filter(|h| h.release.as_deref() != Some(site.release.as_str()))
        .map(|h| format!("{} ({})", h.name, h.release.as_deref().unwrap_or("none")))
        .collect();
    (!others.is_empty()).then(|| others.join(", "))
}

/// A failure as one line: the reason and, when one host is to blame, the host.
pub fn failure_message(reason: &str, host: Option<&str>) -> String {
    match host {
        // The reason may name the host already: never twice.
        Some(host) if !reason.contains(&format!("`{host}`")) => format!("{reason} (host {host})"),
        _ => reason.to_owned(),
    }
}

fn interrupted_message(why: &str) -> String {
    format!("stopped mid-rollout ({why}); the next pass continues it")
}

/// The phase `outcome` puts the site in, and the one-line message saying why.
fn phase_and_message(site: &DesiredSite, outcome: &Outcome, ending: &Ending) -> (Phase, String) {
    match outcome {
        Outcome::Converged => (
            Phase::Converged,
            format!("every host runs {}", site.release),
        ),
        // Steps remain only when the pass was cancelled: the run is stopping.
        Outcome::Progressing => match ending.stopped {
            Some(why) => (Phase::Interrupted, interrupted_message(why)),
            None => (Phase::Progressing, "rollout under way".to_string()),
        },
        Outcome::Degraded { skipped, failed } => {
            (Phase::Degraded, degraded_message(site, skipped, failed))
        }
        Outcome::Blocked { hosts, reason } => {
            let mut message = format!("{reason}: {}", hosts.join(", "));
            match &ending.retry {
                Retry::None => {}
                Retry::Due { n, delay } => message.push_str(&format!(
                    "; retry {n} in {}s (backoff)",
                    delay.as_secs().max(1)
                )),
                Retry::Dropped { n, why } => {
                    message.push_str(&format!("; no retry {n} (backoff): {why}"));
                }
            }
            (Phase::Blocked, message)
        }
        Outcome::Failed { reason, host } => {
            (Phase::Failed, failure_message(reason, host.as_deref()))
        }
        Outcome::Suspended => (
            Phase::Suspended,
            "suspended: observed only, nothing changed".to_string(),
        ),
        // Held by a dependency that will not converge by itself: Blocked, like a site held
        // by an unreachable host; else still on its way.
        Outcome::Waiting { on } => (
            if on.iter().any(Dependency::stuck) {
                Phase::Blocked
            } else {
                Phase::Progressing
            },
            format!("{} built; {}", site.release, waiting_message(on)),
        ),
    }
}

/// Which optional hosts do not run the release, and why: unreachable, or failed within
/// `rollout.maxFailed` (each host's `lastError` says how).
fn degraded_message(site: &DesiredSite, skipped: &[String], failed: &[String]) -> String {
    let mut message = match failed.is_empty() {
        true => format!("every reachable host runs {}", site.release),
        false => format!("every other host runs {}", site.release),
    };
    if !skipped.is_empty() {
        message.push_str(&format!(
            "; optional hosts unreachable: {}",
            skipped.join(", ")
        ));
    }
    if !failed.is_empty() {
        message.push_str(&format!(
            "; optional hosts failed within rollout.maxFailed, kept their previous release (retried next pass): {}",
            failed.join(", ")
        ));
    }
    message
}
