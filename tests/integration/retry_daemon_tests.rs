//! `convoy retry SITE` while a daemon holds the state dir: the command leaves a request, the
//! real daemon (a child process) on the real-sshd lab takes it within a second, lifts the
//! Failed hold and runs the site again; an unknown site and a holder that takes no requests
//! get clear answers. Every wait is bounded.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemon_tests::{Daemon, wait_until};
use crate::fleet::{Fleet, SiteDef, assert_exit};
use crate::util::{stderr, stdout};

fn deploy(fleet: &Fleet, version: u32) {
    let mut docs = vec![fleet.group("web", &[0], None)];
    docs.extend(fleet.site(&SiteDef {
        version,
        stages: &[("web", "web", false, false)],
        failure_retries: 1,
        ..SiteDef::default()
    }));
    fleet.write(&docs);
}

fn site_status(fleet: &Fleet) -> serde_json::Value {
    fleet.status_json()["items"][0]["status"].clone()
}

/// `latency_ms` of the daemon's log line for the retry it took.
fn retry_latency_ms(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("retry requested"))?;
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("latency_ms="))?;
    field.parse().ok()
}

#[test]
fn retry_while_the_daemon_runs_lifts_the_hold_within_a_second_and_converges() {
    let fleet = Fleet::new(1);
    deploy(&fleet, 1);
    assert_exit(&fleet.reconcile(&[]), 0);
    fleet.mark(0, "fail-health", true);
    deploy(&fleet, 2);
    let daemon = Daemon::start(&fleet, "10m");
    wait_until(
        Duration::from_secs(90),
        "the release is held Failed",
        || {
            let status = site_status(&fleet);
            status["phase"] == "Failed" && status["attempts"] == 1
        },
    );
    assert_eq!(
        fleet.current(0, "app").as_deref(),
        Some("app.r1"),
        "rolled back"
    );

    // The cause fixed on the host; the hold alone keeps the daemon from trying again.
    fleet.mark(0, "fail-health", false);
    let out = fleet.convoy(&["retry", "app"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("daemon took the retry of app"),
        "{}",
        stdout(&out)
    );
    wait_until(Duration::from_secs(90), "app.r2 is live", || {
        fleet.current(0, "app").as_deref() == Some("app.r2")
    });
    wait_until(Duration::from_secs(30), "the site is Converged", || {
        site_status(&fleet)["phase"] == "Converged"
    });
    let log = daemon.log_text();
    let latency = retry_latency_ms(&log).unwrap_or_else(|| panic!("no retry line:\n{log}"));
    eprintln!("the daemon took the retry {latency} ms after the request");
    assert!(
        latency < 1000,
        "the daemon took the request after {latency} ms:\n{log}"
    );

    // A site the daemon does not manage: a clear answer, exit 2.
    let out = fleet.convoy(&["retry", "nosuch"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("the daemon manages no site `nosuch` (its sites: app)"),
        "{}",
        stderr(&out)
    );
    let requests = fleet.state().join("requests");
    let left: Vec<_> = std::fs::read_dir(&requests).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "requests and answers are removed: {left:?}"
    );
}

#[test]
fn retry_with_a_holder_that_takes_no_requests_says_so_and_withdraws_it() {
    let fleet = Fleet::new(1);
    deploy(&fleet, 1);
    assert_exit(&fleet.reconcile(&[]), 0);
    // Something holds the state-dir lock but reads no requests (as a `--once` run).
    // One process (exec), so ending it by PID frees the lock.
    let mut holder = Command::new("sh")
        .args(["-c", "exec 9<>\"$1\" && flock -n 9 && exec sleep 30", "sh"])
        .arg(fleet.state().join("lock"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = fleet.convoy(&["retry", "app"]);
    let _ = Command::new("kill").arg(holder.id().to_string()).status();
    let _ = holder.wait();
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no daemon answered within 5s")
            && stderr(&out).contains("request withdrawn"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(fleet.state().join("requests"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // With the lock free, retry works as ever.
    assert_exit(&fleet.convoy(&["retry", "app"]), 0);
}
