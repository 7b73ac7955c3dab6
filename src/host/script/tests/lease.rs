//! Tests of the host lease: contention, takeover on expiry, renewal, release and break.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::super::*;
use super::support::*;
use crate::host::observe::{fact, fact_line, facts, steps};

/// The script of a fresh attempt of `holder` asking for the lease for `ttl_secs`.
fn acquire(p: &str, holder: &str, ttl_secs: u64) -> String {
    Script::for_attempt(p, &Attempt::new(holder))
        .lease_acquire(holder, ttl_secs)
        .finish()
}

/// Four holders ask for the free lease at once: exactly one gets it, at generation 1, and
/// the others are told who holds it. Returns the winner.
fn exactly_one_contender_wins(sh: &Shell, p: &str) -> String {
    let outs: Vec<Output> = std::thread::scope(|scope| {
        let hs: Vec<_> = ["ctl-a", "ctl-b", "ctl-c", "ctl-d"]
            .into_iter()
            .map(|h| {
                let sh = sh.clone();
                let script = acquire(p, h, 600);
                scope.spawn(move || sh.run(&script))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        outs.iter().map(|o| explain(sh, o)).collect::<Vec<_>>()
    );
    let winner_out = stdout(won[0]);
    let winner = fact_line(&winner_out, "lease").unwrap();
    let holder = winner
        .iter()
        .find(|(k, _)| k == "holder")
        .unwrap()
        .1
        .clone();
    assert!(winner.contains(&("generation".into(), "1".into())));
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(EXIT_LEASE_HELD));
        let line = fact_line(&stdout(o), "lease").unwrap();
        assert!(line.contains(&("lease".into(), "held".into())));
        assert!(line.contains(&("holder".into(), holder.clone())));
    }
    holder
}

#[test]
fn lease_contention_takeover_and_release() {
    for sh in shells() {
        let tmp = TempDir::new("lease");
        let p = site(&tmp);
        let holder = exactly_one_contender_wins(&sh, &p);
        // same holder refresh keeps the generation
        let f = lease(&sh, &p, &holder);
        assert_eq!(f.generation, 1);
        // expired: another holder takes over with generation + 1
        let lock = format!("{p}/.convoy/lock");
        std::fs::write(&lock, format!("holder={holder} expires=5 generation=1\n")).unwrap();
        let z = Attempt::new("ctl-z");
        let g = lease_as(&sh, &p, &z);
        assert_eq!(g.generation, 2);
        assert_eq!(lock_field(&p, "attempt"), z.token);
        // the old holder is now locked out (and fenced)
        let o = sh.run(&acquire(&p, &holder, 60));
        assert_eq!(
            o.status.code(),
            Some(EXIT_LEASE_HELD),
            "{}",
            explain(&sh, &o)
        );
        // release: generation kept, then anyone acquires with generation + 1
        let out = ok(
            &sh,
            Script::for_attempt(&p, &z)
                .lease_release("ctl-z")
                .lease_release("ctl-z")
                .finish(),
        );
        assert_eq!(
            facts(&out)
                .into_iter()
                .filter(|(k, _)| k == "lease")
                .map(|(_, v)| v)
                .collect::<Vec<_>>(),
            ["released", "notheld"]
        );
        assert_eq!(lock_field(&p, "expires"), "0");
        let h = lease(&sh, &p, "ctl-a");
        assert_eq!(h.generation, 3);
    }
}

/// The lease mutex is a kernel lock: while a holder has it the next operation waits, and a
/// holder killed mid-operation (SIGKILL, or SIGPIPE once its controller went away) frees it
/// at once, however many scripts queue behind it.
#[test]
fn the_lease_mutex_ends_with_its_holder() {
    for sh in shells() {
        let tmp = TempDir::new("mutex");
        let p = site(&tmp);
        std::fs::create_dir_all(format!("{p}/.convoy")).unwrap();
        let ready = format!("{p}/.convoy/held");
        let mut holder = Command::new("sh")
            .arg("-c")
            .arg(r#"exec 8>>"$1/.convoy/mutex"; flock 8; : >"$2"; exec sleep 30"#)
            .args(["holder", &p, &ready])
            .spawn()
            .unwrap();
        while !Path::new(&ready).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut waiter = sh
            .command(&acquire(&p, "ctl-a", 60))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "[{}] the lease was taken while another held the mutex",
            sh.name
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        let out = waiter.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", explain(&sh, &out));
        assert_eq!(fact(&stdout(&out), "lease").as_deref(), Some("acquired"));
    }
}

/// Without flock (a busybox-only host) the mutex is a directory: one left by a holder
/// killed mid-operation is broken once it is 5 s old.
#[test]
fn without_flock_a_stale_mutex_directory_is_broken() {
    let Some(sh) = busybox_only() else {
        eprintln!("busybox not installed: no host without flock to test");
        return;
    };
    let tmp = TempDir::new("mutex-dir");
    let p = site(&tmp);
    lease(&sh, &p, "ctl-a");
    std::fs::create_dir_all(format!("{p}/.convoy/lock.d")).unwrap();
    let o = Command::new("touch")
        .args(["-d", "@1000"])
        .arg(format!("{p}/.convoy/lock.d"))
        .status()
        .unwrap();
    assert!(o.success());
    let h = lease(&sh, &p, "ctl-a");
    assert_eq!(h.generation, 1);
    assert!(!Path::new(&format!("{p}/.convoy/lock.d")).exists());
    assert!(!Path::new(&format!("{p}/.convoy/mutex")).exists());
}

/// A script still queued for the mutex when its controller went away (the watchdog left
/// `gone.<attempt>`) takes no lease for nobody; giving a lease back still works.
#[test]
fn a_script_whose_controller_is_gone_takes_no_lease_but_gives_one_back() {
    for sh in shells() {
        let tmp = TempDir::new("gone");
        let p = site(&tmp);
        let attempt = Attempt::new("ctl-a");
        lease_as(&sh, &p, &attempt);
        std::fs::write(format!("{p}/.convoy/gone.{}", attempt.token), "").unwrap();
        let o = fails(
            &sh,
            Script::for_attempt(&p, &attempt)
                .lease_acquire("ctl-a", 60)
                .finish(),
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("the controller of this attempt is gone"),
            "{}",
            explain(&sh, &o)
        );
        let out = ok(
            &sh,
            Script::for_attempt(&p, &attempt)
                .lease_release("ctl-a")
                .finish(),
        );
        assert_eq!(fact(&out, "lease").as_deref(), Some("released"));
    }
}

#[test]
fn held_lease_is_refused_until_expiry() {
    for sh in shells() {
        let tmp = TempDir::new("held");
        let p = site(&tmp);
        lease(&sh, &p, "ctl-a");
        let o = sh.run(&acquire(&p, "ctl-b", 60));
        assert_eq!(
            o.status.code(),
            Some(EXIT_LEASE_HELD),
            "{}",
            explain(&sh, &o)
        );
        assert_eq!(
            steps(&stdout(&o)),
            vec![("lease_acquire".to_string(), EXIT_LEASE_HELD)]
        );
        // a script without an attempt cannot take a lease at all
        let before = std::fs::read_to_string(format!("{p}/.convoy/lock")).unwrap();
        let o = fails(&sh, Script::new(&p).lease_acquire("ctl-a", 60).finish());
        assert_eq!(steps(&stdout(&o)), vec![("lease_acquire".to_string(), 1)]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid attempt"),
            "{}",
            explain(&sh, &o)
        );
        assert_eq!(
            std::fs::read_to_string(format!("{p}/.convoy/lock")).unwrap(),
            before
        );
    }
}

#[test]
fn lease_renew_extends_only_the_same_attempt() {
    for sh in shells() {
        let tmp = TempDir::new("renew");
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        let f = lease_as(&sh, &p, &a);
        let lock = format!("{p}/.convoy/lock");
        let before = std::fs::read_to_string(&lock).unwrap();
        let exp0: u64 = lock_field(&p, "expires").parse().unwrap();
        for other in [
            Attempt::new("ctl-a"),
            Attempt {
                holder: "ctl-b".into(),
                token: a.token.clone(),
            },
        ] {
            let o = sh.run(
                &Script::for_attempt(&p, &other)
                    .lease_renew(&other.holder, 1000)
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
            let line = fact_line(&stdout(&o), "lease").unwrap();
            assert!(line.contains(&("lease".into(), "lost".into())));
            assert!(line.contains(&("holder".into(), "ctl-a".into())));
            assert_eq!(std::fs::read_to_string(&lock).unwrap(), before);
        }
        let t0 = now_secs();
        let out = ok(
            &sh,
            Script::for_attempt(&p, &a)
                .lease_renew("ctl-a", 1000)
                .finish(),
        );
        assert_eq!(fact(&out, "lease").as_deref(), Some("renewed"));
        let exp1: u64 = lock_field(&p, "expires").parse().unwrap();
        assert!(exp1 > exp0 && exp1 >= t0 + 1000, "{exp0} {exp1}");
        assert_eq!(lock_field(&p, "generation"), f.generation.to_string());
        assert_eq!(lock_field(&p, "attempt"), a.token);
        assert_eq!(lock_field(&p, "holder"), "ctl-a");
        let renewed: u64 = lock_field(&p, "renewed").parse().unwrap();
        assert!(renewed >= t0 && renewed <= now_secs());
        // the fence still holds after a renewal
        make_release_for(&sh, &p, &a, "r1");
        ok(&sh, Script::new(&p).switch("r1", &f).finish());
        // an expired lease is lost, not renewed
        let expired = format!(
            "holder=ctl-a expires=1 generation={} attempt={} renewed=1\n",
            f.generation, a.token
        );
        std::fs::write(&lock, &expired).unwrap();
        let o = sh.run(
            &Script::for_attempt(&p, &a)
                .lease_renew("ctl-a", 1000)
                .finish(),
        );
        assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), expired);
    }
}

#[test]
fn lease_break_spares_a_renewing_holder_unless_forced() {
    for sh in shells() {
        let tmp = TempDir::new("break");
        let p = site(&tmp);
        // no site at all: free, and nothing is created
        let out = ok(&sh, Script::new(&p).lease_break(60, false).finish());
        assert_eq!(fact(&out, "lease").as_deref(), Some("free"));
        assert!(!Path::new(&p).exists());
        let a = Attempt::new("ctl-a");
        let f = lease_as(&sh, &p, &a);
        make_release_for(&sh, &p, &a, "r1");
        ok(&sh, Script::new(&p).switch("r1", &f).finish());
        // recently renewed: refused without force
        let lock = format!("{p}/.convoy/lock");
        let before = std::fs::read_to_string(&lock).unwrap();
        let o = sh.run(&Script::new(&p).lease_break(60, false).finish());
        assert_eq!(
            o.status.code(),
            Some(EXIT_LEASE_HELD),
            "{}",
            explain(&sh, &o)
        );
        let line = fact_line(&stdout(&o), "lease").unwrap();
        assert!(line.contains(&("lease".into(), "renewing".into())));
        assert!(line.contains(&("holder".into(), "ctl-a".into())));
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), before);
        forced_break_ends_the_running_build(&sh, &tmp, &p, &a, &f);
        // the old fence no longer switches
        let o = sh.run(&Script::new(&p).switch("r1", &f).finish());
        assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        // nothing left to break
        let out = ok(&sh, Script::new(&p).lease_break(60, false).finish());
        assert_eq!(fact(&out, "lease").as_deref(), Some("free"));
        assert_eq!(lock_field(&p, "generation"), (f.generation + 1).to_string());
        // a lease nobody renewed lately (its holder is gone) breaks without force
        let b = Attempt::new("ctl-b");
        let g = lease_as(&sh, &p, &b);
        assert_eq!(g.generation, f.generation + 2);
        let stale = format!(
            "holder=ctl-b expires={} generation={} attempt={} renewed={}\n",
            now_secs() + 600,
            g.generation,
            b.token,
            now_secs() - 120
        );
        std::fs::write(&lock, stale).unwrap();
        let out = ok(&sh, Script::new(&p).lease_break(60, false).finish());
        assert_broken(&out, "ctl-b");
        assert_eq!(lock_field(&p, "generation"), (g.generation + 1).to_string());
        let o = sh.run(&Script::new(&p).switch("r1", &g).finish());
        assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
        assert_eq!(read_link(&p), "releases/r1");
    }
}

/// `out` says the lease of `holder` was broken.
#[track_caller]
fn assert_broken(out: &str, holder: &str) {
    let line = fact_line(out, "lease").unwrap();
    assert!(line.contains(&("lease".into(), "broken".into())), "{out}");
    assert!(line.contains(&("holder".into(), holder.into())), "{out}");
}

/// While `a` (holding the lease with fence `f`) builds `r2`, a forced break frees the lease,
/// bumps the generation and ends the build's process group.
fn forced_break_ends_the_running_build(sh: &Shell, tmp: &TempDir, p: &str, a: &Attempt, f: &Fence) {
    ok(sh, Script::for_attempt(p, a).prepare("r2").finish());
    std::fs::create_dir_all(attempt_dir(p, "r2", a)).unwrap();
    let pidf = tmp.path().join("pid");
    let out_file = tmp.path().join("out");
    let mut child = spawn_build(sh, p, a, "r2", &sleeper(&pidf, 30, "true"), &out_file);
    let pid = read_pid(&pidf);
    assert!(wait_for(Duration::from_secs(5), || !run_records(p).is_empty()));
    let out = ok(sh, Script::new(p).lease_break(60, true).finish());
    assert_broken(&out, "ctl-a");
    assert!(
        out.contains(&format!("@@convoy stopped={pid} attempt={}\n", a.token)),
        "[{}] {out}",
        sh.name
    );
    assert!(!group_alive(pid));
    assert_ne!(wait_child(&mut child, Duration::from_secs(10)), Some(0));
    assert!(!Path::new(&format!("{p}/releases/r2")).exists());
    assert_eq!(lock_field(p, "holder"), "");
    assert_eq!(lock_field(p, "generation"), (f.generation + 1).to_string());
}

#[test]
fn lease_release_needs_the_same_attempt() {
    for sh in shells() {
        let tmp = TempDir::new("release");
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        let f = lease_as(&sh, &p, &a);
        let lock = format!("{p}/.convoy/lock");
        let before = std::fs::read_to_string(&lock).unwrap();
        for other in [
            Script::for_attempt(&p, &Attempt::new("ctl-a")),
            Script::new(&p),
        ] {
            let out = ok(&sh, other.lease_release("ctl-a").finish());
            assert_eq!(fact(&out, "lease").as_deref(), Some("notheld"), "{out}");
            assert_eq!(std::fs::read_to_string(&lock).unwrap(), before);
        }
        let o = sh.run(&acquire(&p, "ctl-b", 60));
        assert_eq!(
            o.status.code(),
            Some(EXIT_LEASE_HELD),
            "{}",
            explain(&sh, &o)
        );
        let out = ok(
            &sh,
            Script::for_attempt(&p, &a).lease_release("ctl-a").finish(),
        );
        assert_eq!(fact(&out, "lease").as_deref(), Some("released"));
        assert_eq!(lock_field(&p, "expires"), "0");
        assert_eq!(lock_field(&p, "generation"), f.generation.to_string());
    }
}
