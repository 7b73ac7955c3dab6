//! Tests of getting a release's files: git through the mirror, an archive on stdin, and
//! shared entries linked into the release.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::*;
use super::support::*;
use crate::host::observe::{fact, steps};

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A git repository in `tmp` (its path has a space) whose one commit, tagged `v1` on
/// branch `main`, holds `app.txt` = `v1`. Returns its path and that commit.
fn repo_at_v1(tmp: &TempDir) -> (PathBuf, String) {
    let repo = tmp.path().join("repo with space");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("app.txt"), "v1").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    git(&repo, &["tag", "v1"]);
    let c1 = git(&repo, &["rev-parse", "HEAD"]);
    (repo, c1)
}

#[test]
fn fetch_git_exports_a_revision_through_the_mirror() {
    for sh in shells() {
        let tmp = TempDir::new("git");
        let (repo, c1) = repo_at_v1(&tmp);
        let p = site(&tmp);
        let url = repo.to_string_lossy().into_owned();
        let a = Attempt::new("ctl-a");
        let fetch = |id: &str, rev: &str| {
            Script::for_attempt(&p, &a)
                .prepare(id)
                .fetch_git(id, &url, rev)
                .finish()
        };
        lease_as(&sh, &p, &a);
        let out = ok(&sh, fetch("r1", "v1"));
        assert_eq!(fact(&out, "revision"), Some(c1.clone()));
        let d1 = attempt_dir(&p, "r1", &a);
        assert_eq!(
            std::fs::read_to_string(format!("{d1}/app.txt")).unwrap(),
            "v1"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d1}/.convoy-revision")).unwrap(),
            format!("{c1}\n")
        );
        assert!(!Path::new(&format!("{p}/releases/r1")).exists());
        // twice = same state
        let before = snapshot(tmp.path());
        ok(&sh, fetch("r1", "v1"));
        assert_eq!(snapshot(tmp.path()), before);
        // a new commit on the branch: fetched by name; an old sha is used from the mirror
        std::fs::write(repo.join("app.txt"), "v2").unwrap();
        git(&repo, &["commit", "-qam", "two"]);
        let c2 = git(&repo, &["rev-parse", "HEAD"]);
        let out = ok(&sh, fetch("r2", "main"));
        assert_eq!(fact(&out, "revision"), Some(c2.clone()));
        assert_eq!(
            std::fs::read_to_string(format!("{}/app.txt", attempt_dir(&p, "r2", &a))).unwrap(),
            "v2"
        );
        // build on top marks it complete with the revision; a later fetch leaves it alone
        ok(
            &sh,
            Script::for_attempt(&p, &a)
                .build("r2", &s(&["true"]), &Env::default())
                .finish(),
        );
        let m = std::fs::read_to_string(format!("{p}/releases/r2/.convoy-complete")).unwrap();
        assert!(m.contains(&format!("revision={c2}")), "{m}");
        assert_eq!(
            std::fs::read_to_string(format!("{p}/releases/r2/app.txt")).unwrap(),
            "v2"
        );
        let out = ok(&sh, fetch("r3", &c1[..12]));
        assert_eq!(fact(&out, "revision"), Some(c1.clone()));
        assert_eq!(
            std::fs::read_to_string(format!("{}/app.txt", attempt_dir(&p, "r3", &a))).unwrap(),
            "v1"
        );
        let before = snapshot(format!("{p}/releases/r2").as_ref());
        let out = ok(&sh, fetch("r2", "main"));
        assert_eq!(fact(&out, "revision"), Some(c2.clone()));
        assert_eq!(fact(&out, "fetch").as_deref(), Some("skipped"));
        assert_eq!(snapshot(format!("{p}/releases/r2").as_ref()), before);
        // unknown revision fails the fetch step
        let o = fails(&sh, fetch("r4", "nope"));
        assert_eq!(steps(&stdout(&o)).last().unwrap().0, "fetch");
        assert!(
            !snapshot(tmp.path())
                .iter()
                .any(|(k, _)| k.contains(".tmp."))
        );
    }
}

#[test]
fn unpack_archive_from_stdin() {
    for sh in shells() {
        let tmp = TempDir::new("unpack");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f.txt"), "hello").unwrap();
        let o = Command::new("tar")
            .args(["-czf", "-", "-C"])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        assert!(o.status.success());
        let tgz = o.stdout;
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        let unpack = |bytes: &[u8]| {
            Script::for_attempt(&p, &a)
                .prepare("r1")
                .unpack_archive("r1", bytes.len() as u64)
                .finish()
        };
        let script = unpack(&tgz);
        let o = sh.run_with_stdin(&script, &tgz);
        assert!(o.status.success(), "{}", explain(&sh, &o));
        let d = attempt_dir(&p, "r1", &a);
        assert_eq!(
            std::fs::read_to_string(format!("{d}/sub/f.txt")).unwrap(),
            "hello"
        );
        let o = sh.run_with_stdin(&unpack(b"not a tarball"), b"not a tarball");
        assert!(!o.status.success());
        assert_eq!(
            steps(&stdout(&o)).last().unwrap(),
            &("unpack".to_string(), 1)
        );
        // unpacked again, then built and published under the lease
        let o = sh.run_with_stdin(&script, &tgz);
        assert!(o.status.success(), "{}", explain(&sh, &o));
        lease_as(&sh, &p, &a);
        ok(
            &sh,
            Script::for_attempt(&p, &a)
                .build("r1", &s(&["test -f sub/f.txt"]), &Env::default())
                .finish(),
        );
        assert_eq!(
            std::fs::read_to_string(format!("{p}/releases/r1/sub/f.txt")).unwrap(),
            "hello"
        );
        assert!(!Path::new(&d).exists());
        assert!(
            !snapshot(tmp.path())
                .iter()
                .any(|(k, _)| k.contains(".tmp.")),
            "[{}] temp files left",
            sh.name
        );
    }
}

#[test]
fn link_shared_moves_creates_and_links() {
    for sh in shells() {
        let tmp = TempDir::new("shared");
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        let d = attempt_dir(&p, "r1", &a);
        std::fs::create_dir_all(format!("{d}/media/img")).unwrap();
        std::fs::write(format!("{d}/media/img/a.png"), "png").unwrap();
        std::fs::write(format!("{d}/.env"), "FROM_RELEASE=1").unwrap();
        let entries = s(&[".env", "media/", "var/log/", "conf/app.ini"]);
        let script = Script::for_attempt(&p, &a)
            .prepare("r1")
            .link_shared("r1", &entries)
            .finish();
        ok(&sh, script.clone());
        let sh_dir = format!("{p}/shared");
        assert_eq!(
            std::fs::read_to_string(format!("{sh_dir}/.env")).unwrap(),
            "FROM_RELEASE=1"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d}/.env")).unwrap(),
            "FROM_RELEASE=1"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d}/media/img/a.png")).unwrap(),
            "png"
        );
        assert!(Path::new(&format!("{sh_dir}/var/log")).is_dir());
        assert_eq!(
            std::fs::read_to_string(format!("{sh_dir}/conf/app.ini")).unwrap(),
            ""
        );
        for e in [".env", "media", "var/log", "conf/app.ini"] {
            let t = std::fs::read_link(format!("{d}/{e}")).unwrap();
            assert_eq!(t, PathBuf::from(format!("{sh_dir}/{e}")));
        }
        let before = snapshot(tmp.path());
        ok(&sh, script);
        assert_eq!(snapshot(tmp.path()), before);
        // a second release (a later attempt): its own copy is replaced by the link,
        // shared content kept
        let b = Attempt::new("ctl-a");
        let d2 = attempt_dir(&p, "r2", &b);
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::write(format!("{d2}/.env"), "FROM_R2").unwrap();
        ok(
            &sh,
            Script::for_attempt(&p, &b)
                .link_shared("r2", &entries)
                .finish(),
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d2}/.env")).unwrap(),
            "FROM_RELEASE=1"
        );
        // escaping the site is refused
        let o = fails(
            &sh,
            Script::for_attempt(&p, &b)
                .link_shared("r2", &s(&["../x"]))
                .finish(),
        );
        assert_eq!(steps(&stdout(&o)), vec![("link_shared".to_string(), 1)]);
        fails(
            &sh,
            Script::for_attempt(&p, &b)
                .link_shared("r2", &s(&["/etc/passwd"]))
                .finish(),
        );
        // another attempt's dir is not this attempt's to change
        let o = fails(
            &sh,
            Script::for_attempt(&p, &Attempt::new("ctl-a"))
                .link_shared("r2", &entries)
                .finish(),
        );
        assert_eq!(steps(&stdout(&o)), vec![("link_shared".to_string(), 1)]);
    }
}

#[test]
fn link_shared_refuses_symlinked_parents() {
    for sh in shells() {
        let tmp = TempDir::new("sharedlink");
        let p = site(&tmp);
        let a = Attempt::new("ctl-a");
        ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
        let d = attempt_dir(&p, "r1", &a);
        std::fs::create_dir_all(&d).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("secret.txt"), "s3cret").unwrap();
        std::fs::write(outside.join("sub/more.txt"), "more").unwrap();
        // release side: `config -> <outside>` (like `config -> /etc`), and deeper
        std::os::unix::fs::symlink(&outside, format!("{d}/config")).unwrap();
        std::fs::create_dir_all(format!("{d}/app")).unwrap();
        std::os::unix::fs::symlink(&outside, format!("{d}/app/etc")).unwrap();
        let before = snapshot(tmp.path());
        for entry in [
            "config/secret.txt",
            "config/sub/",
            "config/sub/more.txt",
            "app/etc/secret.txt",
        ] {
            let o = fails(
                &sh,
                Script::for_attempt(&p, &a)
                    .link_shared("r1", &s(&[entry]))
                    .finish(),
            );
            assert_eq!(steps(&stdout(&o)), vec![("link_shared".to_string(), 1)]);
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("symlink"),
                "{}",
                explain(&sh, &o)
            );
            assert_eq!(snapshot(tmp.path()), before, "[{}] {entry}", sh.name);
        }
        // shared side: `shared/config -> <outside2>`, the release's own file stays put
        std::fs::remove_file(format!("{d}/config")).unwrap();
        std::fs::create_dir_all(format!("{d}/config")).unwrap();
        std::fs::write(format!("{d}/config/secret.txt"), "mine").unwrap();
        let outside2 = tmp.path().join("outside2");
        std::fs::create_dir_all(&outside2).unwrap();
        std::os::unix::fs::symlink(&outside2, format!("{p}/shared/config")).unwrap();
        std::fs::create_dir_all(format!("{p}/shared/deep")).unwrap();
        std::os::unix::fs::symlink(&outside2, format!("{p}/shared/deep/er")).unwrap();
        std::fs::create_dir_all(format!("{d}/deep/er")).unwrap();
        let before = snapshot(tmp.path());
        for entry in ["config/secret.txt", "config/new/", "deep/er/x.txt"] {
            let o = fails(
                &sh,
                Script::for_attempt(&p, &a)
                    .link_shared("r1", &s(&[entry]))
                    .finish(),
            );
            assert_eq!(steps(&stdout(&o)), vec![("link_shared".to_string(), 1)]);
            assert_eq!(snapshot(tmp.path()), before, "[{}] {entry}", sh.name);
        }
        assert_eq!(std::fs::read_dir(&outside2).unwrap().count(), 0);
        // a plain entry next to them still works
        ok(
            &sh,
            Script::for_attempt(&p, &a)
                .link_shared("r1", &s(&["logs/"]))
                .finish(),
        );
        assert!(Path::new(&format!("{p}/shared/logs")).is_dir());
    }
}
