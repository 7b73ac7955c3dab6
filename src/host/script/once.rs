//! The `once` operation (`sh/once.sh`): commands that run exactly once per release and
//! stage on a host, recorded so that a later pass reports them instead of running them
//! again. Only text is built here.

use super::{Env, Fence, ONCE_DEFAULT_WAIT_SECS, Script};

impl Script {
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
}
