//! A `once` run cut off by a power loss: its record has `started` but no `done`. convoy says
//! it was interrupted (when, where, what to check), never reruns it by itself, and
//! `convoy retry SITE --once-interrupted` clears it on the operator's word.

use std::fs;
use std::process::{Command, Output, Stdio};

use crate::fleet::{Fleet, assert_exit};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `convoy ARGS` against the fleet's manifests, hosts and state, with stdin not a terminal.
fn convoy(fleet: &Fleet, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .arg("-f")
        .arg(fleet.dir.path().join("manifests"))
        .arg("--state-dir")
        .arg(fleet.state())
        .arg("--known-hosts")
        .arg(fleet.lab.known_hosts())
        .current_dir(fleet.dir.path())
        .env_remove("CONVOY_MANIFESTS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_interrupted_once_is_explained_and_cleared_by_retry_once_interrupted() {
    let fleet = Fleet::new(2);
    fleet.two_stage(1, &[0], &[1]);
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(fleet.once_log(2), vec!["app.r1 h0"]);

    // r2's migration was started on h0, then the host lost power: no `done`, no live pid.
    fleet.two_stage(2, &[0], &[1]);
    let record = fleet
        .lab
        .host_dir(0)
        .join("sites/app/.convoy/once/app.r2/scheduler");
    fs::create_dir_all(&record).unwrap();
    fs::write(record.join("started"), "started=1767225600 host=lab-h0\n").unwrap();
    fs::write(record.join("log"), "Applying 0042_orders... \n").unwrap();

    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    let stdout = text(&out.stdout);
    for wanted in [
        "`once` commands of stage `scheduler` were interrupted: started at 2026-01-01T00:00:00Z",
        "on host h0 and their end was never recorded",
        "check whether they completed",
        "/.convoy/once/app.r2/scheduler/log on host h0",
        "convoy retry app --once-interrupted",
    ] {
        assert!(stdout.contains(wanted), "missing {wanted:?} in:\n{stdout}");
    }
    eprintln!("{stdout}");
    assert!(!stdout.contains("failed on an earlier run"), "{stdout}");
    let status = fleet.status_json();
    let message = status["items"][0]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("were interrupted: started at 2026-01-01T00:00:00Z"),
        "{status}"
    );
    // Never rerun by itself; h0 still serves r1.
    assert_eq!(fleet.once_log(2), vec!["app.r1 h0"]);
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r1"));

    // Without a terminal and without --yes: refused, nothing cleared.
    let out = convoy(&fleet, &["retry", "app", "--once-interrupted"]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("refusing to clear without confirmation"));
    assert!(
        text(&out.stdout).contains(
            "host h0: stage `scheduler`, release app.r2: started at 2026-01-01T00:00:00Z"
        ),
        "{}",
        text(&out.stdout)
    );
    assert!(record.join("started").exists());

    let out = convoy(&fleet, &["retry", "app", "--once-interrupted", "--yes"]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("host h0: cleared"), "{stdout}");
    assert!(!record.join("started").exists());
    assert!(record.join("log").exists(), "the log is kept");
    // A second clear finds nothing.
    let out = convoy(&fleet, &["retry", "app", "--once-interrupted", "--yes"]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("nothing cleared"));

    // The next pass runs `once` again and converges.
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(fleet.once_log(2), vec!["app.r1 h0", "app.r2 h0"]);
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r2"));
    assert_eq!(fleet.current(1, "app").as_deref(), Some("app.r2"));
}
