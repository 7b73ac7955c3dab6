//! `reconcile --once --host NAME` on the lab: a server that was off catches up alone, and
//! a targeted host waits (exit 1, naming what for) rather than switching before the rest of
//! its site allows it. Every other host is observed, never changed.

use crate::fleet::{Fleet, SiteDef, activations, assert_exit, mtimes};
use crate::util::{stderr, stdout};

/// scheduler h0, h1 (runs `once`), then an optional frontend h2, h3; release `app.rN`.
fn deploy(fleet: &Fleet, version: u32) {
    let mut docs = vec![
        fleet.group("scheduler", &[0, 1], None),
        fleet.group("frontend", &[2, 3], None),
    ];
    docs.extend(fleet.site(&SiteDef {
        version,
        stages: &[
            ("scheduler", "scheduler", false, true),
            ("frontend", "frontend", true, false),
        ],
        ..SiteDef::default()
    }));
    fleet.write(&docs);
}

fn built(fleet: &Fleet, i: usize, release: &str) -> bool {
    fleet
        .lab
        .host_dir(i)
        .join(format!("sites/app/releases/{release}/.convoy-complete"))
        .exists()
}

#[test]
fn a_host_back_from_being_off_catches_up_alone_and_waits_for_what_it_may_not_change() {
    let mut fleet = Fleet::new(4);
    fleet.lab.stop_host(3);
    deploy(&fleet, 1);
    assert_exit(&fleet.reconcile(&[]), 3);
    deploy(&fleet, 2);
    assert_exit(&fleet.reconcile(&[]), 3);
    fleet.lab.start_host(3);

    // The rest converged while h3 was off: --host h3 brings it to the newest release, alone.
    let others: Vec<_> = (0..3).map(|i| mtimes(&fleet.lab.host_dir(i))).collect();
    let out = fleet.reconcile(&["--host", "h3"]);
    assert_exit(&out, 0);
    assert_eq!(fleet.current(3, "app").as_deref(), Some("app.r2"));
    let h3: Vec<String> = activations(&fleet.trace(3))
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(h3, ["app.r2"], "straight to the newest release");
    let after: Vec<_> = (0..3).map(|i| mtimes(&fleet.lab.host_dir(i))).collect();
    assert_eq!(others, after, "the hosts not targeted were only observed");
    assert_eq!(
        fleet.once_log(4),
        ["app.r1 h0", "app.r2 h0"],
        "once never repeated"
    );

    // A name the manifests do not have: exit 2, a suggestion, nothing touched.
    let out = fleet.reconcile(&["--host", "h33"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("--host `h33`") && stderr(&out).contains("did you mean `h3`?"),
        "{}",
        stderr(&out)
    );

    // A new release: the required hosts not targeted lack its build, so the gate stays
    // shut (exit 1 at once, no retry), no `once`, nothing switches; h3 only builds.
    deploy(&fleet, 3);
    let out = fleet.reconcile(&["--host", "h3", "--wait-unreachable", "10m"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("leaves alone to build app.r3") && text.contains(": h0, h1"),
        "{text}"
    );
    assert!(!text.contains("retry"), "nothing to wait for: {text}");
    assert!(built(&fleet, 3, "app.r3") && !built(&fleet, 0, "app.r3"));
    assert_eq!(fleet.current(3, "app").as_deref(), Some("app.r2"));
    assert_eq!(fleet.once_log(4).len(), 2, "no `once` behind a shut gate");

    // h0 builds; h1 still lacks the build: still shut, naming h1.
    let out = fleet.reconcile(&["--host", "h0"]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains(": h1"), "{}", stdout(&out));
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r2"));

    // h1 builds: the gate opens, but r3 never went live on its stage (its `once` has not
    // run): --host catches hosts up, it does not deploy. No `once`, nothing switches.
    let out = fleet.reconcile(&["--host", "h1"]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("--host catches a host up to a release its stage already runs"),
        "{}",
        stdout(&out)
    );
    assert_eq!(fleet.current(1, "app").as_deref(), Some("app.r2"));
    assert_eq!(fleet.once_log(4).len(), 2, "no `once` for a catch-up");

    // The whole scheduler stage targeted: `once` runs where it always does (h0) and both go
    // live; the site is not Converged while --host left h2 and h3 on app.r2.
    let out = fleet.reconcile(&["--host", "h0", "--host", "h1"]);
    assert_exit(&out, 0);
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r3"));
    assert_eq!(
        fleet.once_log(4).last().map(String::as_str),
        Some("app.r3 h0")
    );
    let status = fleet.status_json()["items"][0]["status"].clone();
    assert_eq!(
        status["message"],
        "the targeted hosts run app.r3; hosts --host left alone and not on it: h2 (app.r2), h3 (app.r2)"
    );
    assert_eq!(status["phase"], "Progressing");

    // h3 follows h2 in its stage, and h2 is not on app.r3 yet: it waits, never leads.
    let out = fleet.reconcile(&["--host", "h3"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("h3 waits: --host catches a host up to a release its stage already runs"),
        "{text}"
    );
    assert_eq!(fleet.current(3, "app").as_deref(), Some("app.r2"));

    // The whole site, untargeted: everything converges, `once` exactly once per release.
    assert_exit(&fleet.reconcile(&[]), 0);
    for i in 0..4 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r3"), "h{i}");
    }
    let mut once = fleet.once_log(4);
    once.sort();
    assert_eq!(once, ["app.r1 h0", "app.r2 h0", "app.r3 h0"]);
    let h3: Vec<String> = activations(&fleet.trace(3))
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(h3, ["app.r2", "app.r3"]);
}

#[test]
fn host_needs_once_and_a_site_without_the_host_is_skipped() {
    let fleet = Fleet::new(1);
    deploy_single(&fleet);
    let out = fleet.convoy(&["reconcile", "--host", "h0"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--once"), "{}", stderr(&out));
    // A second site on h0 only: --host of a host it lacks leaves it alone entirely.
    let out = fleet.reconcile(&["--host", "h0"]);
    assert_exit(&out, 0);
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r1"));
    assert_eq!(
        fleet.current(0, "other"),
        None,
        "a site without the host is skipped"
    );
}

/// Site `app` on h0, and site `other` on the same lab host under another name, h9 (one sshd
/// is enough to tell a targeted site from one that is skipped).
fn deploy_single(fleet: &Fleet) {
    let mut docs = vec![fleet.group("scheduler", &[0], None)];
    docs.extend(fleet.site(&SiteDef {
        stages: &[("scheduler", "scheduler", false, false)],
        ..SiteDef::default()
    }));
    let other = fleet
        .group("others", &[0], None)
        .replace("name: h0", "name: h9");
    docs.push(other);
    docs.extend(fleet.site(&SiteDef {
        name: "other",
        stages: &[("main", "others", false, false)],
        ..SiteDef::default()
    }));
    fleet.write(&docs);
}
