//! What a message says: convoy's event object (`format: json`, documented in the README)
//! and a Slack incoming-webhook payload made from it (`format: slack`). Pure: the event is
//! built from a pass's report and status by [`event_of`]; nothing here sends anything.

use serde::Serialize;
use serde_json::{Value, json};

use crate::execute::SiteReport;
use crate::manifest::types::{NotificationEvent, WebhookFormat};
use crate::plan::EventKind;
use crate::status::{Phase, SiteStatus};

/// How many last lines of an error a message quotes.
const TAIL_LINES: usize = 10;

/// One notification: what happened to which site, as sent with `format: json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventObject {
    /// What is reported: a phase entered (`Converged`, `Degraded`...) or `RolledBack`.
    pub kind: &'static str,
    pub site: String,
    /// The desired release.
    pub release: String,
    /// The commit of the manifests (a git source only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub phase: Phase,
    /// The phase this Notification was last told about (`null`: none).
    pub previous_phase: Option<Phase>,
    /// The hosts concerned: offline ones (Degraded, Blocked), failed ones (Failed), rolled
    /// back ones (RolledBack), switched ones (Converged).
    pub hosts: Vec<String>,
    /// The site's status message.
    pub message: String,
    /// The last lines of the error of the first host concerned that has one (`null`: none).
    pub error_tail: Option<String>,
    /// When the pass ended (RFC 3339, UTC).
    pub time: String,
}

/// The event object for a pass of `site` that ended in `status`.
pub fn event_of(
    kind: NotificationEvent,
    site: &str,
    report: &SiteReport,
    status: &SiteStatus,
    previous: Option<Phase>,
    commit: Option<&str>,
    time: String,
) -> EventObject {
    let hosts = hosts_concerned(kind, report);
    let error_tail = hosts.iter().find_map(|name| {
        let host = report.hosts.iter().find(|h| &h.name == name)?;
        host.last_error.as_deref().map(tail)
    });
    EventObject {
        kind: kind.as_str(),
        site: site.to_string(),
        release: status.desired_release.clone(),
        commit: commit.map(String::from),
        phase: status.phase,
        previous_phase: previous,
        hosts,
        message: status.message.clone(),
        error_tail,
        time,
    }
}

/// Which hosts a message of `kind` is about.
fn hosts_concerned(kind: NotificationEvent, report: &SiteReport) -> Vec<String> {
    let with_events = |kinds: &[EventKind]| -> Vec<String> {
        let mut hosts: Vec<String> = report
            .events
            .iter()
            .filter(|e| kinds.contains(&e.kind))
            .map(|e| e.host.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    };
    let offline = || -> Vec<String> {
        let mut hosts: Vec<String> = report
            .hosts
            .iter()
            .filter(|h| !h.reachable)
            .map(|h| h.name.clone())
            .collect();
        hosts.sort();
        hosts
    };
    match kind {
        NotificationEvent::RolledBack => with_events(&[EventKind::RolledBack]),
        NotificationEvent::Failed => {
            let failed = with_events(&[
                EventKind::BuildFailed,
                EventKind::HealthFailed,
                EventKind::OnceFailed,
            ]);
            if !failed.is_empty() {
                return failed;
            }
            let mut erring: Vec<String> = report
                .hosts
                .iter()
                .filter(|h| h.last_error.is_some())
                .map(|h| h.name.clone())
                .collect();
            erring.sort();
            erring
        }
        NotificationEvent::Degraded | NotificationEvent::Blocked => offline(),
        NotificationEvent::Converged | NotificationEvent::Progressing => {
            with_events(&[EventKind::Switched])
        }
    }
}

/// The last [`TAIL_LINES`] non-empty lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The HTTP body of `event` in `format`.
pub fn body(format: WebhookFormat, event: &EventObject) -> Value {
    match format {
        WebhookFormat::Json => serde_json::to_value(event).expect("plain data serializes"),
        WebhookFormat::Slack => slack(event),
    }
}

/// One line a person reads first: `convoy: shop is Degraded (was Converged) on release r7`.
pub fn summary(event: &EventObject) -> String {
    let what = match event.kind {
        "RolledBack" => format!("rolled back on {}", event.hosts.join(", ")),
        _ => format!("is {}", event.phase),
    };
    let was = match event.previous_phase {
        Some(previous) if previous != event.phase => format!(" (was {previous})"),
        _ => String::new(),
    };
    format!(
        "convoy: {} {what}{was}: release {}",
        event.site, event.release
    )
}

/// A Slack incoming-webhook payload: `text` (the summary, also what notifications show) and
/// `blocks` with the message, the facts and the error tail.
fn slack(event: &EventObject) -> Value {
    let mut facts = vec![
        format!("*Site:* {}", event.site),
        format!("*Release:* {}", event.release),
        format!("*Phase:* {}", event.phase),
    ];
    if let Some(commit) = &event.commit {
        facts.push(format!("*Commit:* {commit}"));
    }
    if !event.hosts.is_empty() {
        facts.push(format!("*Hosts:* {}", event.hosts.join(", ")));
    }
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n{}", summary(event), event.message)}}),
        json!({"type": "section", "fields": facts.iter().map(|f| json!({"type": "mrkdwn", "text": f})).collect::<Vec<_>>()}),
    ];
    if let Some(tail) = &event.error_tail {
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{tail}```")}}),
        );
    }
    json!({"text": summary(event), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventObject {
        EventObject {
            kind: "Degraded",
            site: "shop".into(),
            release: "r7".into(),
            commit: None,
            phase: Phase::Degraded,
            previous_phase: Some(Phase::Converged),
            hosts: vec!["web3".into()],
            message: "every reachable host runs r7; optional hosts unreachable: web3".into(),
            error_tail: Some("ssh: connect to host web3: Connection refused".into()),
            time: "2026-11-28T10:00:00Z".into(),
        }
    }

    #[test]
    fn the_json_format_is_the_event_object_with_commit_only_when_known() {
        let mut e = event();
        assert_eq!(
            body(WebhookFormat::Json, &e),
            json!({"kind": "Degraded", "site": "shop", "release": "r7", "phase": "Degraded",
                "previousPhase": "Converged", "hosts": ["web3"],
                "message": "every reachable host runs r7; optional hosts unreachable: web3",
                "errorTail": "ssh: connect to host web3: Connection refused",
                "time": "2026-11-28T10:00:00Z"})
        );
        e.commit = Some("0123abcd".into());
        assert_eq!(body(WebhookFormat::Json, &e)["commit"], "0123abcd");
    }

    #[test]
    fn slack_gets_a_readable_summary_and_the_facts() {
        let mut e = event();
        e.commit = Some("0123abcd".into());
        let body = body(WebhookFormat::Slack, &e);
        assert_eq!(
            body["text"],
            "convoy: shop is Degraded (was Converged): release r7"
        );
        let fields: Vec<&str> = body["blocks"][1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "*Site:* shop",
                "*Release:* r7",
                "*Phase:* Degraded",
                "*Commit:* 0123abcd",
                "*Hosts:* web3"
            ]
        );
        assert_eq!(
            body["blocks"][2]["text"]["text"],
            "```ssh: connect to host web3: Connection refused```"
        );
    }

    #[test]
    fn a_rollback_summary_names_the_hosts_and_the_tail_keeps_the_last_lines() {
        let mut e = event();
        e.kind = "RolledBack";
        e.phase = Phase::Failed;
        e.hosts = vec!["h1".into(), "h2".into()];
        assert_eq!(
            summary(&e),
            "convoy: shop rolled back on h1, h2 (was Converged): release r7"
        );
        let long: String = (1..=15).map(|i| format!("line {i}\n\n")).collect();
        assert_eq!(tail(&long).lines().count(), TAIL_LINES);
        assert!(tail(&long).starts_with("line 6\n") && tail(&long).ends_with("line 15"));
    }
}
