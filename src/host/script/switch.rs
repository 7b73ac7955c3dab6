//! Operations that change what a host serves (`sh/switch.sh`): switch and roll back
//! `current` under the lease fence, activate, health-check, and mark the live release as
//! pending or settled. Only text is built here.

use super::{Env, Fence, Script};

impl Script {
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

    /// Records that `release` is about to go live unverified (`.convoy/pending`): if this
    /// round trip never reaches [`Script::settled`], the next observe reports it.
    pub fn pending(self, release: &str) -> Self {
        self.step("pending", None, "cv_pending", &[release])
    }

    /// The live release passed activate and health (or was rolled back): not pending any more.
    pub fn settled(self) -> Self {
        self.step("settled", None, "cv_settled", &[])
    }
}
