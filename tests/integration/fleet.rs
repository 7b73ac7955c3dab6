#![allow(dead_code)]
//! A deployable fleet for end-to-end tests: a lab of real sshd hosts, a real git repository
//! of an app whose build/activate/health scripts trace what they do on each host
//! (`/srv/convoy-lab/trace.log`), and a manifest directory the tests write.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::lab::{LAB_MOUNT, Lab};
use crate::util::{stderr, stdout};

/// The app every test deploys: build, activate and health scripts that trace what they do
/// and fail on request (a marker file on the host).
pub const APP_FILES: &[(&str, &str)] = &[
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
pub struct Fleet {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
}

pub fn git(repo: &Path, args: &[&str]) {
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
    pub fn new(hosts: usize) -> Fleet {
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

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A ServerGroup of lab hosts `hosts`.
    pub fn group(&self, name: &str, hosts: &[usize], max_parallel: Option<u32>) -> String {
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
    pub fn write(&self, docs: &[String]) {
        fs::write(
            self.dir.path().join("manifests/fleet.yaml"),
            docs.join("---\n"),
        )
        .unwrap();
    }

    pub fn reconcile(&self, extra: &[&str]) -> Output {
        self.reconcile_cmd(extra).output().unwrap()
    }

    pub fn reconcile_cmd(&self, extra: &[&str]) -> Command {
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

    pub fn convoy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// The release `current` points at on host `i` for `site`.
    pub fn current(&self, i: usize, site: &str) -> Option<String> {
        let link =
            fs::read_link(self.lab.host_dir(i).join(format!("sites/{site}/current"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    pub fn trace(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.lab.host_dir(i).join("trace.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn once_log(&self, hosts: usize) -> Vec<String> {
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

    pub fn mark(&self, i: usize, marker: &str, on: bool) {
        let path = self.lab.host_dir(i).join(marker);
        if on {
            fs::write(path, "").unwrap();
        } else {
            let _ = fs::remove_file(path);
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&stdout(&self.convoy(&["status", "-o", "json"]))).unwrap()
    }
}

/// A Site with stages `(name, group, optional, runs once)`, release `<name>.rN` from tag vN.
pub struct SiteDef<'a> {
    pub name: &'a str,
    pub version: u32,
    pub stages: &'a [(&'a str, &'a str, bool, bool)],
    pub batch: u32,
    pub max_parallel: u32,
    pub failure_retries: u32,
    pub health: bool,
    pub build_sleep: &'a str,
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
    pub fn site(&self, s: &SiteDef) -> Vec<String> {
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
    pub fn two_stage(&self, version: u32, scheduler: &[usize], frontend: &[usize]) {
        self.write(&self.two_stage_docs(version, scheduler, frontend));
    }

    /// The documents [`Fleet::two_stage`] writes: the two groups, then the Site and its
    /// Release.
    pub fn two_stage_docs(
        &self,
        version: u32,
        scheduler: &[usize],
        frontend: &[usize],
    ) -> Vec<String> {
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
        docs
    }
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// `activate` lines of a host's trace: (site, release, time).
pub fn activations(trace: &[String]) -> Vec<(String, String, f64)> {
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
pub fn mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
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
