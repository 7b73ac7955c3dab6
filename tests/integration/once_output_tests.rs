//! What `reconcile --once` says while it runs and when it ends, on `address: local` hosts:
//! host lines as they happen, one line for a pass with nothing to do, failures in one line
//! each with the whole output kept in the state dir, and no silent wait for a host that is
//! down.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{convoy_in, stdout};

/// A site `app` on local hosts web1 and web2 running `build` and `health`; returns the
/// manifest directory.
fn site_in(root: &Path, build: &str, health: &str) -> PathBuf {
    let dir = root.join("manifests");
    fs::create_dir_all(dir.join("app/bin")).unwrap();
    fs::write(dir.join("app/bin/build"), build).unwrap();
    fs::write(dir.join("app/bin/health"), health).unwrap();
    let hosts = root.join("hosts").display().to_string();
    fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: convoy.dev/v1alpha1
kind: ServerGroup
metadata: {{name: web}}
spec:
  hosts:
    - {{name: web1, address: local, root: {hosts}/web1}}
    - {{name: web2, address: local, root: {hosts}/web2}}
---
apiVersion: convoy.dev/v1alpha1
kind: Site
metadata: {{name: app}}
spec:
  release: r1
  path: /srv/app
  stages:
    - {{name: web, group: web}}
  fetch: {{archive: {{path: app}}}}
  build: [sh bin/build]
  health: {{command: sh bin/health, timeout: 5s, retries: 0, interval: 1s}}
---
apiVersion: convoy.dev/v1alpha1
kind: Release
metadata: {{name: r1}}
spec: {{site: app, revision: v1}}
"
        ),
    )
    .unwrap();
    dir
}

fn once_args(m: &Path, state: &Path) -> Vec<String> {
    ["reconcile", "--once", "-f"]
        .into_iter()
        .map(str::to_string)
        .chain([m.display().to_string(), "--state-dir".into()])
        .chain([state.display().to_string()])
        .collect()
}

/// `reconcile --once` that must fail (exit 1); its output.
fn failing_run(root: &Path, m: &Path, state: &Path) -> String {
    let args = once_args(m, state);
    let out = convoy_in(root, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    stdout(&out)
}

fn line_starting<'t>(text: &'t str, prefix: &str) -> &'t str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {text}"))
}

#[test]
fn host_lines_appear_as_they_happen_and_a_pass_with_nothing_to_do_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let m = site_in(
        tmp.path(),
        "if [ \"$CONVOY_HOST\" = web2 ]; then sleep 4; fi\n",
        "true\n",
    );
    let state = tmp.path().join("state");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(once_args(&m, &state))
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = vec![];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        lines.push((started.elapsed(), line.unwrap()));
    }
    assert!(child.wait().unwrap().success(), "{lines:?}");
    let ended = started.elapsed();
    let built = lines
        .iter()
        .find(|(_, l)| l == "app: web1: Built r1")
        .unwrap_or_else(|| panic!("no line for web1's build: {lines:?}"));
    assert!(
        ended - built.0 >= Duration::from_secs(3),
        "web1's line came when the site ended, not when it built: {lines:?}"
    );
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        text.contains(&"app: Converged: every host runs r1"),
        "{text:?}"
    );
    assert!(
        !text.iter().any(|l| l.contains("live r1")),
        "no per-host block at the end: {text:?}"
    );

    let out = convoy_in(
        tmp.path(),
        &once_args(&m, &state)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("1 site converged, nothing to do ("),
        "{text}"
    );
}

#[test]
fn a_failure_is_one_line_with_its_error_and_the_whole_output_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let m = site_in(
        tmp.path(),
        "echo 'resolving dependencies' >&2\necho 'fetched 12 packages' >&2\necho 'ERROR: the real problem' >&2\nexit 3\n",
        "true\n",
    );
    let state = tmp.path().join("state");
    let text = failing_run(tmp.path(), &m, &state);
    let failed = line_starting(&text, "app: web1: BuildFailed r1: ");
    assert!(
        failed.contains("build (exit 3) on host `web1`: ERROR: the real problem"),
        "the error line, not the first line of output: {failed}"
    );
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("app: web1: BuildFailed r1: full output: "))
        .unwrap_or_else(|| panic!("no path: {text}"));
    assert!(Path::new(path).starts_with(&state), "{path}");
    let kept = fs::read_to_string(path).unwrap();
    assert!(
        kept.starts_with("resolving dependencies\nfetched 12 packages\nERROR: the real problem"),
        "{kept}"
    );

    let history = stdout(&convoy_in(
        tmp.path(),
        &[
            "history",
            "app",
            "--state-dir",
            &state.display().to_string(),
        ],
    ));
    let row = history
        .lines()
        .find(|l| l.contains("BuildFailed") && l.contains("web1/"))
        .unwrap();
    assert!(
        row.contains("ERROR: the real problem")
            && row.contains(&format!("(full output: {path})"))
            && !row.contains("resolving"),
        "{row}"
    );
}

#[test]
fn a_silent_health_failure_is_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let m = site_in(tmp.path(), "true\n", "exit 1\n");
    let text = failing_run(tmp.path(), &m, &tmp.path().join("state"));
    let failed = line_starting(&text, "app: Failed: ");
    assert!(
        failed.contains("health (exit 1) failed on host `web"),
        "{failed}"
    );
    assert!(
        !failed.contains("exit status") && !failed.contains("(host web"),
        "said once: {failed}"
    );
}
