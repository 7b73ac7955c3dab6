//! Each planned step as host scripts: which operations go into one round trip, with which
//! environment, and the answers handed back to the planner. What an answer means is
//! decided in `plan::fold`, never here.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::SiteRun;
use super::archive::{Archive, pack_archive};
use crate::desired::{DesiredStage, FetchSpec};
use crate::host::RemoteCommand;
use crate::host::protocol::StepReport;
use crate::host::script::{Env, Fence, Script};
use crate::plan::{self, Reach, Step, StepError};

impl SiteRun<'_> {
    pub(super) async fn execute(&self, steps: Vec<Step>) {
        let (builds, others): (Vec<Step>, Vec<Step>) = steps
            .into_iter()
            .partition(|s| matches!(s, Step::Build { .. }));
        if !builds.is_empty() {
            self.build_all(&builds).await;
        }
        for step in others {
            match &step {
                Step::Build { .. } => unreachable!("partitioned"),
                Step::Switch { .. } => self.switch_batch(&step).await,
                Step::Once { stage, host } => {
                    let reports = self.once(stage, host).await;
                    self.fold(&step, &reports);
                }
                Step::Rollback { hosts, .. } => {
                    let reports = self.rollback(&step, hosts).await;
                    self.fold(&step, &reports);
                }
                Step::Cleanup { host, remove } => {
                    let report = self.cleanup(host, remove).await;
                    self.fold(&step, &[report]);
                }
            }
        }
    }

    /// Runs `commands` at once, folding each answer as it arrives (so each host's line
    /// shows when that host is done, not when the slowest is).
    /// `build`: these are builds, each under its host's build permit.
    async fn run_folding(
        &self,
        step_of: impl Fn(&str) -> Step,
        commands: Vec<(String, RemoteCommand)>,
        build: bool,
    ) {
        let mut pending: FuturesUnordered<_> = commands
            .into_iter()
            .map(|(host, command)| async move {
                if build {
                    self.run_build(&host, command).await
                } else {
                    self.run_on(&host, command, true).await
                }
            })
            .collect();
        while let Some(report) = pending.next().await {
            self.fold(&step_of(&report.host), &[report]);
        }
    }

    /// The `once` or `activate` commands of a stage of this site.
    fn stage_commands(
        &self,
        stage: &str,
        which: impl Fn(&DesiredStage) -> &Vec<String>,
    ) -> Vec<String> {
        self.site
            .stages
            .iter()
            .find(|s| s.name == stage)
            .map(|s| which(s).clone())
            .unwrap_or_default()
    }

    fn stage_of(&self, host: &str) -> &str {
        &self.membership[host].0
    }

    fn revision(&self) -> String {
        self.book()
            .pass
            .revision
            .clone()
            .unwrap_or_else(|| self.site.revision.clone())
    }

    /// The environment of user commands on `host` for `release`.
    fn env(&self, host: &str, release: &str) -> Env {
        let dir = format!("{}/releases/{release}", self.path_on(host));
        self.env_in(host, release, &dir)
    }

    /// The environment of a build: `CONVOY_RELEASE_DIR` is this attempt's own directory,
    /// renamed to `releases/<id>` when the build succeeds.
    fn build_env(&self, host: &str) -> Env {
        let release = &self.site.release;
        let dir = format!(
            "{}/releases/.{release}.{}",
            self.path_on(host),
            self.attempt.token
        );
        self.env_in(host, release, &dir)
    }

    fn env_in(&self, host: &str, release: &str, dir: &str) -> Env {
        let mut vars = vec![
            ("CONVOY_SITE".to_string(), self.site.name.clone()),
            ("CONVOY_RELEASE".to_string(), release.to_string()),
            ("CONVOY_RELEASE_DIR".to_string(), dir.to_string()),
            ("CONVOY_REVISION".to_string(), self.revision()),
            ("CONVOY_HOST".to_string(), host.to_string()),
            ("CONVOY_STAGE".to_string(), self.stage_of(host).to_string()),
        ];
        vars.extend(self.site.env.iter().cloned());
        Env(vars)
    }

    // ------------------------------------------------------------------ build

    async fn build_all(&self, builds: &[Step]) {
        let archive = match &self.site.fetch {
            FetchSpec::Archive { path, roots } => {
                match pack_archive(path, roots, &self.site.release)
                    .await
                    .and_then(sized)
                {
                    Ok(archive) => Some(archive),
                    Err(e) => {
                        for step in builds {
                            for host in step.hosts() {
                                plan::fold_unsent(
                                    &mut self.book().pass,
                                    step,
                                    host,
                                    StepError::Local(e.clone()),
                                );
                            }
                        }
                        return;
                    }
                }
            }
            FetchSpec::Git { .. } => None,
        };
        let commands = builds
            .iter()
            .flat_map(Step::hosts)
            .map(|host| (host.clone(), self.build_command(host, archive.as_ref())))
            .collect();
        let step_of = |host: &str| Step::Build {
            host: host.to_string(),
        };
        self.run_folding(step_of, commands, true).await;
    }

    fn build_command(&self, host: &str, archive: Option<&(Archive, u64)>) -> RemoteCommand {
        let script = self.build_ops(
            Script::for_attempt(&self.path_on(host), &self.attempt),
            host,
            archive.map_or(0, |(_, len)| *len),
        );
        let command = RemoteCommand::of(script, self.ctx.command_timeout);
        match archive {
            Some((archive, len)) => command.with_stdin_file(archive.path().to_path_buf(), *len),
            None => command,
        }
    }

    /// Observe, and build where the release is incomplete, in one round trip.
    pub(super) fn speculative_build(&self, host: &str) -> RemoteCommand {
        let release = &self.site.release;
        let script = self.build_ops(
            Script::for_attempt(&self.path_on(host), &self.attempt)
                .observe_release(release)
                .if_incomplete(release),
            host,
            0,
        );
        RemoteCommand::of(script.end_if(), self.ctx.command_timeout)
    }

    /// Lease, prepare, fetch, link shared paths, build: appended to `script`.
    fn build_ops(&self, script: Script, host: &str, archive_len: u64) -> Script {
        let release = &self.site.release;
        let script = script
            .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .prepare(release);
        let script = match &self.site.fetch {
            FetchSpec::Git { repository } => {
                script.fetch_git(release, repository, &self.revision())
            }
            FetchSpec::Archive { .. } => script.unpack_archive(release, archive_len),
        };
        script.link_shared(release, &self.site.shared).build(
            release,
            &self.site.build,
            &self.build_env(host),
        )
    }

    // ------------------------------------------------------------------ once

    async fn once(&self, stage: &str, host: &str) -> Vec<StepReport> {
        let Some(fence) = self.fence(host).await else {
            return vec![];
        };
        let release = &self.site.release;
        let commands = self.stage_commands(stage, |s| &s.once);
        let script = Script::for_attempt(&self.path_on(host), &self.attempt).once(
            release,
            stage,
            &commands,
            &self.env(host, release),
            &fence,
        );
        let command = RemoteCommand::of(script, self.ctx.command_timeout);
        vec![self.run_on(host, command, true).await]
    }

    // ------------------------------------------------------------------ switch

    /// After the pause, each host of the batch in one round trip, all at once.
    async fn switch_batch(&self, step: &Step) {
        let Step::Switch {
            stage,
            hosts,
            pause,
            cleanup,
        } = step
        else {
            unreachable!("a switch step")
        };
        if !pause.is_zero() {
            tokio::time::sleep(*pause).await;
        }
        let mut fences = BTreeMap::new();
        for host in hosts {
            if let Some(fence) = self.fence(host).await {
                fences.insert(host.clone(), fence);
            }
        }
        let commands: Vec<(String, RemoteCommand)> = fences
            .iter()
            .map(|(host, fence)| {
                (
                    host.clone(),
                    self.switch_command(stage, host, fence, cleanup.get(host)),
                )
            })
            .collect();
        self.run_folding(|_| step.clone(), commands, false).await;
    }

    /// Pending, switch, activate, health, settled, clean-up, lease release: one round trip.
    fn switch_command(
        &self,
        stage: &str,
        host: &str,
        fence: &Fence,
        remove: Option<&Vec<String>>,
    ) -> RemoteCommand {
        let release = &self.site.release;
        let env = self.env(host, release);
        let activate = self.stage_commands(stage, |s| &s.activate);
        let mut script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .pending(release)
            .switch(release, fence)
            .activate(release, &activate, &env);
        if let Some(health) = &self.site.health {
            script = script.health(
                &health.command,
                &env,
                health.timeout.as_secs().max(1),
                health.retries,
                health.interval.as_secs(),
            );
        }
        script = script.settled();
        if let Some(remove) = remove {
            script = script.remove_releases(remove, std::slice::from_ref(release));
        }
        let script = script.lease_release(&self.ctx.holder);
        RemoteCommand::of(script, self.ctx.command_timeout)
    }

    // ------------------------------------------------------------------ rollback

    /// Back to the recorded previous release, then `activate` with that release's
    /// variables. Rare, one round trip each: one after another keeps events in order.
    async fn rollback(&self, step: &Step, hosts: &[String]) -> Vec<StepReport> {
        let mut reports = vec![];
        for host in hosts {
            let Some(fence) = self.fence(host).await else {
                continue;
            };
            let previous = match self.book().observed.get(host) {
                Some(Reach::Reachable(view)) => view.previous.clone(),
                _ => None,
            };
            let Some(previous) = previous else {
                plan::fold_unsent(&mut self.book().pass, step, host, StepError::NoPrevious);
                continue;
            };
            let stage = self.stage_of(host).to_string();
            let activate = self.stage_commands(&stage, |s| &s.activate);
            let env = self.env(host, &previous);
            let script = Script::for_attempt(&self.path_on(host), &self.attempt)
                .rollback(&fence)
                .activate(&previous, &activate, &env)
                .settled()
                .lease_release(&self.ctx.holder);
            let command = RemoteCommand::of(script, self.ctx.command_timeout);
            reports.push(self.run_on(host, command, true).await);
        }
        reports
    }

    // ------------------------------------------------------------------ cleanup

    async fn cleanup(&self, host: &str, remove: &[String]) -> StepReport {
        let script = Script::for_attempt(&self.path_on(host), &self.attempt)
            .lease_acquire(&self.ctx.holder, self.ctx.lease_ttl.as_secs())
            .remove_releases(remove, std::slice::from_ref(&self.site.release))
            .lease_release(&self.ctx.holder)
            .finish();
        let command = RemoteCommand::new(script, self.ctx.observe_timeout);
        self.run_on(host, command, true).await
    }
}

/// Its exact size goes to the hosts, which read just that much of stdin.
fn sized(archive: Archive) -> Result<(Archive, u64), String> {
    let len = std::fs::metadata(archive.path())
        .map_err(|e| format!("failed to read the archive to upload: {e}"))?
        .len();
    Ok((archive, len))
}
