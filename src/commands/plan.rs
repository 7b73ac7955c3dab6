//! `convoy plan`: observes the hosts and prints, per site, what the next pass would do,
//! starting from the same pass state a real pass does. Changes nothing anywhere.

use std::io::Write;

use super::{desired, one_off, runtime};
use crate::cli::Cli;
use crate::controller;
use crate::exit_code;
use crate::manifest::LoadOptions;
use crate::plan::{self, Step};
use crate::state::StateDir;

pub(super) fn plan(
    cli: &Cli,
    site: Option<&str>,
    max_parallel: usize,
    load: &LoadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let desired = match desired(cli, site, load, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    let state = StateDir::open_read_only(&cli.state_dir);
    let (options, shared) = one_off(cli, &state, None, max_parallel)?;
    let ctx = controller::context(&desired, &options, &shared, None);
    let runtime = runtime()?;
    let order = plan::order(
        desired
            .sites
            .values()
            .map(|s| (s.name.as_str(), &s.depends_on[..])),
    );
    if desired.sites.values().any(|s| !s.depends_on.is_empty()) {
        // dependsOn: the order sites switch in (builds may run earlier).
        writeln!(out, "switch order: {}", order.join(", "))?;
    }
    for s in order
        .iter()
        .map(|name| &desired.sites[*name])
        .filter(|s| site.is_none_or(|name| s.name == name))
    {
        let observed = runtime.block_on(crate::execute::observe_site(&ctx, s));
        let pass = controller::pass_state(s, &desired.releases, &state);
        let (steps, outcome) = plan::preview(s, &observed, &pass);
        writeln!(out, "{}: desired {}", s.name, s.release)?;
        for budget in plan::describe_failure_budget(s) {
            writeln!(out, "  {budget}")?;
        }
        for (host, reach) in &observed {
            let seen = match reach {
                plan::Reach::Reachable(v) => {
                    format!("live {}", v.current.as_deref().unwrap_or("-"))
                }
                plan::Reach::Unreachable { reason } => format!("unreachable: {reason}"),
                plan::Reach::Refused { reason } => format!("refused: {reason}"),
            };
            writeln!(out, "  {host}: {seen}")?;
        }
        for step in &steps {
            writeln!(out, "  - {}", describe(step))?;
        }
        if steps.is_empty() {
            writeln!(out, "  nothing to do")?;
        }
        match &outcome {
            plan::Outcome::Waiting { on } => {
                writeln!(out, "  => Waiting: {}", plan::waiting_message(on))?;
            }
            other => writeln!(out, "  => {other:?}")?,
        }
    }
    runtime.block_on(shared.close());
    Ok(exit_code::OK)
}

/// One planned step in words.
fn describe(step: &Step) -> String {
    match step {
        Step::Build { host } => format!("build on {host}"),
        Step::Once { stage, host } => format!("run `once` of stage {stage} on {host}"),
        Step::Switch {
            stage,
            hosts,
            pause,
            cleanup,
        } => {
            let mut text = format!("switch stage {stage}: {}", hosts.join(", "));
            if !pause.is_zero() {
                text.push_str(&format!(" (after a {}s pause)", pause.as_secs()));
            }
            for (host, remove) in cleanup {
                text.push_str(&format!("; then remove {} on {host}", remove.join(", ")));
            }
            text
        }
        Step::Rollback { stage, hosts } => format!("roll back stage {stage}: {}", hosts.join(", ")),
        Step::Cleanup { host, remove } => format!("remove {} on {host}", remove.join(", ")),
    }
}
