//! The Site's `status.conditions`, derived from its phase the way Kubernetes tools read
//! them: `Ready` (what `kubectl wait --for=condition=Ready` waits for), and kstatus'
//! abnormal-true pair `Reconciling` (work remains: InProgress) and `Stalled` (stopped until
//! someone acts: Failed). Pure: the caller passes the time.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Phase;

/// One condition, shaped like Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: ConditionStatus,
    /// Why, as one CamelCase word: the phase, or `Held` for a release held Failed.
    pub reason: String,
    /// The status message.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// The conditions of a site in `phase`, with `reason` and `message`. A condition whose
/// status is the same as in `previous` keeps its `lastTransitionTime`; the others get `now`.
pub fn conditions(
    phase: Phase,
    reason: &str,
    message: &str,
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    use ConditionStatus::{False, True, Unknown};
    let (ready, reconciling, stalled) = match phase {
        Phase::Converged | Phase::Degraded => (True, False, False),
        // Work remains, and a later pass (a retry, the next run) does it.
        Phase::Progressing | Phase::Interrupted | Phase::Blocked => (False, True, False),
        // Held until the desired state changes or `convoy retry`: someone has to act.
        Phase::Failed => (False, False, True),
        // Nothing is being reconciled, so whether the hosts are right is not convoy's word.
        Phase::Suspended | Phase::Unmanaged => (Unknown, False, False),
    };
    [
        ("Ready", ready),
        ("Reconciling", reconciling),
        ("Stalled", stalled),
    ]
    .into_iter()
    .map(|(kind, status)| {
        let since = previous
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or(now, |c| c.last_transition_time.as_str());
        Condition {
            kind: kind.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: since.to_owned(),
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionStatus::{False, True, Unknown};

    fn statuses(conditions: &[Condition]) -> Vec<(&str, ConditionStatus)> {
        conditions
            .iter()
            .map(|c| (c.kind.as_str(), c.status))
            .collect()
    }

    #[test]
    fn each_phase_reads_as_kstatus_expects() {
        let rows = [
            (Phase::Converged, [True, False, False]),
            (Phase::Degraded, [True, False, False]),
            (Phase::Progressing, [False, True, False]),
            (Phase::Interrupted, [False, True, False]),
            (Phase::Blocked, [False, True, False]),
            (Phase::Failed, [False, False, True]),
            (Phase::Suspended, [Unknown, False, False]),
            (Phase::Unmanaged, [Unknown, False, False]),
        ];
        assert_eq!(rows.len(), Phase::ALL.len());
        for (phase, [ready, reconciling, stalled]) in rows {
            let c = conditions(phase, phase.as_str(), "m", &[], "t0");
            assert_eq!(
                statuses(&c),
                [
                    ("Ready", ready),
                    ("Reconciling", reconciling),
                    ("Stalled", stalled)
                ],
                "{phase}"
            );
            assert!(
                c.iter()
                    .all(|c| c.reason == phase.as_str() && c.message == "m")
            );
        }
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let failed = conditions(Phase::Failed, "Failed", "build failed", &[], "t0");
        let held = conditions(Phase::Failed, "Held", "held: build failed", &failed, "t1");
        assert!(
            held.iter().all(|c| c.last_transition_time == "t0"),
            "{held:?}"
        );
        assert_eq!(held[0].reason, "Held");
        let converged = conditions(Phase::Converged, "Converged", "ok", &held, "t2");
        let times: Vec<&str> = converged
            .iter()
            .map(|c| c.last_transition_time.as_str())
            .collect();
        // Ready and Stalled changed; Reconciling was False and still is.
        assert_eq!(times, ["t2", "t0", "t2"]);
    }

    #[test]
    fn serialized_like_a_kubernetes_condition() {
        let c = &conditions(
            Phase::Converged,
            "Converged",
            "ok",
            &[],
            "2026-01-01T00:00:00Z",
        )[0];
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!({"type": "Ready", "status": "True", "reason": "Converged",
                               "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"})
        );
    }
}
