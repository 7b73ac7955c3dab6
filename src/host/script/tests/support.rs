//! Shells and fixtures for the script tests: dash and busybox sh, scratch site directories,
//! releases and leases made through the real scripts, and probes of processes and files.
//! Runs nothing by itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::*;
use crate::host::observe::{fact, fact_line};

/// A scratch directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "convoy-script-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell to run scripts with: the system `sh` (dash on Debian) with its usual PATH,
/// or busybox `sh` with busybox applets first on PATH.
#[derive(Debug, Clone)]
pub(crate) struct Shell {
    pub(crate) name: &'static str,
    program: String,
    path: String,
}

impl Shell {
    pub(crate) fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-c").arg(script).env("PATH", &self.path);
        cmd
    }
    pub(crate) fn run(&self, script: &str) -> Output {
        self.command(script).stdin(Stdio::null()).output().unwrap()
    }
    pub(crate) fn run_with_stdin(&self, script: &str, input: &[u8]) -> Output {
        let mut child = self
            .command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn busybox_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        // one applet dir shared by test runs (created once, reused afterwards)
        let dir = std::env::temp_dir().join("convoy-busybox-applets");
        if dir.join("sh").exists() && dir.join("mv").exists() {
            return Some(dir);
        }
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new(busybox)
            .arg("--install")
            .arg("-s")
            .arg(&dir)
            .status()
            .ok()?
            .success();
        ok.then_some(dir)
    })
    .clone()
}

/// busybox sh with nothing but busybox on its PATH: a host without util-linux (no `flock`).
pub(crate) fn busybox_only() -> Option<Shell> {
    let dir = busybox_dir()?;
    Some(Shell {
        name: "busybox-only",
        program: dir.join("sh").to_string_lossy().into_owned(),
        path: dir.display().to_string(),
    })
}

/// dash (`sh`), plus busybox sh when busybox is installed.
pub(crate) fn shells() -> Vec<Shell> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let mut out = vec![Shell {
        name: "sh",
        program: "sh".into(),
        path: path.clone(),
    }];
    if let Some(dir) = busybox_dir() {
        out.push(Shell {
            name: "busybox",
            program: dir.join("sh").to_string_lossy().into_owned(),
            path: format!("{}:{path}", dir.display()),
        });
    } else {
        eprintln!("busybox not installed: testing with sh only");
    }
    out
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn explain(sh: &Shell, o: &Output) -> String {
    format!(
        "[{}] status {:?}\n--- stdout\n{}--- stderr\n{}",
        sh.name,
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
pub(crate) fn ok(sh: &Shell, script: String) -> String {
    let o = sh.run(&script);
    assert!(o.status.success(), "{}", explain(sh, &o));
    stdout(&o)
}

#[track_caller]
pub(crate) fn fails(sh: &Shell, script: String) -> Output {
    let o = sh.run(&script);
    assert!(!o.status.success(), "expected failure: {}", explain(sh, &o));
    o
}

/// A site dir whose path has spaces and quotes in it.
pub(crate) fn site(tmp: &TempDir) -> String {
    tmp.path()
        .join("my site 'x' \"y\" $(z)")
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The build dir of `attempt` for release `id`: `releases/.<id>.<token>`.
pub(crate) fn attempt_dir(p: &str, id: &str, attempt: &Attempt) -> String {
    format!("{p}/releases/.{id}.{}", attempt.token)
}

/// Lease, prepare, build (a file `id.txt`) and publish release `id` as a fresh attempt
/// of holder `builder`, then give the lease up again.
pub(crate) fn make_release(sh: &Shell, p: &str, id: &str) {
    let a = Attempt::new("builder");
    let cmd = format!("mkdir -p {id}-src && echo {id} > id.txt");
    lease_as(sh, p, &a);
    ok(sh, Script::for_attempt(p, &a).prepare(id).finish());
    std::fs::create_dir_all(attempt_dir(p, id, &a)).unwrap();
    let out = ok(
        sh,
        Script::for_attempt(p, &a)
            .build(id, &[cmd], &Env::default())
            .lease_release("builder")
            .finish(),
    );
    assert_eq!(fact(&out, "build").as_deref(), Some("done"), "{out}");
    assert_eq!(fact(&out, "lease").as_deref(), Some("released"), "{out}");
    assert!(Path::new(&format!("{p}/releases/{id}/.convoy-complete")).exists());
    assert!(!Path::new(&attempt_dir(p, id, &a)).exists());
}

/// Prepare, build and publish `id` as `attempt`, which holds the lease.
pub(crate) fn make_release_for(sh: &Shell, p: &str, attempt: &Attempt, id: &str) {
    ok(sh, Script::for_attempt(p, attempt).prepare(id).finish());
    std::fs::create_dir_all(attempt_dir(p, id, attempt)).unwrap();
    let out = ok(
        sh,
        Script::for_attempt(p, attempt)
            .build(id, &s(&["echo x > id.txt"]), &Env::default())
            .finish(),
    );
    assert_eq!(fact(&out, "build").as_deref(), Some("done"), "{out}");
}

/// Take the lease (600 s) as `attempt`; returns its fence.
#[track_caller]
pub(crate) fn lease_as(sh: &Shell, p: &str, attempt: &Attempt) -> Fence {
    let out = ok(
        sh,
        Script::for_attempt(p, attempt)
            .lease_acquire(&attempt.holder, 600)
            .finish(),
    );
    let line = fact_line(&out, "lease").unwrap();
    assert!(line.contains(&("lease".into(), "acquired".into())), "{out}");
    let generation = line
        .iter()
        .find(|(k, _)| k == "generation")
        .unwrap()
        .1
        .parse()
        .unwrap();
    Fence {
        holder: attempt.holder.clone(),
        generation,
    }
}

/// A fresh attempt of `holder` that holds the lease and has prepared release `id`, its
/// (empty) build directory made: ready to build. Returns it with its fence.
#[track_caller]
pub(crate) fn ready_to_build(sh: &Shell, p: &str, holder: &str, id: &str) -> (Attempt, Fence) {
    let a = Attempt::new(holder);
    let f = lease_as(sh, p, &a);
    ok(sh, Script::for_attempt(p, &a).prepare(id).finish());
    std::fs::create_dir_all(attempt_dir(p, id, &a)).unwrap();
    (a, f)
}

/// Take the lease (600 s) as a fresh attempt of `holder`.
#[track_caller]
pub(crate) fn lease(sh: &Shell, p: &str, holder: &str) -> Fence {
    lease_as(sh, p, &Attempt::new(holder))
}

/// The preamble (with `P`, and `H`/`T` for an attempt) followed by raw shell `body`.
pub(crate) fn raw(p: &str, attempt: Option<&Attempt>, body: &str) -> String {
    let script = match attempt {
        Some(a) => Script::for_attempt(p, a),
        None => Script::new(p),
    };
    let text = script.finish();
    format!("{}{body}\n", text.strip_suffix("exit 0\n").unwrap())
}

/// The lock file's fields.
fn lock_fields(p: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("{p}/.convoy/lock"))
        .unwrap()
        .split_whitespace()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub(crate) fn lock_field(p: &str, key: &str) -> String {
    lock_fields(p)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether `pid` runs (a zombie is dead: PID 1 here does not reap orphans).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    !(state.starts_with('Z') || state.starts_with('X') || state.is_empty())
}

/// Whether process group `pgid` has a member that is not a zombie.
pub(crate) fn group_alive(pgid: u32) -> bool {
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

/// Wait up to `limit` for `cond`; whether it became true.
pub(crate) fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The pid written by a command into `file` (waits up to 10 s for it).
#[track_caller]
pub(crate) fn read_pid(file: &Path) -> u32 {
    let mut pid = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {}",
        file.display()
    );
    pid.unwrap()
}

/// The names in `P/.convoy/run` (records of running process groups).
pub(crate) fn run_records(p: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("{p}/.convoy/run"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Wait (bounded) for a child, killing it when it overstays.
pub(crate) fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn read_link(p: &str) -> String {
    std::fs::read_link(format!("{p}/current"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every file under `dir` with its content or link target (a state snapshot).
pub(crate) fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.push((rel, format!("-> {}", t.display())));
            } else if meta.is_dir() {
                out.push((rel.clone(), "dir".into()));
                if !rel.ends_with("mirror.git") {
                    walk(base, &path, out);
                }
            } else {
                let c = std::fs::read(&path).unwrap();
                out.push((rel, String::from_utf8_lossy(&c).into_owned()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Starts a build of `id` by `attempt` in the background (stdout to a file, so the
/// watchdog's heartbeat always succeeds).
pub(crate) fn spawn_build(
    sh: &Shell,
    p: &str,
    attempt: &Attempt,
    id: &str,
    cmd: &str,
    out: &Path,
) -> std::process::Child {
    let script = Script::for_attempt(p, attempt)
        .build(id, &[cmd.to_string()], &Env::default())
        .finish();
    sh.command(&script)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A build command that writes its pid (= its process group) to `pidf`, then sleeps.
pub(crate) fn sleeper(pidf: &Path, secs: u32, then: &str) -> String {
    format!(
        "echo $$ > {}; sleep {secs}; {then}",
        quote(&pidf.to_string_lossy())
    )
}
