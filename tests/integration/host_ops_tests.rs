//! Every remote operation of `host::script` run against REAL lab hosts over SSH (one
//! multiplexed master per host, as in production): observe, prepare, unpack, fetch_git,
//! link_shared, build, switch, rollback, activate, health, once, cleanup and the lease.
//! The host's files are checked from the test side through `Lab::host_dir`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use convoy::host::observe::{self, OnceRecord, OnceState, Snapshot};
use convoy::host::script::{self, Attempt, Env, Fence, Script};
use convoy::host::ssh::{SshHost, SshPool};
use convoy::host::{CommandOutput, Host, RemoteCommand};
use convoy::manifest::types::HostKeyChecking;

use crate::lab::{LAB_MOUNT, Lab};

/// Bound of one operation's round trip (every test is bounded by these).
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// The site path on every host.
fn site() -> String {
    format!("{LAB_MOUNT}/sites/app")
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A lab plus one SSH pool over it.
struct Rig {
    lab: Lab,
    pool: Arc<SshPool>,
}

impl Rig {
    fn start(n: usize) -> Rig {
        let lab = Lab::start(n);
        let pool = Arc::new(SshPool::new(
            lab.dir().join("ctl"),
            Some(lab.known_hosts().to_path_buf()),
            8,
            Duration::from_secs(30),
        ));
        Rig { lab, pool }
    }

    fn host(&self, i: usize) -> Host {
        Host::Ssh(SshHost {
            name: self.lab.hosts()[i].name.clone(),
            address: "127.0.0.1".into(),
            port: Some(self.lab.hosts()[i].port),
            user: Some(self.lab.user().to_string()),
            identity_file: Some(self.lab.identity_file().to_path_buf()),
            config_file: None,
            connect_timeout: Duration::from_secs(2),
            host_key_checking: HostKeyChecking::Strict,
        })
    }

    /// Host `i`'s site directory, seen from the test process.
    fn site_dir(&self, i: usize) -> PathBuf {
        self.lab.host_dir(i).join("sites/app")
    }

    async fn run_cmd(&self, i: usize, cmd: &RemoteCommand) -> CommandOutput {
        self.host(i)
            .run(&self.pool, cmd)
            .await
            .unwrap_or_else(|e| panic!("transport error on h{i}: {e}\n--- script\n{}", cmd.script))
    }

    /// Runs `script` (fed `stdin`), returns its planned steps and the output. Sent as the
    /// controller sends it: a private script (one with user environment) travels on stdin
    /// through the bootstrap, ahead of `stdin`, and stdin stays open until it ends.
    async fn exec(
        &self,
        i: usize,
        script: Script,
        stdin: Option<Vec<u8>>,
    ) -> (Vec<String>, CommandOutput) {
        let planned = script
            .planned_steps()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut cmd = RemoteCommand::of(script, OP_TIMEOUT);
        if let Some(data) = stdin {
            cmd = cmd.with_stdin(data);
        }
        (planned, self.run_cmd(i, &cmd).await)
    }

    /// Runs `script`; every planned step must report status 0. Returns stdout.
    async fn ok_with(&self, i: usize, script: Script, stdin: Option<Vec<u8>>) -> String {
        let (planned, out) = self.exec(i, script, stdin).await;
        let stdout = out.stdout_text();
        let want: Vec<(String, i32)> = planned.into_iter().map(|s| (s, 0)).collect();
        assert!(
            out.success() && observe::steps(&stdout) == want,
            "expected steps {want:?}\n{}",
            explain(&out)
        );
        stdout
    }

    async fn ok(&self, i: usize, script: Script) -> String {
        self.ok_with(i, script, None).await
    }

    /// Runs `script`, which must fail: returns the output.
    async fn fails(&self, i: usize, script: Script) -> CommandOutput {
        let (_, out) = self.exec(i, script, None).await;
        assert!(!out.success(), "expected a failure\n{}", explain(&out));
        out
    }

    async fn observe(&self, i: usize) -> Snapshot {
        let out = self.ok(i, Script::new(&site()).observe()).await;
        observe::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Takes (or refreshes) the lease as `attempt`.
    async fn lease(&self, i: usize, attempt: &Attempt, ttl: u64) -> Fence {
        let out = self
            .ok(
                i,
                Script::for_attempt(&site(), attempt).lease_acquire(&attempt.holder, ttl),
            )
            .await;
        fence_of(&out, &attempt.holder)
    }

    /// As `attempt`: lease (taken or refreshed) + prepare + unpack (a tarball with
    /// `id.txt`) + link_shared + build, which publishes `releases/<id>`.
    async fn make_release(
        &self,
        i: usize,
        attempt: &Attempt,
        id: &str,
        shared: &[String],
        build: &[String],
        env: &Env,
    ) -> String {
        let tgz = tarball(&[("id.txt", &format!("{id}\n"))]);
        let script = Script::for_attempt(&site(), attempt)
            .lease_acquire(&attempt.holder, 600)
            .prepare(id)
            .unpack_archive(id, tgz.len() as u64)
            .link_shared(id, shared)
            .build(id, build, env);
        let out = self.ok_with(i, script, Some(tgz)).await;
        assert_eq!(
            observe::fact(&out, "build").as_deref(),
            Some("done"),
            "{out}"
        );
        assert!(
            !attempt_dir(&self.site_dir(i), id, attempt).exists(),
            "the attempt's build dir was not published"
        );
        out
    }

    /// A complete release built by a fresh attempt of `builder`, which then lets the lease go.
    async fn simple_release(&self, i: usize, id: &str) {
        let a = Attempt::new("builder");
        self.make_release(i, &a, id, &[], &s(&["true"]), &Env::default())
            .await;
        let out = self
            .ok(i, Script::for_attempt(&site(), &a).lease_release("builder"))
            .await;
        assert_eq!(observe::fact(&out, "lease").as_deref(), Some("released"));
    }
}

/// The build dir of `attempt` for release `id` (`releases/.<id>.<token>`) under site dir `d`.
fn attempt_dir(d: &Path, id: &str, attempt: &Attempt) -> PathBuf {
    d.join(format!("releases/.{id}.{}", attempt.token))
}

/// Whether `pid` runs (a zombie is dead: PID 1 here does not reap orphans).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    !(state.is_empty() || state.starts_with('Z') || state.starts_with('X'))
}

/// Whether process group `pgid` has a live (not zombie) member.
fn group_alive(pgid: u32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.filter_map(Result::ok).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X"
    })
}

/// Live processes started as user commands of `attempt` (`CONVOY_ATTEMPT=<token>` in their
/// environment): the lab hosts share this machine's process table (host-side evidence).
fn attempt_processes(attempt: &Attempt) -> Vec<(u32, String)> {
    let want = format!("CONVOY_ATTEMPT={}", attempt.token);
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) && pid_alive(pid) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push((pid, cmd));
        }
    }
    found
}

/// Waits up to `bound` for `cond`; whether it became true.
async fn wait_until(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// The pid a command wrote into `file` (waits up to 10 s for it).
async fn read_pid(file: &Path) -> u32 {
    let mut pid = None;
    let found = wait_until(Duration::from_secs(10), || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    assert!(found, "no pid in {}", file.display());
    pid.unwrap()
}

fn explain(out: &CommandOutput) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    )
}

fn fence_of(stdout: &str, holder: &str) -> Fence {
    let line = observe::fact_line(stdout, "lease").unwrap_or_else(|| panic!("no lease: {stdout}"));
    let get = |k: &str| {
        line.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    assert_eq!(get("lease"), "acquired", "{stdout}");
    assert_eq!(get("holder"), holder, "{stdout}");
    Fence {
        holder: holder.to_string(),
        generation: get("generation").parse().unwrap(),
    }
}

/// A real `.tar.gz` made with `tar -czf` in a temp dir.
fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
    tarball_with_links(files, &[])
}

/// [`tarball`] with symlinks `(name, target)` in it as well.
fn tarball_with_links(files: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, content) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    for (name, target) in links {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }
    let archive = tmp.path().join("app.tar.gz");
    let o = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(archive).unwrap()
}

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

/// Snapshot state without what changes by itself (the clock, the lease's expiry).
fn norm(mut o: Snapshot) -> Snapshot {
    o.now = 0;
    if let Some(l) = o.lease.as_mut() {
        l.expires = 0;
    }
    o
}

/// Every entry under `dir` (except the lease file `.convoy/lock`): kind, content or link
/// target, and with `times` the mtime (and inode of symlinks) of files and links.
fn snapshot(dir: &Path, times: bool) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, times: bool, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".convoy/lock" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let stamp = if times {
                format!(
                    " mtime={}.{:09} ino={}",
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ino()
                )
            } else {
                String::new()
            };
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link {}{stamp}", t.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &path, times, out);
            } else {
                let c = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    format!("file {:?}{stamp}", String::from_utf8_lossy(&c)),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, times, &mut out);
    out
}

fn assert_same(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push_str(&format!("- {k}: {v}\n")),
            Some(w) if w != v => diff.push_str(&format!("~ {k}: {v}\n      => {w}\n")),
            _ => {}
        }
    }
    for (k, w) in after {
        if !before.contains_key(k) {
            diff.push_str(&format!("+ {k}: {w}\n"));
        }
    }
    panic!("{what}: a second run changed the host's state:\n{diff}");
}

fn read_link(p: &Path) -> String {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Sets a flag on drop, so a reader thread stops even when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------

/// 1. observe on an empty host; prepare + unpack + link_shared + build; switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_unpack_build_then_switch() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let obs = rig.observe(0).await;
    assert!(obs.now > 1_600_000_000, "{obs:?}");
    assert_eq!(
        obs,
        Snapshot {
            now: obs.now,
            ..Snapshot::default()
        }
    );

    let rev = "0123456789abcdef0123456789abcdef01234567";
    let env = Env(vec![
        ("CONVOY_REVISION".into(), rev.into()),
        ("GREETING".into(), "hello there".into()),
    ]);
    let tgz = tarball(&[
        ("app.txt", "v1\n"),
        (".env", "FROM_ARCHIVE=1\n"),
        ("media/logo.txt", "logo"),
    ]);
    let before = obs.now;
    let a = Attempt::new("ctl-a");
    let script = Script::for_attempt(&p, &a)
        .lease_acquire("ctl-a", 600)
        .prepare("r1")
        .unpack_archive("r1", tgz.len() as u64)
        .link_shared("r1", &s(&[".env", "media/"]))
        .build(
            "r1",
            &s(&[
                "printf '%s' \"$GREETING\" > built.txt",
                "test -L .env",
                "pwd > built_in",
            ]),
            &env,
        );
    let out = rig.ok_with(0, script, Some(tgz)).await;
    assert_eq!(observe::fact(&out, "build").as_deref(), Some("done"));
    let f = fence_of(&out, "ctl-a");

    let obs = rig.observe(0).await;
    assert_eq!(obs.current, None, "current must not exist before a switch");
    assert_eq!(obs.previous, None);
    // the build needed the lease: held by the attempt that built
    let lease = obs.lease.clone().expect("lease observed");
    assert_eq!(
        (lease.holder.as_str(), lease.generation),
        ("ctl-a", f.generation)
    );
    let r1 = obs.release("r1").unwrap_or_else(|| panic!("{obs:?}"));
    assert!(r1.complete, "{obs:?}");
    let built = r1.built_at.expect("built_at");
    assert!(built >= before && built <= obs.now, "{obs:?}");
    assert_eq!(r1.revision.as_deref(), Some(rev));
    assert_eq!(obs.releases.len(), 1);
    assert!(std::fs::symlink_metadata(d.join("current")).is_err());
    // built in the attempt's own dir, then renamed into place: nothing else in releases/
    let entries: Vec<String> = std::fs::read_dir(d.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["r1"]);

    let r = d.join("releases/r1");
    assert_eq!(
        read(&r.join("built_in")),
        format!("{p}/releases/.r1.{}\n", a.token)
    );
    assert_eq!(read(&r.join("app.txt")), "v1\n");
    assert_eq!(read(&r.join("built.txt")), "hello there");
    assert_eq!(read(&d.join("shared/.env")), "FROM_ARCHIVE=1\n");
    assert_eq!(read(&d.join("shared/media/logo.txt")), "logo");
    assert_eq!(read_link(&r.join(".env")), format!("{p}/shared/.env"));
    assert_eq!(read_link(&r.join("media")), format!("{p}/shared/media"));
    assert!(read(&r.join(".convoy-complete")).contains(&format!("revision={rev}\n")));

    // the same attempt refreshes its lease: same generation
    assert_eq!(rig.lease(0, &a, 600).await, f);
    let out = rig.ok(0, Script::new(&p).switch("r1", &f)).await;
    assert_eq!(observe::fact(&out, "switch").as_deref(), Some("done"));
    let obs = rig.observe(0).await;
    assert_eq!(obs.current.as_deref(), Some("r1"));
    assert_eq!(read_link(&d.join("current")), "releases/r1");
    let lease = obs.lease.expect("lease observed");
    assert_eq!(
        (lease.holder.as_str(), lease.generation),
        ("ctl-a", f.generation)
    );
    rig.pool.close_all().await;
}

/// 2. fetch_git by tag, branch and sha through one mirror that is cloned once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_git_by_tag_branch_and_sha_through_one_mirror() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo with space");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("app.txt"), "one").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    git(&repo, &["tag", "-a", "v1", "-m", "release one"]);
    git(&repo, &["checkout", "-qb", "feature"]);
    std::fs::write(repo.join("app.txt"), "two").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    git(&repo, &["checkout", "-q", "main"]);
    let c1 = git(&repo, &["rev-parse", "v1^{commit}"]);
    let c2 = git(&repo, &["rev-parse", "feature"]);
    assert_ne!(c1, c2);
    let url = repo.to_string_lossy().into_owned();
    let mirror = d.join(".convoy/mirror.git");
    let fetch_head = mirror.join("FETCH_HEAD");
    let mtime = |p: &Path| {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (m.mtime(), m.mtime_nsec())
    };
    // one attempt holding the lease fetches into its own build dirs
    let a = Attempt::new("ctl-a");
    rig.lease(0, &a, 600).await;
    let fetch = |id: &str, rev: &str| {
        Script::for_attempt(&p, &a)
            .prepare(id)
            .fetch_git(id, &url, rev)
    };
    let dir = |id: &str| attempt_dir(&d, id, &a);

    // by tag: clones the mirror
    let out = rig.ok(0, fetch("r1", "v1")).await;
    assert_eq!(observe::fact(&out, "revision"), Some(c1.clone()), "{out}");
    assert_eq!(read(&dir("r1").join("app.txt")), "one");
    assert_eq!(read(&dir("r1").join(".convoy-revision")), format!("{c1}\n"));
    let mirror_ino = std::fs::metadata(&mirror).unwrap().ino();
    let fetched = mtime(&fetch_head);

    // by branch: a name is always fetched, in the same mirror
    let out = rig.ok(0, fetch("r2", "feature")).await;
    assert_eq!(observe::fact(&out, "revision"), Some(c2.clone()), "{out}");
    assert_eq!(read(&dir("r2").join("app.txt")), "two");
    assert_eq!(read(&dir("r2").join(".convoy-revision")), format!("{c2}\n"));
    assert_eq!(
        std::fs::metadata(&mirror).unwrap().ino(),
        mirror_ino,
        "re-cloned"
    );
    assert_ne!(mtime(&fetch_head), fetched, "a branch name must be fetched");

    // by full sha already in the mirror: no fetch at all, even though origin moved on
    std::fs::write(repo.join("app.txt"), "three").unwrap();
    git(&repo, &["commit", "-qam", "three"]);
    let c3 = git(&repo, &["rev-parse", "main"]);
    let fetched = mtime(&fetch_head);
    let out = rig.ok(0, fetch("r3", &c2)).await;
    assert_eq!(observe::fact(&out, "revision"), Some(c2.clone()), "{out}");
    assert_eq!(read(&dir("r3").join("app.txt")), "two");
    assert_eq!(read(&dir("r3").join(".convoy-revision")), format!("{c2}\n"));
    assert_eq!(mtime(&fetch_head), fetched, "a known sha must not fetch");
    assert_eq!(
        git(&mirror, &["rev-parse", "refs/heads/main"]),
        c1,
        "the mirror was not updated"
    );

    // by full sha not yet in the mirror: fetched, same mirror
    let out = rig.ok(0, fetch("r4", &c3)).await;
    assert_eq!(observe::fact(&out, "revision"), Some(c3.clone()), "{out}");
    assert_eq!(read(&dir("r4").join("app.txt")), "three");
    assert_eq!(read(&dir("r4").join(".convoy-revision")), format!("{c3}\n"));
    assert_eq!(
        std::fs::metadata(&mirror).unwrap().ino(),
        mirror_ino,
        "re-cloned"
    );
    // build dirs are not releases: nothing is reported, nothing is published
    let obs = rig.observe(0).await;
    assert!(obs.releases.is_empty(), "{obs:?}");
    for id in ["r1", "r2", "r3", "r4"] {
        assert!(!d.join("releases").join(id).exists());
    }

    // fetching an incomplete release again: same state
    rig.ok(0, fetch("r1", "v1")).await;
    let snap = snapshot(&d.join("releases"), false);
    let obs = norm(rig.observe(0).await);
    rig.ok(0, fetch("r1", "v1")).await;
    assert_same(
        &snap,
        &snapshot(&d.join("releases"), false),
        "fetch of an incomplete release",
    );
    assert_eq!(norm(rig.observe(0).await), obs);
    // built: the revision lands in the marker, and a later fetch leaves it alone
    let out = rig
        .ok(
            0,
            Script::for_attempt(&p, &a).build("r1", &s(&["true"]), &Env::default()),
        )
        .await;
    assert_eq!(observe::fact(&out, "build").as_deref(), Some("done"));
    assert!(!dir("r1").exists());
    let snap = snapshot(&d.join("releases"), true);
    let out = rig.ok(0, fetch("r1", "v1")).await;
    assert_eq!(observe::fact(&out, "fetch").as_deref(), Some("skipped"));
    assert_eq!(observe::fact(&out, "revision"), Some(c1.clone()));
    assert_same(
        &snap,
        &snapshot(&d.join("releases"), true),
        "fetch of a built release",
    );
    let obs = rig.observe(0).await;
    assert!(obs.is_complete("r1"));
    assert_eq!(obs.release("r1").unwrap().revision.as_ref(), Some(&c1));

    // an unknown revision fails the fetch step and leaves no temporary files
    let o = rig.fails(0, fetch("r9", "no-such-branch")).await;
    assert_eq!(
        observe::steps(&o.stdout_text()).last().unwrap(),
        &("fetch".to_string(), 1)
    );
    assert!(
        !snapshot(&d, false).keys().any(|k| k.contains(".tmp.")),
        "{:?}",
        snapshot(&d, false).keys().collect::<Vec<_>>()
    );
    assert_eq!(std::fs::metadata(&mirror).unwrap().ino(), mirror_ino);
    rig.pool.close_all().await;
}

/// 3. Every operation run twice leaves the host as the first run did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_twice_changes_nothing() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let tgz = tarball(&[("id.txt", "r1\n"), ("conf/app.ini", "x=1\n")]);
    let shared = s(&["counter.log", "media/", "conf/app.ini"]);
    let build = s(&["echo run >> counter.log"]);
    let env = Env::default();
    let a = Attempt::new("ctl-a");
    let at = || Script::for_attempt(&p, &a);

    // Runs `script` twice; the second run must change nothing. Returns its stdout.
    async fn twice(
        rig: &Rig,
        d: &Path,
        what: &str,
        script: Script,
        stdin: Option<Vec<u8>>,
        times: bool,
    ) -> String {
        rig.ok_with(0, script.clone(), stdin.clone()).await;
        let snap = snapshot(d, times);
        let obs = norm(rig.observe(0).await);
        let out = rig.ok_with(0, script, stdin).await;
        assert_same(&snap, &snapshot(d, times), what);
        assert_eq!(norm(rig.observe(0).await), obs, "{what}: observe differs");
        out
    }

    // the lease (builds publish only under it): refreshed by its attempt, same generation
    let f = rig.lease(0, &a, 600).await;
    twice(
        &rig,
        &d,
        "lease_acquire",
        at().lease_acquire("ctl-a", 600),
        None,
        true,
    )
    .await;
    assert_eq!(rig.lease(0, &a, 600).await, f);
    let out = twice(
        &rig,
        &d,
        "lease_renew",
        at().lease_renew("ctl-a", 600),
        None,
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "lease").as_deref(), Some("renewed"));

    twice(&rig, &d, "prepare", at().prepare("r1"), None, true).await;
    assert!(!d.join("releases/r1").exists());
    twice(
        &rig,
        &d,
        "unpack",
        at().unpack_archive("r1", tgz.len() as u64),
        Some(tgz.clone()),
        false,
    )
    .await;
    assert_eq!(read(&attempt_dir(&d, "r1", &a).join("id.txt")), "r1\n");
    twice(
        &rig,
        &d,
        "link_shared",
        at().link_shared("r1", &shared),
        None,
        true,
    )
    .await;
    let out = twice(
        &rig,
        &d,
        "build",
        at().build("r1", &build, &env),
        None,
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "build").as_deref(), Some("skipped"));
    assert_eq!(read(&d.join("shared/counter.log")), "run\n", "built once");
    assert!(d.join("releases/r1/.convoy-complete").exists());
    assert!(!attempt_dir(&d, "r1", &a).exists());
    // with the release complete, prepare, unpack and link_shared leave it alone
    twice(
        &rig,
        &d,
        "prepare (complete)",
        at().prepare("r1"),
        None,
        true,
    )
    .await;
    // Bounded first (regression of a hang): for a complete release `cv_unpack` must read
    // just the archive's bytes, never up to end of file: the transports keep stdin open until
    // the command ends (the lifeline), so `cat >/dev/null` there waited for the timeout.
    let probe = RemoteCommand::of(
        at().unpack_archive("r1", tgz.len() as u64),
        Duration::from_secs(10),
    )
    .with_stdin(tgz.clone());
    match rig.host(0).run(&rig.pool, &probe).await {
        Ok(out) => assert!(out.success(), "{}", explain(&out)),
        Err(e) => panic!(
            "unpack of a complete release did not return ({e}): it waits for the end of \
             stdin, which the transport keeps open until the command ends"
        ),
    }
    let out = twice(
        &rig,
        &d,
        "unpack (complete)",
        at().unpack_archive("r1", tgz.len() as u64),
        Some(tgz.clone()),
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "unpack").as_deref(), Some("skipped"));
    twice(
        &rig,
        &d,
        "link_shared (complete)",
        at().link_shared("r1", &shared),
        None,
        true,
    )
    .await;
    assert_eq!(read(&d.join("shared/counter.log")), "run\n");

    // switch: the second one does not touch `current`
    let cur = d.join("current");
    rig.ok(0, Script::new(&p).switch("r1", &f)).await;
    let m1 = std::fs::symlink_metadata(&cur).unwrap();
    let out = twice(
        &rig,
        &d,
        "switch",
        Script::new(&p).switch("r1", &f),
        None,
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "switch").as_deref(), Some("unchanged"));
    let m2 = std::fs::symlink_metadata(&cur).unwrap();
    assert_eq!(
        (m1.ino(), m1.mtime(), m1.mtime_nsec()),
        (m2.ino(), m2.mtime(), m2.mtime_nsec()),
        "a second switch to the same release repointed `current`"
    );

    // activate and health with side-effect-free commands
    twice(
        &rig,
        &d,
        "activate+health",
        at().activate("r1", &s(&["true"]), &env)
            .health("test -f id.txt", &env, 5, 0, 0),
        None,
        true,
    )
    .await;
    // stop: nothing of this attempt runs any more
    twice(&rig, &d, "stop", at().stop(), None, true).await;

    // rollback
    rig.make_release(0, &a, "r2", &shared, &build, &env).await;
    assert_eq!(read(&d.join("shared/counter.log")), "run\nrun\n");
    rig.ok(0, Script::new(&p).switch("r2", &f)).await;
    let out = twice(
        &rig,
        &d,
        "rollback",
        Script::new(&p).rollback(&f),
        None,
        true,
    )
    .await;
    assert_eq!(
        observe::fact(&out, "rollback").as_deref(),
        Some("unchanged")
    );
    assert_eq!(read_link(&cur), "releases/r1");

    // once
    let once_env = Env(vec![("SITE_PATH".into(), p.clone())]);
    let out = twice(
        &rig,
        &d,
        "once",
        Script::new(&p).once(
            "r1",
            "web",
            &s(&["echo x >> \"$SITE_PATH/shared/once-idem.log\""]),
            &once_env,
            &f,
        ),
        None,
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "once").as_deref(), Some("done"));
    assert_eq!(read(&d.join("shared/once-idem.log")), "x\n");

    // cleanup (r3 a half build, as an interrupted cleanup leaves one, so the first run has
    // work)
    rig.ok(0, at().prepare("r3")).await;
    std::fs::create_dir_all(d.join("releases/r3")).unwrap();
    twice(
        &rig,
        &d,
        "cleanup",
        Script::new(&p).remove_releases(&s(&["r3"]), &[]),
        None,
        true,
    )
    .await;
    assert!(!d.join("releases/r3").exists());
    assert!(d.join("releases/r1").exists() && d.join("releases/r2").exists());

    // lease release: the lock file itself is unchanged by the second one
    let out = rig.ok(0, at().lease_release("ctl-a")).await;
    assert_eq!(observe::fact(&out, "lease").as_deref(), Some("released"));
    let lock = read(&d.join(".convoy/lock"));
    let out = twice(
        &rig,
        &d,
        "lease_release",
        at().lease_release("ctl-a"),
        None,
        true,
    )
    .await;
    assert_eq!(observe::fact(&out, "lease").as_deref(), Some("notheld"));
    assert_eq!(read(&d.join(".convoy/lock")), lock);

    // observe twice
    let a = norm(rig.observe(0).await);
    let b = norm(rig.observe(0).await);
    assert_eq!(a, b);
    rig.pool.close_all().await;
}

/// 4. `current` never goes missing or dangles for a reader while it is switched 100 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_is_atomic_for_a_concurrent_reader() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    rig.simple_release(0, "r1").await;
    rig.simple_release(0, "r2").await;
    let f = rig.lease(0, &Attempt::new("ctl-a"), 600).await;
    rig.ok(0, Script::new(&p).switch("r1", &f)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let current = d.join("current");
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut misses) = (0u64, 0u64);
            let mut seen = [0u64; 2];
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match std::fs::read_link(&current) {
                    Ok(t) if t == Path::new("releases/r1") => seen[0] += 1,
                    Ok(t) if t == Path::new("releases/r2") => seen[1] += 1,
                    Ok(t) => {
                        misses += 1;
                        errors.push(format!("read_link: unexpected target {}", t.display()));
                    }
                    Err(e) => {
                        misses += 1;
                        errors.push(format!("read_link: {e}"));
                    }
                }
                match std::fs::metadata(&current) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        misses += 1;
                        errors.push("metadata: not a directory".into());
                    }
                    Err(e) => {
                        misses += 1;
                        errors.push(format!("metadata: {e}"));
                    }
                }
                errors.truncate(10);
            }
            (reads, misses, seen, errors)
        })
    };
    let started = Instant::now();
    let mut each = Vec::new();
    for k in 0..100 {
        let id = if k % 2 == 0 { "r2" } else { "r1" };
        let t = Instant::now();
        let out = rig.ok(0, Script::new(&p).switch(id, &f)).await;
        each.push(t.elapsed());
        assert_eq!(
            observe::fact(&out, "switch").as_deref(),
            Some("done"),
            "{out}"
        );
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (reads, misses, seen, errors) = reader.join().unwrap();
    eprintln!(
        "switch under a reader: 100 switches in {elapsed:?} (median {:?}); {reads} reads \
         (r1 {}, r2 {}), {misses} misses",
        median(each),
        seen[0],
        seen[1]
    );
    assert_eq!(
        misses, 0,
        "the reader saw `current` missing or dangling: {errors:?}"
    );
    assert!(reads > 1000, "only {reads} reads");
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the reader saw both releases: {seen:?}"
    );
    assert_eq!(read_link(&d.join("current")), "releases/r1");
    assert!(
        !snapshot(&d, false).keys().any(|k| k.contains(".tmp.")),
        "temporary links left behind"
    );
    let obs = rig.observe(0).await;
    assert_eq!(
        (obs.current.as_deref(), obs.previous.as_deref()),
        (Some("r1"), Some("r2"))
    );
    rig.pool.close_all().await;
}

/// 5. Values with quotes, `$()`, backticks and newlines arrive as bytes, never as code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_arrive_verbatim_and_never_run() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let pwn = format!("/tmp/convoy-pwned-{}", std::process::id());
    let weird = format!(
        "sp ace  'single' \"double\" $(touch {pwn}) `touch {pwn}-bt` ${{HOME}} \\ ; | & \
         *\nsecond line\n\tlast\n"
    );
    let file_entry = format!("we ird 'q' \"d\" $(touch {pwn}-sh) `touch {pwn}-sb`\nnl.txt");
    let dir_entry = format!("di r $(touch {pwn}-dir)/");
    let env = Env(vec![
        ("WEIRD".into(), weird.clone()),
        ("ENTRY".into(), file_entry.clone()),
    ]);
    let build = s(&[
        "printf '%s' \"$WEIRD\" > out",
        "printf '%s' \"$WEIRD\" > \"$ENTRY\"",
        &format!("printf '%s' 'it'\\''s $(touch {pwn}-cmd)' > cmd_out"),
    ]);
    let tgz = tarball(&[("id.txt", "r1\n")]);
    let a = Attempt::new("ctl-a");
    let at = || Script::for_attempt(&p, &a);
    let script = at()
        .lease_acquire("ctl-a", 600)
        .prepare("r1")
        .unpack_archive("r1", tgz.len() as u64)
        .link_shared("r1", &[file_entry.clone(), dir_entry.clone()])
        .build("r1", &build, &env);
    rig.ok_with(0, script, Some(tgz.clone())).await;
    let r = d.join("releases/r1");
    assert_eq!(std::fs::read(r.join("out")).unwrap(), weird.as_bytes());
    assert_eq!(read(&r.join("cmd_out")), format!("it's $(touch {pwn}-cmd)"));
    // the shared entries: created under shared/ with their exact names, linked from the release
    assert_eq!(
        std::fs::read(d.join("shared").join(&file_entry)).unwrap(),
        weird.as_bytes()
    );
    assert_eq!(
        read_link(&r.join(&file_entry)),
        format!("{p}/shared/{file_entry}")
    );
    let dir_name = dir_entry.trim_end_matches('/');
    assert!(d.join("shared").join(dir_name).is_dir());
    assert_eq!(
        read_link(&r.join(dir_name)),
        format!("{p}/shared/{dir_name}")
    );
    // linking again changes nothing
    let snap = snapshot(&d, true);
    rig.ok(
        0,
        at().link_shared("r1", &[file_entry.clone(), dir_entry.clone()]),
    )
    .await;
    assert_same(&snap, &snapshot(&d, true), "link_shared of hostile entries");

    // activate, health and once with the same values
    let f = rig.lease(0, &a, 600).await;
    rig.ok(
        0,
        at().switch("r1", &f)
            .activate("r1", &s(&["printf '%s' \"$WEIRD\" > act_out"]), &env)
            .health("printf '%s' \"$WEIRD\" | cmp -s - act_out", &env, 5, 0, 0)
            .once(
                "r1",
                "web",
                &s(&["printf '%s' \"$WEIRD\" > once_out"]),
                &env,
                &f,
            ),
    )
    .await;
    assert_eq!(std::fs::read(r.join("act_out")).unwrap(), weird.as_bytes());
    assert_eq!(std::fs::read(r.join("once_out")).unwrap(), weird.as_bytes());

    // hostile ids, entries, revisions and repositories are refused, not run
    let bad_id = format!("$(touch {pwn}-id)");
    let o = rig.fails(0, at().prepare(&bad_id)).await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("prepare".to_string(), 1)]
    );
    let o = rig.fails(0, Script::new(&p).switch("../../x", &f)).await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("switch".to_string(), 1)]
    );
    // (checked on a release still being built: a complete one is never linked again)
    let (_, o) = rig
        .exec(
            0,
            at().prepare("r6")
                .unpack_archive("r6", tgz.len() as u64)
                .link_shared("r6", &s(&["../escape"])),
            Some(tgz.clone()),
        )
        .await;
    assert!(!o.success(), "{}", explain(&o));
    assert_eq!(
        observe::steps(&o.stdout_text()).last(),
        Some(&("link_shared".to_string(), 1)),
        "{}",
        explain(&o)
    );
    assert!(!d.join("escape").exists() && !d.join("releases/escape").exists());
    let o = rig
        .fails(
            0,
            at().fetch_git(
                "r5",
                "/nonexistent",
                &format!("--upload-pack=touch {pwn}-rev"),
            ),
        )
        .await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("fetch".to_string(), 1)]
    );
    let o = rig
        .fails(
            0,
            at().fetch_git("r5", &format!("ext::sh -c touch% {pwn}-ext"), "main"),
        )
        .await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("fetch".to_string(), 1)]
    );

    // hostile directory names in releases/ cannot break the report
    for bad in [
        "bad name",
        "evil\n@@observe current pwned",
        "x$(touch pwned)",
        "-rf",
    ] {
        std::fs::create_dir_all(d.join("releases").join(bad)).unwrap();
    }
    let obs = rig.observe(0).await;
    assert_eq!(obs.current.as_deref(), Some("r1"));
    let ids: Vec<&str> = obs.releases.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["r1"]);

    // nothing ran: no payload file anywhere
    let names: Vec<String> = [
        "", "-bt", "-sh", "-sb", "-dir", "-cmd", "-id", "-rev", "-ext",
    ]
    .iter()
    .map(|suffix| format!("{pwn}{suffix}"))
    .collect();
    for name in &names {
        assert!(
            !Path::new(name).exists(),
            "{name} was created: a value ran as code"
        );
    }
    let bare: Vec<String> = names
        .iter()
        .map(|n| n.trim_start_matches("/tmp/").to_string())
        .collect();
    for root in [rig.lab.host_dir(0), rig.lab.host_home(0)] {
        for key in snapshot(&root, false).keys() {
            let last = key.rsplit('/').next().unwrap();
            assert!(
                !bare.iter().any(|b| b == last) && last != "pwned",
                "{key} was created under {}",
                root.display()
            );
        }
    }
    rig.pool.close_all().await;
}

/// 6. The lease: one winner per round, takeover of an expired lease, fencing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_has_one_winner_and_fences_the_loser() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    rig.simple_release(0, "r1").await;
    rig.simple_release(0, "r2").await;

    let mut last: Option<(String, u64)> = None;
    let mut wins = [0u32; 2];
    for round in 0..20 {
        let (rig_ref, p_ref) = (&rig, &p);
        // every round, a fresh attempt of each holder
        let acquire = move |h: &'static str| async move {
            let attempt = Attempt::new(h);
            let (_, out) = rig_ref
                .exec(
                    0,
                    Script::for_attempt(p_ref, &attempt).lease_acquire(h, 60),
                    None,
                )
                .await;
            (h, attempt, out)
        };
        let ((ha, aa, a), (hb, ab, b)) = tokio::join!(acquire("ctl-a"), acquire("ctl-b"));
        let mut winner = None;
        for (h, attempt, out) in [(ha, &aa, &a), (hb, &ab, &b)] {
            let stdout = out.stdout_text();
            match observe::fact(&stdout, "lease").as_deref() {
                Some("acquired") => {
                    assert_eq!(out.status, 0, "{}", explain(out));
                    assert!(
                        winner.is_none(),
                        "round {round}: two winners\n{}\n{}",
                        explain(&a),
                        explain(&b)
                    );
                    winner = Some((h, attempt, fence_of(&stdout, h)));
                }
                Some("held") => {
                    assert_eq!(out.status, script::EXIT_LEASE_HELD, "{}", explain(out));
                    let line = observe::fact_line(&stdout, "lease").unwrap();
                    let other = if h == "ctl-a" { "ctl-b" } else { "ctl-a" };
                    assert!(
                        line.contains(&("holder".to_string(), other.to_string())),
                        "{line:?}"
                    );
                }
                _ => panic!("round {round}: {h}: no lease fact\n{}", explain(out)),
            }
        }
        let (h, attempt, f) = winner.unwrap_or_else(|| {
            panic!(
                "round {round}: nobody won\n{}\n{}",
                explain(&a),
                explain(&b)
            )
        });
        wins[usize::from(h == "ctl-b")] += 1;
        // the generation grows on every change of holder, never otherwise
        if let Some((prev_h, prev_g)) = &last {
            let want = if prev_h == h { *prev_g } else { prev_g + 1 };
            assert_eq!(f.generation, want, "round {round}: {h} after {prev_h}");
        }
        last = Some((h.to_string(), f.generation));
        // the loser holds nothing: it can neither renew nor release the winner's lease
        let (loser, lh) = if h == "ctl-a" {
            (&ab, "ctl-b")
        } else {
            (&aa, "ctl-a")
        };
        let lock = read(&d.join(".convoy/lock"));
        let o = rig
            .fails(0, Script::for_attempt(&p, loser).lease_renew(lh, 60))
            .await;
        assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
        assert_eq!(
            observe::fact(&o.stdout_text(), "lease").as_deref(),
            Some("lost")
        );
        let out = rig
            .ok(0, Script::for_attempt(&p, loser).lease_release(lh))
            .await;
        assert_eq!(observe::fact(&out, "lease").as_deref(), Some("notheld"));
        assert_eq!(read(&d.join(".convoy/lock")), lock);
        let out = rig
            .ok(0, Script::for_attempt(&p, attempt).lease_release(h))
            .await;
        assert_eq!(observe::fact(&out, "lease").as_deref(), Some("released"));
    }
    eprintln!("lease rounds: ctl-a won {}, ctl-b won {}", wins[0], wins[1]);

    // an expired lease is taken over by the other holder, generation + 1
    let aa = Attempt::new("ctl-a");
    let fa = rig.lease(0, &aa, 600).await;
    rig.ok(0, Script::new(&p).switch("r1", &fa)).await;
    // ctl-a starts a build of r3 under its lease...
    let tgz = tarball(&[("id.txt", "r3\n")]);
    rig.ok_with(
        0,
        Script::for_attempt(&p, &aa)
            .prepare("r3")
            .unpack_archive("r3", tgz.len() as u64),
        Some(tgz),
    )
    .await;
    let fa = rig.lease(0, &aa, 1).await; // refresh with a 1 s ttl
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cur = d.join("current");
    let before = std::fs::symlink_metadata(&cur).unwrap();
    // expired: even its own holder may no longer switch
    let o = rig.fails(0, Script::new(&p).switch("r2", &fa)).await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    let ab = Attempt::new("ctl-b");
    let fb = rig.lease(0, &ab, 600).await;
    assert_eq!(fb.generation, fa.generation + 1);
    // ...which can never be published now: its commands run, the publish is fenced and the
    // build dir removed
    let o = rig
        .fails(
            0,
            Script::for_attempt(&p, &aa).build("r3", &s(&["touch ran"]), &Env::default()),
        )
        .await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("build".to_string(), script::EXIT_FENCED)]
    );
    assert!(
        observe::facts(&o.stdout_text())
            .iter()
            .any(|(k, _)| k == "fenced"),
        "{}",
        explain(&o)
    );
    assert!(!d.join("releases/r3").exists());
    assert!(!attempt_dir(&d, "r3", &aa).exists());
    // nor can it renew the lease
    let o = rig
        .fails(0, Script::for_attempt(&p, &aa).lease_renew("ctl-a", 600))
        .await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    let o = rig.fails(0, Script::new(&p).switch("r2", &fa)).await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    let stdout = o.stdout_text();
    assert!(
        observe::facts(&stdout).iter().any(|(k, _)| k == "fenced"),
        "{stdout}"
    );
    assert_eq!(
        observe::steps(&stdout),
        vec![("switch".to_string(), script::EXIT_FENCED)]
    );
    let line = observe::fact_line(&stdout, "fenced").unwrap();
    assert!(
        line.contains(&("holder".to_string(), "ctl-b".to_string())),
        "{line:?}"
    );
    let o = rig.fails(0, Script::new(&p).rollback(&fa)).await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    let o = rig
        .fails(
            0,
            Script::new(&p).once("r1", "web", &s(&["touch ran"]), &Env::default(), &fa),
        )
        .await;
    assert_eq!(o.status, script::EXIT_FENCED, "{}", explain(&o));
    assert!(!d.join("releases/r1/ran").exists());
    // `current` untouched by the fenced holder
    let after = std::fs::symlink_metadata(&cur).unwrap();
    assert_eq!(read_link(&cur), "releases/r1");
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    // the old holder cannot take it back while it is valid; the new one switches
    for attempt in [&aa, &Attempt::new("ctl-a")] {
        let (_, o) = rig
            .exec(
                0,
                Script::for_attempt(&p, attempt).lease_acquire("ctl-a", 60),
                None,
            )
            .await;
        assert_eq!(o.status, script::EXIT_LEASE_HELD, "{}", explain(&o));
    }
    rig.ok(0, Script::new(&p).switch("r2", &fb)).await;
    assert_eq!(read_link(&cur), "releases/r2");
    let obs = rig.observe(0).await;
    let lease = obs.lease.unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.generation),
        ("ctl-b", fb.generation)
    );
    rig.pool.close_all().await;
}

/// 7. A build killed by powering the host off leaves a half-built attempt dir that the next
/// attempt's prepare removes before building again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_killed_by_power_off_is_half_built_then_rebuilt() {
    let mut rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let tgz = tarball(&[("id.txt", "r1\n")]);
    let a = Attempt::new("ctl-a");
    rig.ok_with(
        0,
        Script::for_attempt(&p, &a)
            .lease_acquire("ctl-a", 600)
            .prepare("r1")
            .unpack_archive("r1", tgz.len() as u64),
        Some(tgz.clone()),
    )
    .await;

    let host = rig.host(0);
    let pool = rig.pool.clone();
    let script = Script::for_attempt(&p, &a).build(
        "r1",
        &s(&["echo started > started", "sleep 5", "touch finished"]),
        &Env::default(),
    );
    let half = attempt_dir(&d, "r1", &a);
    let started = Instant::now();
    let task = tokio::spawn(async move {
        host.run(&pool, &RemoteCommand::of(script, OP_TIMEOUT))
            .await
    });
    let began = wait_until(Duration::from_secs(5), || half.join("started").exists()).await;
    assert!(began, "the build did not start within 5 s");
    tokio::task::block_in_place(|| rig.lab.stop_host(0));
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the build's RemoteCommand must end once its host is off")
        .unwrap();
    eprintln!(
        "killed build: the RemoteCommand ended after {:?}: {}",
        started.elapsed(),
        match &result {
            Ok(out) => format!("status {}", out.status),
            Err(e) => e.to_string(),
        }
    );
    if let Ok(out) = &result {
        assert!(
            !out.success(),
            "the build finished anyway: {}",
            explain(out)
        );
    }
    tokio::task::block_in_place(|| rig.lab.start_host(0));

    // half built: the attempt's dir, never published, never reported as a release
    let obs = rig.observe(0).await;
    assert!(obs.release("r1").is_none(), "{obs:?}");
    assert!(!d.join("releases/r1").exists());
    assert!(half.join("started").exists());
    assert!(!half.join("finished").exists());
    assert!(!half.join(".convoy-complete").exists());

    // the controller comes back as a new attempt of the same holder
    let b = Attempt::new("ctl-a");
    let out = rig
        .ok(
            0,
            Script::for_attempt(&p, &b)
                .lease_acquire("ctl-a", 600)
                .prepare("r1"),
        )
        .await;
    assert!(
        out.contains(&format!(
            "@@convoy removed=r1.{} reason=abandoned\n",
            a.token
        )),
        "{out}"
    );
    assert!(!half.exists(), "the half build was not removed");
    rig.ok_with(
        0,
        Script::for_attempt(&p, &b)
            .prepare("r1")
            .unpack_archive("r1", tgz.len() as u64)
            .build("r1", &s(&["touch finished"]), &Env::default()),
        Some(tgz),
    )
    .await;
    let obs = rig.observe(0).await;
    assert!(obs.is_complete("r1"), "{obs:?}");
    assert!(d.join("releases/r1/finished").exists());
    assert!(
        !d.join("releases/r1/started").exists(),
        "the half build was not removed"
    );
    rig.pool.close_all().await;
}

/// 8. `once` survives its SSH session being dropped: the next call waits, nothing reruns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_survives_a_dropped_session_and_never_reruns() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    rig.simple_release(0, "r1").await;
    let a = Attempt::new("ctl-a");
    let f = rig.lease(0, &a, 600).await;
    // `$P` is the script's own variable, not exported to commands: pass the path explicitly
    let env = Env(vec![("SITE_PATH".into(), p.clone())]);
    // private (it carries env): sent on stdin with the lifeline, as the controller sends it
    let once = || {
        let script = Script::for_attempt(&p, &a).once(
            "r1",
            "migrate",
            &s(&["echo x >> \"$SITE_PATH/shared/once.log\"; sleep 2"]),
            &env,
            &f,
        );
        assert!(script.is_private());
        RemoteCommand::of(script, OP_TIMEOUT)
    };
    let started = Instant::now();
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        rig.host(0).run(&rig.pool, &once()),
    )
    .await;
    assert!(dropped.is_err(), "once returned within 500 ms: {dropped:?}");

    let rec = d.join(".convoy/once/r1/migrate");
    let obs = rig.observe(0).await;
    assert_eq!(
        obs.once_record("r1", "migrate").map(|o| o.state),
        Some(OnceState::Running),
        "{obs:?}"
    );
    // the wrapper is detached: a session leader of its own
    let pid: u32 = read(&rec.join("pid")).trim().parse().unwrap();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        assert_eq!(
            rest[3],
            pid.to_string(),
            "the once wrapper is not its own session: {stat}"
        );
    }

    let out = rig.run_cmd(0, &once()).await;
    let waited = started.elapsed();
    assert_eq!(out.status, 0, "{}", explain(&out));
    let stdout = out.stdout_text();
    assert_eq!(
        observe::fact(&stdout, "once").as_deref(),
        Some("done"),
        "{stdout}"
    );
    assert_eq!(
        observe::fact_line(&stdout, "once").unwrap(),
        vec![
            ("once".to_string(), "done".to_string()),
            ("status".to_string(), "0".to_string())
        ]
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "did not wait: {waited:?}"
    );
    assert_eq!(read(&d.join("shared/once.log")), "x\n");
    assert!(read(&rec.join("done")).starts_with("status=0\n"));

    // and a third call reports the record at once
    let t = Instant::now();
    let out = rig.run_cmd(0, &once()).await;
    assert_eq!(out.status, 0, "{}", explain(&out));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(read(&d.join("shared/once.log")), "x\n");
    let obs = rig.observe(0).await;
    assert_eq!(
        obs.once,
        vec![OnceRecord {
            release: "r1".into(),
            stage: "migrate".into(),
            state: OnceState::Done { status: 0 }
        }]
    );
    rig.pool.close_all().await;
}

/// 9. cleanup keeps the newest, current, previous and protected releases; half builds go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_keeps_newest_current_previous_and_protected() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    for (i, id) in ["r1", "r2", "r3", "r4", "r5"].into_iter().enumerate() {
        rig.simple_release(0, id).await;
        // deterministic build times, r1 the oldest
        std::fs::write(
            d.join(format!("releases/{id}/.convoy-complete")),
            format!("built_at={}\nrevision=abc{i}\n", 1_700_000_000 + i),
        )
        .unwrap();
    }
    // half builds in releases/ (builds happen in attempt dirs now; an interrupted cleanup,
    // which removes the marker first, or an older convoy leaves these)
    for id in ["r6", "r7"] {
        let dir = d.join("releases").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("id.txt"), "half\n").unwrap();
    }
    let f = rig.lease(0, &Attempt::new("ctl-a"), 600).await;
    rig.ok(0, Script::new(&p).switch("r1", &f).switch("r4", &f))
        .await; // current r4, previous r1
    let protect = s(&["r2", "r7"]);
    // what the planner picks with keep 2 (r5, r4 newest): the older and the half builds
    let remove = s(&["r1", "r2", "r3", "r4", "r6", "r7"]);
    let out = rig
        .ok(0, Script::new(&p).remove_releases(&remove, &protect))
        .await;
    let mut removed: Vec<String> = observe::facts(&out)
        .into_iter()
        .filter(|(k, _)| k == "removed")
        .map(|(_, v)| v)
        .collect();
    removed.sort();
    assert_eq!(removed, vec!["r3", "r6"], "{out}");
    let obs = rig.observe(0).await;
    let ids: Vec<&str> = obs.releases.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["r1", "r2", "r4", "r5", "r7"], "{out}");
    assert_eq!(
        (obs.current.as_deref(), obs.previous.as_deref()),
        (Some("r4"), Some("r1"))
    );
    assert!(!obs.is_complete("r7"));
    let snap = snapshot(&d, true);
    // the planner again: r3 and r6 are gone
    let remove = s(&["r1", "r2", "r4", "r7"]);
    let out = rig
        .ok(0, Script::new(&p).remove_releases(&remove, &protect))
        .await;
    assert_eq!(observe::fact(&out, "removed"), None, "{out}");
    assert_same(&snap, &snapshot(&d, true), "cleanup");
    rig.pool.close_all().await;
}

/// 10. rollback returns to the previous release; activate then runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_to_previous_and_activate_runs_there() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    rig.simple_release(0, "r1").await;
    rig.simple_release(0, "r2").await;
    let a = Attempt::new("ctl-a");
    let f = rig.lease(0, &a, 600).await;
    // rollback with nothing recorded fails
    let o = rig.fails(0, Script::new(&p).rollback(&f)).await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("rollback".to_string(), 1)]
    );

    rig.ok(0, Script::new(&p).switch("r1", &f).switch("r2", &f))
        .await;
    assert_eq!(read(&d.join(".convoy/previous")), "r1\n");
    let out = rig.ok(0, Script::new(&p).rollback(&f)).await;
    assert_eq!(
        observe::fact(&out, "rollback").as_deref(),
        Some("done"),
        "{out}"
    );
    assert_eq!(read_link(&d.join("current")), "releases/r1");
    assert_eq!(read(&d.join(".convoy/previous")), "r1\n");
    let obs = rig.observe(0).await;
    assert_eq!(
        (obs.current.as_deref(), obs.previous.as_deref()),
        (Some("r1"), Some("r1"))
    );
    let env = Env(vec![("CONVOY_RELEASE".into(), "r1".into())]);
    rig.ok(
        0,
        Script::for_attempt(&p, &a).activate(
            "r1",
            &s(&["pwd -P > activated_in; printf '%s\\n' \"$CONVOY_RELEASE\" >> activated_in"]),
            &env,
        ),
    )
    .await;
    assert_eq!(
        read(&d.join("releases/r1/activated_in")),
        format!("{p}/releases/r1\nr1\n")
    );
    assert!(!d.join("releases/r2/activated_in").exists());
    // activating the release rolled away from is refused
    let o = rig
        .fails(
            0,
            Script::for_attempt(&p, &a).activate("r2", &s(&["touch x"]), &env),
        )
        .await;
    assert_eq!(
        observe::steps(&o.stdout_text()),
        vec![("activate".to_string(), 1)]
    );
    assert!(!d.join("releases/r2/x").exists());
    rig.pool.close_all().await;
}

/// Round trips with a warm master (printed; asserted only generously).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_timings() {
    let rig = Rig::start(1);
    let p = site();
    rig.simple_release(0, "r1").await;
    rig.simple_release(0, "r2").await;
    let a = Attempt::new("ctl-a");
    let f = rig.lease(0, &a, 600).await;
    rig.observe(0).await; // warm
    let mut observes = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        rig.observe(0).await;
        observes.push(t.elapsed());
    }
    let env = Env::default();
    let mut combined = Vec::new();
    for k in 0..10 {
        let id = if k % 2 == 0 { "r2" } else { "r1" };
        let t = Instant::now();
        rig.ok(
            0,
            Script::for_attempt(&p, &a)
                .switch(id, &f)
                .activate(id, &s(&["true"]), &env)
                .health("true", &env, 5, 0, 0)
                .remove_releases(&[], &[]),
        )
        .await;
        combined.push(t.elapsed());
    }
    let (o, c) = (median(observes.clone()), median(combined.clone()));
    eprintln!(
        "round trips (warm master): observe median {o:?} (min {:?}, max {:?}); \
         switch+activate+health+cleanup median {c:?} (min {:?}, max {:?})",
        observes.iter().min().unwrap(),
        observes.iter().max().unwrap(),
        combined.iter().min().unwrap(),
        combined.iter().max().unwrap(),
    );
    assert!(o < Duration::from_secs(2), "observe median {o:?}");
    assert!(c < Duration::from_secs(5), "combined median {c:?}");
    rig.pool.close_all().await;
}

/// Regression (was a bug in `Script::step` + `Env::exports`): the user's environment was
/// exported inside the operation's own subshell, BEFORE the `cv_*` function ran, so a
/// `spec.env` variable named like one of the script's own variables replaced it. `P` (the
/// site path) passes manifest validation (only `CONVOY_*` is reserved), and with it a build
/// ran in, and marked complete, the release of whatever path `P` named. Now the values
/// reach only the user's commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_named_p_does_not_redirect_build() {
    let rig = Rig::start(1);
    let p = site();
    let other = format!("{LAB_MOUNT}/sites/other");
    let tgz = tarball(&[("id.txt", "r1\n")]);
    let a = Attempt::new("ctl-a");
    for path in [&p, &other] {
        rig.ok_with(
            0,
            Script::for_attempt(path, &a)
                .lease_acquire("ctl-a", 600)
                .prepare("r1")
                .unpack_archive("r1", tgz.len() as u64),
            Some(tgz.clone()),
        )
        .await;
    }
    let there_dir = rig.lab.host_dir(0).join("sites/other");
    let there_before = snapshot(&there_dir, true);
    let env = Env(vec![("P".into(), other.clone())]);
    let out = rig
        .ok(
            0,
            Script::for_attempt(&p, &a).build("r1", &s(&["pwd -P > built_in"]), &env),
        )
        .await;
    let here = rig.site_dir(0).join("releases/r1");
    assert!(
        !there_dir.join("releases/r1").exists(),
        "the build of {p} published {other}/releases/r1\n{out}"
    );
    assert_same(
        &there_before,
        &snapshot(&there_dir, true),
        "a build of another site",
    );
    assert!(here.join(".convoy-complete").exists(), "{out}");
    assert_eq!(
        read(&here.join("built_in")),
        format!("{p}/releases/.r1.{}\n", a.token)
    );
    rig.pool.close_all().await;
}

/// Regression (same cause): a `spec.env` `IFS` (e.g. `","`, as a CSV tool might want)
/// changed how `cv_lease_read` splits the lock file, so `once` under a valid lease was
/// refused as fenced (status 75, `@@convoy fenced holder=ctl-a expires=...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_named_ifs_does_not_break_once_fence() {
    let rig = Rig::start(1);
    let p = site();
    rig.simple_release(0, "r1").await;
    let a = Attempt::new("ctl-a");
    let f = rig.lease(0, &a, 600).await;
    let env = Env(vec![("IFS".into(), ",".into())]);
    let (_, out) = rig
        .exec(
            0,
            Script::for_attempt(&p, &a).once("r1", "web", &s(&["true"]), &env, &f),
            None,
        )
        .await;
    assert_eq!(out.status, 0, "{}", explain(&out));
    // and a build under it publishes (the lease check before the publish splits it too)
    let out = rig
        .make_release(0, &a, "r2", &[], &s(&["true"]), &env)
        .await;
    assert_eq!(observe::fact(&out, "build").as_deref(), Some("done"));
    rig.pool.close_all().await;
}

/// 11. A release whose `config` is a symlink out of the site (like `config -> /etc`) cannot
/// make a shared entry below it move, create or expose anything outside the site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_entry_never_follows_a_symlink_out_of_the_release() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let root = rig.lab.host_dir(0);
    // outside the site, on the host: `{LAB_MOUNT}/outside/secret.txt`
    let outside = root.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("secret.txt"), "s3cret\n").unwrap();
    std::fs::write(outside.join("sub/more.txt"), "more\n").unwrap();
    let target = format!("{LAB_MOUNT}/outside");
    let tgz = tarball_with_links(&[("id.txt", "r1\n")], &[("config", &target)]);
    let a = Attempt::new("ctl-a");
    rig.ok_with(
        0,
        Script::for_attempt(&p, &a)
            .lease_acquire("ctl-a", 600)
            .prepare("r1")
            .unpack_archive("r1", tgz.len() as u64),
        Some(tgz),
    )
    .await;
    let build_dir = attempt_dir(&d, "r1", &a);
    assert_eq!(read_link(&build_dir.join("config")), target);

    let outside_before = snapshot(&outside, true);
    let site_before = snapshot(&d, true);
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    for entry in [
        "config/secret.txt",
        "config/new.txt",
        "config/sub/",
        "config/sub/more.txt",
        "config/newdir/",
    ] {
        let o = rig
            .fails(
                0,
                Script::for_attempt(&p, &a)
                    .link_shared("r1", &s(&[entry]))
                    .build("r1", &s(&["true"]), &Env::default()),
            )
            .await;
        assert_eq!(
            observe::steps(&o.stdout_text()),
            vec![("link_shared".to_string(), 1)],
            "{entry}: {}",
            explain(&o)
        );
        assert!(o.stderr_text().contains("symlink"), "{}", explain(&o));
        // nothing moved, created or changed outside the site, nor in it
        assert_same(
            &outside_before,
            &snapshot(&outside, true),
            &format!("link_shared {entry} (outside the site)"),
        );
        assert_same(
            &site_before,
            &snapshot(&d, true),
            &format!("link_shared {entry} (the site)"),
        );
        let mut now: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        now.sort();
        assert_eq!(now, top, "{entry}: something was created next to the site");
    }
    let secret = std::fs::symlink_metadata(outside.join("secret.txt")).unwrap();
    assert!(
        secret.file_type().is_file(),
        "the outside file was replaced"
    );
    assert_eq!(read(&outside.join("secret.txt")), "s3cret\n");
    assert_eq!(std::fs::read_dir(d.join("shared")).unwrap().count(), 0);
    assert!(!d.join("releases/r1").exists(), "published anyway");
    rig.pool.close_all().await;
}

/// 12. Attempt A's slow build is abandoned when attempt B of the same holder takes the lease
/// and prepares: A's process group ends at once, A never publishes, and B builds normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_abandoned_by_its_attempt_never_publishes() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let root = rig.lab.host_dir(0);
    let tgz = tarball(&[("id.txt", "r1\n")]);
    let a = Attempt::new("ctl-a");
    let env = Env(vec![
        ("PIDF".into(), format!("{LAB_MOUNT}/a.pid")),
        ("MARK".into(), format!("{LAB_MOUNT}/a.marker")),
    ]);
    let script = Script::for_attempt(&p, &a)
        .lease_acquire("ctl-a", 600)
        .prepare("r1")
        .unpack_archive("r1", tgz.len() as u64)
        .build(
            "r1",
            &s(&["echo $$ > \"$PIDF\"; sleep 3; touch \"$MARK\""]),
            &env,
        );
    let (host, pool) = (rig.host(0), rig.pool.clone());
    let started = Instant::now();
    let cmd = RemoteCommand::of(script, OP_TIMEOUT).with_stdin(tgz.clone());
    let task = tokio::spawn(async move { host.run(&pool, &cmd).await });
    let pgid = read_pid(&root.join("a.pid")).await;
    assert!(group_alive(pgid), "A's build is not running");
    assert!(
        wait_until(Duration::from_secs(5), || !attempt_processes(&a).is_empty()).await,
        "A's commands do not carry its attempt"
    );
    // the group is recorded under A's attempt (written just after the group starts)
    let record = d.join(format!(".convoy/run/{}.{pgid}", a.token));
    assert!(
        wait_until(Duration::from_secs(5), || record.is_file()).await,
        "no run record {}",
        record.display()
    );

    // B, a new attempt of the same holder (the controller restarted), takes over
    let b = Attempt::new("ctl-a");
    let out = rig
        .ok(
            0,
            Script::for_attempt(&p, &b)
                .lease_acquire("ctl-a", 600)
                .prepare("r1"),
        )
        .await;
    let took = started.elapsed();
    assert!(
        out.contains(&format!("@@convoy stopped={pgid} attempt={}\n", a.token)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "@@convoy removed=r1.{} reason=abandoned\n",
            a.token
        )),
        "{out}"
    );
    assert!(!group_alive(pgid), "A's group survived B's prepare");
    assert!(
        attempt_processes(&a).is_empty(),
        "{:?}",
        attempt_processes(&a)
    );
    assert!(!attempt_dir(&d, "r1", &a).exists());

    // A's round trip ends, its build failed (ended) or fenced, never done
    let out_a = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("A's round trip did not end")
        .unwrap()
        .expect("A's transport");
    let stdout_a = out_a.stdout_text();
    assert!(!out_a.success(), "{}", explain(&out_a));
    let last = observe::steps(&stdout_a).last().cloned();
    assert!(
        matches!(&last, Some((step, status)) if step == "build" && *status != 0),
        "{}",
        explain(&out_a)
    );
    assert_ne!(
        observe::fact(&stdout_a, "build").as_deref(),
        Some("done"),
        "{}",
        explain(&out_a)
    );
    // well past the end of A's `sleep 3`: its marker never appears, nothing was published
    let past = Duration::from_secs(5).saturating_sub(started.elapsed());
    tokio::time::sleep(past).await;
    assert!(!root.join("a.marker").exists(), "A's commands went on");
    assert!(!d.join("releases/r1").exists());
    assert!(rig.observe(0).await.release("r1").is_none());
    eprintln!("abandoned build: B's prepare ended A's group after {took:?}");

    // B builds and publishes normally
    let out = rig
        .ok_with(
            0,
            Script::for_attempt(&p, &b)
                .unpack_archive("r1", tgz.len() as u64)
                .build("r1", &s(&["touch built_by_b"]), &Env::default()),
            Some(tgz),
        )
        .await;
    assert_eq!(observe::fact(&out, "build").as_deref(), Some("done"));
    let obs = rig.observe(0).await;
    assert!(obs.is_complete("r1"), "{obs:?}");
    assert!(d.join("releases/r1/built_by_b").exists());
    assert!(!root.join("a.marker").exists());
    assert!(
        std::fs::read_dir(d.join(".convoy/run"))
            .unwrap()
            .next()
            .is_none(),
        "run records left behind"
    );
    rig.pool.close_all().await;
}

/// 13. A round trip dropped by the controller (its future dropped, e.g. by a timeout or a
/// cancelled pass) ends the commands it started on the host: the lifeline's end of file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_round_trip_ends_its_commands_on_the_host() {
    let rig = Rig::start(1);
    let p = site();
    let d = rig.site_dir(0);
    let root = rig.lab.host_dir(0);
    let tgz = tarball(&[("id.txt", "r1\n")]);
    let a = Attempt::new("ctl-a");
    rig.ok_with(
        0,
        Script::for_attempt(&p, &a)
            .lease_acquire("ctl-a", 600)
            .prepare("r1")
            .unpack_archive("r1", tgz.len() as u64),
        Some(tgz),
    )
    .await;
    let env = Env(vec![
        ("PIDF".into(), format!("{LAB_MOUNT}/sleep.pid")),
        (
            "CONVOY_RELEASE_DIR".into(),
            format!("{p}/releases/.r1.{}", a.token),
        ),
    ]);
    let script = Script::for_attempt(&p, &a).build(
        "r1",
        &s(&["echo $$ > \"$PIDF\"; sleep 30; touch finished"]),
        &env,
    );
    assert!(script.is_private());
    let cmd = RemoteCommand::of(script, OP_TIMEOUT);
    let dropped =
        tokio::time::timeout(Duration::from_secs(1), rig.host(0).run(&rig.pool, &cmd)).await;
    assert!(dropped.is_err(), "the build returned early: {dropped:?}");
    let dropped_at = Instant::now();
    let pgid = read_pid(&root.join("sleep.pid")).await;
    let gone = wait_until(Duration::from_secs(3), || {
        !group_alive(pgid) && attempt_processes(&a).is_empty()
    })
    .await;
    assert!(
        gone,
        "the dropped round trip's commands still run 3 s later: {:?}",
        attempt_processes(&a)
    );
    eprintln!(
        "dropped round trip: its process group {pgid} was gone {:?} after the drop",
        dropped_at.elapsed()
    );
    // its record goes with it, and nothing was published
    assert!(
        wait_until(Duration::from_secs(3), || {
            std::fs::read_dir(d.join(".convoy/run"))
                .map(|mut rd| rd.next().is_none())
                .unwrap_or(true)
        })
        .await,
        "run records left behind"
    );
    assert!(!attempt_dir(&d, "r1", &a).join("finished").exists());
    assert!(!d.join("releases/r1").exists());
    rig.pool.close_all().await;
}
