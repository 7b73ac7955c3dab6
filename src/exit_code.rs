//! The documented exit codes of `convoy`, one constant each (see README "Exit codes").

/// Every site converged (or, for `validate`, the manifests are valid).
pub const OK: u8 = 0;
/// Some site Failed or Blocked, the run timed out, or a command could not do its job.
pub const FAILED: u8 = 1;
/// Invalid manifests or usage: nothing touched any host.
pub const INVALID: u8 = 2;
/// Converged except hosts of optional stages that are unreachable or failed within
/// `rollout.maxFailed` (Degraded).
pub const DEGRADED: u8 = 3;
