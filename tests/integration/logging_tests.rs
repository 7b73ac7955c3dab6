//! The logs of `convoy reconcile`: through `tracing` on stderr, text or one JSON object per
//! line, filtered by `RUST_LOG`, with the site and host as fields; the resolved absolute
//! manifest and state paths first; nothing at info for a resync that changed nothing.
//! Runs the real binary on `address: local` hosts (no sshd).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::daemon_guard_tests::{LocalDaemon, group_only};
use crate::daemon_tests::wait_until;
use crate::local_reconcile_tests::example_in;
use crate::util::{convoy_in, stderr};

/// The daemon on the bundled example (`tmp/manifests`, hosts under `tmp/hosts`), state in
/// `tmp/state`, with `args` added; returned once a pass converged the site.
fn converged_daemon(tmp: &Path, args: &[&str], env: &[(&str, &str)]) -> LocalDaemon {
    let manifests = example_in(tmp).display().to_string();
    let mut all = vec!["-f", manifests.as_str(), "--state-dir", "state"];
    all.extend_from_slice(args);
    let daemon = LocalDaemon::spawn(tmp, &all, env);
    wait_until(Duration::from_secs(60), "the site converges", || {
        converged_passes(&daemon) >= 1
    });
    daemon
}

/// How many passes of the example's site ended Converged, from the daemon's metrics.
fn converged_passes(daemon: &LocalDaemon) -> u64 {
    let (_, metrics) = daemon.get("/metrics");
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("convoy_reconciles_total{site=\"jobs-manager\",result=\"converged\"} ")
        })
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object: {e}: {line}"))
        })
        .collect()
}

#[test]
fn json_log_lines_parse_and_carry_site_and_host_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = converged_daemon(tmp.path(), &["--log-format", "json"], &[]);
    wait_until(Duration::from_secs(5), "the outcome is logged", || {
        daemon.log_text().contains("every host runs")
    });
    let lines = json_lines(&daemon.log_text());
    for line in &lines {
        for key in ["timestamp", "level", "message"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
    }
    let on = |host: &str, event: &str| {
        lines
            .iter()
            .any(|l| l["site"] == "jobs-manager" && l["host"] == host && l["event"] == event)
    };
    for host in ["sched1", "web1", "web2"] {
        assert!(
            on(host, "Built"),
            "no Built line with site and host {host}: {lines:#?}"
        );
        assert!(
            on(host, "Switched"),
            "no Switched line for {host}: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["site"] == "jobs-manager" && l["phase"] == "Converged"),
        "{lines:#?}"
    );
}

#[test]
fn rust_log_warn_silences_info_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = converged_daemon(tmp.path(), &[], &[("RUST_LOG", "warn")]);
    // A warning still shows: an invalid manifest.
    fs::write(tmp.path().join("manifests/broken.yaml"), "kind: [\n").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the invalid manifest is logged",
        || daemon.log_text().contains("broken.yaml"),
    );
    let log = daemon.log_text();
    assert!(log.lines().all(|l| l.contains("WARN")), "{log}");
    assert!(!log.contains("INFO"), "{log}");
}

#[test]
fn a_resync_that_changes_nothing_logs_nothing_at_info() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = converged_daemon(tmp.path(), &["--resync", "1s"], &[]);
    let first = converged_passes(&daemon);
    wait_until(Duration::from_secs(10), "a resync pass", || {
        converged_passes(&daemon) > first
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.log_text();
    let passes = converged_passes(&daemon);
    wait_until(Duration::from_secs(10), "two more resync passes", || {
        converged_passes(&daemon) >= passes + 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.log_text(),
        before,
        "resync passes that changed nothing logged at info"
    );
    assert!(
        before.contains("Switched"),
        "the deploy itself is logged: {before}"
    );
}

#[test]
fn the_first_daemon_log_line_names_the_absolute_manifest_and_state_paths() {
    let tmp = tempfile::tempdir().unwrap();
    group_only(tmp.path());
    let daemon = LocalDaemon::spawn(tmp.path(), &["-f", "m", "--state-dir", "state"], &[]);
    wait_until(Duration::from_secs(10), "manifests loaded", || {
        daemon.log_text().contains("manifests loaded")
    });
    let (m, state) = (tmp.path().join("m"), tmp.path().join("state"));
    assert_first_line_names(&daemon.log_text(), &[m, state]);
}

/// Run from cron with the defaults: the relative `manifests` and `.convoy-state` resolve
/// against the working directory, and the first line on stderr says where they went.
#[test]
fn reconcile_once_logs_the_absolute_default_paths_first() {
    let tmp = tempfile::tempdir().unwrap();
    group_only(tmp.path());
    fs::rename(tmp.path().join("m"), tmp.path().join("manifests")).unwrap();
    let out = convoy_in(tmp.path(), &["reconcile", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stderr(&out);
    let defaults = [
        tmp.path().join("manifests"),
        tmp.path().join(".convoy-state"),
    ];
    assert_first_line_names(&text, &defaults);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.contains(" INFO "), "logged at info: {text}");
}

/// The first line of `log` names each of `paths` in canonical form (the temporary directory
/// may be reached through a symlink).
fn assert_first_line_names(log: &str, paths: &[PathBuf]) {
    let first = log.lines().next().unwrap_or_default();
    for path in paths {
        let absolute = fs::canonicalize(path).unwrap().display().to_string();
        assert!(
            first.contains(&absolute),
            "first line lacks {absolute}: {log}"
        );
    }
}
