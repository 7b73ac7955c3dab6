//! Interrupted `once` records: a stage's `once` commands were started on a host (its record
//! `<site path>/.convoy/once/<release>/<stage>/` has `started`) but their end was never
//! recorded (no `done`) and no wrapper is alive: the host lost power or was killed mid-run.
//! convoy never reruns them by itself, since a migration may have half-applied. This module
//! explains such a record (when and where it started, what to check) and clears it on the
//! operator's word (`convoy retry SITE --once-interrupted`), so the next pass runs them again.
//!
//! The remote snippets are built here with every interpolated value quoted; they only read
//! the record, or move its `started` file aside (the log is kept: a new run appends to it).

use std::time::{Duration, UNIX_EPOCH};

use crate::desired::DesiredSite;
use crate::execute::{Context, SiteReport};
use crate::host::RemoteCommand;
use crate::host::script::quote;
use crate::plan::{self, Outcome};
use crate::state;

/// Bound for one look at (or clear of) a record: a single short round trip.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// Shell helpers of both snippets: whether the record's wrapper process is alive.
const ALIVE: &str = "cv_alive() {\n  _p=$(cat \"$1/pid\" 2>/dev/null) || return 1\n  case $_p in ''|*[!0-9]*) return 1;; esac\n  kill -0 \"$_p\" 2>/dev/null\n}\n";

/// What a host's record of one stage's `once` commands says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// `started` present, no `done`, no live wrapper.
    Interrupted {
        /// When the commands were started (RFC 3339), as the host recorded it.
        started_at: Option<String>,
        /// The host's own name (`uname -n`) in the record.
        started_on: Option<String>,
    },
    /// The commands ended and recorded their status.
    Done,
    /// The wrapper is running them now.
    Running,
    /// No record, or nothing was started.
    Absent,
}

/// An interrupted record found on a host.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub host: String,
    pub stage: String,
    pub release: String,
    /// The record directory on the host.
    pub dir: String,
    pub started_at: Option<String>,
    pub started_on: Option<String>,
}

impl Interrupted {
    /// One line for the operator: where, which stage and release, when it started.
    pub fn describe(&self) -> String {
        format!(
            "host {}: stage `{}`, release {}: started {}; end never recorded ({})",
            self.host,
            self.stage,
            self.release,
            started(&self.started_at, &self.started_on),
            self.dir
        )
    }
}

fn started(at: &Option<String>, on: &Option<String>) -> String {
    let mut text = format!("at {}", at.as_deref().unwrap_or("an unrecorded time"));
    if let Some(on) = on {
        text.push_str(&format!(" (host reported its name as `{on}`)"));
    }
    text
}

/// The record directory of `stage`'s `once` commands of the desired release on `host`.
fn record_dir(ctx: &Context, site: &DesiredSite, host: &str, stage: &str) -> Option<String> {
    let path = ctx.hosts.get(host)?.path(&site.path);
    Some(format!(
        "{path}/.convoy/once/{}/{stage}",
        site.release.as_str()
    ))
}

fn inspect_script(dir: &str) -> String {
    format!(
        "{ALIVE}d={dir}\n\
         if [ -f \"$d/done\" ]; then echo '@@once state=done'\n\
         elif cv_alive \"$d\"; then echo '@@once state=running'\n\
         elif [ -f \"$d/started\" ]; then\n\
         \x20 printf '@@once state=interrupted '\n\
         \x20 head -c 200 \"$d/started\" | tr -c 'A-Za-z0-9._=-' ' '\n\
         \x20 echo\n\
         else echo '@@once state=absent'\n\
         fi\n",
        dir = quote(dir)
    )
}

/// Moves `started` aside only while the record is still interrupted; the log stays.
fn clear_script(dir: &str) -> String {
    format!(
        "{ALIVE}d={dir}\n\
         if [ -f \"$d/done\" ]; then echo '@@once cleared=no reason=done'\n\
         elif cv_alive \"$d\"; then echo '@@once cleared=no reason=running'\n\
         elif [ ! -f \"$d/started\" ]; then echo '@@once cleared=no reason=absent'\n\
         else\n\
         \x20 mv -f \"$d/started\" \"$d/started.cleared-$(date +%s)\" || exit 1\n\
         \x20 rm -f \"$d/pid\" \"$d/pid.tmp\"\n\
         \x20 echo '@@once cleared=yes'\n\
         fi\n",
        dir = quote(dir)
    )
}

/// `key=value` words of the first `@@once` line.
fn fields(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("@@once "))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn parse_state(stdout: &str) -> Option<RecordState> {
    let fields = fields(stdout);
    Some(match field(&fields, "state")? {
        "done" => RecordState::Done,
        "running" => RecordState::Running,
        "absent" => RecordState::Absent,
        "interrupted" => RecordState::Interrupted {
            started_at: field(&fields, "started")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| state::rfc3339(UNIX_EPOCH + Duration::from_secs(s))),
            started_on: field(&fields, "host")
                .filter(|h| !h.is_empty())
                .map(str::to_string),
        },
        _ => return None,
    })
}

async fn run(ctx: &Context, host: &str, script: String) -> Result<String, String> {
    let target = ctx
        .hosts
        .get(host)
        .ok_or_else(|| format!("host `{host}` is not in the manifests"))?;
    let out = target
        .run(&ctx.pool, &RemoteCommand::new(script, RECORD_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?;
    if out.status != 0 {
        return Err(format!(
            "the command on host `{host}` failed: {}",
            out.stderr_text().trim()
        ));
    }
    Ok(out.stdout_text())
}

/// Reads the record of `stage` on `host`.
pub async fn inspect(
    ctx: &Context,
    site: &DesiredSite,
    host: &str,
    stage: &str,
) -> Result<RecordState, String> {
    let dir = record_dir(ctx, site, host, stage)
        .ok_or_else(|| format!("host `{host}` is not in the manifests"))?;
    let stdout = run(ctx, host, inspect_script(&dir)).await?;
    parse_state(&stdout).ok_or_else(|| format!("host `{host}` gave no answer about {dir}"))
}

/// After a pass stopped at an interrupted `once` record: says when and where the commands
/// started and what the operator should check. If the host shows the record actually
/// ended (a command that itself exited with the interrupted status), says that instead.
pub async fn explain(ctx: &Context, site: &DesiredSite, report: &mut SiteReport) {
    let Outcome::Failed {
        reason,
        host: Some(host),
    } = &mut report.outcome
    else {
        return;
    };
    let Some(stage) = site
        .stages
        .iter()
        .find(|s| s.hosts.contains(host) && *reason == plan::once_interrupted_reason(&s.name))
    else {
        return;
    };
    let dir = record_dir(ctx, site, host, &stage.name).unwrap_or_default();
    let advice = format!(
        "check whether they completed (e.g. whether the migration applied) and read {dir}/log on host {host}; \
         then `convoy retry {} --once-interrupted` clears the record so the next pass runs them again",
        site.name
    );
    *reason = match inspect(ctx, site, host, &stage.name).await {
        Ok(RecordState::Interrupted {
            started_at,
            started_on,
        }) => format!(
            "`once` commands of stage `{}` were interrupted: started {} on host {host} and their end was never recorded (e.g. the host lost power); convoy will not run them again by itself: {advice}",
            stage.name,
            started(&started_at, &started_on),
        ),
        Ok(RecordState::Done) => format!(
            "`once` commands of stage `{}` failed on an earlier run (exit status {})",
            stage.name,
            crate::host::script::EXIT_ONCE_INTERRUPTED
        ),
        // Gone or running now: the next pass sees the change; keep the planner's words.
        Ok(RecordState::Running | RecordState::Absent) => return,
        Err(_) => format!("{reason}; {advice}"),
    };
}

/// Every interrupted record of the desired release of `site`, host by host; hosts that
/// could not be asked are returned as errors (nothing can be proven about them).
pub async fn find(ctx: &Context, site: &DesiredSite) -> (Vec<Interrupted>, Vec<String>) {
    let mut found = vec![];
    let mut errors = vec![];
    for stage in site.stages.iter().filter(|s| !s.once.is_empty()) {
        for host in &stage.hosts {
            match inspect(ctx, site, host, &stage.name).await {
                Ok(RecordState::Interrupted {
                    started_at,
                    started_on,
                }) => found.push(Interrupted {
                    host: host.clone(),
                    stage: stage.name.clone(),
                    release: site.release.clone(),
                    dir: record_dir(ctx, site, host, &stage.name).unwrap_or_default(),
                    started_at,
                    started_on,
                }),
                Ok(_) => {}
                Err(e) => errors.push(format!("host {host}: {e}")),
            }
        }
    }
    (found, errors)
}

/// Clears one interrupted record, if it is still interrupted. `Ok(None)` when cleared,
/// `Ok(Some(why))` when the record changed meanwhile and was left alone.
pub async fn clear(
    ctx: &Context,
    site: &DesiredSite,
    record: &Interrupted,
) -> Result<Option<String>, String> {
    let stdout = run(ctx, &record.host, clear_script(&record.dir)).await?;
    let fields = fields(&stdout);
    match field(&fields, "cleared") {
        Some("yes") => Ok(None),
        Some(_) => Ok(Some(match field(&fields, "reason") {
            Some("done") => "its commands recorded an end meanwhile".to_string(),
            Some("running") => "its commands are running now".to_string(),
            _ => "it no longer exists".to_string(),
        })),
        None => Err(format!(
            "host `{}` gave no answer about {} (site {})",
            record.host, record.dir, site.name
        )),
    }
}

/// Seconds since the epoch, for tests.
#[cfg(test)]
fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_record_is_read_and_cleared_only_while_interrupted() {
        let tmp = tempfile::tempdir().unwrap();
        // A hostile directory name stays one word.
        let dir = tmp.path().join("it's $(x) here");
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.display().to_string();
        assert_eq!(
            parse_state(&sh(&inspect_script(&dir))),
            Some(RecordState::Absent)
        );
        let now = now_epoch();
        std::fs::write(
            format!("{dir}/started"),
            format!("started={now} host=web-1\n"),
        )
        .unwrap();
        std::fs::write(format!("{dir}/log"), "half a migration\n").unwrap();
        assert_eq!(
            parse_state(&sh(&inspect_script(&dir))),
            Some(RecordState::Interrupted {
                started_at: Some(state::rfc3339(UNIX_EPOCH + Duration::from_secs(now))),
                started_on: Some("web-1".into()),
            })
        );
        // A live wrapper: running, never cleared.
        std::fs::write(format!("{dir}/pid"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(
            parse_state(&sh(&inspect_script(&dir))),
            Some(RecordState::Running)
        );
        assert!(sh(&clear_script(&dir)).contains("cleared=no reason=running"));
        // A dead one: interrupted, cleared; the log stays.
        std::fs::write(format!("{dir}/pid"), "999999999\n").unwrap();
        assert!(sh(&clear_script(&dir)).contains("cleared=yes"));
        assert!(!std::path::Path::new(&format!("{dir}/started")).exists());
        assert!(std::path::Path::new(&format!("{dir}/log")).exists());
        assert_eq!(
            parse_state(&sh(&inspect_script(&dir))),
            Some(RecordState::Absent)
        );
        // An ended record is never cleared.
        std::fs::write(format!("{dir}/started"), "started=1 host=x\n").unwrap();
        std::fs::write(format!("{dir}/done"), "status=70\n").unwrap();
        assert_eq!(
            parse_state(&sh(&inspect_script(&dir))),
            Some(RecordState::Done)
        );
        assert!(sh(&clear_script(&dir)).contains("cleared=no reason=done"));
        assert!(std::path::Path::new(&format!("{dir}/started")).exists());
    }
}
