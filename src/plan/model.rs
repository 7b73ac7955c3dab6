//! The planner's vocabulary: what a host looks like to the rules ([`HostView`], [`Reach`]),
//! what this pass has learned so far ([`PassState`]), the steps it can order ([`Step`]), where
//! a site ends ([`Outcome`]), the typed errors steps end with, and the events a pass
//! records. Data only: the rules live in the sibling modules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::host::observe::OnceState;

/// What one host reported (or why it could not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Reachable(HostView),
    /// Connection refused or timed out: retried with backoff.
    Unreachable {
        reason: String,
    },
    /// Host key changed or unknown: never retried quietly.
    Refused {
        reason: String,
    },
}

/// A reachable host's state for one site path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Release `current` points at.
    pub current: Option<String>,
    /// Rollback target recorded before the last switch.
    pub previous: Option<String>,
    /// A release switched to but never verified (activate + health did not complete).
    pub pending: Option<String>,
    /// Complete releases (marker present) and when each was built (epoch seconds).
    pub complete: BTreeMap<String, u64>,
    /// Release dirs without a completion marker: half builds.
    pub half_built: BTreeSet<String>,
    /// `once` records of this host's stage, by release (never [`OnceState::NotStarted`]).
    pub once: BTreeMap<String, OnceState>,
    /// Another controller's live lease on this site path, if any.
    pub locked_by: Option<String>,
}

/// Every host of the site, by name.
pub type Observed = BTreeMap<String, Reach>;

/// Why a step failed on a host, in the words status and history show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// An operation of a build or of convoy's own bookkeeping (a lease write) exited non-zero.
    #[error("{op} on host `{host}`{}", said(.tail))]
    Operation {
        host: String,
        op: String,
        tail: String,
    },
    /// Switch, activate or health check exited non-zero.
    #[error("{op} failed on host `{host}`{}", said(.tail))]
    Live {
        host: String,
        op: String,
        tail: String,
    },
    #[error("`once` of stage `{stage}` failed on host `{host}`{}", said(.tail))]
    Once {
        stage: String,
        host: String,
        tail: String,
    },
    /// Fenced, or still running past the wait: nothing recorded.
    #[error("`once` did not finish on host `{host}`: {tail}")]
    OnceUnfinished { host: String, tail: String },
    #[error("rollback failed: {tail}")]
    Rollback { tail: String },
    #[error("no previous release recorded: cannot roll back")]
    NoPrevious,
    #[error("clean-up failed: {tail}")]
    Cleanup { tail: String },
    #[error("failed to release the lease: {reason}")]
    Release { reason: String },
    #[error("lease lost to another controller: nothing more done here this pass")]
    LeaseLost,
    /// The host could not be reached or refused its key; the transport's words.
    #[error("{0}")]
    Host(String),
    /// The controller could not prepare the step (e.g. pack the archive).
    #[error("{0}")]
    Local(String),
}

/// What a command said, after a colon; nothing when it said nothing (its exit status is
/// in the operation already: no "exit 1 ... exit status 1").
fn said(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

impl StepError {
    /// One line: the error with only the last line of what the command said (usually the
    /// error; the first is usually noise). For history, the run's output and status.
    pub fn headline(&self) -> String {
        let mut short = self.clone();
        if let Some(tail) = short.tail_mut() {
            *tail = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
        }
        short.to_string()
    }

    fn tail_mut(&mut self) -> Option<&mut String> {
        match self {
            StepError::Operation { tail, .. }
            | StepError::Live { tail, .. }
            | StepError::Once { tail, .. }
            | StepError::OnceUnfinished { tail, .. }
            | StepError::Rollback { tail }
            | StepError::Cleanup { tail } => Some(tail),
            _ => None,
        }
    }
}

/// A stage whose `once` commands failed on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceFailure {
    pub stage: String,
    pub host: String,
}

/// A host of a stage whose switch, activate or health check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFailure {
    pub stage: String,
    pub host: String,
    pub error: StepError,
}

/// What happened earlier in this pass, and what the state dir remembers. `fold` writes it,
/// the rules read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassState {
    /// Hosts whose build of the desired release failed, with the error.
    pub build_failed: BTreeMap<String, StepError>,
    /// Per stage, hosts switched to the desired release in this attempt.
    pub switched: BTreeMap<String, Vec<String>>,
    /// The first host whose switch, activate or health check failed.
    pub health_failed: Option<HealthFailure>,
    /// Every host whose switch, activate or health check failed, by host: what
    /// `rollout.maxFailed` counts besides build failures.
    pub live_failed: BTreeMap<String, HealthFailure>,
    /// Hosts a rollback was sent to in this pass (each at most once).
    pub rolled_back: BTreeSet<String>,
    /// The `once` commands of a stage failed on a host.
    pub once_failed: Option<OnceFailure>,
    /// Stages whose `once` is known done from the state dir (a second proof besides hosts).
    pub once_done: BTreeSet<String>,
    /// `--host`: the only hosts this run may change (build, switch, roll back, clean up);
    /// `None` = every host. The others are observed all the same (see `targeting.rs`).
    pub targets: Option<BTreeSet<String>>,
    /// Failed attempts of this desired release in earlier runs.
    pub attempts: u32,
    /// A host failed an operation of convoy's own (a lease write on a full disk, ...): the
    /// attempt fails with the host's error rather than spinning.
    pub host_errors: BTreeMap<String, StepError>,
    /// The lease generation this pass holds on each host (the fence of its switches).
    pub fences: BTreeMap<String, u64>,
    /// The last error seen on each host, for status.
    pub errors: BTreeMap<String, StepError>,
    /// This pass found a build, once or health failure (counts toward failureRetries).
    pub failed_attempt: bool,
    /// The commit the desired release resolved to, once known.
    pub revision: Option<String>,
    /// Hosts locked by another controller: seconds until that lease expires (host clock).
    pub locked_for: BTreeMap<String, u64>,
    /// The sites this one depends on (`dependsOn`), as their recorded statuses show them.
    pub dependencies: Vec<super::Dependency>,
}

/// One unit of work for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Prepare, fetch, link shared, build, write the completion marker.
    Build { host: String },
    /// Run the stage's `once` commands on this host (or wait for the run already there).
    Once { stage: String, host: String },
    /// Per host: switch `current`, activate, health check. Then clean up what the plan
    /// listed. `pause` is waited before this batch starts.
    Switch {
        stage: String,
        hosts: Vec<String>,
        pause: Duration,
        cleanup: BTreeMap<String, Vec<String>>,
    },
    /// Roll these hosts (switched earlier in this attempt) back to their recorded previous.
    Rollback { stage: String, hosts: Vec<String> },
    /// Remove these release directories (never current, previous or desired).
    Cleanup { host: String, remove: Vec<String> },
}

impl Step {
    /// Every host this step works on.
    pub fn hosts(&self) -> Vec<&String> {
        match self {
            Step::Build { host } | Step::Once { host, .. } | Step::Cleanup { host, .. } => {
                vec![host]
            }
            Step::Switch { hosts, .. } | Step::Rollback { hosts, .. } => hosts.iter().collect(),
        }
    }
}

/// Where the site stands when the plan has no step left (or why it stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Steps remain: the executor runs them and plans again.
    Progressing,
    Converged,
    /// Converged except these hosts of optional stages: `skipped`, unreachable (or locked by
    /// another controller); `failed`, their build or health check failed within
    /// `rollout.maxFailed` (they keep their previous release).
    Degraded {
        skipped: Vec<String>,
        failed: Vec<String>,
    },
    /// A required host is unreachable (or locked by another controller): retry with backoff.
    Blocked {
        hosts: Vec<String>,
        reason: String,
    },
    /// Build, once or health failed, a host key was refused, or the release is held.
    Failed {
        reason: String,
        host: Option<String>,
    },
    Suspended,
    /// Built, but `once` and the switch wait for these sites (`dependsOn`), not yet
    /// Converged on their desired releases. No retry of its own: the controller runs the
    /// site again when one of them ends a pass.
    Waiting {
        on: Vec<super::Dependency>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl Plan {
    pub(super) fn done(outcome: Outcome) -> Self {
        Plan {
            steps: vec![],
            outcome,
        }
    }

    pub(super) fn progress(steps: Vec<Step>) -> Self {
        Plan {
            steps,
            outcome: Outcome::Progressing,
        }
    }
}

/// Something notable that happened on a host, for history and progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub host: String,
    pub stage: String,
    pub release: String,
    pub kind: EventKind,
    /// One line: what happened, or the error.
    pub detail: Option<String>,
    /// A failed command's whole output (bounded), to keep in the state dir.
    pub output: Option<String>,
    /// Where that output was kept.
    pub kept: Option<std::path::PathBuf>,
}

/// What kind of thing happened: the kinds of history events and of a pass's events. Written in PascalCase, like the status phases
/// (`"Built"`, `"HealthFailed"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A release finished building on a host.
    Built,
    /// A release failed to build on a host.
    BuildFailed,
    /// A host's `current` now points at the release.
    Switched,
    /// A host was put back on its previous release after a failed health check or activate.
    RolledBack,
    /// The `once` commands of a release ran successfully.
    OnceRan,
    /// The `once` commands of a release failed.
    OnceFailed,
    /// A host's health check failed after its switch.
    HealthFailed,
    /// Old releases were removed from a host.
    CleanedUp,
    /// The rollout waited on an unreachable host of a required stage.
    Blocked,
    /// Every host runs the desired release.
    Converged,
    /// convoy stopped (SIGTERM, SIGINT, `--timeout`) and ended the commands it had started
    /// on a host.
    Stopped,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Built => "Built",
            EventKind::BuildFailed => "BuildFailed",
            EventKind::Switched => "Switched",
            EventKind::RolledBack => "RolledBack",
            EventKind::OnceRan => "OnceRan",
            EventKind::OnceFailed => "OnceFailed",
            EventKind::HealthFailed => "HealthFailed",
            EventKind::CleanedUp => "CleanedUp",
            EventKind::Blocked => "Blocked",
            EventKind::Converged => "Converged",
            EventKind::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
