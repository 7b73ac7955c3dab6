//! Acceptance tests of the reconcile engine: the real `convoy` binary against real sshd
//! hosts of the lab, deploying a real git repository (see `fleet.rs`).

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, SiteDef, activations, assert_exit, mtimes};
use crate::util::stdout;

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

    // The tag resolved once, on the controller, to one commit that every host built.
    let commit = Command::new("git")
        .args(["rev-parse", "v1^{commit}"])
        .current_dir(fleet.repo())
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    assert_eq!(
        fleet.status_json()["items"][0]["status"]["revision"],
        commit.as_str()
    );
    for i in 0..3 {
        let marker = fs::read_to_string(
            fleet
                .lab
                .host_dir(i)
                .join("sites/app/releases/app.r1/.convoy-complete"),
        )
        .unwrap();
        assert!(
            marker.contains(&format!("revision={commit}")),
            "h{i}: {marker}"
        );
    }

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
    // `convoy retry` lifts the hold: with the host fixed, the same release goes live.
    fleet.mark(2, "fail-health", false);
    let out = fleet.convoy(&["retry", "app"]);
    assert_exit(&out, 0);
    assert_exit(&fleet.reconcile(&[]), 0);
    for i in 0..3 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r2"));
    }
    // So does a change of the desired state, after a new hold.
    fleet.mark(1, "fail-health", true);
    fleet.two_stage(3, &[0], &[1, 2]);
    for _ in 0..3 {
        assert_exit(&fleet.reconcile(&[]), 1);
    }
    fleet.mark(1, "fail-health", false);
    fleet.two_stage(4, &[0], &[1, 2]);
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
    let mut killed = vec![];
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
        killed.push(child.id());
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
    // The SSH masters of the killed controllers exit by themselves after their idle timeout
    // (ControlPersist 30s): none outlives convoy for long, even after SIGKILL.
    let masters = || -> Vec<u32> {
        let mut pids = vec![];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if killed
                .iter()
                .any(|k| cmdline.contains(&format!("convoy-ssh-{k}-")))
            {
                pids.push(pid);
            }
        }
        pids
    };
    assert!(
        !masters().is_empty(),
        "the killed controllers left masters behind (idle timeout not yet over)"
    );
    // Idle means no session left: a remote step the killed run started finishes first, so
    // allow for a loaded machine beyond the 30s idle timeout.
    let deadline = Instant::now() + Duration::from_secs(75);
    while !masters().is_empty() {
        assert!(
            Instant::now() < deadline,
            "ssh masters of killed controllers still alive: {:?}",
            masters()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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
