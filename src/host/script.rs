//! The POSIX `sh` scripts convoy runs on a host.
//!
//! Nothing runs here: every function takes values and returns text. A [`Script`] starts
//! with a fixed preamble of helper functions (defined once) and then chains any number of
//! operations, so one transport round trip can e.g. switch, activate and health-check.
//!
//! Each operation runs in its own subshell and is followed by a machine-readable line on
//! stdout, `@@convoy step=<name> status=<code>`; the script stops at the first operation
//! that fails, so the last step line names the failing operation (parse them with
//! [`super::observe::steps`]). Operations may also print facts, `@@convoy key=value ...`
//! (e.g. `revision=<sha>`, `lease=acquired generation=3`, `fenced`). Output of user
//! commands (build, activate, health, once) goes to stderr, never stdout, so it cannot
//! forge those lines.
//!
//! Layout under the site path `P`: `P/releases/<id>/`, `P/current -> releases/<id>`
//! (relative symlink, only ever replaced by rename(2)), `P/shared/`, and `P/.convoy/`
//! (`previous`, `lock`, `lock.d` (short mutex), `once/<release>/<stage>/`, `mirror.git`).
//! A release is complete when `P/releases/<id>/.convoy-complete` exists; it is written last,
//! atomically, and holds `built_at=<epoch>` and `revision=<commit>` lines.
//!
//! Portability: POSIX `sh` (dash, busybox ash) with GNU coreutils or busybox applets. The
//! atomic repoint of `current` needs `mv -T` (GNU coreutils and busybox >= 1.x have it);
//! without it the script falls back to `perl` or `python3` for a bare rename(2), and
//! refuses to switch if none of them exists.

/// Exit status of a step refused because the lease no longer names the caller's holder and
/// generation (or has expired). The step also prints `@@convoy fenced ...`.
pub const EXIT_FENCED: i32 = 75;
/// Exit status of `lease_acquire` when another holder has an unexpired lease.
pub const EXIT_LEASE_HELD: i32 = 73;
/// Exit status of `once` when it gave up waiting for a still-running wrapper.
pub const EXIT_ONCE_STILL_RUNNING: i32 = 124;
/// Exit status of `once` when the commands were started earlier but the wrapper died
/// without recording their end (e.g. the host rebooted): convoy will not guess whether
/// they ran; a human inspects `.convoy/once/<release>/<stage>/log` and removes the record.
pub const EXIT_ONCE_INTERRUPTED: i32 = 70;
/// How long `once` waits by default for a wrapper that is still running.
pub const ONCE_DEFAULT_WAIT_SECS: u64 = 3600;

/// Quote `s` as one POSIX shell word (single quotes; `'` becomes `'\''`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Environment exported to user commands: the `CONVOY_*` variables and `spec.env`.
/// Names must match `[A-Za-z_][A-Za-z0-9_]*` (a bad name makes the step fail); values may
/// be anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    /// Defines `cv_with_env`, which runs a command with these variables in ITS environment
    /// only (exported in a subshell that then execs the command, whose words were expanded
    /// before): the script's own variables (`P`, `IFS`, ...) can never be overwritten by a
    /// user's `spec.env`, and no value ever appears in a process's arguments (`ps`).
    fn exports(&self) -> String {
        let mut words = String::new();
        for (name, value) in &self.0 {
            if !valid_env_name(name) {
                return format!(
                    "cv_die {}\n",
                    quote(&format!("invalid environment variable name: {name}"))
                );
            }
            words.push_str(&format!(" {name}={}; export {name};", quote(value)));
        }
        // The build records the revision in its marker when the fetch did not.
        let revision = self
            .0
            .iter()
            .find(|(n, _)| n == "CONVOY_REVISION")
            .map_or(String::new(), |(_, v)| v.clone());
        format!(
            "cv_with_env() ({words} exec \"$@\"; )\ncv_exec_env() {{{words} exec \"$@\"; }}\ncv_env_revision={}\n",
            quote(&revision)
        )
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The lease a controller holds on a host: switch, rollback and once first check that
/// `P/.convoy/lock` still names this holder and generation and has not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub generation: u64,
}

/// A script under construction: the preamble, `P=<site path>`, then operations.
#[derive(Debug, Clone)]
pub struct Script {
    text: String,
    steps: Vec<&'static str>,
    private: bool,
}

/// One controller's pass over a site, as host scripts know it: the lease holder and a
/// random attempt token. The lease records the token; only the attempt that holds it may
/// publish a build, and process groups are recorded under it so a later attempt (or
/// `stop`) can end them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub holder: String,
    pub token: String,
}

impl Attempt {
    /// A fresh attempt of `holder` with a random token.
    pub fn new(holder: &str) -> Attempt {
        Attempt {
            holder: holder.to_string(),
            token: random_word(),
        }
    }
}

/// A random safe word (`a` + 16 hex digits): attempt tokens, names of private script files.
pub fn random_word() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("a{:016x}", hasher.finish())
}

impl Script {
    /// Start a script for the site at `site_path` (absolute, already prefixed by any root).
    pub fn new(site_path: &str) -> Script {
        let mut text = String::from(PREAMBLE);
        text.push_str(&format!("P={}\n", quote(site_path)));
        text.push_str("case $P in /*) ;; *) cv_die \"site path must be absolute: $P\";; esac\n");
        Script {
            text,
            steps: Vec::new(),
            private: false,
        }
    }

    /// A script of `attempt` (needed by builds and every lease operation).
    pub fn for_attempt(site_path: &str, attempt: &Attempt) -> Script {
        let mut script = Script::new(site_path);
        script.text.push_str(&format!(
            "H={}; T={}\n",
            quote(&attempt.holder),
            quote(&attempt.token)
        ));
        script
    }

    /// Whether the script carries user environment values: those travel on stdin (a 0600
    /// file on the host), never in a command line that `ps` shows.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// The step names this script will report, in order (a step after a failed one never
    /// runs and prints no line).
    pub fn planned_steps(&self) -> &[&'static str] {
        &self.steps
    }

    fn step(mut self, name: &'static str, env: Option<&Env>, call: &str, args: &[&str]) -> Self {
        self.steps.push(name);
        if env.is_some() && !self.private {
            // The first step with user commands starts the lifeline's watchdog, in the main
            // shell so it outlives the step, and only now: earlier steps may still read a
            // payload (an archive) from the same stdin.
            self.text.push_str("cv_watch\n");
        }
        self.text.push_str("cv_tick; cv_t0=$cv_up\n(\n");
        if let Some(env) = env {
            self.private = true;
            self.text.push_str(&env.exports());
        }
        self.text.push_str(call);
        for arg in args {
            self.text.push(' ');
            self.text.push_str(&quote(arg));
        }
        self.text
            .push_str(&format!("\n); cv_end {} $? \"$cv_t0\"\n", quote(name)));
        self
    }

    /// Print the host's state as `@@observe ...` lines (see [`super::observe::parse`]).
    pub fn observe(self) -> Self {
        self.step("observe", None, "cv_observe", &[])
    }

    /// [`Script::observe`], reporting only the `once` records of `release`.
    pub fn observe_release(self, release: &str) -> Self {
        self.step("observe", None, "cv_observe", &[release])
    }

    /// Create the layout; remove `releases/<release>` if it lacks its completion marker (a
    /// half build) and temporary links left by a killed controller.
    pub fn prepare(self, release: &str) -> Self {
        self.step("prepare", None, "cv_prepare", &[release])
    }

    /// Export `revision` of `repository` into `releases/<release>` through a cached bare
    /// mirror in `P/.convoy/mirror.git`; prints `@@convoy revision=<commit>`. A full or
    /// abbreviated commit id already in the mirror is used without fetching; names
    /// (branches, tags) are always fetched first. A complete release is left alone.
    pub fn fetch_git(self, release: &str, repository: &str, revision: &str) -> Self {
        self.step(
            "fetch",
            None,
            "cv_fetch_git",
            &[release, repository, revision],
        )
    }

    /// Unpack a `.tar.gz` of `size` bytes read from the script's stdin into this
    /// attempt's build directory of `release`.
    pub fn unpack_archive(self, release: &str, size: u64) -> Self {
        let size = size.to_string();
        self.step("unpack", None, "cv_unpack", &[release, &size])
    }

    /// Symlink `shared` entries (`.env` a file, `media/` a directory) of the release to
    /// `P/shared/<entry>`, creating them (or moving the release's copy there) if missing.
    pub fn link_shared(self, release: &str, shared: &[String]) -> Self {
        let mut args = vec![release];
        args.extend(shared.iter().map(String::as_str));
        self.step("link_shared", None, "cv_link_shared", &args)
    }

    /// Run `commands` in `releases/<release>` (each with `sh -ec`, stdin from /dev/null,
    /// output to stderr); on success write the completion marker last. A complete
    /// release is not rebuilt.
    pub fn build(self, release: &str, commands: &[String], env: &Env) -> Self {
        let mut args = vec![release];
        args.extend(commands.iter().map(String::as_str));
        self.step("build", Some(env), "cv_build", &args)
    }

    /// Atomically repoint `current` to `releases/<release>` (which must be complete),
    /// recording the old target in `.convoy/previous`, under the lease fence.
    pub fn switch(self, release: &str, fence: &Fence) -> Self {
        let generation = fence.generation.to_string();
        self.step(
            "switch",
            None,
            "cv_switch",
            &[release, &fence.holder, &generation],
        )
    }

    /// Repoint `current` to the release recorded in `.convoy/previous` (which must be
    /// complete), under the lease fence. `previous` is left as it is, so a second rollback
    /// changes nothing.
    pub fn rollback(self, fence: &Fence) -> Self {
        let generation = fence.generation.to_string();
        self.step(
            "rollback",
            None,
            "cv_rollback",
            &[&fence.holder, &generation],
        )
    }

    /// Run `commands` in `P/current`, which must point at `release`.
    pub fn activate(self, release: &str, commands: &[String], env: &Env) -> Self {
        let mut args = vec![release];
        args.extend(commands.iter().map(String::as_str));
        self.step("activate", Some(env), "cv_activate", &args)
    }

    /// Run `command` in `P/current`: up to `1 + retries` attempts, each bounded by
    /// `timeout` (when the host has it; 0 = unbounded), `interval_secs` apart.
    pub fn health(
        self,
        command: &str,
        env: &Env,
        timeout_secs: u64,
        retries: u32,
        interval_secs: u64,
    ) -> Self {
        let (t, r, i) = (
            timeout_secs.to_string(),
            retries.to_string(),
            interval_secs.to_string(),
        );
        self.step("health", Some(env), "cv_health", &[command, &t, &r, &i])
    }

    /// [`Script::once_wait`] with [`ONCE_DEFAULT_WAIT_SECS`].
    pub fn once(
        self,
        release: &str,
        stage: &str,
        commands: &[String],
        env: &Env,
        fence: &Fence,
    ) -> Self {
        self.once_wait(release, stage, commands, env, fence, ONCE_DEFAULT_WAIT_SECS)
    }

    /// Run `commands` exactly once per (release, stage) on this host, in
    /// `releases/<release>`, under a wrapper detached from the session that records their
    /// exit status in `.convoy/once/<release>/<stage>/done`. If recorded: report it. If
    /// running: wait (at most `wait_secs`). Else: check the fence, start, wait. Prints
    /// `@@convoy once=done status=<n>`; the step's status is the commands' status.
    pub fn once_wait(
        self,
        release: &str,
        stage: &str,
        commands: &[String],
        env: &Env,
        fence: &Fence,
        wait_secs: u64,
    ) -> Self {
        let generation = fence.generation.to_string();
        let wait = wait_secs.to_string();
        let mut args = vec![release, stage, &fence.holder, &generation, &wait];
        args.extend(commands.iter().map(String::as_str));
        self.step("once", Some(env), "cv_once", &args)
    }

    /// Records that `release` is about to go live unverified (`.convoy/pending`): if this
    /// round trip never reaches [`Script::settled`], the next observe reports it.
    pub fn pending(self, release: &str) -> Self {
        self.step("pending", None, "cv_pending", &[release])
    }

    /// The live release passed activate and health (or was rolled back): not pending any more.
    pub fn settled(self) -> Self {
        self.step("settled", None, "cv_settled", &[])
    }

    /// Remove exactly these release directories (the planner's choice), except whatever
    /// `current` or `.convoy/previous` points at and `protect`.
    pub fn remove_releases(self, remove: &[String], protect: &[String]) -> Self {
        let mut args = vec![protect.join(" ")];
        args.extend(remove.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.step("cleanup", None, "cv_remove_releases", &args)
    }

    /// Take or refresh the host lease for `ttl_secs`. Prints `@@convoy lease=acquired
    /// holder=<h> generation=<n> expires=<epoch>`, or fails with [`EXIT_LEASE_HELD`] printing
    /// `@@convoy lease=held holder=<other> expires=<epoch> generation=<n>`.
    pub fn lease_acquire(self, holder: &str, ttl_secs: u64) -> Self {
        let ttl = ttl_secs.to_string();
        self.step("lease_acquire", None, "cv_lease_acquire", &[holder, &ttl])
    }

    /// Give the lease up if `holder` has it for this attempt (the generation is kept, so it
    /// only grows).
    pub fn lease_release(self, holder: &str) -> Self {
        self.step("lease_release", None, "cv_lease_release", &[holder])
    }

    /// Extend this attempt's lease by `ttl_secs`; fails with [`EXIT_FENCED`] printing
    /// `@@convoy lease=lost ...` when the lease is no longer this attempt's.
    pub fn lease_renew(self, holder: &str, ttl_secs: u64) -> Self {
        let ttl = ttl_secs.to_string();
        self.step("lease_renew", None, "cv_lease_renew", &[holder, &ttl])
    }

    /// End the process groups this attempt started on the host (cancel, `--timeout`).
    pub fn stop(self) -> Self {
        self.step("stop", None, "cv_stop", &[])
    }

    /// Free the lease whoever holds it (`convoy unlock`), unless it was renewed within the
    /// last `alive_secs` and `force` is false: then fail with [`EXIT_LEASE_HELD`] printing
    /// `@@convoy lease=renewing holder=<h> ...`. Prints `lease=broken holder=<h> ...` or
    /// `lease=free`, and ends the process groups of the broken holder's attempts.
    pub fn lease_break(self, alive_secs: u64, force: bool) -> Self {
        let alive = alive_secs.to_string();
        let force = if force { "force" } else { "no" };
        self.step("lease_break", None, "cv_lease_break", &[&alive, force])
    }

    /// The operations until [`Script::end_if`] run only while `releases/<release>` is not
    /// complete: an observe and a build in one round trip, with nothing done (not even a
    /// lease taken) on a host that already has the release.
    pub fn if_incomplete(mut self, release: &str) -> Self {
        self.text
            .push_str(&format!("if ! cv_complete {}; then\n", quote(release)));
        self
    }

    /// Closes [`Script::if_incomplete`].
    pub fn end_if(mut self) -> Self {
        self.text.push_str("fi\n");
        self
    }

    /// The complete script text, to run with `sh -c`.
    pub fn finish(mut self) -> String {
        self.text.push_str("exit 0\n");
        self.text
    }
}

/// Helper functions defined once at the top of every script: the files in `src/host/sh/`
/// (checked by shellcheck, see `tests/integration/shellcheck_tests.rs`), concatenated in
/// this fixed order, `lib.sh` first (it holds the script's first lines). The once wrapper
/// becomes the value of `CV_ONCE_WRAPPER`, one single-quoted word (it holds no `'`).
const PREAMBLE: &str = concat!(
    include_str!("sh/lib.sh"),
    include_str!("sh/process.sh"),
    include_str!("sh/observe.sh"),
    include_str!("sh/build.sh"),
    include_str!("sh/switch.sh"),
    "CV_ONCE_WRAPPER='",
    include_str!("sh/once_wrapper.sh"),
    "'\n",
    include_str!("sh/once.sh"),
    include_str!("sh/cleanup.sh"),
    include_str!("sh/lease.sh"),
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate_observe::{fact, fact_line, facts, steps};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::super::observe as crate_observe;

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

    fn explain(sh: &Shell, o: &Output) -> String {
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
    fn fails(sh: &Shell, script: String) -> Output {
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

    fn s(v: &[&str]) -> Vec<String> {
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

    /// Take the lease (600 s) as a fresh attempt of `holder`.
    #[track_caller]
    pub(crate) fn lease(sh: &Shell, p: &str, holder: &str) -> Fence {
        lease_as(sh, p, &Attempt::new(holder))
    }

    /// The preamble (with `P`, and `H`/`T` for an attempt) followed by raw shell `body`.
    fn raw(p: &str, attempt: Option<&Attempt>, body: &str) -> String {
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

    fn lock_field(p: &str, key: &str) -> String {
        lock_fields(p)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Whether `pid` runs (a zombie is dead: PID 1 here does not reap orphans).
    fn pid_alive(pid: u32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        !(state.starts_with('Z') || state.starts_with('X') || state.is_empty())
    }

    /// Whether process group `pgid` has a member that is not a zombie.
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

    /// Wait up to `limit` for `cond`; whether it became true.
    fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
    fn read_pid(file: &Path) -> u32 {
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
    fn run_records(p: &str) -> Vec<String> {
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
    fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
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

    fn read_link(p: &str) -> String {
        std::fs::read_link(format!("{p}/current"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Every file under `dir` with its content or link target (a state snapshot).
    fn snapshot(dir: &Path) -> Vec<(String, String)> {
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

    #[test]
    fn busybox_shell_and_applets_are_really_used() {
        for sh in shells().into_iter().filter(|s| s.name == "busybox") {
            let out = ok(&sh, "readlink /proc/$$/exe; command -v mv".to_string());
            assert!(out.contains("busybox"), "{out}");
            assert!(out.contains("convoy-busybox"), "{out}");
        }
    }

    #[test]
    fn quote_is_one_word() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let f = Fence {
            holder: "h".into(),
            generation: 1,
        };
        let script = Script::new("/x").prepare("a").switch("a", &f).observe();
        assert_eq!(script.planned_steps(), ["prepare", "switch", "observe"]);
        for sh in shells() {
            for v in [
                "",
                "a b",
                "it's",
                "\"q\"",
                "$(echo no)",
                "`echo no`",
                "a\nb\n",
                "\\n *",
            ] {
                let out = ok(&sh, format!("printf '%s' {}", quote(v)));
                assert_eq!(out, v, "[{}]", sh.name);
            }
        }
    }

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
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
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

    #[test]
    fn build_failure_leaves_no_marker_and_reports_the_step() {
        for sh in shells() {
            let tmp = TempDir::new("buildfail");
            let p = site(&tmp);
            let a = Attempt::new("ctl-a");
            let f = lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            let d = attempt_dir(&p, "r1", &a);
            std::fs::create_dir_all(&d).unwrap();
            let o = sh.run(
                &Script::for_attempt(&p, &a)
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
                    .switch("r1", &f)
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(1), "{}", explain(&sh, &o));
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
            // exit status of the command is the step status
            let o = sh.run(
                &Script::for_attempt(&p, &a)
                    .build("r1", &s(&["exit 7"]), &Env::default())
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(7));
            assert_eq!(steps(&stdout(&o)), vec![("build".to_string(), 7)]);
            // user output goes to stderr: cannot forge step lines
            let o = sh.run(
                &Script::for_attempt(&p, &a)
                    .build(
                        "r1",
                        &s(&["echo '@@convoy step=build status=0'; exit 3"]),
                        &Env::default(),
                    )
                    .finish(),
            );
            assert_eq!(steps(&stdout(&o)), vec![("build".to_string(), 3)]);
            assert!(!Path::new(&format!("{p}/releases/r1")).exists());
            // success writes the marker and publishes; a second build is a no-op
            let out = ok(
                &sh,
                Script::for_attempt(&p, &a)
                    .build("r1", &s(&["echo ok >> count"]), &Env::default())
                    .finish(),
            );
            assert_eq!(fact(&out, "build").as_deref(), Some("done"));
            assert!(!Path::new(&d).exists());
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
            for record in run_records(&p) {
                let pgid: u32 = record.rsplit('.').next().unwrap().parse().unwrap();
                assert!(!group_alive(pgid), "[{}] {record} alive", sh.name);
            }
            let before = snapshot(tmp.path());
            let out = ok(
                &sh,
                Script::for_attempt(&p, &a)
                    .build("r1", &s(&["echo ok >> count"]), &Env::default())
                    .finish(),
            );
            assert_eq!(fact(&out, "build").as_deref(), Some("skipped"));
            assert_eq!(snapshot(tmp.path()), before);
        }
    }

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
    fn lease_contention_takeover_and_release() {
        for sh in shells() {
            let tmp = TempDir::new("lease");
            let p = site(&tmp);
            // contend: exactly one of several holders acquires
            let outs: Vec<Output> = std::thread::scope(|scope| {
                let hs: Vec<_> = ["ctl-a", "ctl-b", "ctl-c", "ctl-d"]
                    .into_iter()
                    .map(|h| {
                        let sh = sh.clone();
                        let script = Script::for_attempt(&p, &Attempt::new(h))
                            .lease_acquire(h, 600)
                            .finish();
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
                outs.iter().map(|o| explain(&sh, o)).collect::<Vec<_>>()
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
            let o = sh.run(
                &Script::for_attempt(&p, &Attempt::new(&holder))
                    .lease_acquire(&holder, 60)
                    .finish(),
            );
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
            // a stale mutex (older than 5 s: a holder killed mid-operation) does not block
            std::fs::create_dir_all(format!("{p}/.convoy/lock.d")).unwrap();
            let o = Command::new("touch")
                .args(["-d", "@1000"])
                .arg(format!("{p}/.convoy/lock.d"))
                .status()
                .unwrap();
            assert!(o.success());
            let h2 = lease(&sh, &p, "ctl-a");
            assert_eq!(h2.generation, 3);
        }
    }

    #[test]
    fn held_lease_is_refused_until_expiry() {
        for sh in shells() {
            let tmp = TempDir::new("held");
            let p = site(&tmp);
            lease(&sh, &p, "ctl-a");
            let o = sh.run(
                &Script::for_attempt(&p, &Attempt::new("ctl-b"))
                    .lease_acquire("ctl-b", 60)
                    .finish(),
            );
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
            let done =
                std::fs::read_to_string(format!("{p}/.convoy/once/r1/migrate/done")).unwrap();
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

    #[test]
    fn preamble_is_the_sh_files_with_the_once_wrapper_quoted() {
        let wrapper = include_str!("sh/once_wrapper.sh");
        assert!(
            !wrapper.contains('\''),
            "once_wrapper.sh must hold no single quote"
        );
        assert!(PREAMBLE.contains(&format!("\nCV_ONCE_WRAPPER='{wrapper}'\n")));
        assert!(PREAMBLE.starts_with(include_str!("sh/lib.sh")));
        assert!(PREAMBLE.ends_with(include_str!("sh/lease.sh")));
    }

    #[test]
    fn remove_releases_keeps_current_previous_and_protected() {
        for sh in shells() {
            let tmp = TempDir::new("cleanup");
            let p = site(&tmp);
            for id in ["r1", "r2", "r3", "r4", "r5", "r6"] {
                make_release(&sh, &p, id);
            }
            std::fs::create_dir_all(format!("{p}/releases/half")).unwrap();
            std::fs::create_dir_all(format!("{p}/releases/r9")).unwrap(); // desired, building
            std::fs::create_dir_all(format!("{p}/releases/bad name")).unwrap();
            let f = lease(&sh, &p, "ctl-a");
            ok(
                &sh,
                Script::new(&p).switch("r2", &f).switch("r1", &f).finish(),
            ); // current r1, previous r2
            let remove = s(&[
                "r1", "r2", "r3", "r4", "half", "r9", "bad name", "..", "gone",
            ]);
            let protect = s(&["r3", "r9"]);
            let out = ok(
                &sh,
                Script::new(&p).remove_releases(&remove, &protect).finish(),
            );
            let mut left: Vec<String> = std::fs::read_dir(format!("{p}/releases"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            assert_eq!(
                left,
                vec!["bad name", "r1", "r2", "r3", "r5", "r6", "r9"],
                "{out}"
            );
            assert!(out.contains("@@convoy removed=r4\n"), "{out}");
            assert!(out.contains("@@convoy removed=half\n"), "{out}");
            let before = snapshot(tmp.path());
            let script = Script::new(&p).remove_releases(&s(&["r4", "half"]), &protect);
            let out = ok(&sh, script.finish());
            assert_eq!(snapshot(tmp.path()), before);
            assert!(out.contains("step=cleanup status=0"), "{out}");
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
            let cmd =
                "n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; [ $n -ge 3 ]";
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

    #[test]
    fn fetch_git_exports_a_revision_through_the_mirror() {
        for sh in shells() {
            let tmp = TempDir::new("git");
            let repo = tmp.path().join("repo with space");
            std::fs::create_dir_all(&repo).unwrap();
            git(&repo, &["init", "-q"]);
            std::fs::write(repo.join("app.txt"), "v1").unwrap();
            git(&repo, &["add", "."]);
            git(&repo, &["commit", "-qm", "one"]);
            git(&repo, &["tag", "v1"]);
            let c1 = git(&repo, &["rev-parse", "HEAD"]);
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

    /// Starts a build of `id` by `attempt` in the background (stdout to a file, so the
    /// watchdog's heartbeat always succeeds).
    fn spawn_build(
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
    fn sleeper(pidf: &Path, secs: u32, then: &str) -> String {
        format!(
            "echo $$ > {}; sleep {secs}; {then}",
            quote(&pidf.to_string_lossy())
        )
    }

    #[test]
    fn abandoned_attempt_cannot_publish() {
        for sh in shells() {
            let tmp = TempDir::new("abandoned");
            let p = site(&tmp);
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
            let pidf = tmp.path().join("a.pid");
            let late = tmp.path().join("a.late");
            let started = Instant::now();
            let then = format!("echo late > {}", quote(&late.to_string_lossy()));
            let mut child = spawn_build(
                &sh,
                &p,
                &a,
                "r1",
                &sleeper(&pidf, 2, &then),
                &tmp.path().join("a.out"),
            );
            let pid = read_pid(&pidf);
            // the group is recorded under the attempt and its real process group id
            let record = format!("{}.{pid}", a.token);
            assert!(
                wait_for(Duration::from_secs(5), || run_records(&p)
                    == [record.clone()]),
                "[{}] records {:?}, expected [{record}]",
                sh.name,
                run_records(&p)
            );
            // a later attempt of the same holder (the controller restarted) takes over
            let b = Attempt::new("ctl-a");
            lease_as(&sh, &p, &b);
            let out = ok(&sh, Script::for_attempt(&p, &b).prepare("r1").finish());
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
            assert!(!Path::new(&attempt_dir(&p, "r1", &a)).exists());
            assert!(run_records(&p).is_empty(), "{:?}", run_records(&p));
            let code = wait_child(&mut child, Duration::from_secs(10));
            assert_ne!(code, Some(0), "[{}]", sh.name);
            let a_out = std::fs::read_to_string(tmp.path().join("a.out")).unwrap();
            assert!(!a_out.contains("build=done"), "{a_out}");
            // past the end of A's sleep: its last command never ran
            std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
            assert!(!late.exists(), "[{}] the abandoned build ran on", sh.name);
            assert!(!Path::new(&format!("{p}/releases/r1")).exists());
            // even a build of A that runs to its end is fenced and discarded
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
            let o = sh.run(
                &Script::for_attempt(&p, &a)
                    .build("r1", &s(&["echo a > by.txt"]), &Env::default())
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
            assert!(facts(&stdout(&o)).iter().any(|(k, _)| k == "fenced"));
            assert!(!Path::new(&attempt_dir(&p, "r1", &a)).exists());
            assert!(!Path::new(&format!("{p}/releases/r1")).exists());
            // B builds and publishes
            std::fs::create_dir_all(attempt_dir(&p, "r1", &b)).unwrap();
            let out = ok(
                &sh,
                Script::for_attempt(&p, &b)
                    .build("r1", &s(&["echo b > by.txt"]), &Env::default())
                    .finish(),
            );
            assert_eq!(fact(&out, "build").as_deref(), Some("done"));
            assert_eq!(
                std::fs::read_to_string(format!("{p}/releases/r1/by.txt")).unwrap(),
                "b\n"
            );
            assert!(Path::new(&format!("{p}/releases/r1/.convoy-complete")).exists());
        }
    }

    #[test]
    fn build_whose_lease_was_taken_over_is_discarded() {
        for sh in shells() {
            let tmp = TempDir::new("takenover");
            let p = site(&tmp);
            let a = Attempt::new("ctl-a");
            let f = lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
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
            let o = sh.run(
                &Script::for_attempt(&p, &a)
                    .build("r1", &s(&["touch built"]), &Env::default())
                    .finish(),
            );
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
            let o = sh.run(
                &Script::for_attempt(&p, &b)
                    .build("r1", &s(&["touch built"]), &Env::default())
                    .finish(),
            );
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
            assert!(!Path::new(&attempt_dir(&p, "r1", &b)).exists());
            assert!(!Path::new(&format!("{p}/releases/r1")).exists());
        }
    }

    #[test]
    fn watchdog_ends_the_group_when_the_session_is_gone() {
        for sh in shells() {
            let tmp = TempDir::new("watchdog");
            let p = site(&tmp);
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
            let pidf = tmp.path().join("pid");
            let script = Script::for_attempt(&p, &a)
                .build("r1", &[sleeper(&pidf, 30, "true")], &Env::default())
                .finish();
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
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
            let pidf = tmp.path().join("pid");
            // The lifeline is at its end before the build starts (the controller died
            // during an earlier step of the same script).
            let script = Script::for_attempt(&p, &a)
                .build("r1", &[sleeper(&pidf, 30, "true")], &Env::default())
                .finish();
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
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
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

    /// Prepare, build and publish `id` as `attempt`, which holds the lease.
    fn make_release_for(sh: &Shell, p: &str, attempt: &Attempt, id: &str) {
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
            // forced: broken, generation bumped, the holder's running build ended
            ok(&sh, Script::for_attempt(&p, &a).prepare("r2").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r2", &a)).unwrap();
            let pidf = tmp.path().join("pid");
            let mut child = spawn_build(
                &sh,
                &p,
                &a,
                "r2",
                &sleeper(&pidf, 30, "true"),
                &tmp.path().join("out"),
            );
            let pid = read_pid(&pidf);
            assert!(wait_for(Duration::from_secs(5), || !run_records(&p).is_empty()));
            let out = ok(&sh, Script::new(&p).lease_break(60, true).finish());
            let line = fact_line(&out, "lease").unwrap();
            assert!(line.contains(&("lease".into(), "broken".into())), "{out}");
            assert!(line.contains(&("holder".into(), "ctl-a".into())), "{out}");
            assert!(
                out.contains(&format!("@@convoy stopped={pid} attempt={}\n", a.token)),
                "[{}] {out}",
                sh.name
            );
            assert!(!group_alive(pid));
            assert_ne!(wait_child(&mut child, Duration::from_secs(10)), Some(0));
            assert!(!Path::new(&format!("{p}/releases/r2")).exists());
            assert_eq!(lock_field(&p, "holder"), "");
            assert_eq!(lock_field(&p, "generation"), (f.generation + 1).to_string());
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
            let line = fact_line(&out, "lease").unwrap();
            assert!(line.contains(&("lease".into(), "broken".into())), "{out}");
            assert!(line.contains(&("holder".into(), "ctl-b".into())), "{out}");
            assert_eq!(lock_field(&p, "generation"), (g.generation + 1).to_string());
            let o = sh.run(&Script::new(&p).switch("r1", &g).finish());
            assert_eq!(o.status.code(), Some(EXIT_FENCED), "{}", explain(&sh, &o));
            assert_eq!(read_link(&p), "releases/r1");
        }
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
            let o = sh.run(
                &Script::for_attempt(&p, &Attempt::new("ctl-b"))
                    .lease_acquire("ctl-b", 60)
                    .finish(),
            );
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

    #[test]
    fn failed_write_leaves_no_temp_file() {
        for sh in shells() {
            let tmp = TempDir::new("write");
            let p = site(&tmp);
            std::fs::create_dir_all(format!("{p}/w")).unwrap();
            // the target is a directory holding a non-empty directory named like the
            // temporary file: the final `mv` fails, even as root
            let out = ok(
                &sh,
                raw(
                    &p,
                    None,
                    r#"mkdir -p "$P/w/target/target.tmp.$$/sub" || exit 9
cv_write "$P/w/target" hello; echo "moved=$?"
cv_write "$P/nodir/x" hello 2>/dev/null; echo "created=$?"
cv_write "$P/w/ok" hello; echo "ok=$?"
echo "pid=$$""#,
                ),
            );
            let get = |k: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("{k} missing: {out}"))
                    .to_string()
            };
            assert_ne!(get("moved"), "0", "[{}] {out}", sh.name);
            assert_ne!(get("created"), "0", "[{}] {out}", sh.name);
            assert_eq!(get("ok"), "0", "[{}] {out}", sh.name);
            let pid = get("pid");
            let mut names: Vec<String> = std::fs::read_dir(format!("{p}/w"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["ok", "target"], "[{}]", sh.name);
            let inside: Vec<String> = std::fs::read_dir(format!("{p}/w/target"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(inside, [format!("target.tmp.{pid}")]);
            assert!(Path::new(&format!("{p}/w/target/target.tmp.{pid}/sub")).is_dir());
            assert_eq!(
                std::fs::read_to_string(format!("{p}/w/ok")).unwrap(),
                "hello\n"
            );
            assert!(!Path::new(&format!("{p}/nodir")).exists());
        }
    }

    #[test]
    fn env_values_never_appear_in_argv() {
        use crate::host::RemoteCommand;
        use crate::host::local::LocalHost;
        let secret = format!("s3cr3t-{}", Attempt::new("x").token);
        // reads every process's arguments while the build runs, and this build's ancestry
        let cmd = r#"printf '%s' "$SECRET" > secret.out
for f in /proc/[0-9]*/cmdline; do { tr '\000' ' ' < "$f"; } 2>/dev/null || :; echo; done > argv.txt
i=$$; : > ancestry.txt
while [ -n "$i" ] && [ "$i" -gt 1 ]; do
  tr '\000' ' ' < /proc/$i/cmdline >> ancestry.txt; echo >> ancestry.txt
  i=$(sed 's/.*) //' /proc/$i/stat | cut -d' ' -f2)
done"#;
        let env = Env(vec![
            ("SECRET".into(), secret.clone()),
            ("CONVOY_RELEASE".into(), "r1".into()),
        ]);
        // the script file the bootstrap ran, named in the build's ancestry
        let script_file = |p: &str| -> String {
            let anc = std::fs::read_to_string(format!("{p}/releases/r1/ancestry.txt")).unwrap();
            anc.split_whitespace()
                .find(|w| {
                    Path::new(w)
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("convoy."))
                })
                .unwrap_or_else(|| panic!("no script file in the ancestry: {anc}"))
                .to_string()
        };
        let check = |name: &str, p: &str, status: i32, out: &str| {
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
            assert!(!argv.contains(&secret), "[{name}] the value is in argv");
            let file = script_file(p);
            assert!(
                std::fs::symlink_metadata(&file).is_err(),
                "[{name}] {file} left behind"
            );
        };
        let build = |p: &str, a: &Attempt| {
            let script = Script::for_attempt(p, a).build("r1", &[cmd.to_string()], &env);
            assert!(script.is_private());
            let rc = RemoteCommand::of(script, Duration::from_secs(30));
            assert!(rc.private && rc.has_stdin());
            let (words, prefix) = rc.invocation();
            assert!(words.iter().all(|w| !w.contains(&secret)));
            assert!(prefix.is_some_and(|b| String::from_utf8_lossy(b).contains(&secret)));
            rc
        };
        for sh in shells() {
            let tmp = TempDir::new("argv");
            let p = site(&tmp);
            let tmpdir = tmp.path().join("tmpdir");
            std::fs::create_dir_all(&tmpdir).unwrap();
            let a = Attempt::new("ctl-a");
            lease_as(&sh, &p, &a);
            ok(&sh, Script::for_attempt(&p, &a).prepare("r1").finish());
            std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
            let rc = build(&p, &a);
            let (words, prefix) = rc.invocation();
            let mut child = sh
                .command(&words[0])
                .args(&words[1..])
                .env("TMPDIR", &tmpdir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // as the transports do: stdin (the lifeline) stays open until the script ends
            let mut lifeline = child.stdin.take().unwrap();
            lifeline.write_all(prefix.unwrap()).unwrap();
            lifeline.flush().unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
            let status = wait_child(&mut child, Duration::from_secs(30));
            drop(lifeline);
            check(sh.name, &p, status.unwrap_or(-1), &out);
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
        let sh = &shells()[0];
        let a = Attempt::new("ctl-a");
        lease_as(sh, &p, &a);
        ok(sh, Script::for_attempt(&p, &a).prepare("r1").finish());
        std::fs::create_dir_all(attempt_dir(&p, "r1", &a)).unwrap();
        let host = LocalHost {
            name: "local".into(),
            root: None,
        };
        let rc = build(&p, &a);
        let o = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(host.run(&rc))
            .unwrap();
        check("local", &p, o.status, &o.stdout_text());
    }
}
