//! The controller daemon on the lab: the watched directory is a git clone; commits are
//! pulled into it as an operator's GitOps job would. Every wait is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fleet::{Fleet, SiteDef, git};

/// A running `convoy reconcile` daemon, stopped by PID when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn start(fleet: &Fleet, resync: &str) -> Daemon {
        Daemon::start_with(fleet, resync, &[])
    }

    /// As [`Daemon::start`], with more `reconcile` flags.
    pub fn start_with(fleet: &Fleet, resync: &str, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = fleet.dir.path().join(format!("daemon-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["reconcile", "-f"])
            .arg(fleet.dir.path().join("manifests"))
            .arg("--state-dir")
            .arg(fleet.state())
            .arg("--known-hosts")
            .arg(fleet.lab.known_hosts())
            .args([
                "--resync",
                resync,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("CONVOY_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child: Some(child),
            log,
            port,
        };
        wait_until(Duration::from_secs(15), "daemon serves /healthz", || {
            daemon.get("/healthz").0 == 200
        });
        daemon
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status code, body) of a GET on the daemon's HTTP endpoint.
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::util::http_request(self.port, "GET", path, &[], b"")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait (bounded); returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The GitOps side: an upstream repository the tests commit to, and the watched clone.
pub struct Upstream {
    pub dir: PathBuf,
    clone: PathBuf,
}

impl Upstream {
    /// Commits `docs` upstream and clones it as the fleet's manifest directory.
    pub fn new(fleet: &Fleet, docs: &[String]) -> Upstream {
        let dir = fleet.dir.path().join("upstream");
        fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q"]);
        let up = Upstream {
            dir,
            clone: fleet.dir.path().join("manifests"),
        };
        up.commit(docs, "initial");
        fs::remove_dir_all(&up.clone).unwrap();
        let out = Command::new("git")
            .arg("clone")
            .arg("-q")
            .arg(&up.dir)
            .arg(&up.clone)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        up
    }

    pub fn commit(&self, docs: &[String], message: &str) {
        fs::write(self.dir.join("fleet.yaml"), docs.join("---\n")).unwrap();
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-qm", message]);
    }

    pub fn commit_file(&self, name: &str, text: Option<&str>, message: &str) {
        match text {
            Some(text) => fs::write(self.dir.join(name), text).unwrap(),
            None => fs::remove_file(self.dir.join(name)).unwrap(),
        }
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-qm", message]);
    }

    /// `git pull` in the watched directory; returns when it finished (epoch seconds).
    pub fn pull(&self) -> f64 {
        git(&self.clone, &["pull", "-q", "--ff-only"]);
        now()
    }
}

fn docs(fleet: &Fleet, version: u32, build_sleep: &str) -> Vec<String> {
    let mut docs = vec![
        fleet.group("scheduler", &[0], None),
        fleet.group("frontend", &[1, 2], None),
    ];
    docs.extend(fleet.site(&SiteDef {
        version,
        stages: &[
            ("scheduler", "scheduler", false, true),
            ("frontend", "frontend", true, false),
        ],
        build_sleep,
        ..SiteDef::default()
    }));
    docs
}

fn all_on(fleet: &Fleet, hosts: &[usize], release: &str) -> bool {
    hosts
        .iter()
        .all(|i| fleet.current(*i, "app").as_deref() == Some(release))
}

/// Start times of builds of `release` in every host's trace.
fn build_starts(fleet: &Fleet, hosts: usize, release: &str) -> Vec<f64> {
    (0..hosts)
        .flat_map(|i| fleet.trace(i))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0] == "build" && w[3] == release).then(|| w[4].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_pulled_commit_deploys_within_a_second_and_an_invalid_one_changes_nothing() {
    let fleet = Fleet::new(3);
    let up = Upstream::new(&fleet, &docs(&fleet, 1, "0"));
    let daemon = Daemon::start(&fleet, "5m");
    wait_until(Duration::from_secs(30), "r1 live everywhere", || {
        all_on(&fleet, &[0, 1, 2], "app.r1")
    });
    assert_eq!(daemon.get("/readyz").0, 200);

    let reloads = |d: &Daemon| d.log_text().matches("manifests loaded").count();
    let before = reloads(&daemon);
    up.commit(&docs(&fleet, 2, "0"), "deploy r2");
    let pulled = up.pull();
    wait_until(Duration::from_secs(30), "r2 live everywhere", || {
        all_on(&fleet, &[0, 1, 2], "app.r2")
    });
    let first_command = build_starts(&fleet, 3, "app.r2")
        .into_iter()
        .fold(f64::MAX, f64::min);
    let latency = first_command - pulled;
    eprintln!("git pull -> first host command: {:.0} ms", latency * 1000.0);
    assert!(latency < 1.0, "deploy started {latency:.3}s after the pull");
    assert_eq!(
        reloads(&daemon) - before,
        1,
        "one pull, one reload:\n{}",
        daemon.log_text()
    );

    // A commit that breaks the manifests while asking for r3: nothing happens.
    up.commit(&docs(&fleet, 3, "0"), "ask for r3");
    up.commit_file(
        "broken.yaml",
        Some("apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {name: [oops\n"),
        "typo",
    );
    up.pull();
    wait_until(Duration::from_secs(10), "the error is reported", || {
        daemon.log_text().contains("broken.yaml:3:")
    });
    assert_eq!(daemon.get("/readyz").0, 503);
    let status = fleet.convoy(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("manifests are invalid since"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        daemon
            .get("/metrics")
            .1
            .contains("convoy_manifests_valid 0")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        all_on(&fleet, &[0, 1, 2], "app.r2"),
        "an invalid desired state touches nothing"
    );
    // The fix deploys.
    up.commit_file("broken.yaml", None, "fix");
    up.pull();
    wait_until(Duration::from_secs(30), "r3 live everywhere", || {
        all_on(&fleet, &[0, 1, 2], "app.r3")
    });
    assert_eq!(daemon.get("/readyz").0, 200);
}

#[test]
fn drift_by_hand_is_corrected_at_the_next_resync() {
    let fleet = Fleet::new(3);
    let up = Upstream::new(&fleet, &docs(&fleet, 1, "0"));
    let daemon = Daemon::start(&fleet, "2s");
    wait_until(Duration::from_secs(30), "r1 live", || {
        all_on(&fleet, &[0, 1, 2], "app.r1")
    });
    up.commit(&docs(&fleet, 2, "0"), "r2");
    up.pull();
    wait_until(Duration::from_secs(30), "r2 live", || {
        all_on(&fleet, &[0, 1, 2], "app.r2")
    });
    // The pass must be over (activate, health): a hand edit between a host's switch and its
    // activate is a failed rollout, not drift.
    wait_until(
        Duration::from_secs(30),
        "the r2 pass ends Converged",
        || {
            daemon
                .log_text()
                .lines()
                .any(|l| l.contains("Converged: every host runs app.r2") && l.contains("site=app"))
        },
    );
    // Someone repoints `current` on h1 by hand.
    let site = fleet.lab.host_dir(1).join("sites/app");
    std::os::unix::fs::symlink("releases/app.r1", site.join("current.hand")).unwrap();
    fs::rename(site.join("current.hand"), site.join("current")).unwrap();
    assert_eq!(fleet.current(1, "app").as_deref(), Some("app.r1"));
    wait_until(
        Duration::from_secs(15),
        "the resync corrects the drift",
        || fleet.current(1, "app").as_deref() == Some("app.r2"),
    );
    wait_until(Duration::from_secs(5), "the drift is counted", || {
        daemon.get("/metrics").1.lines().any(|l| {
            l.starts_with("convoy_drift_corrections_total{site=\"app\"} ") && !l.ends_with(" 0")
        })
    });
    // SIGHUP reloads; removing the Site stops convoy managing it and deletes nothing.
    let reloads = daemon.log_text().matches("manifests loaded").count();
    let _ = Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status();
    wait_until(Duration::from_secs(10), "SIGHUP reloads", || {
        daemon.log_text().matches("manifests loaded").count() > reloads
    });
    let groups_only: Vec<String> = docs(&fleet, 2, "0")
        .into_iter()
        .filter(|d| !d.contains("kind: Site") && !d.contains("kind: Release"))
        .collect();
    up.commit(&groups_only, "retire the site");
    up.pull();
    wait_until(Duration::from_secs(10), "the removal is noticed", || {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("removed from the manifests") && l.contains("site=app"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        all_on(&fleet, &[0, 1, 2], "app.r2"),
        "nothing deleted or changed on the hosts"
    );
    // An unmanaged site has no series left, and its status says so.
    let (_, scrape) = daemon.get("/metrics");
    assert!(!scrape.contains("site=\"app\""), "{scrape}");
    let status = fleet.status_json();
    assert_eq!(
        status["items"][0]["status"]["phase"], "Unmanaged",
        "{status}"
    );
}

#[test]
fn a_host_powered_off_during_a_deploy_catches_up_within_seconds_of_coming_back() {
    let mut fleet = Fleet::new(3);
    let up = Upstream::new(&fleet, &docs(&fleet, 1, "0"));
    let daemon = Daemon::start(&fleet, "5m");
    wait_until(Duration::from_secs(30), "r1 live", || {
        all_on(&fleet, &[0, 1, 2], "app.r1")
    });
    // Let the pass finish (health, clean-up) before the power cut.
    wait_until(Duration::from_secs(10), "the site is Converged", || {
        daemon
            .get("/metrics")
            .1
            .contains("convoy_site_phase{site=\"app\",phase=\"Converged\"} 1")
    });
    fleet.lab.stop_host(2);
    up.commit(&docs(&fleet, 2, "0"), "r2");
    up.pull();
    wait_until(
        Duration::from_secs(30),
        "r2 live on the reachable hosts",
        || all_on(&fleet, &[0, 1], "app.r2"),
    );
    wait_until(Duration::from_secs(10), "the site is Degraded", || {
        daemon
            .get("/metrics")
            .1
            .contains("convoy_site_phase{site=\"app\",phase=\"Degraded\"} 1")
    });
    std::thread::sleep(Duration::from_secs(3));
    fleet.lab.start_host(2);
    let back = now();
    wait_until(Duration::from_secs(30), "h2 catches up", || {
        all_on(&fleet, &[2], "app.r2")
    });
    let first = build_starts(&fleet, 3, "app.r2")
        .into_iter()
        .filter(|t| *t >= back)
        .fold(f64::MAX, f64::min);
    let delay = first - back;
    eprintln!(
        "sshd answering -> first command on the returning host: {:.0} ms",
        delay * 1000.0
    );
    assert!(
        delay < 10.0,
        "catch-up took {delay:.1}s:\n{}",
        daemon.log_text()
    );
}

#[test]
fn sigterm_during_a_build_exits_cleanly_with_every_host_complete() {
    let fleet = Fleet::new(3);
    let up = Upstream::new(&fleet, &docs(&fleet, 1, "0"));
    let mut daemon = Daemon::start(&fleet, "5m");
    wait_until(Duration::from_secs(30), "r1 live", || {
        all_on(&fleet, &[0, 1, 2], "app.r1")
    });
    up.commit(&docs(&fleet, 2, "2"), "slow r2");
    up.pull();
    // The builds are under way (they sleep 2 s).
    wait_until(Duration::from_secs(10), "builds start", || {
        (0..3).any(|i| {
            fleet
                .lab
                .host_dir(i)
                .join("sites/app/releases/app.r2")
                .exists()
        })
    });
    let code = daemon.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    for i in 0..3 {
        let current = fs::canonicalize(fleet.lab.host_dir(i).join("sites/app/current")).unwrap();
        assert!(
            current.join(".convoy-complete").exists(),
            "h{i} serves a complete release"
        );
    }
    assert!(daemon.log_text().contains("SIGTERM"));
}

/// Where the tests find the lab mount of host `i`'s deploy path (for debugging output).
#[allow(dead_code)]
fn site_dir(fleet: &Fleet, i: usize) -> PathBuf {
    fleet.lab.host_dir(i).join("sites/app")
}

#[allow(dead_code)]
fn exists(path: &Path) -> bool {
    path.exists()
}

#[test]
fn an_edited_revision_of_an_applied_release_is_refused_and_the_last_valid_state_kept() {
    let fleet = Fleet::new(1);
    let mut docs = vec![fleet.group("web", &[0], None)];
    docs.extend(fleet.site(&SiteDef {
        stages: &[("web", "web", false, false)],
        ..SiteDef::default()
    }));
    fleet.write(&docs);
    let daemon = Daemon::start(&fleet, "5m");
    wait_until(Duration::from_secs(30), "r1 live", || {
        all_on(&fleet, &[0], "app.r1")
    });
    let version = || fs::read_to_string(site_dir(&fleet, 0).join("current/VERSION")).unwrap();
    assert_eq!(version(), "1\n");
    assert_eq!(daemon.get("/readyz").0, 200);

    let edited: Vec<String> = docs
        .iter()
        .map(|d| {
            d.replace(
                "{name: app.r1}\nspec: {site: app, revision: v1}",
                "{name: app.r1}\nspec: {site: app, revision: v2}",
            )
        })
        .collect();
    assert_ne!(edited, docs);
    fleet.write(&edited);
    wait_until(Duration::from_secs(10), "the edit is refused", || {
        daemon.log_text().contains(
            "spec.revision: field is immutable: release app.r1 of site app was applied with revision v1; make a new Release",
        )
    });
    assert_eq!(daemon.get("/readyz").0, 503);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(version(), "1\n", "the last valid state is kept");
}
