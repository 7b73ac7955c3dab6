//! The command-line surface: help, usage errors, and commands not built yet.

use crate::util::{bundled_manifests_in, convoy, stderr, stdout};

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
fn invalid_manifests_and_bad_flags_exit_2_before_anything_runs() {
    let invalid = "tests/fixtures/invalid/missing-release.yaml";
    for args in [
        vec!["plan", "-f", invalid],
        vec!["reconcile", "--once", "-f", invalid],
    ] {
        let out = convoy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state").display().to_string();
    for args in [
        vec![
            "reconcile",
            "--metrics-addr",
            "everywhere",
            "--state-dir",
            &state,
        ],
        vec!["reconcile", "--resync", "often", "--state-dir", &state],
    ] {
        let out = convoy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid --"), "{}", stderr(&out));
    }
}

#[test]
fn unknown_site_and_bad_timeout_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = bundled_manifests_in(tmp.path()).display().to_string();
    let out = convoy(&["reconcile", "--once", "--site", "nope", "-f", &manifests]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no Site named `nope`"),
        "{}",
        stderr(&out)
    );
    let out = convoy(&["reconcile", "--once", "--timeout", "soon", "-f", &manifests]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
}

/// `retry`/`history` of a site the state dir never saw, and `status` of an empty state dir,
/// are errors that say what was looked for and where, never an empty success.
#[test]
fn unknown_sites_and_an_empty_state_dir_are_errors_naming_the_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_arg = state.display().to_string();
    for args in [
        vec!["retry", "nosuchsite"],
        vec!["history", "nosuchsite"],
        vec!["status"],
        vec!["status", "-o", "json"],
    ] {
        let mut all = args.clone();
        all.extend(["--state-dir", state_arg.as_str()]);
        let out = convoy(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(text.contains("state dir `"), "{args:?}: {text}");
        if args[0] != "status" {
            assert!(text.contains("no site `nosuchsite`"), "{args:?}: {text}");
        }
    }
    // `retry` wrote nothing for the unknown site.
    assert!(!state.join("sites/nosuchsite").exists());
}

/// The text of the option block in `help` that starts at the line naming `flag`.
fn option_help<'h>(help: &'h str, flag: &str) -> &'h str {
    let start = help
        .find(&format!("{flag} "))
        .unwrap_or_else(|| panic!("no {flag} in:\n{help}"));
    let rest = &help[start..];
    let end = rest.find("\n  -").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// A relative default is a trap for cron: the help says what it resolves against.
#[test]
fn help_says_what_the_relative_defaults_resolve_to() {
    for args in [vec!["--help"], vec!["reconcile", "--help"]] {
        let out = convoy(&args);
        assert_eq!(out.status.code(), Some(0));
        let help = stdout(&out);
        for (flag, default) in [
            ("--manifests", "[default: manifests]"),
            ("--state-dir", "[default: .convoy-state]"),
        ] {
            let text = option_help(&help, flag);
            assert!(text.contains(default), "{args:?}: {text}");
            assert!(text.contains("current directory"), "{args:?}: {text}");
        }
    }
}

/// `--version` names the commit it was built from: HEAD of this checkout, or `unknown`
/// when built from a tarball without `.git`.
#[test]
fn version_names_the_commit_of_head() {
    let out = convoy(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("convoy {} ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let commit = text
        .split_once("(commit ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(commit, _)| commit)
        .unwrap_or_else(|| panic!("no commit in {text}"));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(crate::util::repo_root())
        .output();
    match &head {
        Ok(head) if head.status.success() => {
            let head = stdout(head);
            assert!(
                commit.len() >= 7 && head.starts_with(commit),
                "{text} does not name HEAD {head}"
            );
        }
        _ => assert_eq!(commit, "unknown", "{text}"),
    }
}

/// Every subcommand, as completions and the man page must name them.
const SUBCOMMANDS: [&str; 10] = [
    "validate",
    "crds",
    "reconcile",
    "plan",
    "status",
    "retry",
    "history",
    "unlock",
    "completions",
    "man",
];

#[test]
fn completions_for_bash_zsh_and_fish_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = convoy(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains("convoy"), "{shell}: {script}");
        for command in SUBCOMMANDS {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let out = convoy(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_prints_a_roff_page_with_the_subcommands() {
    let out = convoy(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH convoy 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for command in SUBCOMMANDS {
        assert!(
            page.contains(&format!("convoy\\-{command}(1)")),
            "lacks {command}: {page}"
        );
    }
    // Those pages exist when written to a directory.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = convoy(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in ["convoy.1", "convoy-reconcile.1", "convoy-completions.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".TH convoy"), "{page}: {text}");
    }
}
