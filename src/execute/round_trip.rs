//! One round trip to one host under the limits: permits, the lease renewed in the
//! background while it lasts, cancellation, metrics, and the answer read into a
//! [`StepReport`]. Also the round trips every pass makes whatever its steps: observe,
//! take a lease, and give the leases back at the end.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::limits::{BuildPermit, Permits};
use super::{Book, SiteRun};
use crate::host::protocol::{Answer, LeaseState, OpStatus, StepReport};
use crate::host::script::{Fence, Script};
use crate::host::{Host, HostError, RemoteCommand};
use crate::plan::{self, Reach};

/// Bound for the round trip that ends a pass's commands and releases its lease on a host.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

impl SiteRun<'_> {
    pub(super) fn host(&self, name: &str) -> &Host {
        &self.ctx.hosts[name]
    }

    pub(super) fn path_on(&self, host: &str) -> String {
        self.host(host).path(&self.site.path)
    }

    /// Runs `command` on `host` under the limits (no build permit: see [`SiteRun::run_build`]).
    /// `leased`: the script takes the lease (or holds it): the lease is renewed in the
    /// background while the round trip lasts, and released at the end of the pass. A cancel
    /// abandons the round trip at once.
    pub(super) async fn run_on(
        &self,
        host: &str,
        command: RemoteCommand,
        leased: bool,
    ) -> StepReport {
        match self.permits(host, BuildPermit::None).await {
            Ok(permits) => self.run_holding(host, command, leased, permits).await,
            Err(cancelled) => cancelled,
        }
    }

    /// A build round trip: as [`SiteRun::run_on`], holding the host's build permit too.
    pub(super) async fn run_build(&self, host: &str, command: RemoteCommand) -> StepReport {
        match self.permits(host, BuildPermit::Wait).await {
            Ok(permits) => self.run_holding(host, command, true, permits).await,
            Err(cancelled) => cancelled,
        }
    }

    /// The round trip's permits, or the report of a cancel that came first.
    async fn permits(&self, host: &str, build: BuildPermit) -> Result<Permits, StepReport> {
        let group = &self.membership[host].1;
        tokio::select! {
            permits = self.ctx.limits.acquire(&self.site_limit, host, group, build) => Ok(permits),
            () = self.ctx.cancel.cancelled() => Err(StepReport::read(
                host,
                &Err(HostError::Cancelled { host: host.to_string() }),
            )),
        }
    }

    /// Runs `command` while `_permits` are held.
    async fn run_holding(
        &self,
        host: &str,
        command: RemoteCommand,
        leased: bool,
        _permits: Permits,
    ) -> StepReport {
        let cancelled = || HostError::Cancelled {
            host: host.to_string(),
        };
        let held_before = self.mark_leased(host, leased);
        let started = Instant::now();
        let work = self.host(host).run(&self.ctx.pool, &command);
        tokio::pin!(work);
        let every = self.renew_every();
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                () = self.ctx.cancel.cancelled() => break Err(cancelled()),
                _ = renew.tick(), if leased => self.renew(host).await,
            }
        };
        let report = StepReport::read(host, &result);
        self.track_lease(&report, held_before);
        self.count(&report, started.elapsed());
        report
    }

    /// Notes that this round trip may take the lease; returns whether it was held before.
    fn mark_leased(&self, host: &str, leased: bool) -> bool {
        let mut leases = self.leased.lock().expect("not poisoned");
        let before = leases.contains(host);
        if leased {
            leases.insert(host.to_string());
        }
        before
    }

    /// The last word on the lease in a round trip decides whether the pass still holds it;
    /// without one (e.g. a build skipped because the release was there) nothing changed.
    fn track_lease(&self, report: &StepReport, held_before: bool) {
        let Some(answer) = report.ran() else { return };
        let host = report.host.clone();
        let mut leases = self.leased.lock().expect("not poisoned");
        match answer.last_lease {
            Some(LeaseState::Acquired | LeaseState::Renewed) => drop(leases.insert(host)),
            Some(_) => drop(leases.remove(&host)),
            None if !held_before => drop(leases.remove(&host)),
            None => {}
        }
    }

    fn count(&self, report: &StepReport, elapsed: Duration) {
        let metrics = &self.ctx.metrics;
        match &report.answer {
            Answer::Ran(answer) => {
                for (op, seconds) in &answer.timings {
                    metrics.operation(op, Duration::from_secs_f64(*seconds));
                }
                for (op, status) in &answer.ops {
                    if *status != OpStatus::Done {
                        metrics.operation_failed(&self.site.name, op.name());
                    }
                }
            }
            _ => metrics.operation_failed(&self.site.name, "connect"),
        }
        metrics.operation("round_trip", elapsed);
    }

    /// A third of the lease time: two renewals may fail before the lease expires.
    fn renew_every(&self) -> Duration {
        (self.ctx.lease_ttl / 3).max(Duration::from_secs(1))
    }

    /// Extends this pass's lease on `host` while a long round trip runs there. Best effort:
    /// the host itself refuses a build or switch whose lease was lost.
    async fn renew(&self, host: &str) {
        let every = self.renew_every();
        let script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .lease_renew(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .finish();
        let command = RemoteCommand::new(script, every);
        let result =
            tokio::time::timeout(every, self.host(host).run(&self.ctx.pool, &command)).await;
        if let Ok(Ok(out)) = result
            && out.success()
        {
            self.renewed
                .lock()
                .expect("not poisoned")
                .insert(host.to_string(), Instant::now());
        }
    }

    /// Observes every host in one round trip each. With `speculate`, a host that lacks the
    /// desired release also builds it in the same round trip if its build permit is free
    /// now (a host whose permit is taken is only observed, and built by a build step that
    /// waits for it). Each report says whether its round trip could build.
    pub(super) async fn observe_hosts(&self, speculate: bool) -> Vec<(StepReport, bool)> {
        let hosts: Vec<&String> = self.membership.keys().collect();
        // `--host`: the others are only observed.
        let speculate_on: BTreeSet<&String> = {
            let book = self.book();
            hosts
                .iter()
                .copied()
                .filter(|h| speculate && plan::targeted(&book.pass, h))
                .collect()
        };
        let speculate_on = &speculate_on;
        join_all(hosts.iter().map(|host| async move {
            let speculate = speculate_on.contains(host);
            let build = if speculate {
                BuildPermit::IfFree
            } else {
                BuildPermit::None
            };
            let permits = match self.permits(host, build).await {
                Ok(permits) => permits,
                Err(cancelled) => return (cancelled, false),
            };
            let builds = permits.may_build && speculate;
            let command = if builds {
                self.speculative_build(host)
            } else {
                RemoteCommand::new(
                    Script::new(&self.path_on(host))
                        .observe_release(&self.site.release)
                        .finish(),
                    self.ctx.observe_timeout,
                )
            };
            (
                self.run_holding(host, command, builds, permits).await,
                builds,
            )
        }))
        .await
    }

    /// The fence for `host`, taking the lease first if this pass has not yet (a host that
    /// needed no build), or not for half a lease time. `None` when the host is unreachable
    /// or held by someone else.
    pub(super) async fn fence(&self, host: &str) -> Option<Fence> {
        let renewed = self
            .renewed
            .lock()
            .expect("not poisoned")
            .get(host)
            .copied();
        let fresh = {
            let book = self.book();
            let recent = book.taken.get(host).is_some_and(|taken| {
                renewed.map_or(*taken, |r| r.max(*taken)).elapsed() < self.ctx.lease_ttl / 2
            });
            recent && book.pass.fences.contains_key(host)
        };
        if !fresh {
            let script = Script::for_attempt(&self.path_on(host), &self.attempt)
                .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
                .finish();
            let command = RemoteCommand::new(script, self.ctx.observe_timeout);
            let reports = [self.run_on(host, command, true).await];
            let mut book = self.book();
            let Book { observed, pass, .. } = &mut *book;
            let events = plan::fold_lease(self.site, observed, pass, &reports);
            self.record(&mut book, &reports, events);
        }
        self.book().pass.fences.get(host).map(|generation| Fence {
            holder: self.ctx.holder.clone(),
            generation: *generation,
        })
    }

    /// Every exit of a pass but SIGKILL: end the commands this pass started on its hosts
    /// and give their leases back, so another controller never waits for an expiry.
    pub(super) async fn release_leases(&self) {
        let hosts: Vec<String> = {
            let book = self.book();
            std::mem::take(&mut *self.leased.lock().expect("not poisoned"))
                .into_iter()
                .filter(|h| !matches!(book.observed.get(h), Some(Reach::Refused { .. })))
                .collect()
        };
        let this = self;
        let reports = join_all(hosts.iter().map(|host| async move {
            let script = Script::for_attempt(&this.path_on(host), &this.attempt)
                .stop()
                .lease_release(&this.ctx.holder);
            let command = RemoteCommand::of(script, RELEASE_TIMEOUT);
            let result = tokio::time::timeout(
                RELEASE_TIMEOUT,
                this.host(host).run(&this.ctx.pool, &command),
            )
            .await;
            match result {
                Ok(result) => StepReport::read(host, &result),
                Err(_) => StepReport {
                    host: host.clone(),
                    answer: Answer::Unreachable(format!("no answer within {RELEASE_TIMEOUT:?}")),
                },
            }
        }))
        .await;
        let mut book = self.book();
        let events = plan::fold_release(self.site, &mut book.pass, &reports);
        self.record(&mut book, &reports, events);
    }
}
