//! Everything convoy does on a host: transports (local and SSH), the remote shell snippets
//! (`script`) and the parsing of what a host reports (`observe`). Deployment decisions are
//! not made here: this layer runs what it is told and reports what happened.

pub mod local;
pub mod observe;
pub mod output;
pub mod protocol;
pub mod script;
pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use output::CommandOutput;

/// Why a command could not be run on a host. A command that ran and exited non-zero is
/// not an error here: it is a [`CommandOutput`] with a non-zero status.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Connection refused or timed out, authentication failed: the reconciler retries these.
    #[error("host `{host}` is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    /// The host presented a key different from the one in known_hosts: maybe an attacker.
    #[error(
        "host `{host}` refused: its SSH host key changed (possible man-in-the-middle); verify the new key and update known_hosts"
    )]
    HostKeyChanged { host: String },
    /// Strict checking is on and known_hosts has no key for this host.
    #[error(
        "host `{host}` refused: its SSH host key is not in known_hosts (add it, or set `hostKeyChecking: accept-new` on the group)"
    )]
    HostKeyUnknown { host: String },
    /// The command did not finish in time; it may still be running on the host.
    #[error("command on host `{host}` timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    /// convoy is stopping (SIGTERM, SIGINT, `--timeout`): the command was abandoned, and
    /// the pass ends the process groups it started on the host.
    #[error("stopped on host `{host}`: convoy is shutting down")]
    Cancelled { host: String },
    /// Something local went wrong (spawning ssh or sh, a pipe).
    #[error("failed to run a command on host `{host}`")]
    Io {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    /// Transient: worth retrying with backoff.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HostError::Unreachable { .. })
    }
}

/// What a command reads on stdin.
#[derive(Debug, Clone)]
pub enum Stdin {
    /// A small input held in memory, shared (never copied) between hosts.
    Bytes(Arc<[u8]>),
    /// A file on the controller, opened afresh for each host and streamed from disk: an
    /// archive is never held in memory, however large and however many hosts receive it.
    /// Exactly this many bytes of it: the host reads that much, then the lifeline.
    File(PathBuf, u64),
}

impl Stdin {
    /// Writes the whole input to `pipe`.
    pub async fn feed(&self, pipe: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        match self {
            Stdin::Bytes(bytes) => pipe.write_all(bytes).await,
            Stdin::File(path, len) => {
                use tokio::io::AsyncReadExt as _;
                let file = tokio::fs::File::open(path).await?;
                tokio::io::copy(&mut file.take(*len), pipe).await.map(drop)
            }
        }
    }
}

/// Writes what a command reads on stdin (the private script, then its input) and hands the
/// pipe back: the caller keeps it open until the command ends (the lifeline). A script that
/// stops reading early is not an error of ours.
pub(crate) async fn feed_lifeline<W: AsyncWrite + Unpin>(
    mut pipe: W,
    prefix: Option<&[u8]>,
    input: Option<&Stdin>,
) -> W {
    let prefixed = match prefix {
        Some(prefix) => pipe.write_all(prefix).await.is_ok(),
        None => true,
    };
    if let (true, Some(input)) = (prefixed, input) {
        let _ = input.feed(&mut pipe).await;
    }
    let _ = pipe.flush().await;
    pipe
}

/// A shell script to run on a host with `sh -c`, optionally fed `stdin` (e.g. an archive).
/// stdin stays open after the payload until the command ends (the lifeline: end of file on
/// the host means convoy is gone), so a script reads exactly the payload's length.
#[derive(Debug, Clone)]
pub struct RemoteCommand {
    pub script: String,
    pub stdin: Option<Stdin>,
    pub timeout: Duration,
    /// The script carries user environment values: it travels on stdin, not as an argument.
    pub private: bool,
}

/// `sh/bootstrap.sh`: reads a private script from the first `N` bytes of stdin into a 0600
/// temporary file and runs it with the rest of stdin; the script removes the file first
/// thing (see the preamble), so values never show in `ps` and do not stay on disk.
/// The transports keep stdin open until the command ends (`CV_LIFELINE`): see the preamble.
const PRIVATE_BOOTSTRAP: &str = include_str!("sh/bootstrap.sh");

impl RemoteCommand {
    pub fn new(script: impl Into<String>, timeout: Duration) -> Self {
        RemoteCommand {
            script: script.into(),
            stdin: None,
            timeout,
            private: false,
        }
    }

    /// A script built by [`script::Script`]: private when it carries user environment values.
    pub fn of(script: script::Script, timeout: Duration) -> Self {
        let private = script.is_private();
        let mut command = RemoteCommand::new(script.finish(), timeout);
        command.private = private;
        command
    }

    /// What `sh -c` runs, and what goes on stdin before [`RemoteCommand::stdin`].
    pub fn invocation(&self) -> (Vec<String>, Option<&[u8]>) {
        if self.private {
            (
                vec![
                    PRIVATE_BOOTSTRAP.to_string(),
                    "convoy".to_string(),
                    self.script.len().to_string(),
                    script::random_word(),
                ],
                Some(self.script.as_bytes()),
            )
        } else {
            (vec![self.script.clone()], None)
        }
    }

    /// Whether the command reads stdin at all.
    pub fn has_stdin(&self) -> bool {
        self.private || self.stdin.is_some()
    }

    pub fn with_stdin(mut self, stdin: Vec<u8>) -> Self {
        self.stdin = Some(Stdin::Bytes(stdin.into()));
        self
    }

    /// Streams the first `len` bytes of the file at `path` to the command's stdin (opened
    /// when the command runs).
    pub fn with_stdin_file(mut self, path: PathBuf, len: u64) -> Self {
        self.stdin = Some(Stdin::File(path, len));
        self
    }
}

/// How convoy runs something on a host: a POSIX `sh` script (with its environment exported
/// inside it), optional stdin streamed to it (an archive upload), a timeout, and back the
/// exit status with bounded output tails. `Err` only when the command could not run at all.
pub trait Transport {
    fn run(
        &self,
        command: &RemoteCommand,
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send;
}

impl Transport for local::LocalHost {
    fn run(
        &self,
        command: &RemoteCommand,
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send {
        local::LocalHost::run(self, command)
    }
}

/// An SSH host reached through the pool's multiplexed master.
pub struct SshTransport<'a> {
    pub pool: &'a ssh::SshPool,
    pub host: &'a ssh::SshHost,
}

impl Transport for SshTransport<'_> {
    fn run(
        &self,
        command: &RemoteCommand,
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send {
        self.pool.run(self.host, command)
    }
}

/// A host and how to reach it, resolved from a ServerGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Local(local::LocalHost),
    Ssh(ssh::SshHost),
}

impl Host {
    pub fn name(&self) -> &str {
        match self {
            Host::Local(h) => &h.name,
            Host::Ssh(h) => &h.name,
        }
    }

    /// Where a site path lives on this host (a local host's `root` prefixes it).
    pub fn path(&self, site_path: &str) -> String {
        match self {
            Host::Local(h) => h.path(site_path),
            Host::Ssh(_) => site_path.to_string(),
        }
    }

    /// Runs `command`; SSH hosts go through `pool` (one multiplexed master per host).
    pub async fn run(
        &self,
        pool: &ssh::SshPool,
        command: &RemoteCommand,
    ) -> Result<CommandOutput, HostError> {
        match self {
            Host::Local(h) => Transport::run(h, command).await,
            Host::Ssh(host) => SshTransport { pool, host }.run(command).await,
        }
    }
}

/// A fresh directory for this process's SSH control sockets: created (never reused) with
/// mode 0700 under the temp dir, so no other local user can plant or swap a socket in it,
/// and short, because unix socket paths are limited to ~100 bytes.
pub fn private_control_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut last = None;
    for attempt in 0..16u128 {
        let dir = std::env::temp_dir().join(format!(
            "convoy-ssh-{}-{:x}",
            std::process::id(),
            (seed + attempt) & 0xffff_ffff
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}
