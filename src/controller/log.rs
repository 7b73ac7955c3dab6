//! What the daemon logs about each pass: one line per host event (site, host, stage,
//! release as fields) and one for the outcome (site, phase). A pass that changed no host
//! and left the site in the phase it was in (a resync of a converged site, a retry still
//! blocked) logs at debug only, so an idle controller's log stays quiet and every info
//! line means something happened. The status and history files keep everything; this
//! decides only what is worth a line, never what the site's state is.

use std::collections::BTreeMap;

use tracing::Level;

use super::SiteResult;
use crate::plan::{Event, EventKind};
use crate::status::Phase;

/// `tracing`'s macros want their level at compile time; this picks one of them at run time.
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!($($rest)+),
            Level::WARN => tracing::warn!($($rest)+),
            Level::INFO => tracing::info!($($rest)+),
            _ => tracing::debug!($($rest)+),
        }
    };
}

/// The daemon's memory of what it last logged per site.
#[derive(Default)]
pub(super) struct PassLog {
    phases: BTreeMap<String, Phase>,
}

impl PassLog {
    /// Logs a finished pass of a site.
    pub(super) fn pass(&mut self, result: &SiteResult) {
        let site = result.name.as_str();
        let report = &result.report;
        for event in &report.events {
            log_event(site, event);
        }
        let status = &result.status;
        let level = self.level(site, status.phase, !report.events.is_empty());
        for host in &report.hosts {
            let explained = report
                .events
                .iter()
                .any(|e| e.host == host.name && e.detail.is_some());
            if let (Some(error), false) = (&host.last_error, explained) {
                let level = if level == Level::DEBUG {
                    level
                } else {
                    Level::WARN
                };
                log_at!(level, site = %site, host = %host.name, stage = %host.stage, "{}", last_line(error));
            }
        }
        log_at!(
            level,
            site = %site,
            phase = ?status.phase,
            release = %status.desired_release,
            "{:?}: {}",
            status.phase,
            status.message
        );
    }

    /// How loud the outcome of a pass of `site` is, remembering its phase: debug when the
    /// pass changed no host and the phase is the one logged last time; otherwise by phase.
    fn level(&mut self, site: &str, phase: Phase, changed_hosts: bool) -> Level {
        let before = self.phases.insert(site.to_string(), phase);
        if !changed_hosts && before == Some(phase) {
            return Level::DEBUG;
        }
        match phase {
            Phase::Failed => Level::ERROR,
            Phase::Blocked | Phase::Degraded | Phase::Interrupted => Level::WARN,
            Phase::Converged | Phase::Progressing | Phase::Suspended | Phase::Unmanaged => {
                Level::INFO
            }
        }
    }
}

fn log_event(site: &str, event: &Event) {
    let level = match event.kind {
        EventKind::BuildFailed
        | EventKind::OnceFailed
        | EventKind::HealthFailed
        | EventKind::RolledBack
        | EventKind::Blocked => Level::WARN,
        _ => Level::INFO,
    };
    let detail = event
        .detail
        .as_deref()
        .map(|d| format!(": {}", last_line(d)))
        .unwrap_or_default();
    log_at!(
        level,
        site = %site,
        host = %event.host,
        stage = %event.stage,
        release = %event.release,
        event = %event.kind,
        "{} {}{detail}",
        event.kind,
        event.release
    );
}

/// The last non-empty line of a command's output: one log line per event.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_changed_nothing_is_debug_and_a_change_is_loud() {
        let mut log = PassLog::default();
        let rows = [
            // (phase, the pass changed hosts, level)
            (Phase::Progressing, true, Level::INFO),
            (Phase::Converged, true, Level::INFO),
            // Resyncs of a converged site.
            (Phase::Converged, false, Level::DEBUG),
            (Phase::Converged, false, Level::DEBUG),
            // Drift corrected: hosts changed, same phase.
            (Phase::Converged, true, Level::INFO),
            // A host goes away, and stays away over retries.
            (Phase::Blocked, false, Level::WARN),
            (Phase::Blocked, false, Level::DEBUG),
            // It comes back already on the release: no change on hosts, but a new phase.
            (Phase::Converged, false, Level::INFO),
            (Phase::Failed, true, Level::ERROR),
            (Phase::Failed, false, Level::DEBUG),
            (Phase::Degraded, true, Level::WARN),
        ];
        for (i, (phase, changed, level)) in rows.into_iter().enumerate() {
            assert_eq!(
                log.level("app", phase, changed),
                level,
                "row {i}: {phase:?}"
            );
        }
        // Each site has its own memory.
        assert_eq!(log.level("other", Phase::Converged, false), Level::INFO);
    }

    #[test]
    fn one_line_per_event_even_for_multi_line_output() {
        assert_eq!(
            last_line("step 1\nerror: disk full\n\n"),
            "error: disk full"
        );
        assert_eq!(last_line(""), "");
    }
}
