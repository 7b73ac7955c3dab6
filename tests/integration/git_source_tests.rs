//! `reconcile --git`: the controller follows a branch of a real bare repository on disk,
//! pushed to from a work clone as a developer would. Local hosts (`address: local`) carry
//! most cases, since the SSH side is covered elsewhere; one test deploys on the lab. Every
//! wait is bounded; the daemons are stopped by PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::daemon_tests::wait_until;
use crate::fleet::{Fleet, SiteDef, git};

/// A bare repository (the "remote") and a work clone that commits and pushes to it.
struct Remote {
    bare: PathBuf,
    work: PathBuf,
}

impl Remote {
    fn new(dir: &Path) -> Remote {
        let bare = dir.join("fleet.git");
        let work = dir.join("work");
        fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]);
        fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Remote { bare, work }
    }

    /// Writes `files` (path under the work tree, content), commits, pushes; returns the commit.
    fn push(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, text) in files {
            let path = self.work.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        git(
            &self.work,
            &["push", "-q", "--force", "origin", "HEAD:main"],
        );
        self.head()
    }

    fn head(&self) -> String {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&self.work)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The manifests of one site `app` on one local host rooted under `root`, deploying the
/// folder `app/` beside them (an archive from the fetched tree) as release `r{version}`.
fn local_site(root: &Path, version: u32) -> Vec<(&'static str, String)> {
    let manifests = format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: web}}\nspec:\n  hosts:\n    - {{name: w1, address: local, root: {root}}}\n---\napiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: app}}\nspec:\n  release: r{version}\n  path: /srv/app\n  stages: [{{name: web, group: web}}]\n  fetch: {{archive: {{path: app}}}}\n  build: [\"cat VERSION\"]\n  keepReleases: 3\n---\napiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: r{version}}}\nspec: {{site: app, revision: \"{version}\"}}\n",
        root = root.display()
    );
    vec![
        ("deploy/fleet.yaml", manifests),
        ("deploy/app/VERSION", format!("{version}\n")),
    ]
}

fn push_site(remote: &Remote, root: &Path, version: u32) -> String {
    let files = local_site(root, version);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    remote.push(&files, &format!("deploy r{version}"))
}

/// A `convoy reconcile --git` daemon, killed by PID when dropped.
struct GitDaemon {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

impl GitDaemon {
    fn start(dir: &Path, repo: &Path, extra: &[&str]) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("daemon-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .arg("reconcile")
            .arg("--git")
            .arg(repo)
            .args(["--path", "deploy/", "--state-dir"])
            .arg(dir.join("state"))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("CONVOY_LOG_FORMAT")
            .env_remove("CONVOY_MANIFESTS")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = GitDaemon {
            child: Some(child),
            log,
            port,
        };
        wait_until(Duration::from_secs(15), "daemon serves /healthz", || {
            daemon.request("GET", "/healthz", &[], b"").0 == 200
        });
        daemon
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status code, body) of a request to the daemon's HTTP endpoint.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        crate::util::http_request(self.port, method, path, headers, body)
    }

    fn metrics(&self) -> String {
        self.request("GET", "/metrics", &[], b"").1
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The release `current` points at on the local host rooted at `root`.
fn live(root: &Path) -> Option<String> {
    let link = fs::read_link(root.join("srv/app/current")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

fn convoy(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .current_dir(dir)
        .env_remove("CONVOY_MANIFESTS")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How many fetches the daemon's log shows a new commit for.
fn loads(daemon: &GitDaemon) -> usize {
    daemon.log_text().matches("manifests of commit").count()
}

#[test]
fn a_pushed_commit_deploys_within_the_interval_and_status_history_metrics_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w1");
    let remote = Remote::new(dir.path());
    let first = push_site(&remote, &root, 1);
    let daemon = GitDaemon::start(dir.path(), &remote.bare, &["--interval", "1s"]);
    wait_until(Duration::from_secs(30), "r1 live", || {
        live(&root).as_deref() == Some("r1")
    });

    let (code, _) = daemon.request("POST", "/hooks/git", &[], b"{}");
    assert_eq!(
        code, 404,
        "no webhook without a secret: never acted on unsigned"
    );

    let second = push_site(&remote, &root, 2);
    let pushed = Instant::now();
    wait_until(Duration::from_secs(30), "r2 live", || {
        live(&root).as_deref() == Some("r2")
    });
    eprintln!("push -> r2 live: {:.2}s", pushed.elapsed().as_secs_f64());
    assert_eq!(
        fs::read_to_string(root.join("srv/app/current/VERSION")).unwrap(),
        "2\n",
        "the archive comes from the fetched commit's tree"
    );
    wait_until(
        Duration::from_secs(10),
        "the metric names the commit",
        || {
            daemon
                .metrics()
                .contains(&format!("convoy_manifest_info{{commit=\"{second}\"}} 1"))
        },
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.matches("convoy_manifest_info{").count(),
        1,
        "{metrics}"
    );
    assert!(daemon.log_text().contains(&format!("commit={second}")));

    // `status` needs no -f: the state dir says where the desired state came from.
    let status = convoy(dir.path(), &["status"]);
    let out = text(&status.stdout);
    assert!(out.contains(&format!("commit {second}")), "{out}");
    assert!(
        out.contains(&format!("git {}", remote.bare.display())),
        "{out}"
    );
    // The pass of r2 ends (and its status is written) a moment after the switch.
    wait_until(
        Duration::from_secs(30),
        "the site's status names the commit",
        || {
            text(&convoy(dir.path(), &["status", "app"]).stdout)
                .contains(&format!("Manifest commit: {second}"))
        },
    );
    let history = fs::read_to_string(dir.path().join("state/sites/app/history.jsonl")).unwrap();
    assert!(
        history.contains(&format!("\"manifestCommit\":\"{first}\"")),
        "{history}"
    );
    assert!(
        history.contains(&format!("\"manifestCommit\":\"{second}\"")),
        "{history}"
    );
    let shown = text(&convoy(dir.path(), &["history", "app"]).stdout);
    assert!(shown.contains(&second), "{shown}");
}

#[test]
fn a_signed_webhook_fetches_at_once_and_a_wrong_or_missing_signature_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w1");
    let remote = Remote::new(dir.path());
    push_site(&remote, &root, 1);
    let secret = dir.path().join("secret");
    fs::write(&secret, "s3cret\n").unwrap();
    let daemon = GitDaemon::start(
        dir.path(),
        &remote.bare,
        &[
            "--interval",
            "1h",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(30), "r1 live", || {
        live(&root).as_deref() == Some("r1")
    });
    let metrics = daemon.metrics();
    assert!(
        metrics.contains(r#"convoy_webhook_requests_total{result="bad_signature"} 0"#),
        "{metrics}"
    );

    push_site(&remote, &root, 2);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let json = ("Content-Type", "application/json");
    let (code, _) = daemon.request("POST", "/hooks/git", &[json], body);
    assert_eq!(code, 401, "missing signature");
    let wrong = sign("guess", body);
    let (code, _) = daemon.request(
        "POST",
        "/hooks/git",
        &[json, ("X-Hub-Signature-256", &wrong)],
        body,
    );
    assert_eq!(code, 401, "wrong signature");
    let big = vec![b' '; 2 * 1024 * 1024];
    let (code, _) = daemon.request(
        "POST",
        "/hooks/git",
        &[json, ("X-Hub-Signature-256", &sign("s3cret", &big))],
        &big,
    );
    assert_eq!(code, 413, "body over 1 MiB");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        live(&root).as_deref(),
        Some("r1"),
        "no fetch without a valid signature"
    );
    let metrics = daemon.metrics();
    for expected in [
        r#"convoy_webhook_requests_total{result="missing_signature"} 1"#,
        r#"convoy_webhook_requests_total{result="bad_signature"} 1"#,
        r#"convoy_webhook_requests_total{result="too_large"} 1"#,
        r#"convoy_webhook_requests_total{result="accepted"} 0"#,
    ] {
        assert!(metrics.contains(expected), "{expected}\n{metrics}");
    }

    // Signed: fetched at once (the interval is an hour), and a burst coalesces.
    let loads_before = loads(&daemon);
    let fetches_before = fetches_ok(&daemon);
    let signed = sign("s3cret", body);
    let sent = Instant::now();
    for _ in 0..20 {
        let (code, _) = daemon.request(
            "POST",
            "/hooks/git",
            &[json, ("X-Hub-Signature-256", &signed)],
            body,
        );
        assert_eq!(code, 202);
    }
    wait_until(Duration::from_secs(10), "the new commit is loaded", || {
        loads(&daemon) > loads_before
    });
    let loaded_after = sent.elapsed();
    eprintln!(
        "signed webhook -> manifests loaded: {:.2}s",
        loaded_after.as_secs_f64()
    );
    assert!(
        loaded_after < Duration::from_secs(5),
        "loaded {loaded_after:?} after the webhook"
    );
    wait_until(Duration::from_secs(30), "r2 live", || {
        live(&root).as_deref() == Some("r2")
    });
    assert_eq!(loads(&daemon), loads_before + 1, "{}", daemon.log_text());
    // Twenty signed requests: one fetch under way, at most one more pending.
    let fetches = fetches_ok(&daemon) - fetches_before;
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} fetches for a burst of 20"
    );
}

/// `convoy_git_fetches_total{result="ok"}`.
fn fetches_ok(daemon: &GitDaemon) -> u64 {
    let metrics = daemon.metrics();
    let prefix = r#"convoy_git_fetches_total{result="ok"} "#;
    let line = metrics.lines().find(|l| l.starts_with(prefix));
    line.and_then(|l| l[prefix.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("no fetch counter:\n{metrics}"))
}

#[test]
fn a_force_push_is_followed_and_an_invalid_commit_keeps_the_last_good_one_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w1");
    let remote = Remote::new(dir.path());
    push_site(&remote, &root, 1);
    let daemon = GitDaemon::start(dir.path(), &remote.bare, &["--interval", "1s"]);
    wait_until(Duration::from_secs(30), "r1 live", || {
        live(&root).as_deref() == Some("r1")
    });

    // An invalid commit: located errors naming the commit; r1 stays, status shows both.
    let mut files = local_site(&root, 2);
    files[0].1 = files[0].1.replace("keepReleases: 3", "keepReleases: 1");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let good = remote.head();
    let bad = remote.push(&files, "bad keepReleases");
    wait_until(
        Duration::from_secs(15),
        "the invalid commit is reported",
        || daemon.log_text().contains("deploy/fleet.yaml:17:"),
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "commit {bad} is invalid; still serving commit {good}"
        )),
        "{log}"
    );
    let status = convoy(dir.path(), &["status"]);
    let out = text(&status.stdout);
    assert!(out.contains(&format!("commit {good}")), "{out}");
    assert!(out.contains("InvalidCommit") && out.contains(&bad), "{out}");
    assert!(
        text(&status.stderr).contains("deploy/fleet.yaml:17:"),
        "{}",
        text(&status.stderr)
    );
    assert!(
        daemon
            .metrics()
            .contains(&format!("convoy_manifest_info{{commit=\"{good}\"}} 1"))
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(live(&root).as_deref(), Some("r1"));

    // Rewrite history: drop the bad commit, push r3 over it with --force.
    git(&remote.work, &["reset", "-q", "--hard", "HEAD~1"]);
    let rewritten = push_site(&remote, &root, 3);
    wait_until(
        Duration::from_secs(30),
        "r3 live after the force-push",
        || live(&root).as_deref() == Some("r3"),
    );
    wait_until(Duration::from_secs(10), "status follows", || {
        text(&convoy(dir.path(), &["status"]).stdout).contains(&format!("commit {rewritten}"))
    });
    assert!(!text(&convoy(dir.path(), &["status"]).stdout).contains("InvalidCommit"));
}

#[test]
fn an_unreachable_remote_backs_off_and_the_last_good_commit_stays_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w1");
    let remote = Remote::new(dir.path());
    let good = push_site(&remote, &root, 1);
    let daemon = GitDaemon::start(dir.path(), &remote.bare, &["--interval", "1s"]);
    wait_until(Duration::from_secs(30), "r1 live", || {
        live(&root).as_deref() == Some("r1")
    });
    let moved = dir.path().join("moved.git");
    fs::rename(&remote.bare, &moved).unwrap();
    wait_until(Duration::from_secs(20), "two failed fetches", || {
        daemon
            .log_text()
            .matches("(backoff); still serving")
            .count()
            >= 2
    });
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("still serving commit {good}")),
        "{log}"
    );
    let status = text(&convoy(dir.path(), &["status"]).stdout);
    assert!(
        status.contains("FetchFailed") && status.contains(&good),
        "{status}"
    );
    assert_eq!(daemon.request("GET", "/readyz", &[], b"").0, 200);
    assert!(
        daemon
            .metrics()
            .contains(&format!("convoy_manifest_info{{commit=\"{good}\"}} 1"))
    );
    // Back: the next fetch takes the new commit.
    fs::rename(&moved, &remote.bare).unwrap();
    wait_until(
        Duration::from_secs(60),
        "status recovers with nothing new",
        || {
            let status = text(&convoy(dir.path(), &["status"]).stdout);
            !status.contains("FetchFailed") && status.contains(&format!("commit {good}"))
        },
    );
    assert!(daemon.log_text().contains("works again; nothing new"));
    push_site(&remote, &root, 2);
    wait_until(
        Duration::from_secs(60),
        "r2 live once the remote is back",
        || live(&root).as_deref() == Some("r2"),
    );
}

#[test]
fn once_with_git_fetches_once_and_reconciles_that_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("w1");
    let remote = Remote::new(dir.path());
    let commit = push_site(&remote, &root, 1);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["reconcile", "--once", "--git"])
            .arg(&remote.bare)
            .args(["--path", "deploy", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(extra)
            .current_dir(dir.path())
            .env_remove("CONVOY_MANIFESTS")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(live(&root).as_deref(), Some("r1"));
    assert!(text(&convoy(dir.path(), &["status"]).stdout).contains(&commit));

    let mut files = local_site(&root, 2);
    files[0].1 = files[0].1.replace("group: web", "group: wbe");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let bad = remote.push(&files, "typo");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("commit {bad}")) && err.contains("deploy/fleet.yaml:"),
        "{err}"
    );
    assert_eq!(live(&root).as_deref(), Some("r1"));

    let out = run(&["--branch", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("failed to fetch branch `nope`"));
}

#[test]
fn a_lab_fleet_follows_a_pushed_commit() {
    let fleet = Fleet::new(2);
    let remote = Remote::new(fleet.dir.path());
    let docs = |version| {
        let mut docs = vec![fleet.group("web", &[0, 1], None)];
        docs.extend(fleet.site(&SiteDef {
            version,
            stages: &[("web", "web", false, false)],
            ..SiteDef::default()
        }));
        docs.join("---\n")
    };
    remote.push(&[("deploy/fleet.yaml", &docs(1))], "r1");
    let daemon = GitDaemon::start(
        fleet.dir.path(),
        &remote.bare,
        &[
            "--interval",
            "1s",
            "--known-hosts",
            fleet.lab.known_hosts().to_str().unwrap(),
        ],
    );
    let on = |release: &str| (0..2).all(|i| fleet.current(i, "app").as_deref() == Some(release));
    wait_until(Duration::from_secs(60), "app.r1 on the lab", || {
        on("app.r1")
    });
    let commit = remote.push(&[("deploy/fleet.yaml", &docs(2))], "r2");
    wait_until(Duration::from_secs(60), "app.r2 on the lab", || {
        on("app.r2")
    });
    // The status is written when the pass ends, a moment after the last switch.
    wait_until(
        Duration::from_secs(30),
        "the status names the commit",
        || {
            let status = fleet.status_json();
            status["items"][0]["status"]["manifestCommit"] == commit.as_str()
                && status["items"][0]["status"]["phase"] == "Converged"
        },
    );
    drop(daemon);
}
