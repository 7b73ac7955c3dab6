//! Acceptance tests of the reconcile engine: the real `convoy` binary against real sshd
//! hosts of the lab, deploying a real git repository. Host-side scripts of the deployed app
//! write a trace (`/srv/convoy-lab/trace.log` on each host) that the tests read back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{LAB_MOUNT, Lab};
use crate::util::{stderr, stdout};

/// The app every test deploys: build, activate and health scripts that trace what they do
/// and fail on request (a marker file on the host).
const APP_FILES: &[(&str, &str)] = &[
    (
        "bin/build",
        r#"#!/bin/sh
set -eu
t0=$(date +%s.%N)
if [ -e /srv/convoy-lab/fail-build ]; then echo "BUILD BROKEN on $CONVOY_HOST" >&2; exit 1; fi
sleep "${BUILD_SLEEP:-0}"
mkdir -p build && echo "$CONVOY_RELEASE" > build/version
echo "build $CONVOY_SITE $CONVOY_HOST $CONVOY_RELEASE $t0 $(date +%s.%N)" >> /srv/convoy-lab/trace.log
"#,
    ),
    (
        "bin/activate",
        r#"#!/bin/sh
set -eu
echo "activate $CONVOY_SITE $CONVOY_HOST $CONVOY_RELEASE $(date +%s.%N) $(pwd -P)" >> /srv/convoy-lab/trace.log
"#,
    ),
    (
        "bin/health",
        "#!/bin/sh\ntest ! -e /srv/convoy-lab/fail-health || { echo \"UNHEALTHY $CONVOY_HOST\" >&2; exit 1; }\n",
    ),
    (
        "bin/migrate",
        "#!/bin/sh\necho \"$CONVOY_RELEASE $CONVOY_HOST\" >> /srv/convoy-lab/once.log\n",
    ),
];

/// A lab, a git repository with tags v1..v4, and a manifest directory.
struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fleet {
    fn new(hosts: usize) -> Fleet {
        let lab = Lab::start(hosts);
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("app");
        fs::create_dir_all(repo.join("bin")).unwrap();
        git(&repo, &["init", "-q"]);
        for (file, text) in APP_FILES {
            fs::write(repo.join(file), text).unwrap();
        }
        for version in 1..=4 {
            fs::write(repo.join("VERSION"), format!("{version}\n")).unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-qm", &format!("v{version}")]);
            git(&repo, &["tag", &format!("v{version}")]);
        }
        fs::create_dir_all(dir.path().join("manifests")).unwrap();
        Fleet { lab, dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A ServerGroup of lab hosts `hosts`.
    fn group(&self, name: &str, hosts: &[usize], max_parallel: Option<u32>) -> String {
        let mut text = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: {name}}}\nspec:\n  ssh: {{user: root, identityFile: {}, connectTimeout: 2s}}\n",
            self.lab.identity_file().display()
        );
        if let Some(n) = max_parallel {
            text.push_str(&format!("  maxParallel: {n}\n"));
        }
        text.push_str("  hosts:\n");
        for i in hosts {
            text.push_str(&format!(
                "    - {{name: h{i}, address: 127.0.0.1, port: {}}}\n",
                self.lab.hosts()[*i].port
            ));
        }
        text
    }

    /// Writes the manifests: the given groups, then one Site per `sites` entry with its
    /// Release `<site>.rN` (tag vN).
    fn write(&self, docs: &[String]) {
        fs::write(
            self.dir.path().join("manifests/fleet.yaml"),
            docs.join("---\n"),
        )
        .unwrap();
    }

    fn reconcile(&self, extra: &[&str]) -> Output {
        self.reconcile_cmd(extra).output().unwrap()
    }

    fn reconcile_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_convoy"));
        cmd.args(["reconcile", "--once", "-f"])
            .arg(self.dir.path().join("manifests"))
            .arg("--state-dir")
            .arg(self.state())
            .arg("--known-hosts")
            .arg(self.lab.known_hosts())
            .args(extra)
            .current_dir(self.dir.path())
            .env_remove("CONVOY_MANIFESTS");
        cmd
    }

    fn convoy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// The release `current` points at on host `i` for `site`.
    fn current(&self, i: usize, site: &str) -> Option<String> {
        let link =
            fs::read_link(self.lab.host_dir(i).join(format!("sites/{site}/current"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    fn trace(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.lab.host_dir(i).join("trace.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn once_log(&self, hosts: usize) -> Vec<String> {
        (0..hosts)
            .flat_map(|i| {
                fs::read_to_string(self.lab.host_dir(i).join("once.log"))
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn mark(&self, i: usize, marker: &str, on: bool) {
        let path = self.lab.host_dir(i).join(marker);
        if on {
            fs::write(path, "").unwrap();
        } else {
            let _ = fs::remove_file(path);
        }
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&stdout(&self.convoy(&["status", "-o", "json"]))).unwrap()
    }
}

/// A Site with stages `(name, group, optional, runs once)`, release `<name>.rN` from tag vN.
struct SiteDef<'a> {
    name: &'a str,
    version: u32,
    stages: &'a [(&'a str, &'a str, bool, bool)],
    batch: u32,
    max_parallel: u32,
    failure_retries: u32,
    health: bool,
    build_sleep: &'a str,
}

impl Default for SiteDef<'_> {
    fn default() -> Self {
        SiteDef {
            name: "app",
            version: 1,
            stages: &[],
            batch: 0,
            max_parallel: 10,
            failure_retries: 3,
            health: true,
            build_sleep: "0",
        }
    }
}

impl Fleet {
    fn site(&self, s: &SiteDef) -> Vec<String> {
        let mut stages = String::new();
        for (name, group, optional, once) in s.stages {
            stages.push_str(&format!("    - name: {name}\n      group: {group}\n      optional: {optional}\n      activate: [sh bin/activate]\n"));
            if *once {
                stages.push_str("      once: [sh bin/migrate]\n");
            }
        }
        let health = if s.health {
            "  health: {command: sh bin/health, timeout: 5s, retries: 1, interval: 1s}\n"
        } else {
            ""
        };
        let site = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: {name}}}\nspec:\n  release: {name}.r{v}\n  path: {LAB_MOUNT}/sites/{name}\n  stages:\n{stages}  fetch:\n    git: {{repository: {repo}}}\n  build: [sh bin/build]\n  env: {{BUILD_SLEEP: \"{sleep}\"}}\n{health}  rollout: {{batch: {batch}, maxParallel: {mp}, failureRetries: {fr}}}\n  keepReleases: 3\n",
            name = s.name,
            v = s.version,
            repo = self.repo().display(),
            sleep = s.build_sleep,
            batch = s.batch,
            mp = s.max_parallel,
            fr = s.failure_retries,
        );
        let mut docs = vec![site];
        for v in 1..=4 {
            docs.push(format!(
                "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}.r{v}}}\nspec: {{site: {name}, revision: v{v}}}\n",
                name = s.name
            ));
        }
        docs
    }

    /// The two-stage site of the tests: scheduler (h0, runs once) then optional frontend.
    fn two_stage(&self, version: u32, scheduler: &[usize], frontend: &[usize]) {
        let mut docs = vec![
            self.group("scheduler", scheduler, None),
            self.group("frontend", frontend, None),
        ];
        docs.extend(self.site(&SiteDef {
            version,
            stages: &[
                ("scheduler", "scheduler", false, true),
                ("frontend", "frontend", true, false),
            ],
            failure_retries: 2,
            ..SiteDef::default()
        }));
        self.write(&docs);
    }
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// `activate` lines of a host's trace: (site, release, time).
fn activations(trace: &[String]) -> Vec<(String, String, f64)> {
    trace
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"activate"))
                .then(|| (w[1].to_string(), w[3].to_string(), w[4].parse().unwrap()))
        })
        .collect()
}

/// Every regular file and link under `dir` with its modification time.
fn mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            out.push((entry.path(), meta.modified().unwrap()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------- 1

#[test]
fn both_stages_online_scheduler_first_once_exactly_once_then_nothing_to_do() {
    let fleet = Fleet::new(3);
    fleet.two_stage(1, &[0], &[1, 2]);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 0);
    for i in 0..3 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r1"), "h{i}");
    }
    let scheduler_live = activations(&fleet.trace(0))[0].2;
    for i in 1..3 {
        let frontend_live = activations(&fleet.trace(i))[0].2;
        assert!(
            scheduler_live < frontend_live,
            "h{i} went live before the scheduler"
        );
    }
    assert_eq!(
        fleet.once_log(3),
        vec!["app.r1 h0"],
        "once ran exactly once, on the scheduler"
    );

    let before: Vec<_> = (0..3).map(|i| mtimes(&fleet.lab.host_dir(i))).collect();
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 0);
    let after: Vec<_> = (0..3).map(|i| mtimes(&fleet.lab.host_dir(i))).collect();
    assert_eq!(before, after, "a second pass changes nothing on any host");
}

// ---------------------------------------------------------------- 2

#[test]
fn offline_frontend_is_skipped_then_catches_up_straight_to_the_newest() {
    let mut fleet = Fleet::new(3);
    fleet.lab.stop_host(2);
    fleet.two_stage(1, &[0], &[1, 2]);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 3);
    assert!(
        stdout(&out).contains("warning: app:") && stdout(&out).contains("h2"),
        "{}",
        stdout(&out)
    );
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r1"));
    for version in [2, 3] {
        fleet.two_stage(version, &[0], &[1, 2]);
        assert_exit(&fleet.reconcile(&[]), 3);
    }
    fleet.lab.start_host(2);
    let started = Instant::now();
    assert_exit(&fleet.reconcile(&[]), 0);
    eprintln!(
        "catch-up pass of one returning host: {:?}",
        started.elapsed()
    );
    assert_eq!(fleet.current(2, "app").as_deref(), Some("app.r3"));
    let releases: Vec<String> = activations(&fleet.trace(2))
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(
        releases,
        vec!["app.r3"],
        "h2 never ran an intermediate release"
    );
    let mut once = fleet.once_log(3);
    once.sort();
    assert_eq!(
        once,
        vec!["app.r1 h0", "app.r2 h0", "app.r3 h0"],
        "once never repeated"
    );
}

// ---------------------------------------------------------------- 3

#[test]
fn a_build_failure_on_one_scheduler_host_switches_nothing_anywhere() {
    let fleet = Fleet::new(3);
    fleet.two_stage(1, &[0, 1], &[2]);
    fleet.mark(1, "fail-build", true);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    for i in 0..3 {
        assert_eq!(fleet.current(i, "app"), None, "h{i} switched");
    }
    assert!(
        fleet.once_log(3).is_empty(),
        "once must not run before every build succeeded"
    );
    let status = fleet.status_json();
    let site = &status["items"][0]["status"];
    assert_eq!(site["phase"], "Failed");
    let h1 = site["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .unwrap();
    assert!(
        h1["lastError"]
            .as_str()
            .unwrap()
            .contains("BUILD BROKEN on h1"),
        "{h1}"
    );
    assert!(site["message"].as_str().unwrap().contains("h1"), "{site}");
}

// ---------------------------------------------------------------- 4

#[test]
fn a_health_failure_rolls_the_stage_back_and_the_release_is_held_after_retries() {
    let fleet = Fleet::new(3);
    fleet.two_stage(1, &[0], &[1, 2]);
    assert_exit(&fleet.reconcile(&[]), 0);
    fleet.two_stage(2, &[0], &[1, 2]);
    fleet.mark(2, "fail-health", true);
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    assert_eq!(
        fleet.current(0, "app").as_deref(),
        Some("app.r2"),
        "the earlier stage keeps the new release"
    );
    for i in [1, 2] {
        assert_eq!(
            fleet.current(i, "app").as_deref(),
            Some("app.r1"),
            "h{i} rolled back"
        );
        let last = activations(&fleet.trace(i)).pop().unwrap();
        assert_eq!(
            last.1, "app.r1",
            "h{i} re-activated with the release rolled back to"
        );
    }
    let status = fleet.status_json();
    assert_eq!(status["items"][0]["status"]["attempts"], 1);
    // failureRetries is 2: one more failed attempt, then the release is held.
    assert_exit(&fleet.reconcile(&[]), 1);
    let activations_before = activations(&fleet.trace(2)).len();
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("held after 2 failed attempts"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        activations(&fleet.trace(2)).len(),
        activations_before,
        "a held release is not tried again"
    );
    // A change of the desired state lifts the hold.
    fleet.mark(2, "fail-health", false);
    fleet.two_stage(3, &[0], &[1, 2]);
    assert_exit(&fleet.reconcile(&[]), 0);
}

// ---------------------------------------------------------------- 5

#[test]
fn an_unreachable_required_host_blocks_with_backoff_and_switches_nothing() {
    let mut fleet = Fleet::new(2);
    fleet.two_stage(1, &[0], &[1]);
    fleet.lab.stop_host(0);
    let started = Instant::now();
    let out = fleet.reconcile(&["--timeout", "5s"]);
    assert_exit(&out, 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by --timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(fleet.current(1, "app"), None, "nothing switched");
    let status = fleet.status_json();
    let site = &status["items"][0]["status"];
    assert_eq!(site["phase"], "Blocked");
    let message = site["message"].as_str().unwrap();
    assert!(
        message.contains("h0") && message.contains("backoff"),
        "{message}"
    );
    // Back online: the next run converges.
    fleet.lab.start_host(0);
    assert_exit(&fleet.reconcile(&[]), 0);
}

// ---------------------------------------------------------------- 6

#[test]
fn killing_the_controller_at_random_points_never_leaves_a_host_without_a_complete_release() {
    let fleet = Fleet::new(3);
    let deploy = |version: u32| {
        let mut docs = vec![fleet.group("all", &[0, 1, 2], None)];
        docs.extend(fleet.site(&SiteDef {
            version,
            stages: &[("web", "all", false, true)],
            batch: 1,
            build_sleep: "0.3",
            ..SiteDef::default()
        }));
        fleet.write(&docs);
    };
    deploy(1);
    assert_exit(&fleet.reconcile(&[]), 0);
    // A fixed-seed generator: the kill points differ per iteration but every run is the same.
    let mut seed: u64 = 0x5eed;
    for iteration in 0..12 {
        deploy(2 + iteration % 2);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(50 + (seed >> 33) % 1500);
        let mut child = fleet
            .reconcile_cmd(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        for i in 0..3 {
            let current = fleet.lab.host_dir(i).join("sites/app/current");
            let target = fs::canonicalize(&current).unwrap_or_else(|e| {
                panic!("iteration {iteration} ({delay:?}): h{i} has no current: {e}")
            });
            assert!(
                target.join(".convoy-complete").exists(),
                "iteration {iteration}: h{i} serves an incomplete release"
            );
        }
    }
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 0);
    let want = format!("app.r{}", 2 + 11 % 2);
    for i in 0..3 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some(want.as_str()));
    }
    let mut once = fleet.once_log(3);
    let total = once.len();
    once.sort();
    once.dedup_by(|a, b| a.split(' ').next() == b.split(' ').next());
    assert_eq!(
        once.len(),
        total,
        "once ran at most once per release: {once:?}"
    );
}

// ---------------------------------------------------------------- 7

#[test]
fn ten_sites_on_ten_hosts_keep_every_limit_and_the_batch_order() {
    let fleet = Fleet::new(10);
    let hosts: Vec<usize> = (0..10).collect();
    let mut docs = vec![fleet.group("fleet", &hosts, Some(6))];
    let names: Vec<String> = (0..10).map(|i| format!("site{i}")).collect();
    let stages = [("web", "fleet", false, false)];
    for name in &names {
        docs.extend(fleet.site(&SiteDef {
            name,
            stages: &stages,
            batch: 2,
            max_parallel: 4,
            build_sleep: "0.2",
            ..SiteDef::default()
        }));
    }
    fleet.write(&docs);
    let started = Instant::now();
    let out = fleet.reconcile(&["--max-parallel", "8"]);
    assert_exit(&out, 0);
    eprintln!("10 sites x 10 hosts deployed in {:?}", started.elapsed());

    // Build intervals from every host's trace: (site, start, end).
    let mut builds = vec![];
    let mut activates: Vec<(String, String, f64)> = vec![];
    for i in 0..10 {
        for line in fleet.trace(i) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w[0] {
                "build" => builds.push((
                    w[1].to_string(),
                    w[4].parse::<f64>().unwrap(),
                    w[5].parse::<f64>().unwrap(),
                )),
                "activate" => {
                    activates.push((w[1].to_string(), w[2].to_string(), w[4].parse().unwrap()))
                }
                _ => {}
            }
        }
    }
    assert_eq!(builds.len(), 100);
    let max_overlap = |intervals: &[(f64, f64)]| {
        intervals
            .iter()
            .map(|(s, _)| {
                intervals
                    .iter()
                    .filter(|(s2, e2)| s2 <= s && s < e2)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let all: Vec<(f64, f64)> = builds.iter().map(|(_, s, e)| (*s, *e)).collect();
    let overall = max_overlap(&all);
    assert!(
        overall <= 6,
        "group maxParallel 6 (and --max-parallel 8) exceeded: {overall}"
    );
    for name in &names {
        let site: Vec<(f64, f64)> = builds
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, s, e)| (*s, *e))
            .collect();
        let n = max_overlap(&site);
        assert!(n <= 4, "{name}: rollout.maxParallel 4 exceeded: {n}");
        // Batches of two, in manifest order: h0,h1 then h2,h3 ...
        let mut order: Vec<(f64, String)> = activates
            .iter()
            .filter(|(s, _, _)| s == name)
            .map(|(_, h, t)| (*t, h.clone()))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let batches: Vec<Vec<String>> = order
            .chunks(2)
            .map(|c| {
                let mut b: Vec<String> = c.iter().map(|(_, h)| h.clone()).collect();
                b.sort();
                b
            })
            .collect();
        let expected: Vec<Vec<String>> = (0..5)
            .map(|b| vec![format!("h{}", 2 * b), format!("h{}", 2 * b + 1)])
            .collect();
        assert_eq!(batches, expected, "{name}: batch order");
    }
    eprintln!("peak concurrent builds: {overall} (limit 6)");
}

// ---------------------------------------------------------------- 8

#[test]
fn rollback_by_gitops_switches_without_a_rebuild() {
    let fleet = Fleet::new(3);
    fleet.two_stage(1, &[0], &[1, 2]);
    assert_exit(&fleet.reconcile(&[]), 0);
    fleet.two_stage(2, &[0], &[1, 2]);
    assert_exit(&fleet.reconcile(&[]), 0);
    let builds_before: usize = (0..3)
        .map(|i| {
            fleet
                .trace(i)
                .iter()
                .filter(|l| l.starts_with("build"))
                .count()
        })
        .sum();
    fleet.two_stage(1, &[0], &[1, 2]);
    let started = Instant::now();
    assert_exit(&fleet.reconcile(&[]), 0);
    let elapsed = started.elapsed();
    let builds_after: usize = (0..3)
        .map(|i| {
            fleet
                .trace(i)
                .iter()
                .filter(|l| l.starts_with("build"))
                .count()
        })
        .sum();
    assert_eq!(builds_before, builds_after, "no rebuild");
    for i in 0..3 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r1"));
    }
    eprintln!("GitOps rollback of 3 hosts in 2 stages: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "well under a second per host: {elapsed:?}"
    );
}
