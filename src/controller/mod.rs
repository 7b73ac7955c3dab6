//! The reconcile loop: `convoy reconcile --once` converges every site once (sites in
//! parallel, each serial), retrying transient trouble (an unreachable required host) with
//! per-site exponential backoff and jitter until `--timeout`; it records status, history and
//! failed attempts in the state dir and maps the result to the documented exit codes.

pub mod daemon;
mod http;
pub mod once_record;
pub mod watch;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::desired::{DesiredSite, DesiredState, FetchSpec};
use crate::execute::{self, Context, Limits, SiteReport};
use crate::exit_code;
use crate::host::ssh::SshPool;
use crate::metrics::Metrics;
use crate::plan::{Outcome, PassState};
use crate::progress::{self, Progress};
use crate::state::{self, Action, HistoryEvent, StateDir};
use crate::status::{HostStatus, Phase, SiteStatus};

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
        Ok(Shared {
            pool: Arc::new(SshPool::new(
                control_dir.clone(),
                options.known_hosts.clone(),
                512,
                MASTER_IDLE,
            )),
            metrics: Arc::new(Metrics::new()),
            cancel: Arc::default(),
            holder: lease_holder(state),
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
pub fn lease_holder(state: &StateDir) -> String {
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
    let id = state.instance_id().unwrap_or_else(|| {
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

/// One pass of one site, with its bookkeeping: history, the resolved revision, failed
/// attempts, metrics. The caller publishes the status (it knows about retries).
pub async fn pass_once(ctx: &Context, site: &DesiredSite, state: &StateDir) -> SiteReport {
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
        revision = state
            .record_revision(&site.name, &site.release, &commit)
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
        .filter(|e| e.action == Action::RolledBack)
        .count();
    for _ in 0..rollbacks {
        ctx.metrics.rolled_back(&site.name);
    }
    record(state, site, &key, &report);
    report
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
    retrying: Option<(u32, Duration)>,
) -> SiteStatus {
    let status = status_of(state, site, report, retrying);
    let _ = state.save_status(&site.name, &status);
    ctx.metrics
        .site_state(&site.name, status.phase, &site.release);
    ctx.metrics.hosts(&site.name, &report.hosts);
    ctx.metrics
        .backoff(&site.name, retrying.map_or(Duration::ZERO, |(_, d)| d));
    status
}

/// Converges one site: passes until it is no longer Blocked or the deadline comes.
pub async fn converge_site(
    ctx: &Context,
    site: &DesiredSite,
    state: &StateDir,
    deadline: Instant,
) -> SiteResult {
    let mut delays = backoff();
    let mut blocked_retries = 0u32;
    loop {
        let report = pass_once(ctx, site, state).await;
        let delay = delays.next().unwrap_or(BACKOFF_MAX);
        let blocked = matches!(report.outcome, Outcome::Blocked { .. });
        if blocked && Instant::now() + delay < deadline && !ctx.cancel.is_cancelled() {
            blocked_retries += 1;
            publish(ctx, state, site, &report, Some((blocked_retries, delay)));
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                () = ctx.cancel.cancelled() => {}
            }
        }
        let status = publish(
            ctx,
            state,
            site,
            &report,
            blocked.then_some((blocked_retries, delay)),
        );
        return SiteResult {
            name: site.name.clone(),
            report,
            status,
        };
    }
}

/// Persists what a pass did: history, the resolved revision, failed attempts.
fn record(state: &StateDir, site: &DesiredSite, key: &str, report: &SiteReport) {
    let mut events: Vec<HistoryEvent> = report
        .events
        .iter()
        .map(|e| {
            let event = HistoryEvent::new(&site.name, &e.release, e.action)
                .host(&e.host)
                .stage(&e.stage);
            match &e.detail {
                Some(detail) => event.detail(detail),
                None => event,
            }
        })
        .collect();
    if let Some(revision) = &report.revision {
        let _ = state.record_revision(&site.name, &site.release, revision);
    }
    match &report.outcome {
        Outcome::Converged | Outcome::Degraded { .. } => {
            let _ = state.reset_attempts(&site.name);
            if !report.events.is_empty() {
                events.push(HistoryEvent::new(
                    &site.name,
                    &site.release,
                    Action::Converged,
                ));
            }
        }
        Outcome::Failed { reason, .. } if report.failed_attempt => {
            let _ = state.record_failure(&site.name, key, &site.release, reason);
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
        let _ = state.append_history(&events);
    }
}

/// The Site's status object after a pass.
fn status_of(
    state: &StateDir,
    site: &DesiredSite,
    report: &SiteReport,
    retrying: Option<(u32, Duration)>,
) -> SiteStatus {
    let (phase, message) = match &report.outcome {
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
            if let Some((retries, delay)) = retrying {
                message.push_str(&format!(
                    "; retry {retries} in {}s (backoff)",
                    delay.as_secs().max(1)
                ));
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
    state: &StateDir,
    options: &RunOptions,
    out: &mut dyn std::io::Write,
) -> u8 {
    let mut shared = match Shared::new(options, state) {
        Ok(shared) => shared,
        Err(e) => {
            let _ = writeln!(
                out,
                "error: failed to create a private directory for SSH control sockets: {e}"
            );
            return exit_code::FAILED;
        }
    };
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        shared.progress = Some(Arc::new(Progress::default()));
    }
    let ctx = context(desired, options, &shared, None);
    let sites: Vec<&DesiredSite> = desired
        .sites
        .values()
        .filter(|s| options.site.as_ref().is_none_or(|name| &s.name == name))
        .collect();
    let started = Instant::now();
    let deadline = started + options.timeout;
    let mut running: FuturesUnordered<_> = sites
        .iter()
        .map(|site| converge_site(&ctx, site, state, deadline))
        .collect();
    let mut codes = vec![];
    let mut finished = BTreeMap::new();
    let total = sites.len();
    let progress = ctx.progress.clone();
    let mut stopped: Option<String> = None;
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut redraw = tokio::time::interval(Duration::from_millis(200));
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut grace_end = None;
        loop {
            let grace = async {
                match grace_end {
                    Some(end) => tokio::time::sleep_until(end).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = running.next() => {
                    let Some(result) = next else { break };
                    if let Some(p) = &progress {
                        p.finish(&result.name);
                        progress::clear(&mut std::io::stderr());
                    }
                    let _ = out.write_all(render_site(&result).as_bytes());
                    let _ = out.flush();
                    codes.push(exit_code_of(&result.report.outcome));
                    finished.insert(result.name.clone(), ());
                }
                () = tokio::time::sleep_until(deadline), if stopped.is_none() => {
                    stopped = Some(format!("--timeout of {}s reached", options.timeout.as_secs()));
                }
                () = recv_signal(&mut sigterm), if stopped.is_none() => stopped = Some("SIGTERM received".into()),
                () = recv_signal(&mut sigint), if stopped.is_none() => stopped = Some("SIGINT received".into()),
                () = grace => break,
                _ = redraw.tick(), if progress.is_some() => {
                    if let Some(p) = &progress {
                        let mut err = std::io::stderr();
                        let _ = write!(err, "\r\x1b[2K{}", p.line(total, 100));
                        let _ = err.flush();
                    }
                }
            }
            if stopped.is_some() && grace_end.is_none() {
                // Every pass abandons its round trips, ends its commands on the hosts and
                // releases its leases; they get a bounded time to do so.
                ctx.cancel.cancel();
                grace_end = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
        }
    }
    if progress.is_some() {
        progress::clear(&mut std::io::stderr());
    }
    drop(running);
    if let Some(why) = &stopped {
        let pending: Vec<&str> = sites
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !finished.contains_key(*n))
            .collect();
        let _ = writeln!(
            out,
            "error: {why}: stopped the commands under way on the hosts and released the leases; unfinished: {}",
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(", ")
            }
        );
        codes.push(exit_code::FAILED);
    }
    if let Some(path) = &options.metrics_textfile
        && let Err(e) = ctx.metrics.write_textfile(path)
    {
        let _ = writeln!(
            out,
            "warning: failed to write metrics textfile `{}`: {e}",
            path.display()
        );
    }
    shared.close().await;
    let code = worst(codes);
    let _ = writeln!(
        out,
        "{} site{} in {:.1}s",
        sites.len(),
        if sites.len() == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    );
    code
}

/// Resolves on the next delivery of a signal whose handler could be installed; never otherwise.
async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => drop(signal.recv().await),
        None => std::future::pending().await,
    }
}

/// One site's block of output: what happened per host, then the phase line.
pub fn render_site(result: &SiteResult) -> String {
    let mut text = String::new();
    let mut per_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for event in &result.report.events {
        let mut line = format!("{} {}", event.action, event.release);
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
