//! Integrity on a bad day, on the real-sshd lab: abandoned remote work (a controller
//! SIGKILLed, timed out or stopped mid-build) can never complete or change a later attempt,
//! its commands end on the hosts, its leases never block another controller for long, and
//! secrets stay out of the hosts' process lists.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, SiteDef, assert_exit};
use crate::lab::output_with_timeout;
use crate::util::{stderr, stdout};

/// One stage of every given host, release `app.r<version>`, builds sleeping `sleep`.
fn deploy(fleet: &Fleet, hosts: &[usize], version: u32, sleep: &str) {
    let mut docs = vec![fleet.group("all", hosts, None)];
    docs.extend(fleet.site(&SiteDef {
        version,
        stages: &[("web", "all", false, false)],
        build_sleep: sleep,
        ..SiteDef::default()
    }));
    fleet.write(&docs);
}

/// `reconcile --once` of `fleet`'s manifests with another state dir: another controller
/// (another lease holder), as on another machine or a fresh CI workspace.
fn other_controller(fleet: &Fleet, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convoy"));
    cmd.args(["reconcile", "--once", "-f"])
        .arg(fleet.dir.path().join("manifests"))
        .arg("--state-dir")
        .arg(fleet.dir.path().join("other-state"))
        .arg("--known-hosts")
        .arg(fleet.lab.known_hosts())
        .args(extra)
        .current_dir(fleet.dir.path());
    cmd
}

/// Live (not zombie) processes that convoy started on `fleet`'s hosts as user commands of
/// site `app`: they carry `CONVOY_SITE=app` and `CONVOY_ATTEMPT` in their environment, and run
/// in one of this lab's host mount namespaces (other tests' labs deploy a site `app` too, at
/// the same time). The lab hosts share this machine's process table: host-side evidence.
fn user_processes(fleet: &Fleet) -> Vec<(u32, String)> {
    let want = "CONVOY_SITE=app";
    let ours: std::collections::BTreeSet<u32> = (0..fleet.lab.hosts().len())
        .flat_map(|i| fleet.lab.host_processes(i))
        .collect();
    let mut found = vec![];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if !ours.contains(&pid) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |v: &str| vars.contains(&v.as_bytes());
        let attempt = vars.iter().any(|x| x.starts_with(b"CONVOY_ATTEMPT="));
        if !(has(want) && attempt) {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if !zombie {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn finish(child: Child, bound: Duration) -> Output {
    let pid = child.id();
    let start = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("convoy (pid {pid}) did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lock_line(fleet: &Fleet, i: usize) -> String {
    fs::read_to_string(fleet.lab.host_dir(i).join("sites/app/.convoy/lock")).unwrap_or_default()
}

fn release_dir(fleet: &Fleet, i: usize, id: &str) -> PathBuf {
    fleet.lab.host_dir(i).join("sites/app/releases").join(id)
}

/// The repro: a build sleeping 6s, the controller SIGKILLed 2s in, the build made to
/// fail, a second run: before, the killed run's builds (kept alive by the SSH master) later
/// marked the re-created release dir complete and the next pass switched every host to a
/// release whose build had failed.
#[test]
fn a_sigkilled_controllers_builds_end_and_can_never_complete_a_later_attempt() {
    let fleet = Fleet::new(4);
    let hosts = [0, 1, 2, 3];
    deploy(&fleet, &hosts, 1, "6");
    let first = spawn(fleet.reconcile_cmd(&[]));
    wait_until(
        "builds under way on every host",
        Duration::from_secs(20),
        || user_processes(&fleet).len() >= 4,
    );
    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = Instant::now();
    // No ssh master keeps the dead controller's sessions: its commands end with them.
    let ended = wait_until(
        "the killed controller's build processes end",
        Duration::from_secs(10),
        || user_processes(&fleet).is_empty(),
    );
    eprintln!("orphaned builds ended {ended:?} after SIGKILL");
    for i in hosts {
        fleet.mark(i, "fail-build", true);
    }
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("build failed"), "{}", stdout(&out));
    // A failed build is an exit path too: the lease is given back.
    for i in hosts {
        assert!(
            lock_line(&fleet, i).contains("expires=0"),
            "h{i}: {}",
            lock_line(&fleet, i)
        );
    }
    // Past the moment the killed builds would have finished (6s after they started).
    while killed_at.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in hosts {
        assert!(
            !release_dir(&fleet, i, "app.r1")
                .join(".convoy-complete")
                .exists(),
            "h{i}: a failed release was marked complete"
        );
        assert!(
            !fleet.trace(i).iter().any(|l| l.starts_with("build ")),
            "h{i}: an abandoned build ran to its end: {:?}",
            fleet.trace(i)
        );
    }
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    for i in hosts {
        assert_eq!(
            fleet.current(i, "app"),
            None,
            "h{i} switched to a failed build"
        );
    }
}

/// `--timeout` ends the builds it started (their whole process group) on every host and
/// releases the leases before convoy exits: another controller starts at once.
#[test]
fn timeout_ends_the_builds_on_the_hosts_and_releases_the_leases() {
    let fleet = Fleet::new(2);
    deploy(&fleet, &[0, 1], 1, "100000");
    let started = Instant::now();
    let out = output_with_timeout(
        fleet.reconcile_cmd(&["--timeout", "4s"]),
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("--timeout of 4s reached"),
        "{}",
        stdout(&out)
    );
    assert!(took < Duration::from_secs(25), "exit took {took:?}");
    // Before convoy exited: nothing of it runs on the hosts, and no lease is held.
    assert!(
        user_processes(&fleet).is_empty(),
        "{:?}",
        user_processes(&fleet)
    );
    for i in 0..2 {
        let lock = lock_line(&fleet, i);
        assert!(lock.contains("expires=0"), "h{i} still locked: {lock}");
        assert!(
            !fleet
                .lab
                .host_dir(i)
                .join("sites/app/releases/app.r1")
                .exists(),
            "h{i}: an unfinished build was published"
        );
    }
    deploy(&fleet, &[0, 1], 1, "0");
    let started = Instant::now();
    let out = output_with_timeout(other_controller(&fleet, &[]), Duration::from_secs(60));
    assert_exit(&out, 0);
    eprintln!(
        "another controller converged {:?} after the first hit --timeout",
        started.elapsed()
    );
    assert!(!stdout(&out).contains("locked by"), "{}", stdout(&out));
    for i in 0..2 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r1"));
    }
}

/// SIGTERM (and SIGINT) of `--once` mid-build: commands ended, leases released, exit 1.
#[test]
fn sigterm_mid_build_ends_the_commands_and_frees_the_hosts_at_once() {
    let fleet = Fleet::new(2);
    for sig in ["-TERM", "-INT"] {
        deploy(&fleet, &[0, 1], 1, "100000");
        let child = spawn(fleet.reconcile_cmd(&[]));
        wait_until("builds under way", Duration::from_secs(20), || {
            user_processes(&fleet).len() >= 2
        });
        signal(&child, sig);
        let out = finish(child, Duration::from_secs(30));
        assert_exit(&out, 1);
        assert!(stdout(&out).contains("received"), "{}", stdout(&out));
        assert!(
            user_processes(&fleet).is_empty(),
            "{sig}: {:?}",
            user_processes(&fleet)
        );
        for i in 0..2 {
            assert!(
                lock_line(&fleet, i).contains("expires=0"),
                "{sig}: h{i} still locked"
            );
        }
    }
    deploy(&fleet, &[0, 1], 1, "0");
    let started = Instant::now();
    let out = output_with_timeout(other_controller(&fleet, &[]), Duration::from_secs(60));
    assert_exit(&out, 0);
    eprintln!(
        "another controller converged {:?} after the first was SIGTERMed mid-build",
        started.elapsed()
    );
}

/// A SIGKILLed holder cannot release its lease, but the lease is short and was being
/// renewed only while the holder lived: another controller gets the hosts within about the
/// lease time (30s), not 10 minutes; `convoy unlock` frees them at once.
#[test]
fn a_sigkilled_holder_frees_its_hosts_within_the_lease_time_or_at_once_by_unlock() {
    let fleet = Fleet::new(2);
    deploy(&fleet, &[0, 1], 1, "100000");
    // Long enough that the lease is renewed at least once while the build runs.
    let mut child = spawn(fleet.reconcile_cmd(&[]));
    wait_until("builds under way", Duration::from_secs(20), || {
        user_processes(&fleet).len() >= 2
    });
    std::thread::sleep(Duration::from_secs(12));
    let renewed = lock_line(&fleet, 0);
    assert!(renewed.contains("renewed="), "{renewed}");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    deploy(&fleet, &[0, 1], 1, "0");
    let out = output_with_timeout(
        other_controller(&fleet, &["--timeout", "90s"]),
        Duration::from_secs(120),
    );
    assert_exit(&out, 0);
    let waited = killed_at.elapsed();
    eprintln!("another controller converged {waited:?} after the holder was SIGKILLed mid-build");
    // At most the lease time after the last renewal, plus the retry that waits for it.
    assert!(
        waited < Duration::from_secs(45),
        "waited {waited:?} for a dead holder's lease"
    );

    // Again, freed by hand this time.
    deploy(&fleet, &[0, 1], 2, "100000");
    let mut child = spawn(fleet.reconcile_cmd(&[]));
    wait_until("builds under way", Duration::from_secs(20), || {
        user_processes(&fleet).len() >= 2
    });
    let holder_pid = child.id();
    let unlock = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_convoy"));
        cmd.args(["unlock", "app", "-f"])
            .arg(fleet.dir.path().join("manifests"))
            .arg("--state-dir")
            .arg(fleet.dir.path().join("other-state"))
            .arg("--known-hosts")
            .arg(fleet.lab.known_hosts())
            .args(extra);
        output_with_timeout(cmd, Duration::from_secs(60))
    };
    // The holder is alive and renewing: refused without --force, naming it.
    let out = unlock(&["--host", "h0"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds the lease"), "{}", stderr(&out));
    child.kill().unwrap();
    child.wait().unwrap();
    let out = unlock(&["--force"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("broke the lease of"),
        "{}",
        stdout(&out)
    );
    assert!(
        user_processes(&fleet).is_empty(),
        "{:?}",
        user_processes(&fleet)
    );
    deploy(&fleet, &[0, 1], 2, "0");
    let started = Instant::now();
    let out = output_with_timeout(other_controller(&fleet, &[]), Duration::from_secs(60));
    assert_exit(&out, 0);
    assert!(started.elapsed() < Duration::from_secs(20));
    let out = unlock(&[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("not locked"), "{}", stdout(&out));
    let _ = holder_pid;
}

/// A daemon stopped with SIGTERM mid-build ends its builds and releases its leases.
#[test]
fn a_daemon_stopped_mid_build_frees_the_hosts() {
    let fleet = Fleet::new(1);
    deploy(&fleet, &[0], 1, "100000");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convoy"));
    cmd.args(["reconcile", "-f"])
        .arg(fleet.dir.path().join("manifests"))
        .arg("--state-dir")
        .arg(fleet.state())
        .arg("--known-hosts")
        .arg(fleet.lab.known_hosts())
        .args(["--metrics-addr", "127.0.0.1:0"]);
    let child = spawn(cmd);
    wait_until("build under way", Duration::from_secs(30), || {
        !user_processes(&fleet).is_empty()
    });
    signal(&child, "-TERM");
    let out = finish(child, Duration::from_secs(40));
    assert_exit(&out, 0);
    assert!(
        user_processes(&fleet).is_empty(),
        "{:?}",
        user_processes(&fleet)
    );
    assert!(
        lock_line(&fleet, 0).contains("expires=0"),
        "{}",
        lock_line(&fleet, 0)
    );
}

/// `spec.env` values never appear in a host's process list (`ps -eww`) while build,
/// activate and health run, and no copy of the script stays in the host's temp dir.
#[test]
fn env_values_never_show_in_the_hosts_process_list() {
    let fleet = Fleet::new(1);
    let secret = "s3cr3t-Value-8f2b";
    let mut docs = vec![fleet.group("all", &[0], None)];
    docs.extend(
        fleet
            .site(&SiteDef {
                stages: &[("web", "all", false, false)],
                build_sleep: "4",
                ..SiteDef::default()
            })
            .into_iter()
            .map(|d| d.replace("env: {", &format!("env: {{DB_PASSWORD: \"{secret}\", "))),
    );
    fleet.write(&docs);
    let child = spawn(fleet.reconcile_cmd(&[]));
    let mut samples = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let ps = fleet.lab.ssh(0, "ps -eww -o args");
        let text = stdout(&ps);
        assert!(!text.contains(secret), "secret visible in ps:\n{text}");
        if text.contains("sleep 4") {
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = finish(child, Duration::from_secs(60));
    assert_exit(&out, 0);
    assert!(samples > 0, "the build was never seen running");
}

/// Every release directory a host removes is named in the output and in the history.
#[test]
fn every_clean_up_deletion_is_reported_in_the_output_and_the_history() {
    let fleet = Fleet::new(1);
    for version in 1..=4 {
        deploy(&fleet, &[0], version, "0");
        let out = fleet.reconcile(&[]);
        assert_exit(&out, 0);
        if version == 4 {
            // keepReleases: 3 — the oldest goes, and the run says so.
            assert!(
                stdout(&out).contains("CleanedUp app.r4: removed app.r1"),
                "{}",
                stdout(&out)
            );
        }
    }
    assert!(!release_dir(&fleet, 0, "app.r1").exists());
    let history = stdout(&fleet.convoy(&["history", "app"]));
    assert!(history.contains("CleanedUp"), "{history}");
    assert!(history.contains("removed app.r1"), "{history}");
}

/// A full disk on a host is a failed attempt that names the host's error, never a silent
/// "no progress" stall, and leaves no temporary lock files behind. The host's site path
/// is a tiny tmpfs mounted in that host's own mount namespace.
#[test]
fn a_full_disk_is_a_failed_attempt_with_the_hosts_error() {
    let fleet = Fleet::new(1);
    let pid = fleet.lab.hosts()[0].pid().expect("h0 runs");
    let site = format!("{}/sites/app", crate::lab::LAB_MOUNT);
    let mount = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c"])
        .arg(format!(
            "mkdir -p {site} && mount -t tmpfs -o size=2m tmpfs {site}"
        ))
        .output()
        .unwrap();
    assert!(mount.status.success(), "{}", stderr(&mount));
    for version in [1, 2] {
        deploy(&fleet, &[0], version, "0");
        assert_exit(&fleet.reconcile(&[]), 0);
    }
    // The disk fills up; then a rollback to r1 (already built) needs only a lease and a
    // switch: both must write on the host.
    let fill = fleet.lab.ssh(
        0,
        &format!("dd if=/dev/zero of={site}/fill bs=64k 2>/dev/null; df {site} | tail -1"),
    );
    assert!(stdout(&fill).contains("100%"), "{}", stdout(&fill));
    deploy(&fleet, &[0], 1, "0");
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!text.contains("no progress"), "{text}");
    let status = fleet.status_json();
    let item = &status["items"][0]["status"];
    assert_eq!(item["phase"], "Failed", "{status}");
    assert_eq!(item["attempts"], 1, "counted as a failed attempt: {status}");
    assert!(
        item["hosts"][0]["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left on device"),
        "{status}"
    );
    let leftovers = fleet.lab.ssh(0, &format!("ls -a {site}/.convoy"));
    assert!(
        !stdout(&leftovers).contains(".tmp."),
        "{}",
        stdout(&leftovers)
    );
    // Space again: the next pass converges.
    fleet.lab.ssh(0, &format!("rm -f {site}/fill"));
    let out = fleet.convoy(&["retry", "app"]);
    assert_exit(&out, 0);
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(
        fleet.current(0, "app"),
        None,
        "tmpfs is not visible outside h0"
    );
    let live = fleet.lab.ssh(0, &format!("readlink {site}/current"));
    assert_eq!(stdout(&live).trim(), "releases/app.r1");
}

/// The lease mutex on a host ends with its holder, however that dies: a run that finds it
/// held waits (nothing on the host changes meanwhile), and the moment the holder is
/// SIGKILLed (as a script of a killed controller dies mid-operation) the run goes on and
/// converges. Before, a dead holder's `lock.d` kept every later attempt waiting 5 s.
#[test]
fn a_lease_mutex_holder_killed_on_the_host_frees_the_waiting_run_at_once() {
    let fleet = Fleet::new(1);
    deploy(&fleet, &[0], 1, "0");
    assert_exit(&fleet.reconcile(&[]), 0);
    deploy(&fleet, &[0], 2, "0");
    // A holder of the mutex on h0, started over ssh (it ends by itself after 2 minutes):
    // it prints its pid once it holds it.
    let out = fleet.lab.ssh(
        0,
        "exec 8>>/srv/convoy-lab/sites/app/.convoy/mutex; flock 8; \
         nohup sleep 120 >/dev/null 2>&1 </dev/null & echo $!",
    );
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        holder.parse::<u32>().is_ok(),
        "holder pid: {holder:?} {}",
        stderr(&out)
    );
    let run = spawn(fleet.reconcile_cmd(&[]));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fleet.current(0, "app").as_deref(),
        Some("app.r1"),
        "nothing switched while the mutex was held"
    );
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &holder])
        .status()
        .unwrap();
    assert!(status.success());
    let out = finish(run, Duration::from_secs(60));
    assert_exit(&out, 0);
    let after = killed.elapsed();
    assert_eq!(fleet.current(0, "app").as_deref(), Some("app.r2"));
    // The rest of a one-host pass, on a loaded machine; not the minutes a dead holder
    // would keep it waiting (the run gives up on a mutex after 30 s).
    assert!(
        after < Duration::from_secs(10),
        "the run went on {after:?} after the holder died: a dead holder still held the mutex"
    );
}
