//! The systemd units of `contrib/systemd/` pass `systemd-analyze verify` as shipped, with
//! their `ExecStart` pointed at the binary under test (verify checks that it exists); and
//! the check itself refuses broken units (a misspelt key, a missing binary, no ExecStart),
//! so a clean result means something.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: &[&str] = &[
    "convoy.service",
    "convoy-reconcile.service",
    "convoy-reconcile.timer",
    "convoy-catch-up.service",
];

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd")
}

/// The shipped units in a temporary directory, `ExecStart` on the binary under test.
fn units_under_test() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = UNITS
        .iter()
        .map(|unit| {
            let text = fs::read_to_string(contrib().join(unit)).unwrap();
            let path = dir.path().join(unit);
            fs::write(
                &path,
                text.replace("/usr/local/bin/convoy", env!("CARGO_BIN_EXE_convoy")),
            )
            .unwrap();
            path
        })
        .collect();
    (dir, paths)
}

/// `Ok` when `systemd-analyze verify` accepts the units without a word; else what it said.
fn verify(units: &[PathBuf]) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .expect("systemd-analyze is missing: scripts/install-test-deps.sh installs `systemd`");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[test]
fn the_shipped_units_verify_cleanly() {
    let (_dir, units) = units_under_test();
    if let Err(said) = verify(&units) {
        panic!("systemd-analyze verify: {said}");
    }
    let catch_up = fs::read_to_string(contrib().join("convoy-catch-up.service")).unwrap();
    assert!(
        catch_up.contains("reconcile --once --host ${CONVOY_HOST_NAME}")
            && catch_up.contains("Environment=CONVOY_HOST_NAME=%H")
            && catch_up.contains("Before=nginx.service"),
        "the catch-up unit changes this host only, before the web server"
    );
}

#[test]
fn the_check_refuses_broken_units() {
    let (dir, units) = units_under_test();
    let text = fs::read_to_string(&units[0]).unwrap();
    let broken = [
        (
            "typo.service",
            text.replace("NoNewPrivileges=", "NoNewPrivilges="),
        ),
        (
            "missing-binary.service",
            text.replace(env!("CARGO_BIN_EXE_convoy"), "/nonexistent/convoy"),
        ),
        (
            "no-exec.service",
            text.lines()
                .filter(|l| !l.starts_with("ExecStart="))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    for (name, text) in broken {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        assert!(verify(&[path]).is_err(), "{name} passed the check");
    }
}
