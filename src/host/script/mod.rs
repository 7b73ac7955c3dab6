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
//! (`previous`, `lock`, `mutex` (the short flock mutex; `lock.d` on hosts without flock),
//! `once/<release>/<stage>/`, `mirror.git`).
//! A release is complete when `P/releases/<id>/.convoy-complete` exists; it is written last,
//! atomically, and holds `built_at=<epoch>` and `revision=<commit>` lines.
//!
//! Portability: POSIX `sh` (dash, busybox ash) with GNU coreutils or busybox applets. The
//! atomic repoint of `current` needs `mv -T` (GNU coreutils and busybox >= 1.x have it);
//! without it the script falls back to `perl` or `python3` for a bare rename(2), and
//! refuses to switch if none of them exists.
//!
//! This file holds the script's frame (preamble, steps, conditionals) and what every
//! operation shares; the operations themselves are grouped like the `sh/*.sh` files they
//! call: `build.rs` (prepare, fetch, unpack, shared links, build), `switch.rs` (switch,
//! rollback, activate, health), `once.rs`, `cleanup.rs`, `lease.rs` (the lease and stopping
//! an attempt's processes). Unit tests, which run the scripts under dash and busybox, are
//! in `tests/`, one file per family.

mod build;
mod cleanup;
mod lease;
mod once;
mod switch;
#[cfg(test)]
pub(crate) mod tests;

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
    include_str!("../sh/lib.sh"),
    include_str!("../sh/process.sh"),
    include_str!("../sh/observe.sh"),
    include_str!("../sh/build.sh"),
    include_str!("../sh/switch.sh"),
    "CV_ONCE_WRAPPER='",
    include_str!("../sh/once_wrapper.sh"),
    "'\n",
    include_str!("../sh/once.sh"),
    include_str!("../sh/cleanup.sh"),
    include_str!("../sh/lease.sh"),
);
