//! What the controller saw and did, per site: the `status` of a Site object.
//! Kubernetes-shaped so the same objects fit a real API server later; the Site CRD's
//! `status` schema is generated from these types. How people see them is `render.rs`.
//! Holds values only: nothing here reads or writes the state dir.

#[cfg(test)]
pub(crate) mod fixtures;
pub mod render;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a site stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Phase {
    /// Every host runs the desired release.
    Converged,
    /// A rollout is under way.
    Progressing,
    /// Converged except hosts of optional stages that are unreachable.
    Degraded,
    /// A required host is unreachable; nothing switches until it is back.
    Blocked,
    /// A build, health check or host key check failed; held until the desired state changes.
    Failed,
    /// `spec.suspend` is true: observed and reported, nothing changed.
    Suspended,
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
    /// Failed attempts of the desired release so far.
    #[serde(default)]
    pub attempts: u32,
    /// When `phase` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
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
