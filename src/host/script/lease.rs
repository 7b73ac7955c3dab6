//! The host lease and the attempt that holds it (`sh/lease.sh`, `sh/process.sh`):
//! acquire, renew, release and break the lease, and stop the process groups an attempt
//! started. Only text is built here.

use super::Script;

impl Script {
    /// Take or refresh the host lease for `ttl_secs`. Prints `@@convoy lease=acquired
    /// holder=<h> generation=<n> expires=<epoch>`, or fails with [`EXIT_LEASE_HELD`](super::EXIT_LEASE_HELD) printing
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

    /// Extend this attempt's lease by `ttl_secs`; fails with [`EXIT_FENCED`](super::EXIT_FENCED) printing
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
    /// last `alive_secs` and `force` is false: then fail with [`EXIT_LEASE_HELD`](super::EXIT_LEASE_HELD) printing
    /// `@@convoy lease=renewing holder=<h> ...`. Prints `lease=broken holder=<h> ...` or
    /// `lease=free`, and ends the process groups of the broken holder's attempts.
    pub fn lease_break(self, alive_secs: u64, force: bool) -> Self {
        let alive = alive_secs.to_string();
        let force = if force { "force" } else { "no" };
        self.step("lease_break", None, "cv_lease_break", &[&alive, force])
    }
}
