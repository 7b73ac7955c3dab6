//! The work queue of the reconcile loop, shared by `--once` and the daemon: which site runs
//! next, and when a site that waits (in backoff) runs again. A synchronous state machine
//! with the clock passed in, so every rule here is tested with plain `Instant`s.
//!
//! The rules: one pass per site at a time; a site enqueued while its pass runs (dirty) runs
//! once more after it, never twice at once; enqueueing an already queued site changes
//! nothing; a site that must wait gets its next delay from its own backoff iterator, which a
//! pass that needs no retry resets. This module decides nothing about outcomes (see
//! [`super::requeue`]) and never sleeps, spawns or talks to a host.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Where to probe an unreachable host meanwhile: address and TCP port.
pub type Probe = (String, u16);

/// What a finished pass asks of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing to retry: the site runs again only when enqueued (a change, a resync).
    /// Resets its backoff.
    Done,
    /// Retry after the site's next backoff delay, or earlier when one of these hosts starts
    /// answering (the daemon probes them; `--once` passes none).
    Backoff { probes: Vec<Probe> },
}

/// A site waiting for its retry.
struct Waiting {
    /// When the retry is due.
    at: Instant,
    /// The last delay drawn, for the status message and the backoff gauge.
    delay: Duration,
    /// Retries scheduled since the last pass that needed none.
    retries: u32,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    probes: Vec<Probe>,
    /// A probe answered since the last pass: only a change from silent to answering makes
    /// the retry due early (a host that answers TCP but fails SSH waits for its backoff).
    answered: bool,
}

/// Per-site scheduling: queued, running, dirty (enqueued while running), waiting (backoff).
pub struct Queue {
    queued: BTreeSet<String>,
    running: BTreeSet<String>,
    dirty: BTreeSet<String>,
    waiting: BTreeMap<String, Waiting>,
    backoff: fn() -> Box<dyn Iterator<Item = Duration> + Send>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue::new(|| Box::new(super::backoff()))
    }
}

impl Queue {
    /// A queue whose sites back off along fresh iterators from `backoff`.
    pub fn new(backoff: fn() -> Box<dyn Iterator<Item = Duration> + Send>) -> Self {
        Queue {
            queued: BTreeSet::new(),
            running: BTreeSet::new(),
            dirty: BTreeSet::new(),
            waiting: BTreeMap::new(),
            backoff,
        }
    }

    /// Asks for a pass of `site` as soon as possible: after its running pass if it has one.
    /// A site already queued is not queued twice.
    pub fn enqueue(&mut self, site: &str) {
        if self.running.contains(site) {
            self.dirty.insert(site.to_string());
        } else {
            self.queued.insert(site.to_string());
        }
    }

    /// A site ready to run at `now`, marked running: a queued one first, else one whose
    /// retry is due. Never a site that is running.
    pub fn next(&mut self, now: Instant) -> Option<String> {
        let site = self
            .queued
            .iter()
            .find(|s| !self.running.contains(*s))
            .or_else(|| {
                self.waiting
                    .iter()
                    .filter(|(s, w)| w.at <= now && !self.running.contains(*s))
                    .min_by_key(|(_, w)| w.at)
                    .map(|(s, _)| s)
            })?
            .clone();
        self.queued.remove(&site);
        self.running.insert(site.clone());
        Some(site)
    }

    /// Records the end of `site`'s pass at `now`. Returns when it runs again, if at all:
    /// `now` if it was enqueued meanwhile, else its retry time under [`Requeue::Backoff`].
    pub fn finished(&mut self, site: &str, requeue: Requeue, now: Instant) -> Option<Instant> {
        self.running.remove(site);
        let mut again = None;
        match requeue {
            Requeue::Done => {
                self.waiting.remove(site);
            }
            Requeue::Backoff { probes } => {
                let waiting = self
                    .waiting
                    .entry(site.to_string())
                    .or_insert_with(|| Waiting {
                        at: now,
                        delay: Duration::ZERO,
                        retries: 0,
                        delays: (self.backoff)(),
                        probes: vec![],
                        answered: true,
                    });
                waiting.delay = waiting.delays.next().unwrap_or(super::BACKOFF_MAX);
                waiting.at = now + waiting.delay;
                waiting.retries += 1;
                waiting.probes = probes;
                again = Some(waiting.at);
            }
        }
        if self.dirty.remove(site) {
            self.queued.insert(site.to_string());
            again = Some(now);
        }
        again
    }

    /// Forgets `site`'s pending retry and its backoff: it runs again only when enqueued.
    pub fn reset(&mut self, site: &str) {
        self.waiting.remove(site);
    }

    /// Forgets everything queued or pending for `site` (removed from the manifests); a
    /// running pass finishes and is not repeated.
    pub fn remove(&mut self, site: &str) {
        self.queued.remove(site);
        self.dirty.remove(site);
        self.waiting.remove(site);
    }

    /// Brings `site`'s pending retry forward to `at` if it was due later: e.g. a host lease
    /// held by a dead controller expires then, and backoff must not wait past it. Returns
    /// the retry time.
    pub fn retry_no_later(&mut self, site: &str, at: Instant) -> Option<Instant> {
        let waiting = self.waiting.get_mut(site)?;
        if at < waiting.at {
            waiting.delay = waiting.delay.saturating_sub(waiting.at - at);
            waiting.at = at;
        }
        Some(waiting.at)
    }

    /// When `site`'s retry is due, its number and the delay it waits, if it waits.
    pub fn retry_at(&self, site: &str) -> Option<(Instant, u32, Duration)> {
        self.waiting.get(site).map(|w| (w.at, w.retries, w.delay))
    }

    /// The earliest retry of a site that is not running: when the loop must wake up.
    pub fn next_retry(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .filter(|(s, _)| !self.running.contains(*s))
            .map(|(_, w)| w.at)
            .min()
    }

    /// Sites that wait for their retry (neither running nor queued), with the hosts to probe.
    pub fn probes(&self) -> Vec<(String, Vec<Probe>)> {
        self.waiting
            .iter()
            .filter(|(s, _)| !self.running.contains(*s) && !self.queued.contains(*s))
            .map(|(s, w)| (s.clone(), w.probes.clone()))
            .collect()
    }

    /// Records whether a probe of `site`'s hosts answered; a host that starts answering
    /// makes its retry due at `now`. Returns true when it did.
    pub fn probed(&mut self, site: &str, answered: bool, now: Instant) -> bool {
        let Some(waiting) = self.waiting.get_mut(site) else {
            return false;
        };
        let came_back = answered && !waiting.answered;
        waiting.answered = answered;
        if came_back {
            waiting.at = waiting.at.min(now);
        }
        came_back
    }

    /// Sites waiting for a retry and not running.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting
            .keys()
            .filter(|s| !self.running.contains(*s))
            .cloned()
            .collect()
    }

    /// Whether `site` has a pass running.
    pub fn is_running(&self, site: &str) -> bool {
        self.running.contains(site)
    }

    /// Nothing queued, running or waiting: a `--once` run is over.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.running.is_empty() && self.waiting.is_empty()
    }

    /// Whether `site` has a pass to come: queued, running, or waiting for its retry.
    pub fn pending(&self, site: &str) -> bool {
        self.queued.contains(site) || self.running.contains(site) || self.waiting.contains_key(site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1s, 2s, 4s, ... without jitter, so the tests can name the times.
    fn doubling() -> Box<dyn Iterator<Item = Duration> + Send> {
        Box::new((0..).map(|i| Duration::from_secs(1 << i.min(4))))
    }

    fn queue() -> Queue {
        Queue::new(doubling)
    }

    fn backoff() -> Requeue {
        Requeue::Backoff { probes: vec![] }
    }

    fn drain(q: &mut Queue, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.next(now)).collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_key_runs_once_however_often_it_is_enqueued() {
        let now = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        q.enqueue("a");
        q.enqueue("b");
        assert_eq!(drain(&mut q, now), ["a", "b"]);
        assert_eq!(q.next(now), None);
        assert!(!q.is_idle());
        assert_eq!(q.finished("a", Requeue::Done, now), None);
        assert_eq!(q.finished("b", Requeue::Done, now), None);
        assert!(q.is_idle());
    }

    #[test]
    fn next_never_returns_a_running_key() {
        let now = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        assert_eq!(q.next(now).as_deref(), Some("a"));
        q.enqueue("a");
        assert_eq!(q.next(now), None, "running: enqueue marks it dirty");
        // A retry that is due does not start a second pass either.
        let mut q = queue();
        q.enqueue("a");
        q.next(now);
        q.finished("a", backoff(), now);
        assert_eq!(q.next(now + 10 * S).as_deref(), Some("a"));
        assert_eq!(q.next(now + 100 * S), None);
        assert_eq!(q.next_retry(), None, "a running key needs no wake-up");
    }

    #[test]
    fn a_key_enqueued_while_running_runs_once_more_after_it_finishes() {
        let now = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        q.next(now);
        q.enqueue("a");
        q.enqueue("a");
        assert_eq!(q.finished("a", Requeue::Done, now + S), Some(now + S));
        assert_eq!(drain(&mut q, now + S), ["a"], "exactly once more");
        assert_eq!(q.finished("a", Requeue::Done, now + 2 * S), None);
        assert_eq!(q.next(now + 3 * S), None);
        assert!(q.is_idle());
    }

    #[test]
    fn backoff_grows_on_repeated_blocked_passes_and_resets_on_success() {
        let t0 = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        let mut now = t0;
        let mut delays = vec![];
        for _ in 0..4 {
            assert_eq!(q.next(now).as_deref(), Some("a"));
            let at = q.finished("a", backoff(), now).unwrap();
            assert_eq!(
                q.next(at - Duration::from_millis(1)),
                None,
                "not before it is due"
            );
            assert_eq!(q.next_retry(), Some(at));
            delays.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(q.retry_at("a").map(|(_, n, _)| n), Some(4));
        // Success: no retry, and the next Blocked pass starts from the first delay again.
        q.next(now);
        assert_eq!(q.finished("a", Requeue::Done, now), None);
        assert_eq!(q.retry_at("a"), None);
        assert!(q.is_idle());
        q.enqueue("a");
        q.next(now);
        assert_eq!(q.finished("a", backoff(), now), Some(now + S));
        assert_eq!(q.retry_at("a"), Some((now + S, 1, S)));
    }

    #[test]
    fn backoff_is_per_key() {
        let now = Instant::now();
        let mut q = queue();
        for _ in 0..3 {
            q.enqueue("a");
            q.next(now);
            q.finished("a", backoff(), now);
        }
        q.enqueue("b");
        q.next(now);
        assert_eq!(q.finished("b", backoff(), now), Some(now + S));
        assert_eq!(q.retry_at("a"), Some((now + 4 * S, 3, 4 * S)));
        assert_eq!(drain(&mut q, now + S), ["b"], "a is not due yet");
    }

    #[test]
    fn a_retry_is_brought_forward_never_pushed_back() {
        let mut q = queue();
        let t0 = Instant::now();
        q.enqueue("a");
        assert_eq!(q.next(t0).as_deref(), Some("a"));
        let at = q.finished("a", backoff(), t0).unwrap();
        assert_eq!(
            q.retry_no_later("a", at + Duration::from_secs(60)),
            Some(at)
        );
        let sooner = t0 + Duration::from_millis(1);
        assert_eq!(q.retry_no_later("a", sooner), Some(sooner));
        assert_eq!(q.retry_at("a").map(|(when, _, _)| when), Some(sooner));
        assert_eq!(q.retry_no_later("b", sooner), None, "nothing waits for b");
    }

    #[test]
    fn a_resync_enqueues_everything_without_duplicating() {
        let now = Instant::now();
        let mut q = queue();
        for site in ["a", "b", "c"] {
            q.enqueue(site);
        }
        assert_eq!(q.next(now).as_deref(), Some("a"));
        assert_eq!(q.next(now).as_deref(), Some("b"));
        q.finished("b", backoff(), now);
        // The resync: every site, twice for good measure.
        for _ in 0..2 {
            for site in ["a", "b", "c"] {
                q.enqueue(site);
            }
        }
        // a is running (dirty), b waits in backoff (queued now), c was queued already.
        assert_eq!(drain(&mut q, now), ["b", "c"]);
        q.finished("a", Requeue::Done, now);
        assert_eq!(drain(&mut q, now), ["a"]);
        assert_eq!(drain(&mut q, now + 100 * S), Vec::<String>::new());
    }

    #[test]
    fn a_reset_or_removed_key_forgets_its_retry() {
        let now = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        q.next(now);
        q.finished("a", backoff(), now);
        q.reset("a");
        assert_eq!(q.next(now + 10 * S), None);
        assert!(q.is_idle());
        q.enqueue("b");
        q.next(now);
        q.enqueue("b");
        q.remove("b");
        assert_eq!(q.finished("b", Requeue::Done, now), None, "not repeated");
        assert!(q.is_idle());
    }

    #[test]
    fn a_probe_that_starts_answering_makes_the_retry_due() {
        let now = Instant::now();
        let mut q = queue();
        q.enqueue("a");
        q.next(now);
        let probes = vec![("10.0.0.1".to_string(), 22)];
        q.finished(
            "a",
            Requeue::Backoff {
                probes: probes.clone(),
            },
            now,
        );
        assert_eq!(q.probes(), [("a".to_string(), probes)]);
        // Answering since the last pass is not news; silent then answering is.
        assert!(!q.probed("a", true, now));
        assert!(!q.probed("a", false, now));
        assert_eq!(q.next(now), None);
        assert!(q.probed("a", true, now + Duration::from_millis(100)));
        assert_eq!(
            q.next(now + Duration::from_millis(100)).as_deref(),
            Some("a")
        );
        assert!(q.probes().is_empty(), "a running site is not probed");
    }
}
