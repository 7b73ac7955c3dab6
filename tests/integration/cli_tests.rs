//! The command-line surface: help, usage errors, and commands not built yet.

use crate::util::{convoy, stderr, stdout};

#[test]
fn help_lists_every_subcommand() {
    let out = convoy(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for command in ["validate", "crds", "reconcile", "plan", "status", "history"] {
        assert!(help.contains(command), "help lacks {command}:\n{help}");
    }
    let out = convoy(&["reconcile", "--help"]);
    assert!(stdout(&out).contains("--once"));
}

#[test]
fn usage_errors_exit_2() {
    let out = convoy(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = convoy(&["history"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "history needs a SITE: {}",
        stderr(&out)
    );
}

#[test]
fn daemon_mode_not_built_yet_says_so_and_changes_nothing() {
    let out = convoy(&["reconcile", "-f", "manifests"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not built yet"),
        "{}",
        stderr(&out)
    );
    // Invalid manifests still exit 2 first, for every command that reads them.
    let invalid = "tests/fixtures/invalid/missing-release.yaml";
    for args in [
        vec!["plan", "-f", invalid],
        vec!["reconcile", "--once", "-f", invalid],
    ] {
        let out = convoy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn unknown_site_and_bad_timeout_are_usage_errors() {
    let out = convoy(&["reconcile", "--once", "--site", "nope", "-f", "manifests"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no Site named `nope`"),
        "{}",
        stderr(&out)
    );
    let out = convoy(&[
        "reconcile",
        "--once",
        "--timeout",
        "soon",
        "-f",
        "manifests",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
}
