//! The SSH transport: the system `ssh` through the `openssh` crate, one multiplexed master
//! connection per host, reused by every command of a pass and across passes. Masters exit
//! on their own after `idle` without use (`ControlPersist`), so none outlives a killed convoy
//! by more than that; the pool also caps how many are open at once.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::sync::Mutex;

use super::output::{OUTPUT_LIMIT, read_tail};
use super::{CommandOutput, HostError, RemoteCommand};
use crate::manifest::types::HostKeyChecking;

/// How to reach one host over SSH (ServerGroup defaults already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    pub name: String,
    pub address: String,
    /// Only what the manifest sets is passed to ssh; the rest is ssh_config's to decide.
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub host_key_checking: HostKeyChecking,
}

struct Master {
    session: Arc<Session>,
    last_used: Instant,
}

/// Open master connections, keyed by host name.
pub struct SshPool {
    control_dir: PathBuf,
    known_hosts_file: Option<PathBuf>,
    max_masters: usize,
    idle: Duration,
    masters: Mutex<HashMap<String, Master>>,
}

impl SshPool {
    /// `known_hosts_file`: use this file instead of `~/.ssh/known_hosts` (tests, dedicated
    /// controller accounts). `idle`: how long an unused master survives, even if convoy dies.
    pub fn new(
        control_dir: PathBuf,
        known_hosts_file: Option<PathBuf>,
        max_masters: usize,
        idle: Duration,
    ) -> Self {
        SshPool {
            control_dir,
            known_hosts_file,
            max_masters: max_masters.max(1),
            idle,
            masters: Mutex::default(),
        }
    }

    /// Number of masters currently held open.
    pub async fn open_masters(&self) -> usize {
        self.masters.lock().await.len()
    }

    /// Closes every master (end of a `--once` run).
    pub async fn close_all(&self) {
        let masters: Vec<Master> = self.masters.lock().await.drain().map(|(_, m)| m).collect();
        for master in masters {
            if let Ok(session) = Arc::try_unwrap(master.session) {
                let _ = session.close().await;
            }
        }
    }

    async fn session(&self, host: &SshHost) -> Result<Arc<Session>, HostError> {
        {
            let mut masters = self.masters.lock().await;
            if let Some(master) = masters.get_mut(&host.name) {
                master.last_used = Instant::now();
                return Ok(master.session.clone());
            }
        }
        // Connect without holding the lock, so many hosts connect in parallel.
        let session = Arc::new(self.connect(host).await?);
        let mut masters = self.masters.lock().await;
        if let Some(existing) = masters.get(&host.name) {
            return Ok(existing.session.clone());
        }
        while masters.len() >= self.max_masters {
            let oldest = masters
                .iter()
                .min_by_key(|(_, m)| m.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(name) => drop(masters.remove(&name)),
                None => break,
            }
        }
        masters.insert(
            host.name.clone(),
            Master {
                session: session.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(session)
    }

    async fn forget(&self, host: &SshHost) {
        self.masters.lock().await.remove(&host.name);
    }

    async fn connect(&self, host: &SshHost) -> Result<Session, HostError> {
        std::fs::create_dir_all(&self.control_dir).map_err(|source| HostError::Io {
            host: host.name.clone(),
            source,
        })?;
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(match host.host_key_checking {
                HostKeyChecking::Strict => KnownHosts::Strict,
                HostKeyChecking::AcceptNew => KnownHosts::Add,
            })
            .connect_timeout(host.connect_timeout.max(Duration::from_secs(1)))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&self.control_dir)
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(self.idle.as_secs().max(1) as usize).expect("at least 1"),
            ));
        if let Some(port) = host.port {
            builder.port(port);
        }
        if let Some(user) = &host.user {
            builder.user(user.clone());
        }
        if let Some(key) = &host.identity_file {
            builder.keyfile(key);
        }
        if let Some(config) = &host.config_file {
            builder.config_file(config);
        }
        if let Some(known_hosts) = &self.known_hosts_file {
            builder.user_known_hosts_file(known_hosts);
        }
        let destination = host.address.trim_start_matches('[').trim_end_matches(']');
        // ssh's own ConnectTimeout covers TCP + banner; bound the whole handshake as well.
        let bound = host.connect_timeout * 2 + Duration::from_secs(5);
        match tokio::time::timeout(bound, builder.connect_mux(destination)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(classify_connect_error(&host.name, &error_chain(&e))),
            Err(_) => Err(HostError::Unreachable {
                host: host.name.clone(),
                reason: format!("no SSH session within {bound:?}"),
            }),
        }
    }

    /// Runs `command` on `host` through its master; a master that died (host rebooted,
    /// idle timeout) is replaced once before the host is declared unreachable.
    pub async fn run(
        &self,
        host: &SshHost,
        command: &RemoteCommand,
    ) -> Result<CommandOutput, HostError> {
        let session = self.session(host).await?;
        match run_on(&session, host, command).await {
            Err(Retry::Reconnect(first)) => {
                self.forget(host).await;
                let session = self.session(host).await?;
                run_on(&session, host, command).await.map_err(|e| match e {
                    Retry::Reconnect(reason) => HostError::Unreachable {
                        host: host.name.clone(),
                        reason: format!("connection lost ({first}; then {reason})"),
                    },
                    Retry::Final(e) => e,
                })
            }
            Err(Retry::Final(e)) => Err(e),
            Ok(output) => Ok(output),
        }
    }
}

enum Retry {
    Reconnect(String),
    Final(HostError),
}

async fn run_on(
    session: &Session,
    host: &SshHost,
    command: &RemoteCommand,
) -> Result<CommandOutput, Retry> {
    let lost = |e: openssh::Error| Retry::Reconnect(error_chain(&e));
    let (words, prefix) = command.invocation();
    let words: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    let mut remote = session.raw_command(format!("sh -c {}", words.join(" ")));
    remote
        .stdin(if command.has_stdin() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let work = async {
        let mut child = remote.spawn().await.map_err(lost)?;
        let stdin = child.stdin().take();
        let stdout = child.stdout().take().expect("piped");
        let stderr = child.stderr().take().expect("piped");
        // stdin stays open until the command ends (the lifeline): it is dropped, and the
        // host sees end of file, only when convoy is done with the command or gone.
        let feed =
            async { Some(super::feed_lifeline(stdin?, prefix, command.stdin.as_ref()).await) };
        let (lifeline, out, err) = tokio::join!(
            feed,
            read_tail(stdout, OUTPUT_LIMIT),
            read_tail(stderr, OUTPUT_LIMIT)
        );
        let status = child.wait().await.map_err(lost)?;
        drop(lifeline);
        let io = |source| {
            Retry::Final(HostError::Io {
                host: host.name.clone(),
                source,
            })
        };
        let (stdout, t1) = out.map_err(io)?;
        let (stderr, t2) = err.map_err(io)?;
        Ok(CommandOutput {
            status: status.code().unwrap_or(-1),
            stdout,
            stderr,
            truncated: t1 || t2,
        })
    };
    match tokio::time::timeout(command.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Retry::Final(HostError::Timeout {
            host: host.name.clone(),
            after: command.timeout,
        })),
    }
}

/// An error and all its causes on one line (openssh puts ssh's own message in a cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A changed or unknown host key is a refusal, never "unreachable": retrying would not help
/// and skipping it quietly would hide a possible attack.
fn classify_connect_error(host: &str, text: &str) -> HostError {
    let host = host.to_string();
    if text.contains("IDENTIFICATION HAS CHANGED")
        || text.contains("has changed and you have requested strict checking")
    {
        HostError::HostKeyChanged { host }
    } else if text.contains("Host key verification failed") || text.contains("host key is known") {
        HostError::HostKeyUnknown { host }
    } else {
        let reason = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        HostError::Unreachable { host, reason }
    }
}

/// A POSIX single-quoted word: the remote login shell passes it to `sh -c` unchanged.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_problems_are_refusals_not_unreachable() {
        let changed = "failed to connect to the remote host: @@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.";
        assert!(matches!(
            classify_connect_error("h", changed),
            HostError::HostKeyChanged { .. }
        ));
        let unknown = "failed to connect: No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed.";
        assert!(matches!(
            classify_connect_error("h", unknown),
            HostError::HostKeyUnknown { .. }
        ));
        let refused =
            "failed to connect: ssh: connect to host 127.0.0.1 port 1: Connection refused";
        assert!(classify_connect_error("h", refused).is_unreachable());
    }

    #[test]
    fn quoting_survives_hostile_text() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
