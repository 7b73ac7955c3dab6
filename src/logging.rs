//! The process's log: `tracing` events on stderr, as text for people or one JSON object per
//! line for log shippers, filtered by `RUST_LOG` (default: convoy's events at info, other
//! crates' at warn). Logs are what `reconcile` tells its operator over time: passes, host
//! events, reloads, failed state writes. A command's own output (status tables, validation
//! errors, `plan`, the `--once` report) never goes through here.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Without `RUST_LOG`: convoy's own events from info up, every other crate's from warn up.
const DEFAULT_FILTER: &str = "warn,convoy=info";

/// Installs the process-wide subscriber; call once, first thing. An unparsable `RUST_LOG`
/// is reported (as the first warning) and the default filter used instead.
pub fn init(format: LogFormat) {
    let (filter, ignored) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(format!("{spec}: {e}"))),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    // The HTTP client of notifications logs request URLs, and a webhook URL is a secret:
    // its records are never shown, whatever `RUST_LOG` asks for.
    let filter = ["ureq=off", "ureq_proto=off"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only fails when a subscriber is already installed (a test harness): keep that one.
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if let Some(ignored) = ignored {
        tracing::warn!("ignoring RUST_LOG={ignored}");
    }
}
