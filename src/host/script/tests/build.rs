//! Tests of prepare and build: environment and quoting, half builds, failures, and the
//! attempts that may not publish (abandoned, or whose lease was taken over).

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::*;
use super::support::*;
use crate::host::observe::{fact, fact_line, facts, steps};

#[test]
fn env_values_and_paths_round_trip_through_build() {
    let nasty = "sp ace 'single' \"double\" $(touch pwned) `touch pwned2` \\ \n second line\n";
    for sh in shells() {
        let tmp = TempDir::new("quote");
        let p = site(&tmp);
        let env = Env(vec![
            ("NASTY".into(), nasty.into()),
            ("CONVOY_RELEASE".into(), "r1".into()),
        ]);
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let script = Script::for_attempt(&p, &a)
            .build(
                "r1",
                &s(&[
                    "printf '%s' \"$NASTY\" > nasty.txt",
                    "printf '%s' \"$CONVOY_RELEASE\" > rel.txt; pwd > pwd.txt",
                ]),
                &env,
            )
            .finish();
        ok(&sh, script);
        let d = format!("{p}/releases/r1");
        assert_eq!(
            std::fs::read_to_string(format!("{d}/nasty.txt")).unwrap(),
            nasty
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d}/rel.txt")).unwrap(),
            "r1"
        );
        // the commands ran in the attempt's own dir, published afterwards
        assert_eq!(
            std::fs::read_to_string(format!("{d}/pwd.txt"))
                .unwrap()
                .trim_end(),
            attempt_dir(&p, "r1", &a)
        );
        assert!(!tmp.path().join("pwned").exists() && !Path::new("pwned").exists());
        assert!(!Path::new("pwned2").exists());
    }
}

#[test]
fn invalid_env_name_fails_the_step() {
    for sh in shells() {
        let tmp = TempDir::new("envname");
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        lease_as(&sh, &p, &a);
        std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
        let env = Env(vec![("BAD NAME; rm -rf /".into(), "x".into())]);
        let o = fails(
            &sh,
            Script::for_attempt(&p, &a)
                .build("r1", &s(&["touch ran"]), &env)
                .finish(),
        );
        assert_eq!(steps(&stdout(&o)), vec![("build".to_string(), 1)]);
        assert!(!Path::new(&format!("{}/ran", attempt_dir(&p, "r1", &a))).exists());
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    }
}

#[test]
fn prepare_removes_half_build_and_temp_links_and_is_idempotent() {
    for sh in shells() {
        let tmp = TempDir::new("prepare");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        let a = Attempt::new("ctl-a");
        std::fs::create_dir_all(format!("{p}/releases/r2/sub")).unwrap();
        std::fs::write(format!("{p}/releases/r2/sub/f"), "half").unwrap();
        std::os::unix::fs::symlink("releases/r1", format!("{p}/current.tmp.4242")).unwrap();
        // another attempt's build dir is abandoned; this attempt's own is kept
        std::fs::create_dir_all(format!("{p}/releases/.r2.aold/sub")).unwrap();
        std::fs::create_dir_all(attempt_dir(&p, "r2", &a)).unwrap();
        let out = ok(&sh, Script::for_attempt(&p, &a).prepare("r2").finish());
        assert_eq!(steps(&out), vec![("prepare".to_string(), 0)]);
        assert!(!Path::new(&format!("{p}/releases/r2")).exists());
        assert!(!Path::new(&format!("{p}/releases/.r2.aold")).exists());
        assert!(Path::new(&attempt_dir(&p, "r2", &a)).is_dir());
        assert!(
            out.contains("@@convoy removed=r2.aold reason=abandoned\n"),
            "{out}"
        );
        assert!(
            out.contains("@@convoy removed=r2 reason=incomplete\n"),
            "{out}"
        );
        assert!(std::fs::symlink_metadata(format!("{p}/current.tmp.4242")).is_err());
        // a complete release is kept
        ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
        assert!(Path::new(&format!("{p}/releases/r1/id.txt")).exists());
        let before = snapshot(tmp.path());
        ok(
            &sh,
            Script::for_attempt(&p, &a)
                .prepare("r1")
                .prepare("r2")
                .finish(),
        );
        assert_eq!(snapshot(tmp.path()), before, "[{}]", sh.name);
        for d in ["releases", "shared", ".convoy"] {
            assert!(Path::new(&format!("{p}/{d}")).is_dir());
        }
    }
}

/// The script of a build of `r1` by `a` running `commands`, with no environment.
fn build_r1(p: &str, a: &Attempt, commands: &[&str]) -> String {
    Script::for_attempt(p, a)
        .build("r1", &s(commands), &Env::default())
        .finish()
}

#[test]
fn build_failure_leaves_no_marker_and_reports_the_step() {
    for sh in shells() {
        let tmp = TempDir::new("buildfail");
        let p = site(&tmp);
        let (a, f) = ready_to_build(&sh, &p, "ctl-a", "r1");
        stops_at_the_first_failing_command(&sh, &p, &a, &f);
        // exit status of the command is the step status
        let o = sh.run(&build_r1(&p, &a, &["exit 7"]));
        assert_eq!(o.status.code(), Some(7));
        assert_eq!(steps(&stdout(&o)), vec![("build".to_string(), 7)]);
        // user output goes to stderr: cannot forge step lines
        let o = sh.run(&build_r1(
            &p,
            &a,
            &["echo '@@convoy step=build status=0'; exit 3"],
        ));
        assert_eq!(steps(&stdout(&o)), vec![("build".to_string(), 3)]);
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
        publishes_once(&sh, &tmp, &p, &a);
    }
}

/// A failing command ends the build (`sh -e`): no later command, no marker, no release,
/// and the switch after it never runs.
fn stops_at_the_first_failing_command(sh: &Shell, p: &str, a: &Attempt, f: &Fence) {
    let d = attempt_dir(p, "r1", a);
    let o = sh.run(
        &Script::for_attempt(p, a)
            .prepare("r1")
            .build(
                "r1",
                &s(&[
                    "echo one > one",
                    "false; echo after > after",
                    "echo never > never",
                ]),
                &Env::default(),
            )
            .switch("r1", f)
            .finish(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", explain(sh, &o));
    let out = stdout(&o);
    assert_eq!(
        steps(&out),
        vec![("prepare".to_string(), 0), ("build".to_string(), 1)]
    );
    assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    assert!(std::fs::symlink_metadata(format!("{p}/current")).is_err());
    assert!(Path::new(&format!("{d}/one")).exists());
    assert!(
        !Path::new(&format!("{d}/after")).exists(),
        "sh -e semantics"
    );
    assert!(!Path::new(&format!("{d}/never")).exists());
    assert!(!Path::new(&format!("{d}/.convoy-complete")).exists());
}

/// A successful build writes the marker and publishes the attempt's directory (with what
/// the failed builds left in it); a second build changes nothing.
fn publishes_once(sh: &Shell, tmp: &TempDir, p: &str, a: &Attempt) {
    let out = ok(sh, build_r1(p, a, &["echo ok >> count"]));
    assert_eq!(fact(&out, "build").as_deref(), Some("done"));
    assert!(!Path::new(&attempt_dir(p, "r1", a)).exists());
    let r1 = format!("{p}/releases/r1");
    let marker = std::fs::read_to_string(format!("{r1}/.convoy-complete")).unwrap();
    assert!(marker.starts_with("built_at="), "{marker}");
    assert_eq!(
        std::fs::read_to_string(format!("{r1}/count")).unwrap(),
        "ok\n"
    );
    assert!(Path::new(&format!("{r1}/one")).exists());
    // Records stay for the next sweep to drop (no fork per command), but none names
    // a live group.
    for record in run_records(p) {
        let pgid: u32 = record.rsplit('.').next().unwrap().parse().unwrap();
        assert!(!group_alive(pgid), "[{}] {record} alive", sh.name);
    }
    let before = snapshot(tmp.path());
    let out = ok(sh, build_r1(p, a, &["echo ok >> count"]));
    assert_eq!(fact(&out, "build").as_deref(), Some("skipped"));
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn abandoned_attempt_cannot_publish() {
    for sh in shells() {
        let tmp = TempDir::new("abandoned");
        let p = site(&tmp);
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let late = tmp.path().join("a.late");
        let started = Instant::now();
        let b = take_over_a_running_build(&sh, &tmp, &p, &a, &late);
        // past the end of A's sleep: its last command never ran
        std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        assert!(!late.exists(), "[{}] the abandoned build ran on", sh.name);
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
        only_the_new_attempt_publishes(&sh, &p, &a, &b);
    }
}

/// Starts a two-second build of `a` (its last command writes `late`); then a later attempt
/// of the same holder (the controller restarted) takes over, which ends A's process group
/// and removes its build directory. Returns the later attempt.
fn take_over_a_running_build(
    sh: &Shell,
    tmp: &TempDir,
    p: &str,
    a: &Attempt,
    late: &Path,
) -> Attempt {
    let pidf = tmp.path().join("a.pid");
    let then = format!("echo late > {}", quote(&late.to_string_lossy()));
    let a_out = tmp.path().join("a.out");
    let mut child = spawn_build(sh, p, a, "r1", &sleeper(&pidf, 2, &then), &a_out);
    let pid = read_pid(&pidf);
    // the group is recorded under the attempt and its real process group id
    let record = format!("{}.{pid}", a.token);
    assert!(
        wait_for(Duration::from_secs(5), || run_records(p)
            == [record.clone()]),
        "[{}] records {:?}, expected [{record}]",
        sh.name,
        run_records(p)
    );
    let b = Attempt::new("ctl-a");
    lease_as(sh, p, &b);
    let out = ok(sh, Script::for_attempt(p, &b).prepare("r1").finish());
    assert!(
        out.contains(&format!("@@convoy stopped={pid} attempt={}\n", a.token)),
        "[{}] {out}",
        sh.name
    );
    assert!(
        out.contains(&format!(
            "@@convoy removed=r1.{} reason=abandoned\n",
            a.token
        )),
        "[{}] {out}",
        sh.name
    );
    assert!(!pid_alive(pid) && !group_alive(pid), "[{}]", sh.name);
    assert!(!Path::new(&attempt_dir(p, "r1", a)).exists());
    assert!(run_records(p).is_empty(), "{:?}", run_records(p));
    let code = wait_child(&mut child, Duration::from_secs(10));
    assert_ne!(code, Some(0), "[{}]", sh.name);
    let a_out = std::fs::read_to_string(a_out).unwrap();
    assert!(!a_out.contains("build=done"), "{a_out}");
    b
}

/// Even a build of the abandoned `a` that runs to its end is fenced and discarded; `b`,
/// which took over, builds and publishes.
fn only_the_new_attempt_publishes(sh: &Shell, p: &str, a: &Attempt, b: &Attempt) {
    std::fs::create_dir_all(attempt_dir(p, "r1", a)).unwrap();
    let o = sh.run(&build_r1(p, a, &["echo a > by.txt"]));
    assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(sh, &o));
    assert!(facts(&stdout(&o)).iter().any(|(k, _)| k == "fenced"));
    assert!(!Path::new(&attempt_dir(p, "r1", a)).exists());
    assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    std::fs::create_dir_all(attempt_dir(p, "r1", b)).unwrap();
    let out = ok(sh, build_r1(p, b, &["echo b > by.txt"]));
    assert_eq!(fact(&out, "build").as_deref(), Some("done"));
    assert_eq!(
        std::fs::read_to_string(format!("{p}/releases/r1/by.txt")).unwrap(),
        "b\n"
    );
    assert!(Path::new(&format!("{p}/releases/r1/.convoy-complete")).exists());
}

#[test]
fn build_whose_lease_was_taken_over_is_discarded() {
    for sh in shells() {
        let tmp = TempDir::new("takenover");
        let p = site(&tmp);
        let (a, f) = ready_to_build(&sh, &p, "ctl-a", "r1");
        // A's lease lapses while it builds and ctl-b takes the host over
        std::fs::write(
            format!("{p}/.convoy/lock"),
            format!(
                "holder=ctl-a expires=1 generation={} attempt={} renewed=1\n",
                f.generation, a.token
            ),
        )
        .unwrap();
        let b = Attempt::new("ctl-b");
        let g = lease_as(&sh, &p, &b);
        assert_eq!(g.generation, f.generation + 1);
        let o = sh.run(&build_r1(&p, &a, &["touch built"]));
        assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        let out = stdout(&o);
        assert_eq!(steps(&out), vec![("build".to_string(), EXIT_FENCED)]);
        let line = fact_line(&out, "fenced").unwrap();
        assert!(line.contains(&("holder".into(), "ctl-b".into())), "{out}");
        assert!(!Path::new(&attempt_dir(&p, "r1", &a)).exists());
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
        assert_eq!(lock_field(&p, "attempt"), b.token);
        // a lease that merely expired (nobody took over) does not publish either
        std::fs::create_dir_all(attempt_dir(&p, "r1", &b)).unwrap();
        std::fs::write(
            format!("{p}/.convoy/lock"),
            format!(
                "holder=ctl-b expires=1 generation={} attempt={} renewed=1\n",
                g.generation, b.token
            ),
        )
        .unwrap();
        let o = sh.run(&build_r1(&p, &b, &["touch built"]));
        assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        assert!(!Path::new(&attempt_dir(&p, "r1", &b)).exists());
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    }
}
