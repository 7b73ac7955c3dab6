//! Tests of the processes user commands run in: the lifeline watchdog, `stop`, and user
//! environment values kept out of every process's arguments.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::super::*;
use super::support::*;
use crate::host::RemoteCommand;
use crate::host::local::LocalHost;
use crate::host::observe::{fact, facts, steps};

/// The script of a build of `r1` by `a` that writes its pid to `pidf` and sleeps 30 s.
fn long_build(p: &str, a: &Attempt, pidf: &Path) -> String {
    Script::for_attempt(p, a)
        .build("r1", &[sleeper(pidf, 30, "true")], &Env::default())
        .finish()
}

#[test]
fn watchdog_ends_the_group_when_the_session_is_gone() {
    for sh in shells() {
        let tmp = TempDir::new("watchdog");
        let p = site(&tmp);
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let pidf = tmp.path().join("pid");
        let script = long_build(&p, &a, &pidf);
        // as the transports run it: stdin (the lifeline) open while the controller waits
        let mut child = sh
            .command(&script)
            .env("CV_LIFELINE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = read_pid(&pidf);
        assert!(group_alive(pid));
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            group_alive(pid),
            "[{}] ended while the session was up",
            sh.name
        );
        // the controller goes away: end of file on the lifeline, nobody reads stdout
        drop(child.stdin.take());
        drop(child.stdout.take());
        let gone = Instant::now();
        assert!(
            wait_for(Duration::from_secs(4), || !group_alive(pid)),
            "[{}] the build's group outlived its session",
            sh.name
        );
        assert!(gone.elapsed() < Duration::from_secs(4));
        wait_child(&mut child, Duration::from_secs(10));
        assert!(
            wait_for(Duration::from_secs(3), || run_records(&p).is_empty()),
            "{:?}",
            run_records(&p)
        );
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    }
}

#[test]
fn a_command_started_after_the_controller_went_never_runs_on() {
    for sh in shells() {
        let tmp = TempDir::new("gone-before");
        let p = site(&tmp);
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let pidf = tmp.path().join("pid");
        // The lifeline is at its end before the build starts (the controller died
        // during an earlier step of the same script).
        let script = long_build(&p, &a, &pidf);
        let started = Instant::now();
        let out = sh
            .command(&script)
            .env("CV_LIFELINE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "[{}] the build ran to its end",
            sh.name
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "[{}] {:?}",
            sh.name,
            started.elapsed()
        );
        if let Ok(text) = std::fs::read_to_string(&pidf) {
            let pid: u32 = text.trim().parse().unwrap();
            assert!(!group_alive(pid), "[{}]", sh.name);
        }
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    }
}

#[test]
fn stop_ends_only_this_attempts_groups() {
    for sh in shells() {
        let tmp = TempDir::new("stop");
        let p = site(&tmp);
        // nothing to stop on an empty site, and nothing is created
        let out = ok(
            &sh,
            Script::for_attempt(&p, &Attempt::new("x")).stop().finish(),
        );
        assert_eq!(steps(&out), vec![("stop".to_string(), 0)]);
        assert!(!Path::new(&p).exists());
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let pidf = tmp.path().join("pid");
        let mut child = spawn_build(
            &sh,
            &p,
            &a,
            "r1",
            &sleeper(&pidf, 30, "true"),
            &tmp.path().join("out"),
        );
        let pid = read_pid(&pidf);
        let record = format!("{}.{pid}", a.token);
        assert!(
            wait_for(Duration::from_secs(5), || run_records(&p)
                == [record.clone()]),
            "[{}] {:?}",
            sh.name,
            run_records(&p)
        );
        // another attempt's stop leaves it running
        let out = ok(
            &sh,
            Script::for_attempt(&p, &Attempt::new("ctl-a"))
                .stop()
                .finish(),
        );
        assert!(!facts(&out).iter().any(|(k, _)| k == "stopped"), "{out}");
        assert!(group_alive(pid));
        assert_eq!(run_records(&p), std::slice::from_ref(&record));
        // its own stop ends it
        let start = Instant::now();
        let out = ok(&sh, Script::for_attempt(&p, &a).stop().finish());
        assert!(
            out.contains(&format!("@@convoy stopped={pid} attempt={}\n", a.token)),
            "[{}] {out}",
            sh.name
        );
        assert!(!group_alive(pid));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_ne!(wait_child(&mut child, Duration::from_secs(10)), Some(0));
        assert!(run_records(&p).is_empty(), "{:?}", run_records(&p));
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
    }
}

/// A build command that reads every process's arguments while it runs (`argv.txt`), and
/// its own ancestry (`ancestry.txt`), after saving `$SECRET` to `secret.out`.
const SPY_ON_ARGV: &str = r#"printf '%s' "$SECRET" > secret.out
for f in /proc/[0-9]*/cmdline; do { tr '\000' ' ' < "$f"; } 2>/dev/null || :; echo; done > argv.txt
i=$$; : > ancestry.txt
while [ -n "$i" ] && [ "$i" -gt 1 ]; do
  tr '\000' ' ' < /proc/$i/cmdline >> ancestry.txt; echo >> ancestry.txt
  i=$(sed 's/.*) //' /proc/$i/stat | cut -d' ' -f2)
done"#;

/// The spying build of `r1` by `a`, with `secret` in its environment: a private command
/// whose words never hold the secret (only the stdin prefix does).
fn private_build(p: &str, a: &Attempt, secret: &str) -> RemoteCommand {
    let env = Env(vec![
        ("SECRET".into(), secret.to_string()),
        ("CONVOY_RELEASE".into(), "r1".into()),
    ]);
    let script = Script::for_attempt(p, a).build("r1", &[SPY_ON_ARGV.to_string()], &env);
    assert!(script.is_private());
    let rc = RemoteCommand::of(script, Duration::from_secs(30));
    assert!(rc.private && rc.has_stdin());
    let (words, prefix) = rc.invocation();
    assert!(words.iter().all(|w| !w.contains(secret)));
    assert!(prefix.is_some_and(|b| String::from_utf8_lossy(b).contains(secret)));
    rc
}

/// The script file the bootstrap ran, named in the build's ancestry.
fn script_file(p: &str) -> String {
    let anc = std::fs::read_to_string(format!("{p}/releases/r1/ancestry.txt")).unwrap();
    anc.split_whitespace()
        .find(|w| {
            Path::new(w)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("convoy."))
        })
        .unwrap_or_else(|| panic!("no script file in the ancestry: {anc}"))
        .to_string()
}

/// The spying build succeeded and got `secret`, no process showed it in its arguments,
/// and the script file is gone.
#[track_caller]
fn check_secret_kept(name: &str, p: &str, secret: &str, status: i32, out: &str) {
    assert_eq!(status, 0, "[{name}] {out}");
    assert_eq!(
        fact(out, "build").as_deref(),
        Some("done"),
        "[{name}] {out}"
    );
    let d = format!("{p}/releases/r1");
    assert_eq!(
        std::fs::read_to_string(format!("{d}/secret.out")).unwrap(),
        secret
    );
    let argv = std::fs::read_to_string(format!("{d}/argv.txt")).unwrap();
    assert!(argv.contains("secret.out"), "[{name}] {argv}");
    assert!(!argv.contains(secret), "[{name}] the value is in argv");
    let file = script_file(p);
    assert!(
        std::fs::symlink_metadata(&file).is_err(),
        "[{name}] {file} left behind"
    );
}

/// Runs `rc` under `sh` as the transports do: the private prefix goes on stdin, which stays
/// open (the lifeline) until the script ends. Returns the exit status and stdout.
fn run_as_transport(sh: &Shell, rc: &RemoteCommand, tmpdir: &Path) -> (i32, String) {
    let (words, prefix) = rc.invocation();
    let mut child = sh
        .command(&words[0])
        .args(&words[1..])
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lifeline = child.stdin.take().unwrap();
    lifeline.write_all(prefix.unwrap()).unwrap();
    lifeline.flush().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30));
    drop(lifeline);
    (status.unwrap_or(-1), out)
}

#[test]
fn env_values_never_appear_in_argv() {
    let secret = format!("s3cr3t-{}", Attempt::new("x").token);
    for sh in shells() {
        let tmp = TempDir::new("argv");
        let p = site(&tmp);
        let tmpdir = tmp.path().join("tmpdir");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let (a, _) = ready_to_build(&sh, &p, "ctl-a", "r1");
        let (status, out) = run_as_transport(&sh, &private_build(&p, &a, &secret), &tmpdir);
        check_secret_kept(sh.name, &p, &secret, status, &out);
        assert!(script_file(&p).starts_with(&*tmpdir.to_string_lossy()));
        assert_eq!(
            std::fs::read_dir(&tmpdir).unwrap().count(),
            0,
            "[{}] temp files left in TMPDIR",
            sh.name
        );
    }
    // the local transport itself (the system sh)
    let tmp = TempDir::new("argv-local");
    let p = site(&tmp);
    let (a, _) = ready_to_build(&shells()[0], &p, "ctl-a", "r1");
    let host = LocalHost {
        name: "local".into(),
        root: None,
    };
    let o = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(host.run(&private_build(&p, &a, &secret)))
        .unwrap();
    check_secret_kept("local", &p, &secret, o.status, &o.stdout_text());
}
