//! `convoy retry SITE`: lifts the Failed hold; with `--once-interrupted`, first clears the
//! site's interrupted `once` records on its hosts, after showing them and asking. Holds the
//! controller lock throughout, so no pass runs meanwhile. While a daemon holds the lock, a
//! plain retry is a request the daemon carries out (`controller/requests.rs`).

use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{desired_without_upload, one_off, runtime, unknown_site};
use tokio::runtime::Runtime;

use crate::cli::Cli;
use crate::controller::{self, once_record, once_record::Interrupted};
use crate::desired::DesiredSite;
use crate::execute::Context;
use crate::exit_code;
use crate::state::{Request, StateDir, StateError, now_ms};

/// How long `retry` waits for the daemon holding the state dir to answer its request.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// After that wait, how long an answer to a request that was taken may still take.
const GRACE: Duration = Duration::from_secs(2);

pub(super) fn retry(
    state_dir: &Path,
    site: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = match StateDir::lock(state_dir) {
        Ok(state) => state,
        Err(StateError::Locked { holder, .. }) => {
            return ask_daemon(state_dir, site, &holder, out, err);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(code) = unknown_site(&state, site, err)? {
        return Ok(code);
    }
    state.reset_attempts(site)?;
    writeln!(
        out,
        "{site}: failed attempts cleared; the next pass tries its desired release again"
    )?;
    Ok(exit_code::OK)
}

/// A controller holds the state dir: ask it to retry `site` (a request file it reads every
/// quarter second) and print its answer. A `--once` run takes no requests; nobody
/// answering within [`ANSWER_WAIT`] is exit 1 and the request is withdrawn.
fn ask_daemon(
    state_dir: &Path,
    site: &str,
    holder: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let state = StateDir::open_read_only(state_dir);
    let request = Request {
        kind: "retry".into(),
        site: site.to_string(),
        requested_ms: now_ms(),
    };
    let token = state.send_request(&request)?;
    let deadline = Instant::now() + ANSWER_WAIT;
    let answer = loop {
        if let Some(answer) = state.take_answer("retry", &token)? {
            break Some(answer);
        }
        let now = Instant::now();
        // Claimed by the daemon between the last look and now (it removes the request, then
        // acts and answers): a short grace lets that answer arrive.
        if now >= deadline && (state.withdraw_request("retry", &token) || now >= deadline + GRACE) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match answer {
        Some(answer) if answer.ok => {
            writeln!(out, "{}", answer.message)?;
            Ok(exit_code::OK)
        }
        Some(answer) => {
            writeln!(err, "error: {}", answer.message)?;
            Ok(if answer.unknown_site {
                exit_code::INVALID
            } else {
                exit_code::FAILED
            })
        }
        None => {
            writeln!(
                err,
                "error: no daemon answered within {}s: the state dir `{}` is held by {holder}; a `reconcile --once` run takes no requests (retry when it ends), a daemon answers within a second; request withdrawn",
                ANSWER_WAIT.as_secs(),
                crate::cli::resolved(state_dir).display()
            )?;
            Ok(exit_code::FAILED)
        }
    }
}

/// `retry SITE --once-interrupted`: lists the site's interrupted `once` records, asks,
/// clears those still interrupted over the normal transport, and lifts the Failed hold.
pub(super) fn retry_once_interrupted(
    cli: &Cli,
    site: &str,
    yes: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let desired = match desired_without_upload(cli, site, err)? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    // Held for the whole command: no pass of this state dir can start `once` meanwhile.
    let state = StateDir::lock(&cli.state_dir)?;
    let (options, shared) = one_off(cli, &state, Some(site), 32)?;
    let ctx = controller::context(&desired, &options, &shared, None);
    let runtime = runtime()?;
    let target = &desired.sites[site];
    let code = find_and_clear(&runtime, &ctx, target, &state, yes, out, err);
    runtime.block_on(shared.close());
    code
}

/// Finds the interrupted records of `target`'s release, shows them, asks (unless `yes`),
/// clears them and lifts the Failed hold. Every host must have answered for exit 0.
fn find_and_clear(
    runtime: &Runtime,
    ctx: &Context,
    target: &DesiredSite,
    state: &StateDir,
    yes: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let site = &target.name;
    let (found, errors) = runtime.block_on(once_record::find(ctx, target));
    for e in &errors {
        writeln!(err, "error: cannot check the `once` record: {e}")?;
    }
    if found.is_empty() {
        writeln!(
            out,
            "{site}: no interrupted `once` record of release {} on any host{}; nothing cleared",
            target.release,
            if errors.is_empty() {
                ""
            } else {
                " that answered"
            }
        )?;
        return Ok(if errors.is_empty() {
            exit_code::OK
        } else {
            exit_code::FAILED
        });
    }
    writeln!(
        out,
        "{site}: interrupted `once` records to clear (their commands will run again on the next pass):"
    )?;
    for record in &found {
        writeln!(out, "  {}", record.describe())?;
    }
    if !yes && let Some(code) = not_confirmed(out, err)? {
        return Ok(code);
    }
    let failed = clear_each(runtime, ctx, target, &found, out, err)?;
    state.reset_attempts(site)?;
    writeln!(
        out,
        "{site}: failed attempts cleared; the next pass runs the `once` commands again"
    )?;
    Ok(if failed || !errors.is_empty() {
        exit_code::FAILED
    } else {
        exit_code::OK
    })
}

/// Asks on the terminal before clearing. `Some(exit code)` when the answer is no, or when
/// stdin is no terminal to ask on.
fn not_confirmed(out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<Option<u8>> {
    if !std::io::stdin().is_terminal() {
        writeln!(
            err,
            "error: refusing to clear without confirmation: stdin is not a terminal; check the records, then pass --yes"
        )?;
        return Ok(Some(exit_code::INVALID));
    }
    write!(out, "Clear these records? [y/N] ")?;
    out.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        writeln!(out, "nothing cleared")?;
        return Ok(Some(exit_code::FAILED));
    }
    Ok(None)
}

/// Clears each record that is still interrupted, saying what happened on each host.
/// Returns whether any clearing failed.
fn clear_each(
    runtime: &Runtime,
    ctx: &Context,
    target: &DesiredSite,
    found: &[Interrupted],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut failed = false;
    for record in found {
        match runtime.block_on(once_record::clear(ctx, target, record)) {
            Ok(None) => writeln!(
                out,
                "  host {}: cleared ({}/started moved aside; the log is kept)",
                record.host, record.dir
            )?,
            Ok(Some(why)) => writeln!(out, "  host {}: left alone: {why}", record.host)?,
            Err(e) => {
                failed = true;
                writeln!(err, "error: host {}: failed to clear: {e}", record.host)?;
            }
        }
    }
    Ok(failed)
}
