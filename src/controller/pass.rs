//! One pass of one site ([`pass_once`]) and its bookkeeping in the state dir: the revision
//! resolved and applied, failed attempts (the Failed hold), history, metrics, and the
//! Site's status ([`publish`]). A state write that fails is reported and counted
//! ([`wrote`]), never dropped silently, and never stops the pass. Deciding what to do is
//! the planner's job; doing it is the executor's.

use std::time::{Duration, Instant};

use super::revision::resolve_revision;
use super::{Retry, desired_key, once_record};
use crate::desired::{DesiredSite, FetchSpec};
use crate::execute::{self, Context, SiteReport};
use crate::metrics::Metrics;
use crate::plan::{EventKind, Outcome, PassState};
use crate::state::{self, HistoryEvent, StateDir, StateError};
use crate::status::{HostStatus, Phase, SiteStatus};

/// A failed state-dir write: one error in the log naming the file and the OS error, and one
/// more in `convoy_state_write_errors_total{kind}`. Returns the error's message.
pub fn wrote<T>(
    metrics: &Metrics,
    kind: &'static str,
    result: Result<T, StateError>,
) -> Result<T, String> {
    result.map_err(|e| {
        let message = state::error_chain(&e);
        metrics.state_write_failed(kind);
        tracing::error!(kind = %kind, "{message}");
        message
    })
}

/// One pass's report, and what its bookkeeping could not record.
pub struct Pass {
    pub report: SiteReport,
    /// Set when the pass was a failed attempt that could not be recorded: the failure hold
    /// did not count it.
    pub hold_lost: Option<String>,
}

/// What the state dir knows of `site` before a pass: the failed attempts of its desired
/// state, and the stages whose `once` already ran for its release. Every pass starts from
/// this, and `convoy plan` previews from it, so the preview is the pass.
pub fn pass_state(site: &DesiredSite, state: &StateDir) -> PassState {
    let once_done = state
        .history(&site.name)
        .into_iter()
        .filter(|e| e.kind == EventKind::OnceRan && e.release == site.release)
        .filter_map(|e| e.stage)
        .collect();
    PassState {
        attempts: state.attempts(&site.name, &desired_key(site)).attempts,
        once_done,
        ..PassState::default()
    }
}

/// One pass of one site, with its bookkeeping: history, the resolved revision, failed
/// attempts, metrics. The caller publishes the status (it knows about retries).
pub async fn pass_once(ctx: &Context, site: &DesiredSite, state: &StateDir) -> Pass {
    let key = desired_key(site);
    let pass = pass_state(site, state);
    // From now on this Release's revision is fixed: a later edit is a validation error.
    // Unrecorded, that guard is off for this release, so the operator must hear of it.
    let applied = state.record_applied_revision(&site.name, &site.release, &site.revision);
    let _ = wrote(&ctx.metrics, "applied", applied);
    let mut revision = state.revision(&site.name, &site.release);
    if revision.is_none()
        && let FetchSpec::Git { repository } = &site.fetch
        && let Some(commit) = resolve_revision(repository, &site.revision).await
    {
        // One commit per release, decided once: every host builds exactly this.
        let recorded = state.record_revision(&site.name, &site.release, &commit);
        revision = wrote(&ctx.metrics, "revisions", recorded)
            .ok()
            .or(Some(commit));
    }
    let started = Instant::now();
    let mut report = execute::reconcile_site(ctx, site, pass, revision).await;
    once_record::explain(ctx, site, &mut report).await;
    ctx.metrics
        .reconciled(&site.name, &report.outcome, started.elapsed());
    let rollbacks = report
        .events
        .iter()
        .filter(|e| e.kind == EventKind::RolledBack)
        .count();
    for _ in 0..rollbacks {
        ctx.metrics.rolled_back(&site.name);
    }
    let hold_lost = record(ctx, state, site, &key, &report);
    Pass { report, hold_lost }
}

/// Saves the Site's status and mirrors it into the metrics.
pub fn publish(
    ctx: &Context,
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    retry: &Retry,
    hold_lost: Option<&str>,
) -> SiteStatus {
    let status = status_of(state, site, report, retry, hold_lost);
    let _ = wrote(
        &ctx.metrics,
        "status",
        state.save_status(&site.name, &status),
    );
    ctx.metrics
        .site_state(&site.name, status.phase, &site.release);
    ctx.metrics.hosts(&site.name, &report.hosts);
    let backoff = match retry {
        Retry::Due { delay, .. } => *delay,
        _ => Duration::ZERO,
    };
    ctx.metrics.backoff(&site.name, backoff);
    status
}

/// Persists what a pass did: history, the resolved revision, failed attempts. A write that
/// fails is reported and counted; the one of a failed attempt is returned too, for the
/// status and the exit code.
fn record(
    ctx: &Context,
    state: &StateDir,
    site: &DesiredSite,
    key: &str,
    report: &SiteReport,
) -> Option<String> {
    let metrics = &ctx.metrics;
    let mut hold_lost = None;
    let mut events: Vec<HistoryEvent> = report
        .events
        .iter()
        .map(|e| {
            let event = HistoryEvent::new(&site.name, &e.release, e.kind)
                .host(&e.host)
                .stage(&e.stage);
            match &e.detail {
                Some(detail) => event.detail(detail),
                None => event,
            }
        })
        .collect();
    if let Some(revision) = &report.revision {
        let recorded = state.record_revision(&site.name, &site.release, revision);
        let _ = wrote(metrics, "revisions", recorded);
    }
    match &report.outcome {
        Outcome::Converged | Outcome::Degraded { .. } => {
            let _ = wrote(metrics, "attempts", state.reset_attempts(&site.name));
            if !report.events.is_empty() {
                events.push(HistoryEvent::new(
                    &site.name,
                    &site.release,
                    EventKind::Converged,
                ));
            }
        }
        Outcome::Failed { reason, .. } if report.failed_attempt => {
            let recorded = state.record_failure(&site.name, key, &site.release, reason);
            hold_lost = wrote(metrics, "attempts", recorded).err();
        }
        Outcome::Blocked { hosts, reason } if !report.events.is_empty() => {
            events.push(
                HistoryEvent::new(&site.name, &site.release, EventKind::Blocked)
                    .detail(format!("{reason}: {}", hosts.join(", "))),
            );
        }
        _ => {}
    }
    if !events.is_empty() {
        let _ = wrote(metrics, "history", state.append_history(&events));
    }
    hold_lost
}

/// The Site's status object after a pass.
fn status_of(
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    retry: &Retry,
    hold_lost: Option<&str>,
) -> SiteStatus {
    let (phase, mut message) = phase_and_message(site, &report.outcome, retry);
    if let Some(error) = hold_lost {
        message.push_str(&format!(
            "; this failed attempt was not recorded, the failure hold does not count it: {error}"
        ));
    }
    let previous = state.load_status(&site.name);
    let last_transition_time = match &previous {
        Some(p) if p.phase == phase && p.desired_release == site.release => {
            p.last_transition_time.clone()
        }
        _ => Some(state::now_rfc3339()),
    };
    SiteStatus {
        phase,
        desired_release: site.release.clone(),
        revision: report
            .revision
            .clone()
            .or_else(|| state.revision(&site.name, &site.release)),
        message,
        attempts: state.attempts(&site.name, &desired_key(site)).attempts,
        last_transition_time,
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
    }
}

/// The phase `outcome` puts the site in, and the one-line message saying why.
fn phase_and_message(site: &DesiredSite, outcome: &Outcome, retry: &Retry) -> (Phase, String) {
    match outcome {
        Outcome::Converged => (
            Phase::Converged,
            format!("every host runs {}", site.release),
        ),
        Outcome::Progressing => (Phase::Progressing, "rollout under way".to_string()),
        Outcome::Degraded { skipped } => (
            Phase::Degraded,
            format!(
                "every reachable host runs {}; optional hosts unreachable: {}",
                site.release,
                skipped.join(", ")
            ),
        ),
        Outcome::Blocked { hosts, reason } => {
            let mut message = format!("{reason}: {}", hosts.join(", "));
            match retry {
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
        Outcome::Failed { reason, host } => (
            Phase::Failed,
            match host {
                Some(host) => format!("{reason} (host {host})"),
                None => reason.clone(),
            },
        ),
        Outcome::Suspended => (
            Phase::Suspended,
            "suspended: observed only, nothing changed".to_string(),
        ),
    }
}
