//! Parsing what a host reports: the `@@observe ...` lines printed by
//! [`super::script::Script::observe`], the `@@convoy step=<name> status=<code>` lines that
//! follow every operation, and `@@convoy key=value` facts.
//!
//! The observe report, one item per line, every value a safe word (`[A-Za-z0-9._-]+`; the
//! host-side script skips anything else, so a hostile directory name cannot break it):
//!
//! ```text
//! @@observe begin
//! @@observe now <epoch>
//! @@observe current <id>
//! @@observe previous <id>
//! @@observe pending <id>
//! @@observe release <id> complete=<0|1> [built_at=<epoch>] revision=<sha|->
//! @@observe once <release> <stage> state=<done|running|interrupted|notstarted> [status=<n>]
//! @@observe lease holder=<id> expires=<epoch> generation=<n>
//! @@observe end
//! ```

/// What one host reported about one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The release `current` points at; `None` if missing or dangling.
    pub current: Option<String>,
    /// The release recorded in `.convoy/previous` before the last switch.
    pub previous: Option<String>,
    /// A release switched to whose activate and health check never completed (the
    /// controller died or lost the host in between): it must be verified again.
    pub pending: Option<String>,
    /// Every (safely named) directory in `releases/`, complete or not, sorted by id.
    pub releases: Vec<ReleaseDir>,
    /// Every `once` record in `.convoy/once/<release>/<stage>/`.
    pub once: Vec<OnceRecord>,
    /// The host lease, if a lock file names a holder (check `expires` against `now`).
    pub lease: Option<Lease>,
    /// The host's clock, epoch seconds.
    pub now: u64,
}

impl Snapshot {
    /// The release dir named `id`, if any.
    pub fn release(&self, id: &str) -> Option<&ReleaseDir> {
        self.releases.iter().find(|r| r.id == id)
    }

    /// Whether `id` is built completely (its completion marker exists).
    pub fn is_complete(&self, id: &str) -> bool {
        self.release(id).is_some_and(|r| r.complete)
    }

    /// The once record of `release` for `stage`, if any.
    pub fn once_record(&self, release: &str, stage: &str) -> Option<&OnceRecord> {
        self.once
            .iter()
            .find(|o| o.release == release && o.stage == stage)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDir {
    pub id: String,
    /// The completion marker exists: the build finished.
    pub complete: bool,
    /// Build time from the marker.
    pub built_at: Option<u64>,
    /// The commit recorded by the fetch (or the marker).
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceRecord {
    pub release: String,
    pub stage: String,
    pub state: OnceState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceState {
    /// The commands ended with this exit status (0 = success).
    Done { status: i32 },
    /// The wrapper is running them now.
    Running,
    /// They were started but the wrapper died without recording an end (e.g. a reboot):
    /// convoy will not run them again by itself.
    Interrupted,
    /// A record directory exists but nothing was started (e.g. the start was fenced).
    NotStarted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires: u64,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "the host's report is incomplete (no `@@observe end` line): the observe script did not finish"
    )]
    Truncated,
    #[error("the host's report has no `@@observe begin` line")]
    Missing,
}

/// Parse the output of an observe step. Unknown or malformed lines are ignored; a missing
/// section is empty. Fails only if the report did not start or did not finish.
pub fn parse(stdout: &str) -> Result<Snapshot, ObserveError> {
    let mut obs = Snapshot::default();
    let mut begun = false;
    let mut ended = false;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("@@observe ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["begin"] => {
                // A second report (should not happen) replaces the first.
                obs = Snapshot::default();
                begun = true;
                ended = false;
            }
            ["end"] if begun => ended = true,
            _ if !begun || ended => {}
            ["now", n] => {
                if let Ok(n) = n.parse() {
                    obs.now = n;
                }
            }
            ["current", id] if safe_word(id) => obs.current = Some(id.to_string()),
            ["previous", id] if safe_word(id) => obs.previous = Some(id.to_string()),
            ["pending", id] if safe_word(id) => obs.pending = Some(id.to_string()),
            _ => read_item(&mut obs, &words),
        }
    }
    if !begun {
        return Err(ObserveError::Missing);
    }
    if !ended {
        return Err(ObserveError::Truncated);
    }
    obs.releases.sort_by(|a, b| a.id.cmp(&b.id));
    obs.once
        .sort_by(|a, b| (&a.release, &a.stage).cmp(&(&b.release, &b.stage)));
    Ok(obs)
}

/// One item of a report that began: a release dir, a `once` record or the lease.
fn read_item(obs: &mut Snapshot, words: &[&str]) {
    match words {
        ["release", id, fields @ ..] if safe_word(id) => {
            let complete = field(fields, "complete") == Some("1");
            let built_at = field(fields, "built_at").and_then(|b| b.parse().ok());
            let revision = field(fields, "revision")
                .filter(|r| *r != "-" && safe_word(r))
                .map(str::to_string);
            obs.releases.retain(|r| r.id != *id);
            obs.releases.push(ReleaseDir {
                id: id.to_string(),
                complete,
                built_at: if complete { built_at } else { None },
                revision,
            });
        }
        ["once", release, stage, fields @ ..] if safe_word(release) && safe_word(stage) => {
            let state = match field(fields, "state") {
                Some("done") => OnceState::Done {
                    status: field(fields, "status")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(255),
                },
                Some("running") => OnceState::Running,
                Some("interrupted") => OnceState::Interrupted,
                Some("notstarted") => OnceState::NotStarted,
                _ => return,
            };
            obs.once.push(OnceRecord {
                release: release.to_string(),
                stage: stage.to_string(),
                state,
            });
        }
        ["lease", fields @ ..] => {
            let holder = field(fields, "holder").filter(|h| safe_word(h));
            let expires = field(fields, "expires").and_then(|e| e.parse().ok());
            let generation = field(fields, "generation").and_then(|g| g.parse().ok());
            if let (Some(holder), Some(expires), Some(generation)) = (holder, expires, generation) {
                obs.lease = Some(Lease {
                    holder: holder.to_string(),
                    expires,
                    generation,
                });
            }
        }
        _ => {}
    }
}

/// The `@@convoy step=<name> status=<code>` lines, in order. In a multi-operation script
/// the last entry is the step that stopped it if its status is non-zero; steps after a
/// failure never ran and have no line.
pub fn steps(stdout: &str) -> Vec<(String, i32)> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.strip_prefix("@@convoy ")?.split_whitespace().collect();
            let name = field(&words, "step")?;
            let status = field(&words, "status")?.parse().ok()?;
            Some((name.to_string(), status))
        })
        .collect()
}

/// How long each step took on the host, in seconds (from its `t0=`/`t1=` clock readings,
/// `/proc/uptime` where the host has it), in order.
pub fn step_timings(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.strip_prefix("@@convoy ")?.split_whitespace().collect();
            let name = field(&words, "step")?;
            let t0: f64 = field(&words, "t0")?.parse().ok()?;
            let t1: f64 = field(&words, "t1")?.parse().ok()?;
            Some((name.to_string(), (t1 - t0).max(0.0)))
        })
        .collect()
}

/// Every `key=value` (or bare `word`, as `(word, "")`) of the `@@convoy` lines other than
/// step lines, in order, e.g. `("revision", "3f2a…")`, `("lease", "held")`, `("fenced", "")`.
pub fn facts(stdout: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("@@convoy ") else {
            continue;
        };
        if rest.starts_with("step=") {
            continue;
        }
        for word in rest.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// The value of the last fact named `key` (see [`facts`]).
pub fn fact(stdout: &str, key: &str) -> Option<String> {
    facts(stdout)
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The facts printed on the same line as the first fact `key` (e.g. `lease` with its
/// `holder`, `generation`, `expires`), as a lookup by name.
pub fn fact_line(stdout: &str, key: &str) -> Option<Vec<(String, String)>> {
    stdout.lines().find_map(|line| {
        let rest = line.strip_prefix("@@convoy ")?;
        let pairs: Vec<(String, String)> = rest
            .split_whitespace()
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        pairs.iter().any(|(k, _)| k == key).then_some(pairs)
    })
}

fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn safe_word(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::super::script::tests::{TempDir, lease, make_release, ok, shells, site};
    use super::super::script::{Env, Script};
    use super::*;

    #[test]
    fn observes_a_real_layout() {
        for sh in shells() {
            let tmp = TempDir::new("observe");
            let p = site(&tmp);
            make_release(&sh, &p, "r1");
            make_release(&sh, &p, "r2");
            let f = lease(&sh, &p, "ctl-a");
            ok(
                &sh,
                Script::new(&p)
                    .switch("r1", &f)
                    .switch("r2", &f)
                    .once(
                        "r2",
                        "scheduler",
                        &["exit 3".to_string()],
                        &Env::default(),
                        &f,
                    )
                    .finish()
                    .replace("cv_end 'once' $?", "cv_end 'once' 0"),
            );
            std::fs::create_dir_all(format!("{p}/releases/r3-half")).unwrap();
            std::fs::write(format!("{p}/releases/r3-half/.convoy-revision"), "abc123\n").unwrap();
            // hostile names cannot break the report
            for bad in [
                "bad name",
                "evil\n@@observe current pwned",
                "x$(touch pwned)",
                "-rf",
            ] {
                std::fs::create_dir_all(format!("{p}/releases/{bad}")).unwrap();
            }
            std::fs::create_dir_all(format!("{p}/.convoy/once/r2/x y")).unwrap();
            // an attempt's build dir is not a release
            std::fs::create_dir_all(format!("{p}/releases/.r4.a0123456789abcdef")).unwrap();
            std::fs::write(
                format!("{p}/releases/.r4.a0123456789abcdef/.convoy-revision"),
                "abc123\n",
            )
            .unwrap();
            let out = ok(&sh, Script::new(&p).observe().finish());
            let obs = parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(obs.current.as_deref(), Some("r2"), "{out}");
            assert_eq!(obs.previous.as_deref(), Some("r1"));
            let ids: Vec<&str> = obs.releases.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, vec!["r1", "r2", "r3-half"], "[{}] {out}", sh.name);
            assert!(obs.is_complete("r1") && obs.is_complete("r2") && !obs.is_complete("r3-half"));
            let r3 = obs.release("r3-half").unwrap();
            assert_eq!(r3.built_at, None);
            assert_eq!(r3.revision.as_deref(), Some("abc123"));
            let r1 = obs.release("r1").unwrap();
            assert!(r1.built_at.unwrap() > 1_600_000_000);
            assert!(obs.now >= r1.built_at.unwrap());
            assert_eq!(
                obs.once,
                vec![OnceRecord {
                    release: "r2".into(),
                    stage: "scheduler".into(),
                    state: OnceState::Done { status: 3 }
                }]
            );
            let lease = obs.lease.clone().unwrap();
            assert_eq!(lease.holder, "ctl-a");
            assert_eq!(lease.generation, f.generation);
            assert!(lease.expires > obs.now);
            assert_eq!(steps(&out), vec![("observe".to_string(), 0)]);
            assert!(!tmp.path().join("pwned").exists());
            // Asking about one release reports only its `once` records.
            let only_r1 = parse(&ok(&sh, Script::new(&p).observe_release("r1").finish())).unwrap();
            assert!(only_r1.once.is_empty(), "{:?}", only_r1.once);
            let only_r2 = parse(&ok(&sh, Script::new(&p).observe_release("r2").finish())).unwrap();
            assert_eq!(only_r2.once, obs.once);
            assert_eq!(only_r2.releases, obs.releases);
        }
    }

    #[test]
    fn observes_an_empty_or_broken_site() {
        for sh in shells() {
            let tmp = TempDir::new("observe-empty");
            let p = site(&tmp);
            let out = ok(&sh, Script::new(&p).observe().finish());
            let obs = parse(&out).unwrap();
            assert!(obs.now > 1_600_000_000);
            assert_eq!(
                Snapshot {
                    now: obs.now,
                    ..Snapshot::default()
                },
                obs
            );
            // a dangling `current` is no release
            std::fs::create_dir_all(format!("{p}/releases")).unwrap();
            std::os::unix::fs::symlink("releases/gone", format!("{p}/current")).unwrap();
            let obs = parse(&ok(&sh, Script::new(&p).observe().finish())).unwrap();
            assert_eq!(obs.current, None);
            // a running once wrapper
            make_release(&sh, &p, "r1");
            let f = lease(&sh, &p, "ctl-a");
            let script = Script::new(&p)
                .once_wait(
                    "r1",
                    "web",
                    &["sleep 2".to_string()],
                    &Env::default(),
                    &f,
                    0,
                )
                .finish();
            let _ = sh.run(&script);
            let obs = parse(&ok(&sh, Script::new(&p).observe().finish())).unwrap();
            assert_eq!(
                obs.once_record("r1", "web").unwrap().state,
                OnceState::Running
            );
        }
    }

    #[test]
    fn parse_is_robust() {
        let text = "noise\n@@observe current early\n@@observe begin\n@@observe now 17\n\
            @@observe current a b\n@@observe release ok complete=1 built_at=5 revision=-\n\
            @@observe release x/y complete=1\n@@observe once r1 s state=weird\n\
            @@observe lease holder=h expires=nope generation=1\n@@observe future thing\n\
            @@observe end\n@@observe current late\n";
        let obs = parse(text).unwrap();
        assert_eq!(obs.now, 17);
        assert_eq!(obs.current, None);
        assert_eq!(
            obs.releases,
            vec![ReleaseDir {
                id: "ok".into(),
                complete: true,
                built_at: Some(5),
                revision: None
            }]
        );
        assert!(obs.once.is_empty() && obs.lease.is_none());
        assert_eq!(
            parse("@@observe begin\n@@observe now 1\n"),
            Err(ObserveError::Truncated)
        );
        assert_eq!(parse(""), Err(ObserveError::Missing));
    }

    #[test]
    fn steps_and_facts() {
        let out = "@@convoy lease=acquired holder=h generation=2 expires=9\n\
            @@convoy step=lease_acquire status=0\nnoise step=x status=1\n\
            @@convoy fenced holder=h generation=1 expires=3\n@@convoy step=switch status=75\n\
            @@convoy step=broken status=x\n";
        assert_eq!(
            steps(out),
            vec![("lease_acquire".to_string(), 0), ("switch".to_string(), 75)]
        );
        assert_eq!(fact(out, "lease").as_deref(), Some("acquired"));
        assert_eq!(fact(out, "fenced").as_deref(), Some(""));
        assert_eq!(fact(out, "generation").as_deref(), Some("1"));
        let line = fact_line(out, "lease").unwrap();
        assert!(line.contains(&("generation".to_string(), "2".to_string())));
        assert!(!facts(out).iter().any(|(k, _)| k == "step"));
    }
}
