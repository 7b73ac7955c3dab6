//! Shell is code: every shell file of the repository passes shellcheck with no finding at
//! all. The host script fragments (`src/host/sh/*.sh`, concatenated into the script convoy
//! runs on hosts) are checked as POSIX sh; the scripts in `scripts/` and the demo sites'
//! `bin/` by their `#!` line.
//! shellcheck must be installed (`scripts/install-test-deps.sh` installs it): without it
//! this test fails rather than pass having checked nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files in `dir` (sorted) that `keep` accepts.
fn files(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && keep(p))
        .collect();
    out.sort();
    out
}

/// The subdirectories of `dir` (sorted).
fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn is_sh_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "sh")
}

/// A `.sh` file, or one whose first line is a `#!` naming a shell.
fn is_shell_script(path: &Path) -> bool {
    if is_sh_file(path) {
        return true;
    }
    let text = std::fs::read(path).unwrap_or_default();
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    first.starts_with("#!")
        && ["sh", "bash", "dash"]
            .iter()
            .any(|sh| first.ends_with(&format!("/{sh}")) || first.ends_with(&format!(" {sh}")))
}

/// Runs shellcheck (with `args` before the files); panics with its findings, if any.
fn shellcheck(args: &[&str], paths: &[PathBuf]) {
    assert!(!paths.is_empty(), "no files to check");
    let output = Command::new("shellcheck")
        .arg("--norc")
        .args(["--format", "gcc"])
        .args(args)
        .args(paths)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run shellcheck ({e}): install it (scripts/install-test-deps.sh, \
                 or apt-get install shellcheck)"
            )
        });
    assert!(
        output.status.success(),
        "shellcheck {args:?} found problems (status {:?}):\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn host_script_fragments_pass_shellcheck_as_posix_sh() {
    let paths = files(&root().join("src/host/sh"), is_sh_file);
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["lib.sh", "once_wrapper.sh", "bootstrap.sh"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    shellcheck(&["--shell", "sh"], &paths);
}

#[test]
fn repository_scripts_pass_shellcheck() {
    let mut paths = files(&root().join("scripts"), is_shell_script);
    // The demo apps' scripts live next to the manifests that ship them (`.../bin/*`).
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = vec![crate::util::bundled_manifests_in(tmp.path())];
    while let Some(dir) = stack.pop() {
        for sub in dirs(&dir) {
            if sub.file_name().is_some_and(|n| n == "bin") {
                paths.extend(files(&sub, is_shell_script));
            } else {
                stack.push(sub);
            }
        }
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["test", "install-test-deps.sh", "build", "migrate"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    shellcheck(&[], &paths);
}
