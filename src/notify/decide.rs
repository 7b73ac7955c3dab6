//! Whether a pass is worth a message: the one rule of notifications, pure (no I/O, no
//! clock). A Notification is told about a change once: the site's phase, its desired
//! release, or the set of its offline hosts differs from what it was last told (a Degraded
//! site losing a second host is news; the hundredth pass of the same Degraded state is
//! not), and every rollback. What it was last told is kept per site and Notification, in
//! the state dir, so cron runs of `--once` stay as quiet as the daemon.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::manifest::types::NotificationEvent;
use crate::status::Phase;

/// What a Notification knows about a site: the state it was last told about (recorded
/// even when that change was not one it subscribes to, so `previousPhase` stays true).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    pub phase: Phase,
    pub release: String,
    /// Hosts of the site that did not answer.
    pub offline: BTreeSet<String>,
}

/// What one pass showed, for the rule.
#[derive(Debug, Clone)]
pub struct PassFacts {
    pub now: Seen,
    /// Some host was rolled back in this pass.
    pub rolled_back: bool,
    /// The pass changed something on a host (built, switched, ran `once`...).
    pub changed_hosts: bool,
}

/// What to do about a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Remember `now` as what this Notification was told (it differs from before).
    pub record: bool,
    /// Send a message of this kind.
    pub send: Option<NotificationEvent>,
}

/// The event a site entering `phase` is, if any (Suspended, Interrupted and Unmanaged are
/// not events anyone subscribes to).
pub fn phase_event(phase: Phase) -> Option<NotificationEvent> {
    match phase {
        Phase::Converged => Some(NotificationEvent::Converged),
        Phase::Progressing => Some(NotificationEvent::Progressing),
        Phase::Degraded => Some(NotificationEvent::Degraded),
        Phase::Blocked => Some(NotificationEvent::Blocked),
        Phase::Failed => Some(NotificationEvent::Failed),
        Phase::Suspended | Phase::Interrupted | Phase::Unmanaged => None,
    }
}

/// The rule. `before`: what this Notification was last told about the site (`None`: never
/// told anything); `events`: what it subscribes to.
pub fn decide(before: Option<&Seen>, pass: &PassFacts, events: &[NotificationEvent]) -> Decision {
    let nothing = Decision {
        record: false,
        send: None,
    };
    // A stopped pass is continued by the next one: it is not a state of the site.
    if matches!(pass.now.phase, Phase::Interrupted | Phase::Unmanaged) {
        return nothing;
    }
    let subscribed = |e: NotificationEvent| events.contains(&e).then_some(e);
    let changed = before != Some(&pass.now);
    if pass.rolled_back && subscribed(NotificationEvent::RolledBack).is_some() {
        return Decision {
            record: changed,
            send: Some(NotificationEvent::RolledBack),
        };
    }
    if !changed {
        return nothing;
    }
    // A Notification added to a fleet that was already converged learns that quietly: the
    // site did not just converge. (An offline host, even an optional one, is news.)
    let baseline = before.is_none() && pass.now.phase == Phase::Converged && !pass.changed_hosts;
    Decision {
        record: true,
        send: if baseline {
            None
        } else {
            phase_event(pass.now.phase).and_then(subscribed)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NotificationEvent as E;

    fn seen(phase: Phase, release: &str, offline: &[&str]) -> Seen {
        Seen {
            phase,
            release: release.into(),
            offline: offline.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn pass(now: Seen, rolled_back: bool, changed_hosts: bool) -> PassFacts {
        PassFacts {
            now,
            rolled_back,
            changed_hosts,
        }
    }

    const ALL: &[E] = &[
        E::Failed,
        E::Blocked,
        E::Degraded,
        E::RolledBack,
        E::Converged,
        E::Progressing,
    ];

    #[test]
    fn one_message_per_change_never_one_per_pass() {
        use Phase::*;
        let conv1 = seen(Converged, "r1", &[]);
        let conv2 = seen(Converged, "r2", &[]);
        let deg_a = seen(Degraded, "r2", &["h2"]);
        let deg_ab = seen(Degraded, "r2", &["h2", "h3"]);
        let failed = seen(Failed, "r2", &[]);
        let blocked = seen(Blocked, "r2", &["h0"]);
        let send = |e| Decision {
            record: true,
            send: Some(e),
        };
        let quiet = Decision {
            record: false,
            send: None,
        };
        let learn = Decision {
            record: true,
            send: None,
        };
        // (before, now, rolled back, hosts changed, subscribed, expected)
        type Row<'a> = (Option<&'a Seen>, Seen, bool, bool, &'a [E], Decision);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // A deploy converges: news.
            (Some(&conv1), conv2.clone(), false, true, ALL, send(E::Converged)),
            // The same state again (a resync, a cron run): nothing.
            (Some(&conv2), conv2.clone(), false, false, ALL, quiet.clone()),
            (Some(&deg_a), deg_a.clone(), false, false, ALL, quiet.clone()),
            (Some(&blocked), blocked.clone(), false, false, ALL, quiet.clone()),
            // An optional host goes offline, then a second one: each is news.
            (Some(&conv2), deg_a.clone(), false, false, ALL, send(E::Degraded)),
            (Some(&deg_a), deg_ab.clone(), false, false, ALL, send(E::Degraded)),
            // ...and back: converged again.
            (Some(&deg_ab), conv2.clone(), false, true, ALL, send(E::Converged)),
            // A rollback is always news, even when the phase stays Failed.
            (Some(&conv1), failed.clone(), true, true, ALL, send(E::RolledBack)),
            (Some(&failed), failed.clone(), true, true, ALL, Decision { record: false, send: Some(E::RolledBack) }),
            // Not subscribed to rollbacks: the phase change is the message, once.
            (Some(&conv1), failed.clone(), true, true, &[E::Failed], send(E::Failed)),
            (Some(&failed), failed.clone(), true, true, &[E::Failed], quiet.clone()),
            // Not subscribed to the new phase: learnt, not sent (previousPhase stays true).
            (Some(&conv1), conv2.clone(), false, true, &[E::Failed], learn.clone()),
            (Some(&conv1), blocked.clone(), false, false, &[E::Failed, E::Degraded], learn.clone()),
            // Never told anything: a problem is news, a fleet already converged is learnt quietly,
            (None, failed.clone(), false, true, ALL, send(E::Failed)),
            (None, deg_a.clone(), false, false, ALL, send(E::Degraded)),
            (None, conv2.clone(), false, false, ALL, learn.clone()),
            // but a first deploy that changed hosts is news.
            (None, conv2.clone(), false, true, ALL, send(E::Converged)),
            // Interrupted or Unmanaged is no state of the site: nothing, nothing learnt.
            (Some(&conv1), seen(Interrupted, "r2", &[]), false, true, ALL, quiet.clone()),
            (Some(&conv1), seen(Unmanaged, "r1", &[]), false, false, ALL, quiet.clone()),
            // Suspended is learnt but no one subscribes to it.
            (Some(&conv1), seen(Suspended, "r1", &[]), false, false, ALL, learn.clone()),
        ];
        for (i, (before, now, rolled_back, changed, events, expected)) in
            rows.into_iter().enumerate()
        {
            let got = decide(before, &pass(now.clone(), rolled_back, changed), events);
            assert_eq!(got, expected, "row {i}: {before:?} -> {now:?}");
        }
    }
}
