//! Tests of switch, rollback, activate and health: the atomic repoint of `current`, its
//! fallback without `mv -T`, and the lease fence.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::super::*;
use super::support::*;
use crate::host::observe::{fact, facts, steps};

#[test]
fn switch_records_previous_is_idempotent_and_refuses_incomplete() {
    for sh in shells() {
        let tmp = TempDir::new("switch");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        make_release(&sh, &p, "r2");
        let f = lease(&sh, &p, "ctl-a");
        let out = ok(&sh, Script::new(&p).switch("r1", &f).finish());
        assert_eq!(steps(&out), vec![("switch".to_string(), 0)]);
        assert_eq!(read_link(&p), "releases/r1");
        assert!(!Path::new(&format!("{p}/.convoy/previous")).exists());
        ok(&sh, Script::new(&p).switch("r2", &f).finish());
        assert_eq!(read_link(&p), "releases/r2");
        assert_eq!(
            std::fs::read_to_string(format!("{p}/.convoy/previous")).unwrap(),
            "r1\n"
        );
        // idempotent: no change at all, not even the link's mtime
        let m1 = std::fs::symlink_metadata(format!("{p}/current"))
            .unwrap()
            .modified()
            .unwrap();
        let before = snapshot(tmp.path());
        std::thread::sleep(Duration::from_millis(20));
        let out = ok(
            &sh,
            Script::new(&p).switch("r2", &f).switch("r2", &f).finish(),
        );
        assert_eq!(fact(&out, "switch").as_deref(), Some("unchanged"));
        assert_eq!(snapshot(tmp.path()), before);
        let m2 = std::fs::symlink_metadata(format!("{p}/current"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(m1, m2);
        // an incomplete release is refused
        std::fs::create_dir_all(format!("{p}/releases/r3")).unwrap();
        let o = fails(&sh, Script::new(&p).switch("r3", &f).finish());
        assert_eq!(steps(&stdout(&o)), vec![("switch".to_string(), 1)]);
        assert_eq!(read_link(&p), "releases/r2");
        // rollback goes to previous and is idempotent
        let out = ok(&sh, Script::new(&p).rollback(&f).finish());
        assert_eq!(fact(&out, "rollback").as_deref(), Some("done"));
        assert_eq!(read_link(&p), "releases/r1");
        let before = snapshot(tmp.path());
        let out = ok(&sh, Script::new(&p).rollback(&f).finish());
        assert_eq!(fact(&out, "rollback").as_deref(), Some("unchanged"));
        assert_eq!(snapshot(tmp.path()), before);
        assert!(
            !snapshot(tmp.path())
                .iter()
                .any(|(k, _)| k.contains(".tmp.")),
            "no temp files left"
        );
    }
}

#[test]
fn switch_falls_back_to_a_bare_rename_without_mv_t() {
    let sh = &shells()[0];
    let tmp = TempDir::new("nomvt");
    let p = site(&tmp);
    make_release(sh, &p, "r1");
    make_release(sh, &p, "r2");
    let f = lease(sh, &p, "ctl-a");
    // an `mv` without -T (like old BSD/busybox builds): moving onto the link would
    // move INTO the directory, so the script must not use it for the repoint
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("mv");
    std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$*\" in *--help*) echo 'usage: mv [-f] source target'; exit 1;; *-T*) exit 64;; esac\nexec /bin/mv \"$@\"\n",
        )
        .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    for id in ["r1", "r2", "r1"] {
        let o = Command::new("sh")
            .arg("-c")
            .arg(Script::new(&p).switch(id, &f).finish())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", explain(sh, &o));
        assert_eq!(read_link(&p), format!("releases/{id}"));
    }
    assert!(std::fs::symlink_metadata(format!("{p}/releases/r1/current.tmp")).is_err());
    assert_eq!(
        std::fs::read_dir(format!("{p}/releases/r2"))
            .unwrap()
            .count(),
        3
    );
}

#[test]
fn fence_mismatch_refuses_switch_rollback_and_once() {
    for sh in shells() {
        let tmp = TempDir::new("fence");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        make_release(&sh, &p, "r2");
        let f = lease(&sh, &p, "ctl-a");
        ok(&sh, Script::new(&p).switch("r1", &f).finish());
        let stale = Fence {
            holder: "ctl-a".into(),
            generation: f.generation + 1,
        };
        let other = Fence {
            holder: "ctl-b".into(),
            generation: f.generation,
        };
        for fence in [&stale, &other] {
            let o = sh.run(&Script::new(&p).switch("r2", fence).finish());
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
            assert!(facts(&stdout(&o)).iter().any(|(k, _)| k == "fenced"));
            let o = sh.run(&Script::new(&p).rollback(fence).finish());
            assert_eq!(o.status.code(), Some(EXIT_FENCED));
            let o = sh.run(
                &Script::new(&p)
                    .once("r2", "web", &s(&["touch ran"]), &Env::default(), fence)
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        }
        assert_eq!(read_link(&p), "releases/r1");
        assert!(!Path::new(&format!("{p}/releases/r2/ran")).exists());
        // expired lease: even the right holder+generation is fenced
        std::fs::write(
            format!("{p}/.convoy/lock"),
            format!("holder=ctl-a expires=1 generation={}\n", f.generation),
        )
        .unwrap();
        let o = sh.run(&Script::new(&p).switch("r2", &f).finish());
        assert_eq!(o.status.code(), Some(EXIT_FENCED));
        assert_eq!(read_link(&p), "releases/r1");
    }
}

#[test]
fn switch_never_leaves_current_missing() {
    for sh in shells() {
        let tmp = TempDir::new("atomic");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        make_release(&sh, &p, "r2");
        let f = lease(&sh, &p, "ctl-a");
        ok(&sh, Script::new(&p).switch("r1", &f).finish());
        let done = AtomicBool::new(false);
        let current = PathBuf::from(format!("{p}/current"));
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut n = 0u64;
                let mut missing = 0u64;
                while !done.load(Ordering::SeqCst) || n < 2000 {
                    n += 1;
                    let link = std::fs::read_link(&current);
                    let stat = std::fs::metadata(current.join("id.txt"));
                    if link.is_err() || stat.is_err() {
                        missing += 1;
                    }
                }
                (n, missing)
            });
            let scripts = [
                Script::new(&p).switch("r2", &f).finish(),
                Script::new(&p).switch("r1", &f).finish(),
            ];
            for i in 0..200 {
                ok(&sh, scripts[i % 2].clone());
            }
            done.store(true, Ordering::SeqCst);
            let (n, missing) = reader.join().unwrap();
            assert!(n >= 2000);
            assert_eq!(
                missing, 0,
                "[{}] current was missing {missing} of {n} reads",
                sh.name
            );
        });
    }
}

#[test]
fn activate_and_health() {
    for sh in shells() {
        let tmp = TempDir::new("health");
        let p = site(&tmp);
        make_release(&sh, &p, "r1");
        make_release(&sh, &p, "r2");
        let f = lease(&sh, &p, "ctl-a");
        let env = Env(vec![("GREETING".into(), "it's \"me\"".into())]);
        let out = ok(
            &sh,
            Script::new(&p)
                .switch("r1", &f)
                .activate("r1", &s(&["printf '%s' \"$GREETING\" > activated"]), &env)
                .health("test -f activated", &env, 5, 0, 0)
                .finish(),
        );
        assert_eq!(
            steps(&out),
            vec![
                ("switch".to_string(), 0),
                ("activate".to_string(), 0),
                ("health".to_string(), 0)
            ]
        );
        assert_eq!(
            std::fs::read_to_string(format!("{p}/releases/r1/activated")).unwrap(),
            "it's \"me\""
        );
        // activate refuses a release that is not current
        let o = fails(
            &sh,
            Script::new(&p)
                .activate("r2", &s(&["touch x"]), &env)
                .finish(),
        );
        assert_eq!(steps(&stdout(&o)), vec![("activate".to_string(), 1)]);
        // retries: fails twice, then succeeds on the third attempt
        let cmd = "n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; [ $n -ge 3 ]";
        let out = ok(&sh, Script::new(&p).health(cmd, &env, 5, 3, 0).finish());
        assert_eq!(facts(&out).iter().filter(|(k, _)| k == "health").count(), 3);
        // retries exhausted: 1 + 2 attempts, then the step fails
        std::fs::remove_file(format!("{p}/releases/r1/tries")).unwrap();
        let o = fails(
            &sh,
            Script::new(&p)
                .health("echo . >> tries; exit 9", &env, 5, 2, 0)
                .finish(),
        );
        assert_eq!(steps(&stdout(&o)), vec![("health".to_string(), 9)]);
        assert_eq!(
            std::fs::read_to_string(format!("{p}/releases/r1/tries")).unwrap(),
            ".\n.\n.\n"
        );
        // timeout bounds an attempt
        let start = Instant::now();
        let o = fails(
            &sh,
            Script::new(&p).health("sleep 10", &env, 1, 1, 0).finish(),
        );
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "[{}] {:?}",
            sh.name,
            start.elapsed()
        );
        assert_eq!(steps(&stdout(&o)).len(), 1);
    }
}
