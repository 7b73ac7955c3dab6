//! Command-line interface: the clap types and the help text an operator reads.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

/// `convoy --version`: the package version and the git commit it was built from
/// (`unknown` when built without `.git`, e.g. from a tarball).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VERGEN_GIT_SHA"),
    ")"
);

/// convoy deploys web applications to fleets of servers over SSH, declaratively.
///
/// Desired state lives in YAML manifests (Site, ServerGroup, Release). convoy observes the
/// release live on each host and converges: builds everywhere in parallel, switches only when
/// every required host built, stage by stage, with health checks and rollback.
#[derive(Debug, Parser)]
#[command(
    name = "convoy",
    version = VERSION,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Manifest directory (searched recursively for *.yaml/*.yml) or a single manifest file.
    ///
    /// A relative path, the default included, resolves against the current directory: under
    /// cron or systemd give an absolute one. `reconcile` logs the absolute path first.
    #[arg(
        short = 'f',
        long = "manifests",
        global = true,
        default_value = "manifests",
        env = "CONVOY_MANIFESTS"
    )]
    pub manifests: PathBuf,

    /// Where convoy keeps status, history and its lock.
    ///
    /// A relative path, the default included, resolves against the current directory: under
    /// cron or systemd give an absolute one. `reconcile` logs the absolute path first.
    #[arg(
        long,
        global = true,
        default_value = ".convoy-state",
        env = "CONVOY_STATE_DIR"
    )]
    pub state_dir: PathBuf,

    /// known_hosts file for SSH host keys (default: the ssh client's own, ~/.ssh/known_hosts).
    #[arg(long, global = true, value_name = "FILE", env = "CONVOY_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,

    /// Log lines on stderr: `text` for people, `json` for log shippers (one object per
    /// line). `RUST_LOG` filters them (default: info; e.g. `RUST_LOG=warn`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "CONVOY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the manifests and report every problem with file:line:column; touches no host.
    ///
    /// Exit 0 when valid (with a one-line summary), 2 when invalid.
    Validate {
        /// A directory an absolute `fetch.archive.path` may lie under (repeatable). Relative
        /// archive paths must stay inside the manifest directory; nothing else is uploaded.
        #[arg(long = "archive-root", value_name = "DIR")]
        archive_roots: Vec<PathBuf>,
    },

    /// Print the CustomResourceDefinitions of every kind (apiextensions.k8s.io/v1).
    Crds {
        /// Write one file per kind into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },

    /// Converge every site to its desired release.
    ///
    /// With --once: one pass, then exit 0 (converged), 3 (degraded: optional hosts
    /// unreachable or failed within rollout.maxFailed), 1 (failed or blocked) or 2 (invalid
    /// manifests). Without --once: run as a
    /// controller that watches the manifest directory.
    Reconcile {
        /// Converge once and exit, for cron or CI.
        #[arg(long)]
        once: bool,
        /// Only this site.
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// With --once: change only this host (repeatable), e.g. a server back from being
        /// off. The other hosts are observed, never changed: a required one without the
        /// build, or an earlier stage not live yet, makes it wait (exit 1). Sites without
        /// any of these hosts are skipped; the exit code is the targeted hosts'.
        #[arg(long = "host", value_name = "NAME", requires = "once")]
        hosts: Vec<String>,
        /// With --once: bound for the whole run. As a daemon: bound for one host round trip
        /// that runs user commands (build, once, activate, health).
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        timeout: String,
        /// With --once: how long to wait for an unreachable required host (retrying with
        /// backoff, one line per attempt) before reporting the site Blocked. Builds are
        /// bounded by --timeout only.
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        wait_unreachable: String,
        /// Global cap on hosts worked on at once, across all sites.
        #[arg(long, value_name = "N", default_value_t = 32)]
        max_parallel: usize,
        /// Cap on sites changed at once, each from its first build through its last switch
        /// (default: no cap). Observing needs no slot: a site with nothing to do never waits.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_sites: Option<u32>,
        /// Cap on builds running at once on one host, whatever their site (catch-up builds
        /// included): with 1, ten sites sharing a host build there one after another.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        max_builds_per_host: u32,
        /// Daemon: re-check every site this often, to catch drift (e.g. `current` repointed by hand).
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        resync: String,
        /// Daemon: serve /metrics, /healthz and /readyz here.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9469")]
        metrics_addr: String,
        /// With --once: also write the metrics to this file (node_exporter textfile collector).
        #[arg(long, value_name = "PATH")]
        metrics_textfile: Option<PathBuf>,
        /// A directory an absolute `fetch.archive.path` may lie under (repeatable). Relative
        /// archive paths must stay inside the manifest directory; nothing else is uploaded.
        #[arg(long = "archive-root", value_name = "DIR")]
        archive_roots: Vec<PathBuf>,
        #[command(flatten)]
        git: Box<GitArgs>,
    },

    /// Observe the hosts and print what a reconcile pass would do; changes nothing.
    Plan {
        /// Only this site.
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// Global cap on hosts observed at once.
        #[arg(long, value_name = "N", default_value_t = 32)]
        max_parallel: usize,
        /// A directory an absolute `fetch.archive.path` may lie under (repeatable). Relative
        /// archive paths must stay inside the manifest directory; nothing else is uploaded.
        #[arg(long = "archive-root", value_name = "DIR")]
        archive_roots: Vec<PathBuf>,
    },

    /// Show each site's phase and the release live on each host, or one site in detail.
    ///
    /// With SITE: its labels, phase, whole message, conditions and hosts (`-o json|yaml`: the
    /// Site object). Without: one line per site and its hosts (`-o json|yaml`: a List).
    Status {
        /// One site, in detail.
        site: Option<String>,
        /// Only the sites whose `metadata.labels` match, as `kubectl get -l`: `key=value`,
        /// `key!=value`, `key`, `!key`, comma-separated (all must hold).
        #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "site")]
        selector: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },

    /// Lift the Failed hold of a site (after `rollout.failureRetries` failed attempts), so
    /// the next pass tries its desired release again.
    Retry {
        /// The site.
        site: String,
        /// Also clear the site's interrupted `once` records (started, end never recorded,
        /// e.g. the host lost power) on its hosts, so the next pass runs them again. Check
        /// first whether they completed. Lists the records and asks for confirmation.
        #[arg(long)]
        once_interrupted: bool,
        /// With --once-interrupted: do not ask for confirmation (required without a terminal).
        #[arg(long, short = 'y', requires = "once_interrupted")]
        yes: bool,
    },

    /// Show the deployment history of a site: who did what, where and when.
    History {
        /// The site.
        site: String,
    },

    /// Break the host leases of a site by hand (a controller that died and whose lease has
    /// not expired yet), saying whose they were. Refused while the holder still renews them
    /// (it is alive) unless --force. Ends the process groups the holder left running.
    ///
    /// Exit 0 when every selected host is free afterwards, 1 otherwise.
    Unlock {
        /// The site.
        site: String,
        /// Only this host (repeatable); default: every host of the site.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Break a lease even though its holder renewed it recently.
        #[arg(long)]
        force: bool,
    },

    /// Print the completion script of a shell, e.g. `convoy completions bash >
    /// /etc/bash_completion.d/convoy`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), e.g. `convoy man > /usr/share/man/man1/convoy.1`.
    Man {
        /// Write every page (`convoy.1` and one per subcommand, `convoy-reconcile.1`, …)
        /// into this directory instead of printing `convoy.1`.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `reconcile --git`: follow a branch of a manifest repository instead of reading `-f`.
#[derive(Debug, Clone, clap::Args)]
pub struct GitArgs {
    /// Follow a branch of this git repository instead of reading the manifests from -f.
    ///
    /// REPO is a path or URL, as `git fetch` takes it. convoy keeps its own clone in the
    /// state dir, fetches the branch every --interval (and on a signed webhook), and deploys
    /// the tree of the fetched commit; an invalid commit changes nothing. With --once: fetch
    /// once, reconcile that commit.
    #[arg(long, value_name = "REPO")]
    pub git: Option<String>,
    /// With --git: the branch to follow.
    #[arg(long, value_name = "BRANCH", default_value = "main", requires = "git")]
    pub branch: String,
    /// With --git: the manifest folder inside the repository (default: its root).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "",
        hide_default_value = true,
        requires = "git"
    )]
    pub path: String,
    /// With --git: how often to fetch.
    #[arg(long, value_name = "DURATION", default_value = "1m", requires = "git")]
    pub interval: String,
    /// With --git, daemon: serve `POST /hooks/git` on --metrics-addr, which fetches at once
    /// when signed with the secret in this file (GitHub's X-Hub-Signature-256). Without
    /// it the endpoint does not exist.
    #[arg(long, value_name = "FILE", requires = "git")]
    pub webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, message, then the fields (`site=… host=…`).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the fields.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// Where a path given on the command line really is: a relative one (the defaults are)
/// resolves against the current directory, which under cron or systemd is rarely the one
/// the operator had in mind. Symlinks are resolved when the path exists; otherwise it is
/// made absolute without touching the disk.
pub fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}
