//! Where the desired state comes from (`source.json`), when the controller follows a git
//! branch (`reconcile --git`): the repository, branch and folder, the commit served, and
//! why a newer one is not (invalid, or the fetch failed). `convoy status` reads it, so it
//! needs no `-f`. Stores only.

use serde::{Deserialize, Serialize};

use super::files::{read_json, write_json_atomic};
use super::{StateDir, StateError, now_rfc3339};
use crate::status::{Condition, ConditionStatus};

const SOURCE_FILE: &str = "source.json";

/// The git source as last recorded by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Without credentials (a token in an `https://` URL is never written).
    pub repository: String,
    pub branch: String,
    /// The manifest folder in the repository; empty = its root.
    #[serde(default)]
    pub path: String,
    /// The commit served: the last valid one fetched (full SHA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The newest commit fetched, valid or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_commit: Option<String>,
    /// When the last fetch ended, successful or not (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<String>,
    /// The problems of the newest commit when it is invalid (`file:line:column: …`, at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// `Ready`: True while the newest commit is the one served; False with reason
    /// `InvalidCommit` (naming it) or `FetchFailed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl SourceStatus {
    /// The `Ready` condition, if recorded.
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == "Ready")
    }

    /// Sets `Ready` to `status` with `reason` and `message`; its transition time changes
    /// only when `status` does.
    pub fn set_ready(&mut self, status: ConditionStatus, reason: &str, message: String) {
        let since = match self.ready() {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now_rfc3339(),
        };
        self.conditions = vec![Condition {
            kind: "Ready".into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: since,
        }];
    }
}

impl StateDir {
    /// The git source the controller last recorded, if it follows one.
    pub fn load_source(&self) -> Option<SourceStatus> {
        read_json(&self.path().join(SOURCE_FILE)).ok().flatten()
    }

    /// Records the git source's state (atomically).
    pub fn save_source(&self, source: &SourceStatus) -> Result<(), StateError> {
        write_json_atomic(&self.path().join(SOURCE_FILE), source)
    }

    /// The controller reads manifests from a directory again: `status` must not show a git
    /// source that no longer feeds it.
    pub fn forget_source(&self) -> Result<(), StateError> {
        let path = self.path().join(SOURCE_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Remove { path, source: e })
            }
            _ => Ok(()),
        }
    }
}
