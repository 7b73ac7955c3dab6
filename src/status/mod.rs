//! What the controller saw and did, per site: the `status` of a Site object.
//! Kubernetes-shaped so the same objects fit a real API server later; the Site CRD's
//! `status` schema is generated from these types. How people see them is `render.rs`.
//! Holds values only: nothing here reads or writes the state dir.
//! `conditions.rs` derives the Kubernetes conditions from the phase; `selector.rs` is
//! `convoy status -l`.

mod conditions;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod render;
mod selector;

use std::collections::BTreeMap;

pub use conditions::{Condition, ConditionStatus, conditions};
pub use selector::Selector;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a site stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Phase {
    /// Every host runs the desired release.
    Converged,
    /// A rollout is under way.
    Progressing,
    /// Converged except hosts of optional stages that are unreachable or failed within
    /// `rollout.maxFailed`.
    Degraded,
    /// A required host is unreachable; nothing switches until it is back.
    Blocked,
    /// A build, health check or host key check failed; held until the desired state changes.
    Failed,
    /// `spec.suspend` is true: observed and reported, nothing changed.
    Suspended,
    /// The controller stopped (SIGTERM, SIGINT, `--timeout`) before the rollout ended; the
    /// next pass continues it.
    Interrupted,
    /// The Site's manifest was removed: convoy no longer manages it and changed nothing on
    /// its hosts. The rest of the status is as last observed.
    Unmanaged,
}

impl Phase {
    /// Every phase, in the order above.
    pub const ALL: [Phase; 8] = [
        Phase::Converged,
        Phase::Progressing,
        Phase::Degraded,
        Phase::Blocked,
        Phase::Failed,
        Phase::Suspended,
        Phase::Interrupted,
        Phase::Unmanaged,
    ];

    /// The phase as written in status objects and metric labels (`Converged`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Converged => "Converged",
            Phase::Progressing => "Progressing",
            Phase::Degraded => "Degraded",
            Phase::Blocked => "Blocked",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
            Phase::Interrupted => "Interrupted",
            Phase::Unmanaged => "Unmanaged",
        }
    }

    /// Whether a pass ending in this phase is a success: every host that can run the
    /// desired release runs it.
    pub fn is_success(self) -> bool {
        matches!(self, Phase::Converged | Phase::Degraded)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Site as `convoy status` shows it: its name and labels, and its status.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteObject {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: SiteStatus,
}

/// The observed state of a Site.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    pub phase: Phase,
    /// The Release the Site asks for.
    pub desired_release: String,
    /// The commit the desired release resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// One line for humans: what is happening or what went wrong.
    #[serde(default)]
    pub message: String,
    /// The manifest commit (full SHA) of the desired state the last pass ran for, when the
    /// controller follows a git branch (`reconcile --git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_commit: Option<String>,
    /// Failed attempts of the desired release so far.
    #[serde(default)]
    pub attempts: u32,
    /// When `phase` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// When a pass last ended Converged or Degraded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    /// `Ready`, `Reconciling` and `Stalled`, as Kubernetes tools (kstatus, `kubectl wait`)
    /// read them.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per host: what is live there.
    #[serde(default)]
    pub hosts: Vec<HostStatus>,
}

/// What one host of a site runs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub name: String,
    pub stage: String,
    /// The release `current` points at, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
