//! Requests from commands that cannot take the state-dir lock while this daemon holds it
//! (today: `convoy retry SITE`), read from the state dir every [`POLL`] and answered there.
//! A retry does what `convoy retry` does without a daemon (the failed attempts are
//! forgotten, which lifts the Failed hold) and also runs the site's next pass now.

use std::time::Duration;

use super::run::Controller;
use super::wrote;
use crate::state::{Answer, Request, now_ms};

/// How often the daemon looks for requests: a request is taken within this (plus a pass
/// of the loop, which never blocks for long).
pub const POLL: Duration = Duration::from_millis(250);

impl Controller<'_> {
    /// Acts on every waiting request and answers it.
    pub(super) fn take_requests(&mut self) {
        for pending in self.state.pending_requests() {
            let answer = match pending.request.kind.as_str() {
                "retry" => self.retry(&pending.request),
                other => Answer {
                    ok: false,
                    message: format!("this daemon does not know requests of kind `{other}`"),
                    unknown_site: false,
                },
            };
            let metrics = self.shared.metrics.clone();
            let _ = wrote(&metrics, "requests", self.state.answer(&pending, &answer));
        }
        for warning in self.state.take_warnings() {
            tracing::warn!("{warning}");
        }
    }

    /// `convoy retry SITE` while this daemon runs: lift the hold, run the site now.
    fn retry(&mut self, request: &Request) -> Answer {
        let site = &request.site;
        let known: Vec<String> = self
            .desired
            .as_ref()
            .map(|d| d.sites.keys().cloned().collect())
            .unwrap_or_default();
        if !known.contains(site) {
            tracing::warn!(site = %site, "retry requested for a site this daemon does not manage");
            return Answer {
                ok: false,
                message: format!(
                    "the daemon manages no site `{site}` (its sites: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
                unknown_site: true,
            };
        }
        let metrics = self.shared.metrics.clone();
        if let Err(error) = wrote(&metrics, "attempts", self.state.reset_attempts(site)) {
            return Answer {
                ok: false,
                message: format!(
                    "the daemon could not clear the failed attempts of {site}: {error}"
                ),
                unknown_site: false,
            };
        }
        // A fresh backoff, and a pass now (after the one under way, if any).
        self.queue.reset(site);
        self.queue.enqueue(site);
        let latency_ms = now_ms().saturating_sub(request.requested_ms);
        tracing::info!(
            site = %site,
            latency_ms,
            "retry requested: failed attempts cleared, a pass starts now ({latency_ms} ms after the request)"
        );
        Answer {
            ok: true,
            message: format!(
                "daemon took the retry of {site}: failed attempts cleared, a pass starts now"
            ),
            unknown_site: false,
        }
    }
}
