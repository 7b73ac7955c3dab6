//! The README's main job on `address: local` hosts: `reconcile --once` deploys the bundled
//! jobs-manager example, a second run changes nothing, and status/history/plan report it.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use crate::util::{bundled_file, convoy_in, stderr, stdout};

/// The bundled example with its hosts rooted in `root` instead of /tmp/convoy-demo.
pub fn example_in(root: &Path) -> std::path::PathBuf {
    let dir = root.join("manifests");
    fs::create_dir_all(&dir).unwrap();
    for file in ["jobs-manager.yaml", "releases.yaml"] {
        let text = bundled_file(file).replace(
            "/tmp/convoy-demo",
            &root.join("hosts").display().to_string(),
        );
        fs::write(dir.join(file), text).unwrap();
    }
    crate::util::copy_demo_into(&dir);
    dir
}

/// Every path under `dir` with its modification time (symlinks not followed).
pub fn mtimes(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            out.push((entry.path().display().to_string(), meta.modified().unwrap()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reconcile_once_deploys_the_example_and_a_second_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = example_in(tmp.path());
    let m = manifests.display().to_string();
    let state = tmp.path().join("state").display().to_string();
    let args = [
        "reconcile",
        "--once",
        "-f",
        m.as_str(),
        "--state-dir",
        state.as_str(),
    ];

    let textfile = tmp.path().join("convoy.prom").display().to_string();
    let first: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--metrics-textfile", textfile.as_str()])
        .collect();
    let out = convoy_in(tmp.path(), &first);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    // The node_exporter textfile: written atomically, lint-clean for promtool.
    let metrics = fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("convoy_site_converged{site=\"jobs-manager\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "convoy_host_release_info{site=\"jobs-manager\",host=\"web2\",stage=\"frontend\",release=\"r2026-11-24.1\"} 1"
    ));
    let check = crate::prom::promtool_with_stdin(&["check", "metrics"], Some(&metrics));
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("jobs-manager: Converged"), "{text}");
    for host in ["sched1", "web1", "web2"] {
        let current = tmp
            .path()
            .join(format!("hosts/{host}/srv/jobs-manager/current"));
        assert_eq!(
            fs::read_link(&current).unwrap(),
            Path::new("releases/r2026-11-24.1"),
            "{host}"
        );
        assert!(
            current.join("build/version").exists(),
            "{host} serves a built release"
        );
    }
    let migrations = fs::read_to_string(
        tmp.path()
            .join("hosts/sched1/srv/jobs-manager/shared/var/migrations.log"),
    )
    .unwrap();
    assert_eq!(
        migrations.lines().count(),
        1,
        "once ran exactly once: {migrations}"
    );
    // The scheduler stage went live before any frontend host.
    let order: Vec<&str> = text.lines().filter(|l| l.contains("Switched")).collect();
    assert_eq!(order.len(), 3, "{text}");

    let before = mtimes(&tmp.path().join("hosts"));
    let out = convoy_in(tmp.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("Switched") && !stdout(&out).contains("Built"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        before,
        mtimes(&tmp.path().join("hosts")),
        "a converged pass touches nothing on any host"
    );

    let out = convoy_in(
        tmp.path(),
        &["plan", "-f", m.as_str(), "--state-dir", state.as_str()],
    );
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    let out = convoy_in(
        tmp.path(),
        &["status", "--state-dir", state.as_str(), "-o", "json"],
    );
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["status"]["phase"], "Converged");
    assert_eq!(
        list["items"][0]["status"]["hosts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let out = convoy_in(
        tmp.path(),
        &["history", "jobs-manager", "--state-dir", state.as_str()],
    );
    let history = stdout(&out);
    assert_eq!(history.matches("OnceRan").count(), 1, "{history}");
    assert_eq!(history.matches("Switched").count(), 3, "{history}");
}

/// `plan` starts from the same pass state as a real pass: with the host's `once` record
/// gone, the history alone proves the `once` commands ran, so neither runs them again.
#[test]
fn plan_and_a_pass_agree_when_only_the_history_proves_once_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let m = example_in(tmp.path()).display().to_string();
    let state = tmp.path().join("state").display().to_string();
    let dirs = ["-f", m.as_str(), "--state-dir", state.as_str()];
    let run = |command: &[&str]| convoy_in(tmp.path(), &[command, &dirs[..]].concat());
    let out = run(&["reconcile", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let once = tmp
        .path()
        .join("hosts/sched1/srv/jobs-manager/.convoy/once");
    assert!(
        once.is_dir(),
        "the example's scheduler stage has `once` commands"
    );
    fs::remove_dir_all(&once).unwrap();

    let plan = stdout(&run(&["plan"]));
    assert!(!plan.contains("run `once`"), "{plan}");
    assert!(plan.contains("nothing to do"), "{plan}");
    let out = run(&["reconcile", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("OnceRan"), "{}", stdout(&out));
    let migrations = fs::read_to_string(
        tmp.path()
            .join("hosts/sched1/srv/jobs-manager/shared/var/migrations.log"),
    )
    .unwrap();
    assert_eq!(migrations.lines().count(), 1, "{migrations}");
}

#[test]
fn a_second_controller_on_the_same_state_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let _held = convoy::state::StateDir::lock(&state).unwrap();
    let manifests = example_in(tmp.path());
    let out = convoy_in(
        tmp.path(),
        &[
            "reconcile",
            "--once",
            "-f",
            &manifests.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another convoy controller holds it"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("hosts").exists(), "nothing touched");
}

/// Runs `convoy ARGS` in a private mount namespace where `read_only` is a read-only bind
/// mount of itself: writes there fail with EROFS even for root, while the rest of the state
/// dir (its lock, its instance id) stays writable.
fn convoy_with_read_only(dir: &Path, read_only: &Path, args: &[&str]) -> std::process::Output {
    let script = r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#;
    std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(read_only)
        .arg(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .current_dir(dir)
        .env_remove("CONVOY_MANIFESTS")
        .env_remove("CONVOY_STATE_DIR")
        .output()
        .expect("failed to run unshare")
}

#[test]
fn a_failed_attempt_the_state_dir_cannot_record_is_reported_and_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = example_in(tmp.path());
    let site = manifests.join("jobs-manager.yaml");
    let text = fs::read_to_string(&site).unwrap();
    assert!(text.contains("- sh bin/build"));
    fs::write(&site, text.replace("- sh bin/build", "- exit 3")).unwrap();
    let state = tmp.path().join("state");
    let site_dir = state.join("sites/jobs-manager");
    fs::create_dir_all(&site_dir).unwrap();
    let textfile = tmp.path().join("convoy.prom");
    let (m, s, t) = (
        manifests.display().to_string(),
        state.display().to_string(),
        textfile.display().to_string(),
    );
    let args = [
        "reconcile",
        "--once",
        "-f",
        m.as_str(),
        "--state-dir",
        s.as_str(),
        "--metrics-textfile",
        t.as_str(),
    ];
    let out = convoy_with_read_only(tmp.path(), &state.join("sites"), &args);
    let (text, errors) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}\n{errors}");
    // Logged once as an error, naming the file and the OS error ...
    let attempts = site_dir.join("attempts.json");
    let line = format!(
        "ERROR failed to write `{}`: Read-only file system (os error 30)",
        attempts.display()
    );
    assert_eq!(errors.matches(&line).count(), 1, "{errors}");
    // ... in the site's block, so the operator knows the hold did not count it ...
    assert!(
        text.contains("jobs-manager: Failed:")
            && text.contains(
                "this failed attempt was not recorded, the failure hold does not count it"
            ),
        "{text}"
    );
    assert!(!attempts.exists());
    // ... and the textfile still says where the site stands (write errors are counted on
    // the daemon's /metrics: the textfile holds gauges only).
    let metrics = fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("convoy_site_phase{site=\"jobs-manager\",phase=\"Failed\"} 1"),
        "{metrics}"
    );
    // The Release's first applied revision could not be pinned either: said.
    assert!(
        errors.contains("applied.json`: Read-only file system"),
        "{errors}"
    );

    // Writable again: the same failure is recorded, and the run still fails with exit 1.
    let out = convoy_in(tmp.path(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stdout(&out).contains("not recorded"), "{}", stdout(&out));
    assert!(
        !stderr(&out).contains("failed to write"),
        "{}",
        stderr(&out)
    );
    assert!(attempts.exists());
}

/// The example with its required scheduler host unreachable (nothing listens on port 1).
fn example_blocked_in(root: &Path) -> std::path::PathBuf {
    let manifests = example_in(root);
    let site = manifests.join("jobs-manager.yaml");
    let text = fs::read_to_string(&site).unwrap();
    let local = format!(
        "address: local\n      root: {}",
        root.join("hosts/sched1").display()
    );
    assert!(text.contains(&local), "{text}");
    fs::write(
        &site,
        text.replace(&local, "address: 127.0.0.1\n      port: 1"),
    )
    .unwrap();
    manifests
}

fn status_message(dir: &Path, state: &str) -> String {
    let out = convoy_in(dir, &["status", "--state-dir", state, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    list["items"][0]["status"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_blocked_site_whose_retry_will_not_come_is_not_promised_one() {
    let tmp = tempfile::tempdir().unwrap();
    let m = example_blocked_in(tmp.path()).display().to_string();
    let state = tmp.path().join("state").display().to_string();
    let args = |timeout: &'static str| {
        [
            "reconcile",
            "--once",
            "-f",
            m.as_str(),
            "--state-dir",
            state.as_str(),
            "--timeout",
            timeout,
        ]
        .map(str::to_string)
    };

    // --timeout: the last pass ends the run as soon as the next retry would come too late (10s:
    // room for a slow first pass on a loaded machine, which would otherwise hit the deadline).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args("10s"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("jobs-manager: Blocked: ")
            && text.contains("(backoff): it would come after the --timeout of 10s"),
        "{text}"
    );
    let message = status_message(tmp.path(), &state);
    assert!(
        message.contains("sched1") && message.contains("; no retry "),
        "{message}"
    );
    assert!(!message.contains(" in "), "no retry promised: {message}");

    // SIGTERM while the site waits in backoff: reported as it is, with no retry promised.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args("120s"))
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("(backoff): SIGTERM received")
            && text.contains("error: SIGTERM received: stopped the commands under way")
            && text.contains("unfinished: none"),
        "{text}"
    );
    let message = status_message(tmp.path(), &state);
    assert!(
        message.ends_with("(backoff): SIGTERM received") && !message.contains(" in "),
        "{message}"
    );
}

#[test]
fn once_waits_for_an_unreachable_required_host_at_most_wait_unreachable_saying_so_each_time() {
    let tmp = tempfile::tempdir().unwrap();
    let m = example_blocked_in(tmp.path()).display().to_string();
    let state = tmp.path().join("state").display().to_string();
    let started = std::time::Instant::now();
    // No --timeout: the default (15m) bounds builds, not the wait for a host that is down.
    let out = convoy_in(
        tmp.path(),
        &[
            "reconcile",
            "--once",
            "-f",
            m.as_str(),
            "--state-dir",
            state.as_str(),
            "--wait-unreachable",
            "3s",
        ],
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        took < std::time::Duration::from_secs(30),
        "took {took:?}: {text}"
    );
    let attempts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("jobs-manager: sched1: | ") && l.contains("unreachable"))
        .collect();
    assert!(
        attempts.len() >= 2,
        "a line per attempt naming the host and its error: {text}"
    );
    let last = text
        .lines()
        .rfind(|l| l.starts_with("jobs-manager: Blocked: "))
        .unwrap();
    assert!(
        last.contains("sched1")
            && last.contains("no retry")
            && last.contains("--wait-unreachable of 3s"),
        "{last}"
    );
}
