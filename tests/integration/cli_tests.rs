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
fn commands_not_built_yet_say_so_and_change_nothing() {
    let out = convoy(&["reconcile", "--once", "-f", "manifests"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`convoy reconcile` is not built yet"),
        "{}",
        stderr(&out)
    );
    // Invalid manifests still exit 2 first.
    let out = convoy(&["plan", "-f", "tests/fixtures/invalid/missing-release.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}
