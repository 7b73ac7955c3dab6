//! The reconcile controller: one pass of one site ([`pass_once`]) with its bookkeeping in
//! the state dir, and the rule that tells `--once` from the daemon ([`requeue`]). The loop
//! that runs passes is `run.rs`, its queue `queue.rs`; `convoy reconcile --once` converges
//! every selected site (sites in parallel, each serial), retrying transient trouble (an
//! unreachable required host) with per-site exponential backoff and jitter until
//! `--timeout`, and maps the result to the documented exit codes.

pub mod daemon;
mod http;
pub mod once_record;
pub mod queue;
mod run;
pub mod watch;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use crate::desired::{DesiredSite, DesiredState, FetchSpec};
use crate::execute::{self, Context, Limits, SiteReport};
use crate::exit_code;
use crate::host::Host;
use crate::host::ssh::SshPool;
use crate::metrics::Metrics;
use crate::plan::{Outcome, PassState};
use crate::progress::{self, Progress};
use crate::state::{self, Action, HistoryEvent, StateDir, StateError};
use crate::status::{HostStatus, Phase, SiteStatus};
use queue::Requeue;
use run::{Controller, Out, Sources};

/// Knobs of one `reconcile --once` run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub site: Option<String>,
    pub timeout: Duration,
    pub max_parallel: usize,
    /// known_hosts to use instead of the ssh client's default.
    pub known_hosts: Option<std::path::PathBuf>,
    /// `--once`: also write the metrics here (node_exporter textfile collector).
    pub metrics_textfile: Option<std::path::PathBuf>,
}

/// A site's result as the run reports it.
pub struct SiteResult {
    pub name: String,
    pub report: SiteReport,
    pub status: SiteStatus,
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
    /// Set when a terminal watches a `--once` run.
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
    Context {
        pool: shared.pool.clone(),
        hosts: desired.hosts.clone(),
        limits: match previous {
            Some(previous) => previous
                .limits
                .carried_over(options.max_parallel, &desired.group_limits),
            None => Limits::new(options.max_parallel, &desired.group_limits),
        },
        holder: shared.holder.clone(),
        lease_ttl: LEASE_TTL,
        command_timeout: options.timeout,
        observe_timeout: Duration::from_secs(60),
        metrics: shared.metrics.clone(),
        cancel: shared.cancel.clone(),
        progress: shared.progress.clone(),
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
        // and retries the optional hosts a Degraded pass skipped (--once reports and ends).
        (Mode::Daemon, Outcome::Degraded { skipped }) => probing(skipped),
        // Converged, Failed (the failure hold decides about the next attempt), Progressing,
        // Suspended: --once is done with the site; the daemon waits for a change or a resync.
        _ => Requeue::Done,
    }
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

/// A failed state-dir write: one stderr line naming the file and the OS error, and one more
/// in `convoy_state_write_errors_total{kind}`. Returns the error's message.
pub fn wrote<T>(
    metrics: &Metrics,
    kind: &'static str,
    result: Result<T, StateError>,
) -> Result<T, String> {
    result.map_err(|e| {
        let message = state::error_chain(&e);
        metrics.state_write_failed(kind);
        eprintln!("error: {message}");
        message
    })
}

/// One pass's report, and what its bookkeeping could not record.
pub struct Pass {
    pub report: SiteReport,
    /// Set when the pass was a failed attempt that could not be recorded: the failure hold
    /// did not count it.
    pub hold_lost: Option<String>,
}

/// One pass of one site, with its bookkeeping: history, the resolved revision, failed
/// attempts, metrics. The caller publishes the status (it knows about retries).
pub async fn pass_once(ctx: &Context, site: &DesiredSite, state: &StateDir) -> Pass {
    let key = desired_key(site);
    let attempts = state.attempts(&site.name, &key).attempts;
    let once_done = state
        .history(&site.name)
        .into_iter()
        .filter(|e| e.action == Action::OnceRan && e.release == site.release)
        .filter_map(|e| e.stage)
        .collect();
    let pass = PassState {
        attempts,
        once_done,
        ..PassState::default()
    };
    // From now on this Release's revision is fixed: a later edit is a validation error.
    let _ = state.record_applied_revision(&site.name, &site.release, &site.revision);
    let mut revision = state.revision(&site.name, &site.release);
    if revision.is_none()
        && let FetchSpec::Git { repository } = &site.fetch
        && let Some(commit) = resolve_revision(repository, &site.revision).await
    {
        // One commit per release, decided once: every host builds exactly this.
        let recorded = state.record_revision(&site.name, &site.release, &commit);
        revision = wrote(&ctx.metrics, "revisions", recorded)
            .ok()
            .or(Some(commit));
    }
    let started = Instant::now();
    let mut report = execute::reconcile_site(ctx, site, pass, revision).await;
    once_record::explain(ctx, site, &mut report).await;
    ctx.metrics
        .reconciled(&site.name, &report.outcome, started.elapsed());
    let rollbacks = report
        .events
        .iter()
        .filter(|e| e.kind == Action::RolledBack)
        .count();
    for _ in 0..rollbacks {
        ctx.metrics.rolled_back(&site.name);
    }
    let hold_lost = record(ctx, state, site, &key, &report);
    Pass { report, hold_lost }
}

/// Resolves a branch or tag to its commit on the controller (`git ls-remote`), so that all
/// hosts build the same commit even if the branch moves during the rollout. `None` when the
/// revision is already a full commit id, or the controller cannot reach the repository (the
/// first host that fetches resolves it then, and the state dir records it).
async fn resolve_revision(repository: &str, revision: &str) -> Option<String> {
    if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut git = tokio::process::Command::new("git");
    git.args(["ls-remote", "--", repository, revision])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        git.env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=10",
        );
    }
    let out = tokio::time::timeout(Duration::from_secs(20), git.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    pick_commit(&String::from_utf8_lossy(&out.stdout), revision)
}

/// From `git ls-remote` output: a peeled tag first, then the tag, then the branch.
fn pick_commit(listing: &str, revision: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    [
        format!("refs/tags/{revision}^{{}}"),
        format!("refs/tags/{revision}"),
        format!("refs/heads/{revision}"),
        revision.to_string(),
    ]
    .iter()
    .find_map(|wanted| refs.iter().find(|(_, name)| name == wanted))
    .map(|(sha, _)| sha.to_string())
    .filter(|sha| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Saves the Site's status and mirrors it into the metrics.
pub fn publish(
    ctx: &Context,
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    retry: &Retry,
    hold_lost: Option<&str>,
) -> SiteStatus {
    let status = status_of(state, site, report, retry, hold_lost);
    let _ = wrote(
        &ctx.metrics,
        "status",
        state.save_status(&site.name, &status),
    );
    ctx.metrics
        .site_state(&site.name, status.phase, &site.release);
    ctx.metrics.hosts(&site.name, &report.hosts);
    let backoff = match retry {
        Retry::Due { delay, .. } => *delay,
        _ => Duration::ZERO,
    };
    ctx.metrics.backoff(&site.name, backoff);
    status
}

/// Persists what a pass did: history, the resolved revision, failed attempts. A write that
/// fails is reported and counted; the one of a failed attempt is returned too, for the
/// status and the exit code.
fn record(
    ctx: &Context,
    state: &StateDir,
    site: &DesiredSite,
    key: &str,
    report: &SiteReport,
) -> Option<String> {
    let metrics = &ctx.metrics;
    let mut hold_lost = None;
    let mut events: Vec<HistoryEvent> = report
        .events
        .iter()
        .map(|e| {
            let event = HistoryEvent::new(&site.name, &e.release, e.kind)
                .host(&e.host)
                .stage(&e.stage);
            match &e.detail {
                Some(detail) => event.detail(detail),
                None => event,
            }
        })
        .collect();
    if let Some(revision) = &report.revision {
        let recorded = state.record_revision(&site.name, &site.release, revision);
        let _ = wrote(metrics, "revisions", recorded);
    }
    match &report.outcome {
        Outcome::Converged | Outcome::Degraded { .. } => {
            let _ = wrote(metrics, "attempts", state.reset_attempts(&site.name));
            if !report.events.is_empty() {
                events.push(HistoryEvent::new(
                    &site.name,
                    &site.release,
                    Action::Converged,
                ));
            }
        }
        Outcome::Failed { reason, .. } if report.failed_attempt => {
            let recorded = state.record_failure(&site.name, key, &site.release, reason);
            hold_lost = wrote(metrics, "attempts", recorded).err();
        }
        Outcome::Blocked { hosts, reason } if !report.events.is_empty() => {
            events.push(
                HistoryEvent::new(&site.name, &site.release, Action::Blocked)
                    .detail(format!("{reason}: {}", hosts.join(", "))),
            );
        }
        _ => {}
    }
    if !events.is_empty() {
        let _ = wrote(metrics, "history", state.append_history(&events));
    }
    hold_lost
}

/// The Site's status object after a pass.
fn status_of(
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    retry: &Retry,
    hold_lost: Option<&str>,
) -> SiteStatus {
    let (phase, mut message) = match &report.outcome {
        Outcome::Converged => (
            Phase::Converged,
            format!("every host runs {}", site.release),
        ),
        Outcome::Progressing => (Phase::Progressing, "rollout under way".to_string()),
        Outcome::Degraded { skipped } => (
            Phase::Degraded,
            format!(
                "every reachable host runs {}; optional hosts unreachable: {}",
                site.release,
                skipped.join(", ")
            ),
        ),
        Outcome::Blocked { hosts, reason } => {
            let mut message = format!("{reason}: {}", hosts.join(", "));
            match retry {
                Retry::None => {}
                Retry::Due { n, delay } => message.push_str(&format!(
                    "; retry {n} in {}s (backoff)",
                    delay.as_secs().max(1)
                )),
                Retry::Dropped { n, why } => {
                    message.push_str(&format!("; no retry {n} (backoff): {why}"));
                }
            }
            (Phase::Blocked, message)
        }
        Outcome::Failed { reason, host } => (
            Phase::Failed,
            match host {
                Some(host) => format!("{reason} (host {host})"),
                None => reason.clone(),
            },
        ),
        Outcome::Suspended => (
            Phase::Suspended,
            "suspended: observed only, nothing changed".to_string(),
        ),
    };
    if let Some(error) = hold_lost {
        message.push_str(&format!(
            "; this failed attempt was not recorded, the failure hold does not count it: {error}"
        ));
    }
    let previous = state.load_status(&site.name);
    let last_transition_time = match &previous {
        Some(p) if p.phase == phase && p.desired_release == site.release => {
            p.last_transition_time.clone()
        }
        _ => Some(state::now_rfc3339()),
    };
    SiteStatus {
        phase,
        desired_release: site.release.clone(),
        revision: report
            .revision
            .clone()
            .or_else(|| state.revision(&site.name, &site.release)),
        message,
        attempts: state.attempts(&site.name, &desired_key(site)).attempts,
        last_transition_time,
        hosts: report
            .hosts
            .iter()
            .map(|h| HostStatus {
                name: h.name.clone(),
                stage: h.stage.clone(),
                release: h.release.clone(),
                reachable: h.reachable,
                last_error: h.last_error.clone(),
            })
            .collect(),
    }
}

/// Exit code of a site: 1 for Failed, Blocked or unfinished; 3 for Degraded; else 0.
pub fn exit_code_of(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Converged | Outcome::Suspended => exit_code::OK,
        Outcome::Degraded { .. } => exit_code::DEGRADED,
        Outcome::Blocked { .. } | Outcome::Failed { .. } | Outcome::Progressing => {
            exit_code::FAILED
        }
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

/// `convoy reconcile --once`: every selected site, in parallel; prints each site's block
/// (per host, never interleaved) as it finishes. Returns the exit code.
pub async fn run_once(
    desired: &DesiredState,
    state: Arc<StateDir>,
    options: &RunOptions,
    out: &mut dyn std::io::Write,
) -> u8 {
    let mut shared = match Shared::new(options, &state) {
        Ok(shared) => shared,
        Err(e) => {
            let _ = writeln!(
                out,
                "error: failed to create a private directory for SSH control sockets: {e}"
            );
            return exit_code::FAILED;
        }
    };
    if std::io::stderr().is_terminal() {
        shared.progress = Some(Arc::new(Progress::default()));
    }
    let mut desired = desired.clone();
    if let Some(only) = &options.site {
        desired.sites.retain(|name, _| name == only);
    }
    let sites: Vec<String> = desired.sites.keys().cloned().collect();
    let ctx = context(&desired, options, &shared, None);
    let started = Instant::now();
    let progress = shared.progress.clone();
    let mut controller = Controller::new(Mode::Once, state, shared, Out::Print(out));
    controller.deadline = Some((started + options.timeout, options.timeout));
    controller.desired = Some(Arc::new(desired));
    controller.ctx = Some(Arc::new(ctx));
    controller.enqueue(sites.iter().cloned());
    use tokio::signal::unix::{SignalKind, signal};
    let mut sources = Sources {
        sigterm: signal(SignalKind::terminate()).ok(),
        sigint: signal(SignalKind::interrupt()).ok(),
        redraw: progress
            .is_some()
            .then(|| tokio::time::interval(Duration::from_millis(200))),
        ..Sources::default()
    };
    let stopped = controller.run(&mut sources).await;
    if let Some(why) = &stopped {
        // Every pass abandons its round trips, ends its commands on the hosts and releases
        // its leases; they get a bounded time to do so.
        controller.stop(why, &mut sources, STOP_GRACE).await;
    }
    if progress.is_some() {
        progress::clear(&mut std::io::stderr());
    }
    let mut codes: Vec<u8> = controller.codes.values().copied().collect();
    if let Some(why) = &stopped {
        let pending: Vec<&str> = sites
            .iter()
            .map(String::as_str)
            .filter(|n| !controller.codes.contains_key(*n))
            .collect();
        controller.say(&format!(
            "error: {why}: stopped the commands under way on the hosts and released the leases; unfinished: {}",
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(", ")
            }
        ));
        codes.push(exit_code::FAILED);
    }
    if let Some(path) = &options.metrics_textfile
        && let Err(e) = controller.shared.metrics.write_textfile(path)
    {
        controller.say(&format!(
            "warning: failed to write metrics textfile `{}`: {e}",
            path.display()
        ));
    }
    controller.shared.close().await;
    controller.say(&format!(
        "{} site{} in {:.1}s",
        sites.len(),
        if sites.len() == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    ));
    worst(codes)
}

/// One site's block of output: what happened per host, then the phase line.
pub fn render_site(result: &SiteResult) -> String {
    let mut text = String::new();
    let mut per_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for event in &result.report.events {
        let mut line = format!("{} {}", event.kind, event.release);
        if let Some(detail) = &event.detail {
            line.push_str(": ");
            line.push_str(detail.lines().last().unwrap_or(""));
        }
        per_host.entry(&event.host).or_default().push(line);
    }
    for host in &result.report.hosts {
        let lines = per_host.remove(host.name.as_str()).unwrap_or_default();
        let live = host.release.as_deref().unwrap_or("-");
        let state = if host.reachable {
            format!("live {live}")
        } else {
            "unreachable".to_string()
        };
        text.push_str(&format!(
            "{}: {} ({}): {state}\n",
            result.name, host.name, host.stage
        ));
        let explained = result
            .report
            .events
            .iter()
            .any(|e| e.host == host.name && e.detail.is_some());
        for line in lines {
            text.push_str(&format!("    {line}\n"));
        }
        if let (Some(error), false) = (&host.last_error, explained) {
            let tail: Vec<&str> = error.lines().rev().take(5).collect();
            for line in tail.into_iter().rev() {
                text.push_str(&format!("    | {line}\n"));
            }
        }
    }
    let status = &result.status;
    text.push_str(&format!(
        "{}: {:?}: {}\n",
        result.name, status.phase, status.message
    ));
    if status.phase == Phase::Degraded {
        text.push_str(&format!("warning: {}: {}\n", result.name, status.message));
    }
    text
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
            (failed, Requeue::Done, Requeue::Done),
            (degraded, Requeue::Done, backoff.clone()),
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
    fn the_backoff_grows_from_one_second_to_thirty_with_jitter() {
        let delays: Vec<Duration> = backoff().take(12).collect();
        assert!(delays.iter().all(|d| *d >= BACKOFF_MIN), "{delays:?}");
        // Jitter adds up to one more delay on top of the cap.
        assert!(delays.iter().all(|d| *d <= 2 * BACKOFF_MAX), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(2), "{delays:?}");
        assert!(delays[11] >= BACKOFF_MAX, "{delays:?}");
    }

    #[test]
    fn ls_remote_prefers_the_peeled_tag_then_the_tag_then_the_branch() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let listing = format!("{a}\trefs/heads/v1\n{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n");
        assert_eq!(pick_commit(&listing, "v1"), Some(c.clone()));
        let listing = format!("{a}\trefs/heads/main\n{b}\trefs/heads/main-old\n");
        assert_eq!(pick_commit(&listing, "main"), Some(a));
        assert_eq!(pick_commit("", "main"), None);
        assert_eq!(pick_commit("garbage\n", "main"), None);
    }

    #[tokio::test]
    async fn a_full_commit_id_needs_no_resolution() {
        assert_eq!(
            resolve_revision("/nonexistent", &"f".repeat(40)).await,
            None
        );
        assert_eq!(
            resolve_revision("/nonexistent/repo", "main").await,
            None,
            "unreachable repository: hosts resolve"
        );
    }
}
