//! One pass of one site ([`pass_once`]) and its bookkeeping in the state dir: the revision
//! resolved and applied, failed attempts (the Failed hold), history, metrics. The Site's
//! status is `publish.rs`'s. A state write that fails is reported and counted
//! ([`wrote`]), never dropped silently, and never stops the pass. Deciding what to do is
//! the planner's job; doing it is the executor's.

use std::collections::BTreeMap;
use std::time::Instant;

use super::publish::failure_message;
use super::revision::resolve_revision;
use super::{desired_key, once_record};
use crate::desired::{DesiredSite, FetchSpec};
use crate::execute::{self, Context, SiteReport};
use crate::metrics::Metrics;
use crate::plan::{Dependency, EventKind, Outcome, PassState};
use crate::state::{self, HistoryEvent, StateDir, StateError};

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
/// state, the stages whose `once` already ran for its release, and the recorded status of
/// each site it depends on (`releases`: every Site's desired release). Every pass starts
/// from this, and `convoy plan` previews from it, so the preview is the pass.
pub fn pass_state(
    site: &DesiredSite,
    releases: &BTreeMap<String, String>,
    state: &StateDir,
) -> PassState {
    let once_done = state
        .history(&site.name)
        .into_iter()
        .filter(|e| e.kind == EventKind::OnceRan && e.release == site.release)
        .filter_map(|e| e.stage)
        .collect();
    PassState {
        attempts: state.attempts(&site.name, &desired_key(site)).attempts,
        once_done,
        dependencies: dependencies(site, releases, state),
        ..PassState::default()
    }
}

/// The sites `site` depends on, as their last recorded statuses show them. A site that is
/// not part of this run (`--site`) is judged the same way: by what its last pass recorded.
pub fn dependencies(
    site: &DesiredSite,
    releases: &BTreeMap<String, String>,
    state: &StateDir,
) -> Vec<Dependency> {
    site.depends_on
        .iter()
        .map(|name| {
            let recorded = state.load_status(name);
            Dependency {
                site: name.clone(),
                phase: recorded.as_ref().map(|s| s.phase),
                recorded_release: recorded.map(|s| s.desired_release),
                desired_release: releases.get(name).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// One pass of one site, with its bookkeeping: history, the resolved revision, failed
/// attempts, metrics. The caller publishes the status (it knows about retries).
pub async fn pass_once(
    ctx: &Context,
    site: &DesiredSite,
    releases: &BTreeMap<String, String>,
    state: &StateDir,
) -> Pass {
    let key = desired_key(site);
    let mut pass = pass_state(site, releases, state);
    pass.targets = ctx.targets.clone();
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
    keep_outputs(ctx, state, site, &mut report);
    let hold_lost = record(ctx, state, site, &key, &report);
    Pass { report, hold_lost }
}

/// Keeps the whole output of every failed command in the state dir and says where in the
/// event's detail (so history and the run's output point to it).
fn keep_outputs(ctx: &Context, state: &StateDir, site: &DesiredSite, report: &mut SiteReport) {
    for event in &mut report.events {
        let Some(output) = event.output.take() else {
            continue;
        };
        let kept = state.keep_output(&site.name, &event.host, event.kind.as_str(), &output);
        if let Ok(path) = wrote(&ctx.metrics, "output", kept) {
            let detail = event.detail.get_or_insert_with(String::new);
            detail.push_str(&format!(" (full output: {})", path.display()));
            event.kept = Some(path);
        }
    }
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
        Outcome::Failed { reason, host } if report.failed_attempt => {
            // With the host: a held status quotes it as the cause of every later failure.
            let cause = failure_message(reason, host.as_deref());
            let recorded = state.record_failure(&site.name, key, &site.release, &cause);
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
        let commit = ctx.commit.as_deref();
        let events: Vec<HistoryEvent> = events
            .into_iter()
            .map(|e| e.manifest_commit(commit))
            .collect();
        let _ = wrote(metrics, "history", state.append_history(&events));
    }
    hold_lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_state_write_is_reported_and_counted_by_file_kind() {
        let metrics = Metrics::new();
        let failed: Result<(), StateError> = Err(StateError::Write {
            path: "/state/sites/app/attempts.json".into(),
            source: std::io::Error::other("Read-only file system"),
        });
        let message = wrote(&metrics, "attempts", failed).unwrap_err();
        assert!(
            message.contains("attempts.json") && message.contains("Read-only"),
            "{message}"
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"convoy_state_write_errors_total{kind="attempts"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"convoy_state_write_errors_total{kind="status"} 0"#));
    }
}
