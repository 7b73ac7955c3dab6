//! `rollout.maxFailed` end to end: the real binary against real sshd hosts of the lab, with
//! builds and health checks failing on chosen hosts (marker files, see `fleet.rs`).

use crate::fleet::{Fleet, activations, assert_exit};
use crate::util::stdout;

/// A required scheduler stage, then an optional frontend stage, with `rollout.maxFailed`.
fn write(fleet: &Fleet, version: u32, scheduler: &[usize], frontend: &[usize], max_failed: &str) {
    let mut docs = fleet.two_stage_docs(version, scheduler, frontend);
    let site = &mut docs[2];
    assert!(site.contains("rollout: {batch:"), "{site}");
    *site = site.replace(
        "rollout: {batch:",
        &format!("rollout: {{maxFailed: {max_failed}, batch:"),
    );
    fleet.write(&docs);
}

fn host<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["items"][0]["status"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap()
}

fn on(fleet: &Fleet, hosts: usize) -> Vec<Option<String>> {
    (0..hosts).map(|i| fleet.current(i, "app")).collect()
}

fn releases(names: &[&str]) -> Vec<Option<String>> {
    names.iter().map(|r| Some(format!("app.{r}"))).collect()
}

#[test]
fn a_build_failure_within_max_failed_degrades_and_the_fixed_host_converges_next_pass() {
    let fleet = Fleet::new(5);
    write(&fleet, 1, &[0], &[1, 2, 3, 4], "1");
    assert_exit(&fleet.reconcile(&[]), 0);
    write(&fleet, 2, &[0], &[1, 2, 3, 4], "1");
    fleet.mark(2, "fail-build", true);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 3);
    assert_eq!(
        on(&fleet, 5),
        releases(&["r2", "r2", "r1", "r2", "r2"]),
        "the failing host keeps its previous release, the others switch"
    );
    let said = stdout(&out);
    assert!(
        said.lines()
            .any(|l| l.starts_with("warning: app:") && l.contains("h2")),
        "{said}"
    );
    let status = fleet.status_json();
    let site = &status["items"][0]["status"];
    assert_eq!(site["phase"], "Degraded", "{site}");
    assert!(
        site["message"].as_str().unwrap().contains(
            "failed within rollout.maxFailed, kept their previous release (retried next pass): h2"
        ),
        "{site}"
    );
    assert_eq!(
        site["attempts"], 0,
        "a tolerated failure is no failed attempt"
    );
    let h2 = host(&status, "h2");
    assert!(
        h2["lastError"]
            .as_str()
            .unwrap()
            .contains("BUILD BROKEN on h2"),
        "{h2}"
    );
    let detail = stdout(&fleet.convoy(&["status", "app"]));
    assert!(detail.contains("BUILD BROKEN on h2"), "{detail}");

    // Tolerated failures never add up to the failure hold (failureRetries is 2).
    for _ in 0..2 {
        assert_exit(&fleet.reconcile(&[]), 3);
    }
    fleet.mark(2, "fail-build", false);
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(on(&fleet, 5), releases(&["r2"; 5]));
    assert_eq!(
        fleet.status_json()["items"][0]["status"]["phase"],
        "Converged"
    );
}

#[test]
fn health_failures_roll_back_one_host_within_max_failed_and_the_whole_stage_beyond() {
    let fleet = Fleet::new(5);
    write(&fleet, 1, &[0], &[1, 2, 3, 4], "25%");
    assert_exit(&fleet.reconcile(&[]), 0);

    // One of four may fail (25%, rounded down): that host alone goes back.
    write(&fleet, 2, &[0], &[1, 2, 3, 4], "25%");
    fleet.mark(2, "fail-health", true);
    assert_exit(&fleet.reconcile(&[]), 3);
    assert_eq!(on(&fleet, 5), releases(&["r2", "r2", "r1", "r2", "r2"]));
    let last = activations(&fleet.trace(2)).pop().unwrap();
    assert_eq!(
        last.1, "app.r1",
        "h2 re-activated on the release it went back to"
    );

    // Two of four: the whole optional stage goes back, the required stage keeps r3.
    write(&fleet, 3, &[0], &[1, 2, 3, 4], "25%");
    fleet.mark(3, "fail-health", true);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    assert_eq!(on(&fleet, 5), releases(&["r3", "r2", "r1", "r2", "r2"]));
    let site = &fleet.status_json()["items"][0]["status"];
    assert_eq!(site["phase"], "Failed", "{site}");
    assert!(
        site["message"]
            .as_str()
            .unwrap()
            .contains("2 of 4 hosts of stage `frontend` failed, rollout.maxFailed 25% allows 1"),
        "{site}"
    );
    assert_eq!(
        site["attempts"], 1,
        "a failure beyond the budget is a failed attempt"
    );
}

#[test]
fn a_required_stage_needs_every_host_whatever_max_failed_says() {
    let fleet = Fleet::new(4);
    write(&fleet, 1, &[0, 1], &[2, 3], "100%");
    fleet.mark(1, "fail-build", true);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    assert_eq!(on(&fleet, 4), vec![None; 4], "nothing switched anywhere");
    assert!(
        fleet.once_log(4).is_empty(),
        "no `once` before every required build"
    );
    let site = &fleet.status_json()["items"][0]["status"];
    assert_eq!(site["phase"], "Failed", "{site}");
    assert!(
        site["message"]
            .as_str()
            .unwrap()
            .contains("stage `scheduler` is required"),
        "{site}"
    );
}

#[test]
fn the_daemon_retries_a_failed_host_with_backoff_until_it_converges() {
    use std::time::Duration;

    use crate::daemon_tests::{Daemon, wait_until};

    let fleet = Fleet::new(3);
    write(&fleet, 1, &[0], &[1, 2], "1");
    fleet.mark(2, "fail-build", true);
    let daemon = Daemon::start(&fleet, "5m");
    let phase = |name: &str| {
        daemon.get("/metrics").1.contains(&format!(
            "convoy_site_phase{{site=\"app\",phase=\"{name}\"}} 1"
        ))
    };
    wait_until(Duration::from_secs(60), "the site is Degraded", || {
        phase("Degraded")
    });
    assert_eq!(
        on(&fleet, 3),
        vec![Some("app.r1".into()), Some("app.r1".into()), None]
    );
    // No change and no resync is due: only the backoff brings the failed host back.
    let build_failures = || {
        stdout(&fleet.convoy(&["history", "app"]))
            .lines()
            .filter(|l| l.contains("BuildFailed") && l.contains("h2"))
            .count()
    };
    wait_until(Duration::from_secs(60), "h2 is tried again", || {
        build_failures() >= 2
    });
    fleet.mark(2, "fail-build", false);
    wait_until(Duration::from_secs(90), "h2 converges", || {
        fleet.current(2, "app").as_deref() == Some("app.r1")
    });
    wait_until(Duration::from_secs(30), "the site is Converged", || {
        phase("Converged")
    });
}
