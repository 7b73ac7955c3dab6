//! Metrics and the Site status object, end to end on `address: local` hosts (no sshd): the
//! `--once` textfile, every metric family on the daemon's first scrape, `convoy status SITE`
//! and `-l` selectors, the commands the alert runbooks name, and status that stays honest
//! when a site is removed, a run is stopped mid-rollout, or a release is held Failed.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::daemon_tests::wait_until;
use crate::fleet::assert_exit;
use crate::util::{convoy_in, stderr, stdout};

/// A scratch manifest directory of local sites, and the state dir beside it.
struct Local {
    dir: tempfile::TempDir,
}

/// One site on one local host: `build` runs on it, `labels` go in `metadata.labels`.
struct LocalSite<'a> {
    name: &'a str,
    release: &'a str,
    build: &'a str,
    labels: &'a str,
    failure_retries: u32,
}

impl Default for LocalSite<'_> {
    fn default() -> Self {
        LocalSite {
            name: "app",
            release: "r1",
            build: "true",
            labels: "{}",
            failure_retries: 3,
        }
    }
}

impl Local {
    fn new() -> Local {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("manifests/src")).unwrap();
        fs::write(dir.path().join("manifests/src/index.html"), "hello\n").unwrap();
        Local { dir }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes (or replaces) the manifest file of `site`.
    fn site(&self, site: &LocalSite) {
        let LocalSite {
            name,
            release,
            build,
            labels,
            failure_retries,
        } = site;
        let root = self.dir.path().join("hosts").join(name);
        let text = format!(
            "\
apiVersion: convoy.dev/v1alpha1
kind: ServerGroup
metadata: {{name: {name}-hosts}}
spec:
  hosts:
    - {{name: {name}-h1, address: local, root: {root}}}
---
apiVersion: convoy.dev/v1alpha1
kind: Release
metadata: {{name: {name}-{release}}}
spec: {{site: {name}, revision: v1}}
---
apiVersion: convoy.dev/v1alpha1
kind: Site
metadata:
  name: {name}
  labels: {labels}
spec:
  release: {name}-{release}
  path: /srv/{name}
  stages: [{{name: web, group: {name}-hosts}}]
  fetch: {{archive: {{path: src}}}}
  build: [{build:?}]
  rollout: {{failureRetries: {failure_retries}}}
",
            root = root.display()
        );
        fs::write(self.manifests().join(format!("{name}.yaml")), text).unwrap();
    }

    fn remove_site(&self, name: &str) {
        fs::remove_file(self.manifests().join(format!("{name}.yaml"))).unwrap();
    }

    /// `convoy ARGS -f <manifests> --state-dir <state>`.
    fn convoy(&self, args: &[&str]) -> Output {
        let (m, s) = (self.manifests(), self.state());
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "-f",
            m.to_str().unwrap(),
            "--state-dir",
            s.to_str().unwrap(),
        ]);
        convoy_in(self.dir.path(), &all)
    }

    fn once(&self, extra: &[&str]) -> Output {
        let mut args = vec!["reconcile", "--once"];
        args.extend(extra);
        self.convoy(&args)
    }

    /// The Site objects `convoy status -o json` lists, by name.
    fn statuses(&self) -> Value {
        let out = self.convoy(&["status", "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let mut by_name = serde_json::Map::new();
        for item in list["items"].as_array().unwrap() {
            by_name.insert(
                item["metadata"]["name"].as_str().unwrap().to_owned(),
                item["status"].clone(),
            );
        }
        Value::Object(by_name)
    }

    /// A daemon on these manifests serving metrics on a free port.
    fn daemon(&self) -> LocalDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = self.dir.path().join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .arg("reconcile")
            .arg("-f")
            .arg(self.manifests())
            .arg("--state-dir")
            .arg(self.state())
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        LocalDaemon {
            child: Some(child),
            port,
            log,
        }
    }
}

/// `convoy reconcile` as a daemon, killed when dropped.
struct LocalDaemon {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl LocalDaemon {
    /// The body of `GET path` (empty unless 200), or `None` while nothing answers.
    fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let ok = head.split_whitespace().nth(1) == Some("200");
        Some(if ok { body.to_owned() } else { String::new() })
    }

    fn sigterm(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let mut code = None;
        wait_until(Duration::from_secs(40), "the daemon exits", || {
            code = child.try_wait().ok().flatten().map(|s| s.code());
            code.is_some()
        });
        code.flatten()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric families (`# TYPE` lines) of an exposition. prometheus-client leaves out a
/// family without samples entirely.
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------------ 1: --metrics-textfile --

#[test]
fn textfile_of_a_once_run_holds_correct_gauges_and_no_per_run_counters() {
    let local = Local::new();
    local.site(&LocalSite::default());
    let prom_dir = local.dir.path().join("textfile");
    fs::create_dir_all(&prom_dir).unwrap();
    let textfile = prom_dir.join("convoy.prom");
    let t = textfile.to_str().unwrap();
    let out = local.once(&["--metrics-textfile", t]);
    assert_exit(&out, 0);
    let first = fs::read_to_string(&textfile).unwrap();
    // The manifests were valid: the bundled ConvoyManifestsInvalid alert must stay quiet.
    assert_eq!(
        sample(&first, "convoy_manifests_valid"),
        Some(1.0),
        "{first}"
    );
    assert!(
        sample(&first, "convoy_manifest_last_success_timestamp_seconds").unwrap() > 1e9,
        "{first}"
    );
    assert_eq!(
        sample(&first, r#"convoy_site_phase{site="app",phase="Converged"}"#),
        Some(1.0)
    );
    let success = r#"convoy_site_last_success_timestamp_seconds{site="app"}"#;
    let succeeded_at = sample(&first, success).expect("last success");
    // Counters and histograms restart with every run: `increase()` over them would be noise,
    // so the textfile holds gauges only.
    for line in first.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(line.ends_with(" gauge"), "{line} in\n{first}");
    }
    // Written by rename: nothing else is left in the collector's directory.
    let names: Vec<String> = fs::read_dir(&prom_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["convoy.prom"]);

    // A failing run keeps the time of the last success (from the state dir), so
    // ConvoyNotReconciling sees how long ago that was.
    local.site(&LocalSite {
        release: "r2",
        build: "exit 3",
        ..LocalSite::default()
    });
    let out = local.once(&["--metrics-textfile", t]);
    assert_exit(&out, 1);
    let second = fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&second, r#"convoy_site_phase{site="app",phase="Failed"}"#),
        Some(1.0),
        "{second}"
    );
    assert_eq!(sample(&second, success), Some(succeeded_at), "{second}");

    // Invalid manifests: exit 2 before any host, and the textfile says so.
    fs::write(local.manifests().join("broken.yaml"), "kind: Nonsense\n").unwrap();
    let out = local.once(&["--metrics-textfile", t]);
    assert_exit(&out, 2);
    let third = fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&third, "convoy_manifests_valid"),
        Some(0.0),
        "{third}"
    );
}

#[test]
fn textfile_in_a_missing_directory_is_an_error_naming_it() {
    let local = Local::new();
    local.site(&LocalSite::default());
    let textfile = local.dir.path().join("no-such-dir/convoy.prom");
    let out = local.once(&["--metrics-textfile", textfile.to_str().unwrap()]);
    // A usage error, found before any host is touched.
    assert_exit(&out, 2);
    assert!(
        !local.dir.path().join("hosts").exists(),
        "a host was touched"
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains(&textfile.display().to_string()) && all.contains("error"),
        "{all}"
    );

    // The daemon serves /metrics: a textfile option there is a usage error, not ignored.
    let out = local.convoy(&["reconcile", "--metrics-textfile", "convoy.prom"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--metrics-textfile needs --once"));

    // The directory disappears during the run (here: the build removes it): the site
    // converges, and the run still fails, naming the file it could not write.
    let dir = local.dir.path().join("vanishing");
    fs::create_dir_all(&dir).unwrap();
    let build = format!("rm -rf {}", dir.display());
    local.site(&LocalSite {
        build: &build,
        ..LocalSite::default()
    });
    let textfile = dir.join("convoy.prom");
    let out = local.once(&["--metrics-textfile", textfile.to_str().unwrap()]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("app: Converged"), "{text}");
    assert!(
        text.contains(&format!(
            "error: --metrics-textfile: failed to write `{}`",
            textfile.display()
        )),
        "{text}"
    );
}

// ------------------------------------------------------------------ 2: first scrape -----

#[test]
fn every_metric_family_has_series_on_the_first_scrape_before_any_pass_ends() {
    let local = Local::new();
    // The first pass cannot end while the build sleeps.
    local.site(&LocalSite {
        build: "sleep 60",
        labels: "{team: web}",
        ..LocalSite::default()
    });
    let daemon = local.daemon();
    let mut scrape = String::new();
    wait_until(
        Duration::from_secs(20),
        "the daemon serves /metrics",
        || {
            scrape = daemon.get("/metrics").unwrap_or_default();
            scrape.contains("convoy_build_info")
        },
    );
    assert!(
        !daemon.log().contains("app: "),
        "no pass ended yet:\n{}",
        daemon.log()
    );
    // Every family convoy registers (src/metrics.rs), but the per-host release, which only
    // an observe can tell.
    let expected: BTreeSet<String> = [
        "convoy_reconciles_total",
        "convoy_reconcile_duration_seconds",
        "convoy_site_converged",
        "convoy_site_phase",
        "convoy_site_desired_release_info",
        "convoy_rollbacks_total",
        "convoy_drift_corrections_total",
        "convoy_site_backoff_seconds",
        "convoy_site_last_success_timestamp_seconds",
        "convoy_host_up",
        "convoy_host_operation_duration_seconds",
        "convoy_host_operation_failures_total",
        "convoy_manifest_load_errors_total",
        "convoy_manifests_valid",
        "convoy_manifest_last_success_timestamp_seconds",
        "convoy_state_write_errors_total",
        "convoy_build_info",
        // The concurrency limits (no `convoy_group_limit`: the group sets no maxParallel).
        "convoy_limit",
        "convoy_limit_in_use",
        "convoy_group_limit_in_use",
        "convoy_site_limit",
        "convoy_site_limit_in_use",
    ]
    .map(String::from)
    .into();
    assert_eq!(families(&scrape), expected, "{scrape}");
    assert!(
        !scrape.contains(r#"convoy_limit{limit="max_sites"}"#),
        "--max-sites is unset: no limit to show\n{scrape}"
    );
    for (series, value) in [
        (
            r#"convoy_reconciles_total{site="app",result="converged"}"#,
            0.0,
        ),
        (
            r#"convoy_reconciles_total{site="app",result="failed"}"#,
            0.0,
        ),
        (
            r#"convoy_reconcile_duration_seconds_count{site="app"}"#,
            0.0,
        ),
        (r#"convoy_site_converged{site="app"}"#, 0.0),
        (r#"convoy_site_phase{site="app",phase="Converged"}"#, 0.0),
        (r#"convoy_site_phase{site="app",phase="Failed"}"#, 0.0),
        (
            r#"convoy_site_desired_release_info{site="app",release="app-r1"}"#,
            1.0,
        ),
        (r#"convoy_host_up{host="app-h1"}"#, 0.0),
        (r#"convoy_rollbacks_total{site="app"}"#, 0.0),
        (r#"convoy_drift_corrections_total{site="app"}"#, 0.0),
        (r#"convoy_site_backoff_seconds{site="app"}"#, 0.0),
        // Never succeeded: 0, which the alert and the dashboard read as "never".
        (
            r#"convoy_site_last_success_timestamp_seconds{site="app"}"#,
            0.0,
        ),
        (
            r#"convoy_host_operation_duration_seconds_count{operation="build"}"#,
            0.0,
        ),
        (
            r#"convoy_host_operation_failures_total{site="app",operation="build"}"#,
            0.0,
        ),
        (r#"convoy_state_write_errors_total{kind="status"}"#, 0.0),
        ("convoy_manifests_valid", 1.0),
        (r#"convoy_limit{limit="max_parallel"}"#, 32.0),
        (r#"convoy_limit{limit="max_builds_per_host"}"#, 1.0),
    ] {
        assert_eq!(
            sample(&scrape, series),
            Some(value),
            "{series} in\n{scrape}"
        );
    }
}

// ------------------------------------------------------------------ 3: status SITE, -l --

#[test]
fn status_of_one_site_and_label_selectors() {
    let local = Local::new();
    local.site(&LocalSite {
        labels: "{team: web, tier: front}",
        ..LocalSite::default()
    });
    local.site(&LocalSite {
        name: "api",
        labels: "{team: core}",
        ..LocalSite::default()
    });
    assert_exit(&local.once(&[]), 0);

    let out = local.convoy(&["status", "app"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for expected in [
        "Name:",
        "app",
        "team=web",
        "Converged",
        "Conditions:",
        "Ready",
        "Hosts:",
        "app-h1",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    assert!(!text.contains("api"), "{text}");

    let out = local.convoy(&["status", "app", "-o", "json"]);
    assert_exit(&out, 0);
    let site: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(site["kind"], "Site");
    assert_eq!(site["metadata"]["labels"]["team"], "web");
    assert_eq!(site["status"]["phase"], "Converged");

    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["status", "-o", "json"];
        all.extend(args);
        let out = local.convoy(&all);
        assert_exit(&out, 0);
        let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&["-l", "team=web"]), ["app"]);
    assert_eq!(names(&["-l", "team!=web"]), ["api"]);
    assert_eq!(names(&["-l", "team=web,tier=front"]), ["app"]);
    assert_eq!(names(&["-l", "team=nobody"]), Vec::<String>::new());

    let out = local.convoy(&["status", "nosuchsite"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("nosuchsite"), "{}", stderr(&out));
    let out = local.convoy(&["status", "-l", "=web"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("-l"), "{}", stderr(&out));
}

/// The `convoy ...` commands named in backquotes in the alert annotations.
fn runbook_commands() -> Vec<String> {
    let rules =
        fs::read_to_string(crate::util::repo_root().join("dashboards/alerts.yaml")).unwrap();
    let mut commands: Vec<String> = rules
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("convoy "))
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    commands.sort();
    commands.dedup();
    commands
}

#[test]
fn every_command_the_alert_runbooks_name_runs() {
    let commands = runbook_commands();
    assert!(
        commands.iter().any(|c| c.contains("{{ $labels.site }}")),
        "{commands:?}"
    );
    let local = Local::new();
    local.site(&LocalSite::default());
    assert_exit(&local.once(&[]), 0);
    for command in &commands {
        let command = command.replace("{{ $labels.site }}", "app");
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = local.convoy(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{command}` from an alert runbook:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

// ------------------------------------------------------------------ 4: honest status ----

#[test]
fn a_removed_site_is_unmanaged_not_its_last_phase() {
    let local = Local::new();
    local.site(&LocalSite::default());
    local.site(&LocalSite {
        name: "old",
        ..LocalSite::default()
    });
    assert_exit(&local.once(&[]), 0);
    local.remove_site("old");
    assert_exit(&local.once(&[]), 0);
    let statuses = local.statuses();
    assert_eq!(statuses["app"]["phase"], "Converged", "{statuses}");
    assert_eq!(statuses["old"]["phase"], "Unmanaged", "{statuses}");
    let ready = condition(&statuses["old"], "Ready");
    assert_eq!(ready["status"], "Unknown", "{statuses}");
    // And the metrics no longer report it as a managed site.
    let textfile = local.dir.path().join("convoy.prom");
    assert_exit(
        &local.once(&["--metrics-textfile", textfile.to_str().unwrap()]),
        0,
    );
    let text = fs::read_to_string(&textfile).unwrap();
    assert!(!text.contains(r#"site="old""#), "{text}");
}

#[test]
fn a_once_run_stopped_by_its_timeout_leaves_interrupted() {
    let local = Local::new();
    local.site(&LocalSite {
        build: "sleep 60",
        ..LocalSite::default()
    });
    let out = local.once(&["--timeout", "2s"]);
    assert_exit(&out, 1);
    let status = &local.statuses()["app"];
    assert_eq!(status["phase"], "Interrupted", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("--timeout"),
        "{status}"
    );
    assert_eq!(
        condition(status, "Reconciling")["status"],
        "True",
        "{status}"
    );
    assert_eq!(condition(status, "Ready")["status"], "False", "{status}");
}

#[test]
fn a_daemon_stopped_mid_rollout_leaves_interrupted() {
    let local = Local::new();
    local.site(&LocalSite {
        build: "sleep 60",
        ..LocalSite::default()
    });
    let mut daemon = local.daemon();
    let building = local.dir.path().join("hosts/app/srv/app/.convoy/run");
    wait_until(Duration::from_secs(20), "the build runs", || {
        fs::read_dir(&building).is_ok_and(|mut d| d.next().is_some())
    });
    assert_eq!(daemon.sigterm(), Some(0), "{}", daemon.log());
    let status = &local.statuses()["app"];
    assert_eq!(status["phase"], "Interrupted", "{status}\n{}", daemon.log());
    assert!(
        status["message"].as_str().unwrap().contains("SIGTERM"),
        "{status}"
    );
}

#[test]
fn a_held_failed_status_keeps_its_cause() {
    let local = Local::new();
    local.site(&LocalSite {
        build: "echo broken-dependency >&2; exit 3",
        failure_retries: 1,
        ..LocalSite::default()
    });
    assert_exit(&local.once(&[]), 1);
    let first = local.statuses()["app"].clone();
    assert_eq!(first["phase"], "Failed", "{first}");
    assert!(
        first["message"].as_str().unwrap().contains("build failed"),
        "{first}"
    );
    // The next pass does not build again (held), and still says why.
    assert_exit(&local.once(&[]), 1);
    let held = local.statuses()["app"].clone();
    let message = held["message"].as_str().unwrap();
    assert!(message.contains("held"), "{held}");
    assert!(message.contains("build failed"), "{held}");
    assert!(message.contains("app-h1"), "{held}");
    let stalled = condition(&held, "Stalled");
    assert_eq!(stalled["status"], "True", "{held}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("build failed"),
        "{held}"
    );
    // A phase that did not change keeps its transition time.
    assert_eq!(
        held["lastTransitionTime"], first["lastTransitionTime"],
        "{held}"
    );
    assert_eq!(condition(&held, "Ready")["status"], "False", "{held}");
}

/// The condition of `kind` in a status, or `Null`.
fn condition(status: &Value, kind: &str) -> Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}
