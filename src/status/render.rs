//! Statuses and history as people read them: the `convoy status` table and its `-o json|yaml`
//! list, `convoy status SITE` (one site in detail, or its Site object), and `convoy history`
//! lines. Text in, text out: reads no state dir, writes nothing.

use crate::manifest::types::API_VERSION;
use crate::state::{HistoryEvent, SourceStatus};
use crate::status::ConditionStatus;

use super::SiteObject;

/// `convoy status` as a table: one line per site, then its hosts indented beneath it.
///
/// ```text
/// SITE          DESIRED        PHASE     HOSTS     SINCE                 MESSAGE
/// jobs-manager  r2026-11-24.1  Degraded  1/2 live  2026-11-25T10:00:00Z  web2 unreachable
///   web1  scheduler  r2026-11-24.1
///   web2  frontend   r2026-11-23.1  unreachable  ssh: connect timed out
/// ```
/// `HOSTS` counts the hosts whose live release is the desired one. Multi-line messages and
/// errors show their first line. With no sites, only the header is printed.
pub fn render_status_table(sites: &[SiteObject]) -> String {
    let mut site_rows = vec![
        ["SITE", "DESIRED", "PHASE", "HOSTS", "SINCE", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    let mut host_rows = Vec::new();
    for SiteObject { name, status, .. } in sites {
        let live = status
            .hosts
            .iter()
            .filter(|h| h.release.as_deref() == Some(status.desired_release.as_str()))
            .count();
        site_rows.push(vec![
            name.clone(),
            status.desired_release.clone(),
            status.phase.to_string(),
            format!("{live}/{} live", status.hosts.len()),
            dash(status.last_transition_time.as_deref()),
            dash(Some(first_line(&status.message))),
        ]);
        host_rows.push(
            status
                .hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.stage.clone(),
                        dash(h.release.as_deref()),
                        if h.reachable { "" } else { "unreachable" }.to_owned(),
                        first_line(h.last_error.as_deref().unwrap_or("")).to_owned(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let site_lines = align(&site_rows, "");
    let host_lines = align(&host_rows.concat(), "  ");
    let mut out = String::new();
    let mut site_lines = site_lines.into_iter();
    let mut host_lines = host_lines.into_iter();
    out.push_str(&site_lines.next().unwrap_or_default());
    out.push('\n');
    for (site_line, hosts) in site_lines.zip(&host_rows) {
        out.push_str(&site_line);
        out.push('\n');
        for line in host_lines.by_ref().take(hosts.len()) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Where the desired state comes from, when the controller follows a git branch: a line
/// naming the branch and the commit served (full SHA), and one more when a newer commit is
/// not served (invalid, or the fetch failed), from its `Ready` condition.
pub fn render_source(source: &SourceStatus) -> String {
    let path = if source.path.is_empty() {
        String::new()
    } else {
        format!(", path {}", source.path)
    };
    let mut out = format!(
        "Manifests: git {} (branch {}{path}), commit {}\n",
        source.repository,
        source.branch,
        source.commit.as_deref().unwrap_or("- (none valid yet)")
    );
    if let Some(ready) = source.ready().filter(|c| c.status != ConditionStatus::True) {
        out.push_str(&format!(
            "  {} since {}: {}\n",
            ready.reason, ready.last_transition_time, ready.message
        ));
    }
    out
}

/// `convoy status -o json|yaml`: a Kubernetes `List` of Site objects carrying their status.
pub fn status_list(sites: &[SiteObject]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = sites.iter().map(site_object).collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// `convoy status SITE -o json|yaml`: the Site object, with its labels and status.
pub fn site_object(site: &SiteObject) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": site.name});
    if !site.labels.is_empty() {
        metadata["labels"] = serde_json::json!(site.labels);
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Site",
        "metadata": metadata,
        "status": site.status,
    })
}

/// `convoy status SITE`: one site in detail, like `kubectl describe`: every field, the whole
/// message, the conditions, and each host with its whole last error.
pub fn render_site_detail(site: &SiteObject) -> String {
    let s = &site.status;
    let labels: Vec<String> = site
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut fields = vec![
        ("Name", site.name.clone()),
        ("Labels", dash(Some(&labels.join(",")))),
        ("Phase", s.phase.to_string()),
        ("Desired release", s.desired_release.clone()),
        ("Revision", dash(s.revision.as_deref())),
        ("Failed attempts", s.attempts.to_string()),
        ("Phase since", dash(s.last_transition_time.as_deref())),
        ("Last success", dash(s.last_success_time.as_deref())),
        ("Message", dash(Some(&s.message))),
    ];
    if let Some(commit) = &s.manifest_commit {
        fields.insert(5, ("Manifest commit", commit.clone()));
    }
    let mut out = String::new();
    for (field, value) in fields {
        let mut lines = value.lines();
        out.push_str(&format!(
            "{:<17}{}\n",
            format!("{field}:"),
            lines.next().unwrap_or("")
        ));
        for line in lines {
            out.push_str(&format!("{:17}{line}\n", ""));
        }
    }
    let mut conditions = vec![
        ["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    conditions.extend(s.conditions.iter().map(|c| {
        vec![
            c.kind.clone(),
            format!("{:?}", c.status),
            c.reason.clone(),
            c.last_transition_time.clone(),
            first_line(&c.message).to_owned(),
        ]
    }));
    out.push_str("Conditions:\n");
    push_lines(&mut out, align(&conditions, "  "));
    let mut hosts = vec![
        ["HOST", "STAGE", "RELEASE", "REACHABLE"]
            .map(String::from)
            .to_vec(),
    ];
    hosts.extend(s.hosts.iter().map(|h| {
        vec![
            h.name.clone(),
            h.stage.clone(),
            dash(h.release.as_deref()),
            if h.reachable { "yes" } else { "no" }.to_owned(),
        ]
    }));
    out.push_str("Hosts:\n");
    push_lines(&mut out, align(&hosts, "  "));
    for h in s.hosts.iter().filter(|h| h.last_error.is_some()) {
        out.push_str(&format!("Last error on {}:\n", h.name));
        for line in h.last_error.as_deref().unwrap_or("").lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

fn push_lines(out: &mut String, lines: Vec<String>) {
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
}

/// `convoy history`: one aligned line per event, no header:
/// time, action, release, `host/stage`, detail (first line). When the events span several
/// sites, the site is shown after the time. `host/stage` is `web1/frontend`, `web1`,
/// `-/frontend`, or `-`.
pub fn render_history(events: &[HistoryEvent]) -> String {
    let several_sites = events.iter().any(|e| e.site != events[0].site);
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let place = match (&e.host, &e.stage) {
                (Some(host), Some(stage)) => format!("{host}/{stage}"),
                (Some(host), None) => host.clone(),
                (None, Some(stage)) => format!("-/{stage}"),
                (None, None) => "-".to_owned(),
            };
            let mut row = vec![e.time.clone()];
            if several_sites {
                row.push(e.site.clone());
            }
            let detail = first_line(e.detail.as_deref().unwrap_or("")).to_owned();
            // The manifest commit the event's desired state came from (git source).
            let detail = match (&e.manifest_commit, detail.is_empty()) {
                (Some(commit), true) => format!("manifests {commit}"),
                (Some(commit), false) => format!("{detail} (manifests {commit})"),
                (None, _) => detail,
            };
            row.extend([e.kind.to_string(), e.release.clone(), place, detail]);
            row
        })
        .collect();
    align(&rows, "")
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

fn dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "-".to_owned(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim_end()
}

/// Pads cells into columns two spaces apart; columns empty in every row are dropped and
/// trailing spaces trimmed.
fn align(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = indent.to_owned();
            for (cell, &width) in row.iter().zip(&widths) {
                if width == 0 {
                    continue;
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::EventKind;
    use crate::status::fixtures::{event, host, object, status};
    use crate::status::{HostStatus, Phase, conditions};

    #[test]
    fn status_table() {
        let mut degraded = status(Phase::Degraded, "r2026-11-24.1");
        degraded.last_transition_time = Some("2026-11-25T10:00:00Z".into());
        degraded.message = "web2 unreachable\nmore detail".into();
        degraded.hosts = vec![
            host("web1", "scheduler", Some("r2026-11-24.1"), true),
            HostStatus {
                last_error: Some("ssh: connect timed out\nsecond line".into()),
                ..host("web2", "frontend", Some("r2026-11-23.1"), false)
            },
        ];
        let mut failed = status(Phase::Failed, "r7");
        failed.message = "build failed on lic1".into();
        failed.hosts = vec![HostStatus {
            last_error: Some("build failed: exit 1".into()),
            ..host("lic1", "app", None, true)
        }];
        let table = render_status_table(&[
            object("jobs-manager", degraded),
            object("licensing", failed),
            object("empty", status(Phase::Suspended, "r1")),
        ]);
        assert_eq!(
            table,
            "\
SITE          DESIRED        PHASE      HOSTS     SINCE                 MESSAGE
jobs-manager  r2026-11-24.1  Degraded   1/2 live  2026-11-25T10:00:00Z  web2 unreachable
  web1  scheduler  r2026-11-24.1
  web2  frontend   r2026-11-23.1  unreachable  ssh: connect timed out
licensing     r7             Failed     0/1 live  -                     build failed on lic1
  lic1  app        -                           build failed: exit 1
empty         r1             Suspended  0/0 live  -                     -
"
        );
        assert_eq!(
            render_status_table(&[]),
            "SITE  DESIRED  PHASE  HOSTS  SINCE  MESSAGE\n"
        );
    }

    #[test]
    fn status_list_shape() {
        let mut labelled = object("api", status(Phase::Failed, "r2"));
        labelled.labels.insert("team".into(), "core".into());
        let list = status_list(&[object("web", status(Phase::Converged, "r1")), labelled]);
        assert_eq!(
            list,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [{
                "apiVersion": "convoy.dev/v1alpha1", "kind": "Site",
                "metadata": {"name": "web"},
                "status": {"phase": "Converged", "desiredRelease": "r1", "revision": "3f2a9c1",
                           "message": "", "attempts": 0, "conditions": [], "hosts": []}
            }, {
                "apiVersion": "convoy.dev/v1alpha1", "kind": "Site",
                "metadata": {"name": "api", "labels": {"team": "core"}},
                "status": {"phase": "Failed", "desiredRelease": "r2", "revision": "3f2a9c1",
                           "message": "", "attempts": 0, "conditions": [], "hosts": []}
            }]})
        );
    }

    #[test]
    fn site_detail() {
        let mut s = status(Phase::Failed, "r7");
        s.message = "release `r7` is held after 2 failed attempts\nsecond line".into();
        s.attempts = 2;
        s.last_transition_time = Some("2026-11-25T10:00:00Z".into());
        s.conditions = conditions(
            Phase::Failed,
            "Held",
            &s.message,
            &[],
            "2026-11-25T10:00:00Z",
        );
        s.hosts = vec![
            HostStatus {
                last_error: Some("build failed: exit 1\nnpm ERR! missing".into()),
                ..host("lic1", "app", None, true)
            },
            host("lic2", "app", Some("r6"), false),
        ];
        let mut site = object("licensing", s);
        site.labels.insert("team".into(), "core".into());
        site.labels.insert("tier".into(), "back".into());
        assert_eq!(
            render_site_detail(&site),
            "\
Name:            licensing
Labels:          team=core,tier=back
Phase:           Failed
Desired release: r7
Revision:        3f2a9c1
Failed attempts: 2
Phase since:     2026-11-25T10:00:00Z
Last success:    -
Message:         release `r7` is held after 2 failed attempts
                 second line
Conditions:
  TYPE         STATUS  REASON  SINCE                 MESSAGE
  Ready        False   Held    2026-11-25T10:00:00Z  release `r7` is held after 2 failed attempts
  Reconciling  False   Held    2026-11-25T10:00:00Z  release `r7` is held after 2 failed attempts
  Stalled      True    Held    2026-11-25T10:00:00Z  release `r7` is held after 2 failed attempts
Hosts:
  HOST  STAGE  RELEASE  REACHABLE
  lic1  app    -        yes
  lic2  app    r6       no
Last error on lic1:
  build failed: exit 1
  npm ERR! missing
"
        );
    }

    #[test]
    fn history_rendering() {
        let events = [
            event("web", "2025-11-25T00:00:01Z", EventKind::Built)
                .host("web1")
                .stage("frontend"),
            event("web", "2025-11-25T00:00:02Z", EventKind::HealthFailed)
                .host("web10")
                .detail("curl: (7) refused\nmore"),
            event("web", "2025-11-25T00:00:03Z", EventKind::OnceRan).stage("scheduler"),
            event("web", "2025-11-25T00:00:04Z", EventKind::Converged),
        ];
        assert_eq!(
            render_history(&events),
            "\
2025-11-25T00:00:01Z  Built         r1  web1/frontend
2025-11-25T00:00:02Z  HealthFailed  r1  web10          curl: (7) refused
2025-11-25T00:00:03Z  OnceRan       r1  -/scheduler
2025-11-25T00:00:04Z  Converged     r1  -
"
        );
        let mixed = [
            event("web", "2025-11-25T00:00:01Z", EventKind::Built),
            event("api", "2025-11-25T00:00:02Z", EventKind::Switched),
        ];
        assert_eq!(
            render_history(&mixed),
            "\
2025-11-25T00:00:01Z  web  Built     r1  -
2025-11-25T00:00:02Z  api  Switched  r1  -
"
        );
        assert_eq!(render_history(&[]), "");
    }
}
