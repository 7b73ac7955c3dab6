//! The reconcile controller: what every pass shares (SSH masters, metrics, the lease name,
//! the execution context) and the rule that tells `--once` from the daemon ([`requeue`]).
//! One pass of one site with its bookkeeping in the state dir is `pass.rs`; the loop that
//! runs passes is `run.rs`, its queue `queue.rs`; `run_once.rs` is `convoy reconcile
//! --once`, which converges every selected site (sites in parallel, each serial), retrying
//! transient trouble (an unreachable required host) with per-site exponential backoff and
//! jitter until `--timeout`, and maps the result to the documented exit codes.
//! `revision.rs` resolves a branch to its commit on the controller; `publish.rs` keeps the
//! Site status objects and their metrics; `log.rs` says what the daemon logs about each pass.

pub mod daemon;
mod depends;
mod from_git;
pub mod git;
mod http;
mod log;
pub mod once_record;
mod pass;
mod publish;
pub mod queue;
mod requests;
mod revision;
mod run;
mod run_once;
pub mod watch;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;

use crate::desired::{DesiredSite, DesiredState};
use crate::execute::{Context, FleetLimits, Limits, SiteReport, groups_in_use};
use crate::exit_code;
use crate::host::Host;
use crate::host::ssh::SshPool;
use crate::metrics::Metrics;
use crate::plan::Outcome;
use crate::progress::Progress;
use crate::state::{self, StateDir};
pub use from_git::load_once as load_git_once;
pub use pass::{Pass, dependencies, pass_once, pass_state, wrote};
pub use publish::{Ending, desired_loaded, interrupted, publish};
use queue::Requeue;
pub use run_once::{SiteResult, render_site, run_once};

/// Knobs of one `reconcile --once` run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub site: Option<String>,
    pub timeout: Duration,
    /// `--once`: how long a site may wait for an unreachable required host.
    pub wait_unreachable: Duration,
    pub max_parallel: usize,
    /// `--max-sites`: sites changed at once (build through switch); `None`: no limit.
    pub max_sites: Option<usize>,
    /// `--max-builds-per-host`: builds at once on one host, across sites.
    pub max_builds_per_host: usize,
    /// known_hosts to use instead of the ssh client's default.
    pub known_hosts: Option<std::path::PathBuf>,
    /// `--once`: also write the metrics here (node_exporter textfile collector).
    pub metrics_textfile: Option<std::path::PathBuf>,
    /// `--once --host`: change only these hosts (observing the rest); empty = every host.
    pub hosts: Vec<String>,
    /// `--once`: the Notifications with their URLs read (the daemon reads them at each
    /// reload).
    pub notifications: Vec<crate::notify::Target>,
}

/// Bounds of the per-site backoff while a required host is unreachable.
const BACKOFF_MIN: Duration = Duration::from_secs(1);

const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a host lease lasts without renewal (renewed every third of it while a round
/// trip runs): a SIGKILLed controller frees its hosts this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How long passes get, after a cancel, to end their commands and release their leases.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long an idle SSH master survives, even if convoy is killed.
const MASTER_IDLE: Duration = Duration::from_secs(30);

/// What outlives one desired state: SSH masters, metrics, the shutdown flag, the lease name.
#[derive(Clone)]
pub struct Shared {
    pub pool: Arc<SshPool>,
    pub metrics: Arc<Metrics>,
    pub cancel: Arc<crate::cancel::Cancel>,
    pub holder: String,
    /// Prints host events as they happen (`--once`: stdout, and a status line on a
    /// terminal; the daemon: its log).
    pub progress: Option<Arc<Progress>>,
    control_dir: std::path::PathBuf,
}

impl Shared {
    pub fn new(options: &RunOptions, state: &StateDir) -> std::io::Result<Self> {
        let control_dir = crate::host::private_control_dir()?;
        let metrics = Arc::new(Metrics::new());
        Ok(Shared {
            pool: Arc::new(SshPool::new(
                control_dir.clone(),
                options.known_hosts.clone(),
                512,
                MASTER_IDLE,
            )),
            holder: lease_holder(state, &metrics),
            metrics,
            cancel: Arc::default(),
            progress: None,
            control_dir,
        })
    }

    /// Closes every SSH master and removes their control directory.
    pub async fn close(&self) {
        self.pool.close_all().await;
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

/// Builds the execution context for one desired state.
/// `previous`: the context of the desired state this one replaces (daemon reloads), whose
/// concurrency limits carry over so running passes still count toward them.
pub fn context(
    desired: &DesiredState,
    options: &RunOptions,
    shared: &Shared,
    previous: Option<&Context>,
) -> Context {
    let fleet = FleetLimits {
        max_parallel: options.max_parallel,
        max_sites: options.max_sites,
        max_builds_per_host: options.max_builds_per_host,
    };
    let groups = groups_in_use(desired);
    let sites: BTreeMap<String, usize> = desired
        .sites
        .values()
        .map(|s| (s.name.clone(), s.rollout.max_parallel))
        .collect();
    let limits = match previous {
        Some(previous) => previous
            .limits
            .carried_over(&fleet, &groups, desired.hosts.keys()),
        None => Limits::new(&fleet, &groups, desired.hosts.keys()),
    }
    .with_sites(&sites, previous.map(|p| &p.limits));
    shared.metrics.show_limits(Arc::new(limits.clone()));
    Context {
        pool: shared.pool.clone(),
        hosts: desired.hosts.clone(),
        limits,
        holder: shared.holder.clone(),
        lease_ttl: LEASE_TTL,
        command_timeout: options.timeout,
        observe_timeout: Duration::from_secs(60),
        metrics: shared.metrics.clone(),
        cancel: shared.cancel.clone(),
        progress: shared.progress.clone(),
        targets: (!options.hosts.is_empty()).then(|| options.hosts.iter().cloned().collect()),
        commit: desired.commit.clone(),
    }
}

/// This controller's name in host leases: the machine plus a fingerprint of its state dir,
/// as a safe word (host-side scripts accept only `[A-Za-z0-9._-]`). It stays the same across
/// runs on one state dir: the state-dir lock already proves an earlier holder with this name
/// is gone, so a controller killed mid-pass never blocks the next run until its lease expires.
/// An id that cannot be saved is reported (and counted in `metrics`); the state dir's path
/// stands in for it.
pub fn lease_holder(state: &StateDir, metrics: &Metrics) -> String {
    let machine: String = state::controller_id()
        .split(':')
        .next()
        .unwrap_or("convoy")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = wrote(metrics, "instance", state.instance_id())
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let dir =
                std::fs::canonicalize(state.path()).unwrap_or_else(|_| state.path().to_path_buf());
            fnv1a(&dir.display().to_string())[..8].to_string()
        });
    format!("{machine}-{id}")
}

fn fnv1a(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Fingerprint of everything that makes up a site's desired state: a change lifts a hold.
pub fn desired_key(site: &DesiredSite) -> String {
    // Over the debug form: stable for a given convoy build, no extra crate.
    fnv1a(&format!("{site:?}"))
}

/// A fresh per-site backoff: exponential with jitter, 1s to 30s.
pub fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// How the loop runs: `reconcile --once` or the long-running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Once,
    Daemon,
}

/// Whether and how a site runs again after a pass with `outcome`: the whole difference
/// between `--once` and the daemon. (Besides this, `--once` ends when nothing is left to
/// run or at `--timeout`, and the daemon also runs sites on changes and resyncs.)
pub fn requeue(outcome: &Outcome, mode: Mode, hosts: &BTreeMap<String, Host>) -> Requeue {
    let probing = |names: &[String]| Requeue::Backoff {
        probes: names
            .iter()
            .filter_map(|h| daemon::probe_target(hosts.get(h)?))
            .collect(),
    };
    match (mode, outcome) {
        // An unreachable required host may come back: retry on backoff until the deadline.
        (Mode::Once, Outcome::Blocked { .. }) => Requeue::Backoff { probes: vec![] },
        // The daemon also probes the hosts, so a server that boots catches up in seconds,
        (Mode::Daemon, Outcome::Blocked { hosts, .. }) => probing(hosts),
        // and retries the optional hosts a Degraded pass skipped or that failed within
        // rollout.maxFailed (--once reports and ends); only unreachable ones are probed.
        (Mode::Daemon, Outcome::Degraded { skipped, .. }) => probing(skipped),
        // Converged, Failed (the failure hold decides about the next attempt), Progressing,
        // Suspended: --once is done with the site; the daemon waits for a change or a resync.
        // Waiting (dependsOn): the loop runs it again when a site it waits for ends a pass.
        _ => Requeue::Done,
    }
}

/// Whether `site` deploys to any of `hosts`: `--host` skips the sites that do not.
pub fn uses_any(site: &DesiredSite, hosts: &[String]) -> bool {
    site.stages
        .iter()
        .flat_map(|s| &s.hosts)
        .any(|h| hosts.contains(h))
}

/// `--once --host`: a site Blocked only by reachable hosts that no lease holds waits for
/// hosts the run may not change (a required host without the build, an earlier stage not
/// live): only another run changes them, so retrying until `--wait-unreachable` would
/// only delay the exit. An unreachable or locked host may still come back or be freed.
pub fn waits_for_another_run(report: &SiteReport) -> bool {
    let Outcome::Blocked { hosts, .. } = &report.outcome else {
        return false;
    };
    report.lease_expires_in.is_none()
        && hosts.iter().all(|name| {
            report
                .hosts
                .iter()
                .any(|h| &h.name == name && h.reachable && h.last_error.is_none())
        })
}

/// What a Blocked site's status says about its next retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Nothing to say.
    None,
    /// Retry `n` comes after `delay`.
    Due { n: u32, delay: Duration },
    /// Retry `n` will not come, because of `why` (the run stops, or the deadline is first).
    Dropped { n: u32, why: String },
}

/// Exit code of a site: 1 for Failed, Blocked or unfinished; 3 for Degraded; else 0.
pub fn exit_code_of(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Converged | Outcome::Suspended => exit_code::OK,
        Outcome::Degraded { .. } => exit_code::DEGRADED,
        // A site left waiting for a dependency did not converge.
        Outcome::Blocked { .. }
        | Outcome::Failed { .. }
        | Outcome::Progressing
        | Outcome::Waiting { .. } => exit_code::FAILED,
    }
}

/// Worst first: 1 > 3 > 0.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    codes
        .into_iter()
        .max_by_key(|c| match *c {
            exit_code::FAILED => 3,
            exit_code::DEGRADED => 2,
            exit_code::OK => 1,
            _ => 4,
        })
        .unwrap_or(exit_code::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_holds_the_whole_difference_between_once_and_the_daemon() {
        let blocked = Outcome::Blocked {
            hosts: vec!["a".into(), "b".into()],
            reason: "unreachable".into(),
        };
        let degraded = Outcome::Degraded {
            skipped: vec!["b".into()],
            failed: vec![],
        };
        let degraded_by_failures = Outcome::Degraded {
            skipped: vec![],
            failed: vec!["c".into()],
        };
        let failed = Outcome::Failed {
            reason: "build failed".into(),
            host: Some("a".into()),
        };
        let hosts: BTreeMap<String, Host> = BTreeMap::new();
        let backoff = Requeue::Backoff { probes: vec![] };
        let rows = [
            (Outcome::Converged, Requeue::Done, Requeue::Done),
            (Outcome::Progressing, Requeue::Done, Requeue::Done),
            (Outcome::Suspended, Requeue::Done, Requeue::Done),
            // dependsOn: run again when the dependency's pass ends, not on a timer.
            (
                Outcome::Waiting { on: vec![] },
                Requeue::Done,
                Requeue::Done,
            ),
            (failed, Requeue::Done, Requeue::Done),
            (degraded, Requeue::Done, backoff.clone()),
            (degraded_by_failures, Requeue::Done, backoff.clone()),
            (blocked, backoff.clone(), backoff.clone()),
        ];
        for (outcome, once, daemon) in rows {
            assert_eq!(requeue(&outcome, Mode::Once, &hosts), once, "{outcome:?}");
            assert_eq!(
                requeue(&outcome, Mode::Daemon, &hosts),
                daemon,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn a_host_run_retries_only_waits_that_may_end_by_themselves() {
        let host = |name: &str, reachable: bool, error: Option<&str>| crate::status::HostStatus {
            name: name.into(),
            stage: "web".into(),
            release: None,
            reachable,
            last_error: error.map(String::from),
        };
        let report = |hosts: Vec<crate::status::HostStatus>, locked: bool| SiteReport {
            outcome: Outcome::Blocked {
                hosts: vec!["a".into()],
                reason: "waiting".into(),
            },
            hosts,
            events: vec![],
            revision: None,
            failed_attempt: false,
            lease_expires_in: locked.then_some(Duration::from_secs(5)),
        };
        // (case, report, waits for another run)
        let rows = [
            (
                "reachable, not built",
                report(vec![host("a", true, None)], false),
                true,
            ),
            (
                "unreachable",
                report(vec![host("a", false, Some("refused"))], false),
                false,
            ),
            (
                "locked by another controller",
                report(vec![host("a", true, Some("locked by x"))], true),
                false,
            ),
        ];
        for (case, report, expected) in rows {
            assert_eq!(waits_for_another_run(&report), expected, "{case}");
        }
        let converged = SiteReport {
            outcome: Outcome::Converged,
            ..report(vec![], false)
        };
        assert!(!waits_for_another_run(&converged));
    }

    #[test]
    fn the_backoff_grows_from_one_second_to_thirty_with_jitter() {
        let delays: Vec<Duration> = backoff().take(12).collect();
        assert!(delays.iter().all(|d| *d >= BACKOFF_MIN), "{delays:?}");
        // Jitter adds up to one more delay on top of the cap.
        assert!(delays.iter().all(|d| *d <= 2 * BACKOFF_MAX), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(2), "{delays:?}");
        assert!(delays[11] >= BACKOFF_MAX, "{delays:?}");
    }
}
