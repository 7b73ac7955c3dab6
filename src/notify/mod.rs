//! Notifications: telling people about a site's phase changes, rollbacks and offline hosts,
//! once per change, through webhooks. The controller calls [`Notifier::after_pass`] after it
//! publishes a pass's status; whether that pass is news is `decide.rs` (pure, table-tested),
//! what the message says is `format.rs`, getting it there is `deliver.rs` (a bounded
//! mailbox and a retrying worker per receiver: never on the deployment's path).
//!
//! Webhook URLs are secrets: read from an environment variable or a file when convoy starts
//! ([`resolve`]), held in a [`SecretUrl`] whose Debug and Display say `<redacted>`, and
//! never written to a log, a status, an error or the state dir. This module decides nothing
//! about deployments.

pub mod decide;
pub mod deliver;
pub mod format;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decide::{PassFacts, Seen, decide};
use deliver::{Mailbox, Message};

use crate::desired::{DesiredNotification, UrlSource};
use crate::execute::SiteReport;
use crate::manifest::types::{NotificationEvent, WebhookFormat};
use crate::metrics::Metrics;
use crate::plan::EventKind;
use crate::state::StateDir;
use crate::status::SiteStatus;

/// How long `reconcile --once` waits at its end to hand pending messages over.
pub const ONCE_GRACE: Duration = Duration::from_secs(1);

/// A webhook URL. Debug and Display never show it; only the HTTP request reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the URL, and its host part, replaced by `<redacted>`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.0, "<redacted>");
        let host = self
            .0
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .unwrap_or_default();
        if host.len() > 3 {
            text = text.replace(host, "<redacted>");
        }
        text
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Notification ready to send: its settings and its URL, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// `None`: every site.
    pub sites: Option<Vec<String>>,
    pub events: Vec<NotificationEvent>,
    pub format: WebhookFormat,
    pub url: SecretUrl,
}

/// A webhook URL that could not be read. Names the Notification and the variable or file,
/// never the URL (nor any of a file's content).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "Notification `{notification}`: environment variable `{var}` (spec.webhook.urlFrom.env) is not set"
    )]
    EnvMissing { notification: String, var: String },
    #[error(
        "Notification `{notification}`: failed to read the webhook URL from `{}` (spec.webhook.urlFrom.file)",
        path.display()
    )]
    File {
        notification: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Notification `{notification}`: the webhook URL in {from} is not one http:// or https:// URL on one line"
    )]
    NotHttp { notification: String, from: String },
}

impl ResolveError {
    /// The Notification concerned.
    pub fn notification(&self) -> &str {
        match self {
            ResolveError::EnvMissing { notification, .. }
            | ResolveError::File { notification, .. }
            | ResolveError::NotHttp { notification, .. } => notification,
        }
    }
}

/// Reads the URL of every Notification: all of them, or every problem.
pub fn resolve(notifications: &[DesiredNotification]) -> Result<Vec<Target>, Vec<ResolveError>> {
    let mut targets = vec![];
    let mut errors = vec![];
    for n in notifications {
        match read_url(n) {
            Ok(url) => targets.push(Target {
                name: n.name.clone(),
                sites: n.sites.clone(),
                events: n.events.clone(),
                format: n.format,
                url,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(errors)
    }
}

fn read_url(n: &DesiredNotification) -> Result<SecretUrl, ResolveError> {
    let notification = n.name.clone();
    let (text, from) = match &n.url_from {
        UrlSource::Env(var) => match std::env::var(var) {
            Ok(text) if !text.trim().is_empty() => (text, format!("environment variable `{var}`")),
            _ => {
                let var = var.clone();
                return Err(ResolveError::EnvMissing { notification, var });
            }
        },
        UrlSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, format!("file `{}`", path.display())),
            Err(source) => {
                let path = path.clone();
                return Err(ResolveError::File {
                    notification,
                    path,
                    source,
                });
            }
        },
    };
    let url = text.trim();
    let http = url.starts_with("http://") || url.starts_with("https://");
    if !http || url.contains(char::is_whitespace) {
        return Err(ResolveError::NotHttp { notification, from });
    }
    Ok(SecretUrl(url.to_string()))
}

/// What every Notification was last told, per site then Notification: kept for the life
/// of the controller (a daemon's reloads replace the [`Notifier`], not this).
pub type Memory = Arc<Mutex<BTreeMap<String, BTreeMap<String, Seen>>>>;

/// One receiver at work.
struct Active {
    target: Target,
    mailbox: Arc<Mailbox>,
    worker: tokio::task::JoinHandle<()>,
}

/// The Notifications of one desired state, each with its delivery worker.
pub struct Notifier {
    active: Vec<Active>,
    memory: Memory,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts a worker per target (inside the tokio runtime). Every `result` series of each
    /// target exists from now on, at 0.
    pub fn start(targets: Vec<Target>, metrics: Arc<Metrics>, memory: Memory) -> Self {
        let active = targets
            .into_iter()
            .map(|target| {
                metrics.declare_notification(&target.name);
                let mailbox = Arc::new(Mailbox::default());
                let worker = tokio::spawn(deliver::worker(
                    target.name.clone(),
                    target.url.clone(),
                    mailbox.clone(),
                    metrics.clone(),
                ));
                Active {
                    target,
                    mailbox,
                    worker,
                }
            })
            .collect();
        Notifier {
            active,
            memory,
            metrics,
        }
    }

    /// The memory to hand to the Notifier that replaces this one.
    pub fn memory(&self) -> Memory {
        self.memory.clone()
    }

    /// A pass of `site` ended in `status`: queues a message for every Notification of the
    /// site to which this is news, and remembers what each was told (also in the state dir).
    pub fn after_pass(
        &self,
        state: &StateDir,
        site: &str,
        commit: Option<&str>,
        report: &SiteReport,
        status: &SiteStatus,
    ) {
        let concerned: Vec<&Active> = self
            .active
            .iter()
            .filter(|a| {
                a.target
                    .sites
                    .as_ref()
                    .is_none_or(|s| s.iter().any(|s| s == site))
            })
            .collect();
        if concerned.is_empty() {
            return;
        }
        let facts = PassFacts {
            now: Seen {
                phase: status.phase,
                release: status.desired_release.clone(),
                offline: report
                    .hosts
                    .iter()
                    .filter(|h| !h.reachable)
                    .map(|h| h.name.clone())
                    .collect(),
            },
            rolled_back: report
                .events
                .iter()
                .any(|e| e.kind == EventKind::RolledBack),
            changed_hosts: !report.events.is_empty(),
        };
        let mut memory = self.memory.lock().expect("not poisoned");
        let told = memory
            .entry(site.to_string())
            .or_insert_with(|| state.notified(site));
        let mut changed = false;
        let time = crate::state::now_rfc3339();
        for active in concerned {
            let target = &active.target;
            let before = told.get(&target.name);
            let decision = decide(before, &facts, &target.events);
            if let Some(kind) = decision.send {
                let previous = before.map(|b| b.phase);
                let event =
                    format::event_of(kind, site, report, status, previous, commit, time.clone());
                self.send(active, &event);
            }
            if decision.record {
                told.insert(target.name.clone(), facts.now.clone());
                changed = true;
            }
        }
        if changed {
            let _ = crate::controller::wrote(
                &self.metrics,
                "notified",
                state.save_notified(site, told),
            );
        }
    }

    fn send(&self, active: &Active, event: &format::EventObject) {
        let name = &active.target.name;
        let message = Message {
            body: format::body(active.target.format, event).to_string(),
            about: format::summary(event),
        };
        if let Some(dropped) = active.mailbox.push(message) {
            self.metrics.notification(name, "dropped");
            tracing::warn!(notification = %name, "too many messages waiting; dropped the oldest: {}", dropped.about);
        }
    }

    /// No more messages: the workers hand over what is queued, for at most `grace`; what
    /// is left then is dropped (counted, and logged).
    pub async fn close(self, grace: Duration) {
        for active in &self.active {
            active.mailbox.close();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for active in self.active {
            let mut worker = active.worker;
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
                let left = active.mailbox.drain().len() + 1;
                let name = &active.target.name;
                for _ in 0..left {
                    self.metrics.notification(name, "dropped");
                }
                tracing::warn!(notification = %name, "{left} message(s) not handed over within {}s at exit", grace.as_secs_f64());
            }
        }
    }

    /// Replaced by a reload: the workers finish what is queued in the background.
    pub fn retire(self) {
        for active in &self.active {
            active.mailbox.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_url_never_shows_in_debug_display_or_errors() {
        let url = SecretUrl("https://hooks.example.com/services/T0/B0/s3cr3t".into());
        let target = Target {
            name: "ops".into(),
            sites: None,
            events: vec![],
            format: WebhookFormat::Slack,
            url: url.clone(),
        };
        for shown in [format!("{url}"), format!("{url:?}"), format!("{target:?}")] {
            assert!(
                !shown.contains("s3cr3t") && !shown.contains("hooks.example"),
                "{shown}"
            );
        }
        assert_eq!(
            url.scrub("POST https://hooks.example.com/services/T0/B0/s3cr3t failed; hooks.example.com: refused"),
            "POST <redacted> failed; <redacted>: refused"
        );
    }

    #[test]
    fn urls_are_read_from_the_environment_or_a_file_and_errors_never_quote_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "http://127.0.0.1:9/hook\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not-a-url-secret\n").unwrap();
        let n = |name: &str, from: UrlSource| DesiredNotification {
            name: name.into(),
            sites: None,
            events: vec![NotificationEvent::Failed],
            format: WebhookFormat::Json,
            url_from: from,
        };
        let ok = resolve(&[n("a", UrlSource::File(file))]).unwrap();
        assert_eq!(ok[0].url.expose(), "http://127.0.0.1:9/hook");
        let errors = resolve(&[
            n("b", UrlSource::Env("CONVOY_TEST_SURELY_UNSET_VAR".into())),
            n("c", UrlSource::File(dir.path().join("missing"))),
            n("d", UrlSource::File(bad.clone())),
        ])
        .unwrap_err();
        let text: Vec<String> = errors
            .iter()
            .map(|e| crate::state::error_chain(e))
            .collect();
        assert_eq!(
            text[0],
            "Notification `b`: environment variable `CONVOY_TEST_SURELY_UNSET_VAR` (spec.webhook.urlFrom.env) is not set"
        );
        assert!(
            text[1].starts_with("Notification `c`: failed to read the webhook URL from `")
                && text[1].contains("No such file"),
            "{}",
            text[1]
        );
        assert_eq!(
            text[2],
            format!(
                "Notification `d`: the webhook URL in file `{}` is not one http:// or https:// URL on one line",
                bad.display()
            )
        );
        assert!(!text.concat().contains("secret"));
    }
}
