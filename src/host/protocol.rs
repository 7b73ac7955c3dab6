//! What one round trip told convoy, typed: the host's `@@convoy` lines (see
//! [`super::observe`] for the line format) and the transport's error, read once into a
//! [`StepReport`]. Nothing here decides what a report means for the rollout: the planner's
//! `fold` does. This module only says what the host said.

use super::observe::{self, ObserveError, Snapshot};
use super::script::{EXIT_FENCED, EXIT_LEASE_HELD};
use super::{CommandOutput, HostError};

/// How much of a failing command's output is kept in status and history.
const ERROR_TAIL: usize = 2048;

/// One host's answer to one round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub host: String,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The script ran (whatever its exit status) and printed this.
    Ran(Box<HostAnswer>),
    /// Connection refused, timed out, authentication failed, a local pipe broke.
    Unreachable(String),
    /// The host key changed or is unknown: maybe an attacker, never retried quietly.
    Refused(String),
    /// convoy is stopping: the round trip was abandoned, the host is as reachable as before.
    Cancelled,
}

/// What a script that ran reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostAnswer {
    /// The script's exit status.
    pub exit: i32,
    /// Every operation that ended, in order, with how it ended. Operations after a failed
    /// one never ran and are absent.
    pub ops: Vec<(Op, OpStatus)>,
    /// The first lease line: what the lease operation of this round trip found or did.
    pub lease: Option<LeaseFact>,
    /// The last lease word of the round trip (a release after an acquire), if any.
    pub last_lease: Option<LeaseState>,
    /// The build was refused because the lease had moved on: the host discarded it.
    pub fenced: bool,
    /// The build finished and was published (`build=done`).
    pub built: bool,
    /// The commit the fetch resolved to.
    pub revision: Option<String>,
    /// The exit status the host recorded for `once`.
    pub once: Option<i32>,
    /// Release directories the script removed (clean-up, half builds, abandoned attempts).
    pub removed: Vec<String>,
    /// Process groups of this attempt the script ended.
    pub stopped: usize,
    /// The `@@observe` report, when the round trip observed.
    pub snapshot: Option<Result<Snapshot, ObserveError>>,
    /// How long each operation took on the host, in seconds.
    pub timings: Vec<(String, f64)>,
    /// The end of the user-visible output (stderr), or the exit status when there is none.
    pub tail: String,
    /// A failed script's user-visible output as captured (the last 64 KiB, may be empty),
    /// to keep in full where an operator can read it. Empty when the script succeeded.
    pub output: String,
}

/// An operation of a host script, by the name its step line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Observe,
    Prepare,
    Fetch,
    Unpack,
    LinkShared,
    Build,
    Pending,
    Switch,
    Rollback,
    Activate,
    Health,
    Settled,
    Once,
    Cleanup,
    LeaseAcquire,
    LeaseRelease,
    LeaseRenew,
    LeaseBreak,
    Stop,
    Other(String),
}

impl Op {
    pub fn parse(name: &str) -> Op {
        match name {
            "observe" => Op::Observe,
            "prepare" => Op::Prepare,
            "fetch" => Op::Fetch,
            "unpack" => Op::Unpack,
            "link_shared" => Op::LinkShared,
            "build" => Op::Build,
            "pending" => Op::Pending,
            "switch" => Op::Switch,
            "rollback" => Op::Rollback,
            "activate" => Op::Activate,
            "health" => Op::Health,
            "settled" => Op::Settled,
            "once" => Op::Once,
            "cleanup" => Op::Cleanup,
            "lease_acquire" => Op::LeaseAcquire,
            "lease_release" => Op::LeaseRelease,
            "lease_renew" => Op::LeaseRenew,
            "lease_break" => Op::LeaseBreak,
            "stop" => Op::Stop,
            other => Op::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Op::Observe => "observe",
            Op::Prepare => "prepare",
            Op::Fetch => "fetch",
            Op::Unpack => "unpack",
            Op::LinkShared => "link_shared",
            Op::Build => "build",
            Op::Pending => "pending",
            Op::Switch => "switch",
            Op::Rollback => "rollback",
            Op::Activate => "activate",
            Op::Health => "health",
            Op::Settled => "settled",
            Op::Once => "once",
            Op::Cleanup => "cleanup",
            Op::LeaseAcquire => "lease_acquire",
            Op::LeaseRelease => "lease_release",
            Op::LeaseRenew => "lease_renew",
            Op::LeaseBreak => "lease_break",
            Op::Stop => "stop",
            Op::Other(name) => name,
        }
    }
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Done,
    /// Refused: the lease this attempt holds is no longer the host's live lease.
    Fenced,
    /// Refused: another controller holds the lease.
    LeaseHeld,
    Failed(i32),
}

impl OpStatus {
    fn of(status: i32) -> OpStatus {
        match status {
            0 => OpStatus::Done,
            EXIT_FENCED => OpStatus::Fenced,
            EXIT_LEASE_HELD => OpStatus::LeaseHeld,
            other => OpStatus::Failed(other),
        }
    }

    pub fn code(self) -> i32 {
        match self {
            OpStatus::Done => 0,
            OpStatus::Fenced => EXIT_FENCED,
            OpStatus::LeaseHeld => EXIT_LEASE_HELD,
            OpStatus::Failed(code) => code,
        }
    }
}

/// What a lease line said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Acquired,
    Renewed,
    /// Another holder's live lease.
    Held,
    /// This attempt's lease moved on (renewal refused).
    Lost,
    Released,
    NotHeld,
    Free,
    Broken,
    /// `unlock` refused: the holder renewed recently.
    Renewing,
    Other,
}

impl LeaseState {
    fn parse(word: &str) -> LeaseState {
        match word {
            "acquired" => LeaseState::Acquired,
            "renewed" => LeaseState::Renewed,
            "held" => LeaseState::Held,
            "lost" => LeaseState::Lost,
            "released" => LeaseState::Released,
            "notheld" => LeaseState::NotHeld,
            "free" => LeaseState::Free,
            "broken" => LeaseState::Broken,
            "renewing" => LeaseState::Renewing,
            _ => LeaseState::Other,
        }
    }
}

/// A lease line with the fields it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFact {
    pub state: LeaseState,
    pub holder: Option<String>,
    pub generation: Option<u64>,
    /// Epoch seconds by the host's clock.
    pub expires: Option<u64>,
    pub renewed: Option<u64>,
}

impl StepReport {
    /// Reads a round trip's result.
    pub fn read(host: &str, result: &Result<CommandOutput, HostError>) -> StepReport {
        let answer = match result {
            Ok(out) => Answer::Ran(Box::new(HostAnswer::read(out))),
            Err(e @ (HostError::HostKeyChanged { .. } | HostError::HostKeyUnknown { .. })) => {
                Answer::Refused(e.to_string())
            }
            Err(HostError::Cancelled { .. }) => Answer::Cancelled,
            Err(e) => Answer::Unreachable(e.to_string()),
        };
        StepReport {
            host: host.to_string(),
            answer,
        }
    }

    /// The script's answer, when it ran.
    pub fn ran(&self) -> Option<&HostAnswer> {
        match &self.answer {
            Answer::Ran(answer) => Some(answer),
            _ => None,
        }
    }
}

impl HostAnswer {
    pub fn read(out: &CommandOutput) -> HostAnswer {
        let text = out.stdout_text();
        let facts = observe::facts(&text);
        let last = |key: &str| facts.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        HostAnswer {
            exit: out.status,
            ops: observe::steps(&text)
                .into_iter()
                .map(|(name, status)| (Op::parse(&name), OpStatus::of(status)))
                .collect(),
            lease: observe::fact_line(&text, "lease").map(|line| lease_fact(&line)),
            last_lease: last("lease").map(|v| LeaseState::parse(v)),
            fenced: facts.iter().any(|(k, _)| k == "fenced"),
            built: last("build").is_some_and(|v| v == "done"),
            revision: last("revision").cloned(),
            once: once_status(&text),
            removed: facts
                .iter()
                .filter(|(k, _)| k == "removed")
                .map(|(_, id)| id.clone())
                .collect(),
            stopped: facts.iter().filter(|(k, _)| k == "stopped").count(),
            snapshot: text.contains("@@observe ").then(|| observe::parse(&text)),
            timings: observe::step_timings(&text),
            tail: tail(out),
            output: if out.success() {
                String::new()
            } else {
                out.stderr_text().trim_end().to_string()
            },
        }
    }

    pub fn success(&self) -> bool {
        self.exit == 0
    }

    /// The end of what a failed script's commands said; empty when they said nothing.
    pub fn said(&self) -> String {
        if self.output.is_empty() {
            String::new()
        } else {
            self.tail.clone()
        }
    }

    /// How `op` ended, if it ran.
    pub fn op(&self, op: &Op) -> Option<OpStatus> {
        self.ops
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, s)| *s)
    }

    /// The operation that stopped the script, if one failed.
    pub fn failed_op(&self) -> Option<&(Op, OpStatus)> {
        self.ops.iter().find(|(_, s)| *s != OpStatus::Done)
    }

    /// The failing operation in words, `build (exit 2)`, or the script's status.
    pub fn failure(&self) -> String {
        match self.failed_op() {
            Some((op, status)) => format!("{} (exit {})", op.name(), status.code()),
            None => format!("script (exit {})", self.exit),
        }
    }

    /// The observe report, or why there is none.
    pub fn observed(&self) -> Result<&Snapshot, ObserveError> {
        match &self.snapshot {
            Some(Ok(snapshot)) => Ok(snapshot),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ObserveError::Missing),
        }
    }
}

fn lease_fact(line: &[(String, String)]) -> LeaseFact {
    let get = |k: &str| line.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let number = |k: &str| get(k).and_then(|v| v.parse().ok());
    LeaseFact {
        state: get("lease").map_or(LeaseState::Other, |v| LeaseState::parse(v)),
        holder: get("holder").cloned(),
        generation: number("generation"),
        expires: number("expires"),
        renewed: number("renewed"),
    }
}

/// The exit status the host recorded for `once` (`@@convoy once=done status=<n>`).
fn once_status(stdout: &str) -> Option<i32> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.strip_prefix("@@convoy once=done ")?;
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix("status="))?
            .parse()
            .ok()
    })
}

/// The end of a command's output, user output (stderr) first: what an operator needs.
pub fn tail(out: &CommandOutput) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim_end();
    let start = text.len().saturating_sub(ERROR_TAIL);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    let tail = &text[start..];
    if tail.is_empty() {
        format!("exit status {}", out.status)
    } else {
        tail.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            status,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn reads_a_failed_build_round_trip() {
        let answer = HostAnswer::read(&out(
            2,
            "@@convoy lease=acquired holder=a:1 generation=4 expires=99\n\
             @@convoy step=lease_acquire status=0 t0=1.0 t1=1.5\n\
             @@convoy removed=r0 reason=incomplete\n\
             @@convoy revision=abc123\n\
             @@convoy step=fetch status=0\n\
             @@convoy step=build status=2\n",
            "npm: not found\n",
        ));
        assert_eq!(answer.op(&Op::Fetch), Some(OpStatus::Done));
        assert_eq!(answer.failure(), "build (exit 2)");
        assert_eq!(answer.tail, "npm: not found");
        assert_eq!(answer.revision.as_deref(), Some("abc123"));
        assert_eq!(answer.removed, vec!["r0"]);
        assert!(!answer.built);
        let lease = answer.lease.unwrap();
        assert_eq!(
            (lease.state, lease.generation, lease.expires),
            (LeaseState::Acquired, Some(4), Some(99))
        );
        assert_eq!(answer.timings, vec![("lease_acquire".to_string(), 0.5)]);
    }

    #[test]
    fn fences_held_leases_and_once_statuses_are_typed() {
        let answer = HostAnswer::read(&out(
            75,
            "@@convoy once=done status=3\n@@convoy lease=held holder=b:2 expires=5 generation=1\n\
             @@convoy lease=released generation=1\n@@convoy step=switch status=75\n",
            "",
        ));
        assert_eq!(answer.failed_op(), Some(&(Op::Switch, OpStatus::Fenced)));
        assert_eq!(answer.once, Some(3));
        assert_eq!(answer.lease.as_ref().unwrap().state, LeaseState::Held);
        assert_eq!(answer.last_lease, Some(LeaseState::Released));
        assert_eq!(answer.tail, "exit status 75");
        assert!(answer.snapshot.is_none());
    }

    #[test]
    fn transport_errors_are_sorted_by_what_they_mean() {
        let refused = StepReport::read("h", &Err(HostError::HostKeyChanged { host: "h".into() }));
        assert!(matches!(refused.answer, Answer::Refused(_)));
        let cancelled = StepReport::read("h", &Err(HostError::Cancelled { host: "h".into() }));
        assert_eq!(cancelled.answer, Answer::Cancelled);
        let down = StepReport::read(
            "h",
            &Err(HostError::Unreachable {
                host: "h".into(),
                reason: "refused".into(),
            }),
        );
        assert!(matches!(down.answer, Answer::Unreachable(r) if r.contains("refused")));
    }
}
