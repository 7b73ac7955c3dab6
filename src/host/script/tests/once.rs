//! Tests of `once`: exactly once under concurrency, surviving the caller, interrupted
//! records, and the bounded wait.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::super::*;
use super::support::*;
use crate::host::observe::{fact, steps};

fn once_script(p: &str, f: &Fence, marker: &str) -> String {
    let cmd = format!(
        "echo ran >> {}; sleep 1; echo \"$CONVOY_STAGE\" > stage.txt",
        quote(marker)
    );
    Script::new(p)
        .once(
            "r1",
            "migrate",
            &[cmd],
            &Env(vec![("CONVOY_STAGE".into(), "scheduler".into())]),
            f,
        )
        .finish()
}

#[test]
fn once_runs_exactly_once_concurrently_and_reports_later() {
    for sh in shells() {
        let tmp = TempDir::new("once");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        let f = lease(&sh, &p, "ctl-a");
        let marker = tmp.path().join("count").to_string_lossy().into_owned();
        let script = once_script(&p, &f, &marker);
        let outs: Vec<Output> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let (sh, script) = (sh.clone(), script.clone());
                    scope.spawn(move || sh.run(&script))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in &outs {
            assert!(o.status.success(), "{}", explain(&sh, o));
            assert_eq!(fact(&stdout(o), "once").as_deref(), Some("done"));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
        assert_eq!(
            std::fs::read_to_string(format!("{p}/releases/r1/stage.txt")).unwrap(),
            "scheduler\n"
        );
        // later: reported, not rerun
        let before = snapshot(tmp.path());
        let out = ok(&sh, script.clone());
        assert_eq!(fact(&out, "status").as_deref(), Some("0"));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
        assert_eq!(snapshot(tmp.path()), before);
        // a failing once is recorded with its status and not rerun either
        let fail = Script::new(&p)
            .once(
                "r1",
                "other",
                &s(&["echo x >> ../../fails; exit 4"]),
                &Env::default(),
                &f,
            )
            .finish();
        for _ in 0..2 {
            let o = sh.run(&fail);
            assert_eq!(o.status.code(), Some(4), "{}", explain(&sh, &o));
            assert_eq!(steps(&stdout(&o)), vec![("once".to_string(), 4)]);
        }
        assert_eq!(
            std::fs::read_to_string(format!("{p}/fails")).unwrap(),
            "x\n"
        );
    }
}

#[test]
fn once_survives_the_caller_being_killed() {
    use std::os::unix::process::CommandExt;
    for sh in shells() {
        let tmp = TempDir::new("oncekill");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        let f = lease(&sh, &p, "ctl-a");
        let marker = tmp.path().join("count").to_string_lossy().into_owned();
        let script = once_script(&p, &f, &marker);
        let mut child = sh
            .command(&script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // once the wrapper runs (it records its pid; a loaded machine may take a while),
        // kill the whole process group of the caller, as a dying ssh session would
        let rec = format!("{p}/.convoy/once/r1/migrate");
        wait_for(Duration::from_secs(10), || {
            Path::new(&format!("{rec}/pid")).exists()
        });
        let pgid = child.id();
        let killed = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status()
            .unwrap();
        assert!(killed.success());
        let _ = child.wait();
        // the caller died mid-run: the wrapper had started and had not finished
        assert!(
            Path::new(&format!("{rec}/pid")).exists(),
            "[{}] wrapper not started",
            sh.name
        );
        assert!(
            !Path::new(&format!("{rec}/done")).exists(),
            "[{}] finished too early",
            sh.name
        );
        let start = Instant::now();
        let out = ok(&sh, script.clone());
        assert_eq!(fact(&out, "once").as_deref(), Some("done"), "{out}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
        let done = std::fs::read_to_string(format!("{p}/.convoy/once/r1/migrate/done")).unwrap();
        assert!(done.starts_with("status=0\nhost="), "{done}");
        let out = ok(&sh, script);
        assert_eq!(fact(&out, "once").as_deref(), Some("done"));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    }
}

#[test]
fn once_interrupted_without_record_is_not_rerun() {
    for sh in shells() {
        let tmp = TempDir::new("onceint");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        let f = lease(&sh, &p, "ctl-a");
        let rec = format!("{p}/.convoy/once/r1/migrate");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(format!("{rec}/started"), "started=1 host=x\n").unwrap();
        std::fs::write(format!("{rec}/pid"), "999999999\n").unwrap();
        let marker = tmp.path().join("count").to_string_lossy().into_owned();
        let o = sh.run(&once_script(&p, &f, &marker));
        assert_eq!(
            o.status.code(),
            Some(EXIT_ONCE_INTERRUPTED),
            "{}",
            explain(&sh, &o)
        );
        assert_eq!(fact(&stdout(&o), "once").as_deref(), Some("interrupted"));
        assert!(!Path::new(&marker).exists());
    }
}

#[test]
fn once_wait_gives_up_on_a_long_run() {
    let sh = &shells()[0];
    let tmp = TempDir::new("oncewait");
    let p = site(&tmp);
    make_release(sh, &p, "r1");
    let f = lease(sh, &p, "ctl-a");
    let script = Script::new(&p)
        .once_wait("r1", "slow", &s(&["sleep 3"]), &Env::default(), &f, 1)
        .finish();
    let o = sh.run(&script);
    assert_eq!(
        o.status.code(),
        Some(EXIT_ONCE_STILL_RUNNING),
        "{}",
        explain(sh, &o)
    );
    assert_eq!(fact(&stdout(&o), "once").as_deref(), Some("running"));
    let script = Script::new(&p)
        .once_wait("r1", "slow", &s(&["sleep 3"]), &Env::default(), &f, 10)
        .finish();
    let out = ok(sh, script);
    assert_eq!(fact(&out, "once").as_deref(), Some("done"));
}
