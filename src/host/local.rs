//! The local transport: `address: local` hosts run commands with this machine's `sh`, no
//! SSH. Used for demos, tests and a host reconciling itself at boot.

use std::process::Stdio;

use tokio::process::Command;

use super::output::{OUTPUT_LIMIT, read_tail};
use super::{CommandOutput, HostError, RemoteCommand};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHost {
    pub name: String,
    /// Prefixed to every path on this host, so several "hosts" can share one machine.
    pub root: Option<String>,
}

impl LocalHost {
    pub fn path(&self, site_path: &str) -> String {
        match &self.root {
            Some(root) => format!("{}{site_path}", root.trim_end_matches('/')),
            None => site_path.to_string(),
        }
    }

    pub async fn run(&self, command: &RemoteCommand) -> Result<CommandOutput, HostError> {
        let io = |source| HostError::Io {
            host: self.name.clone(),
            source,
        };
        let (words, prefix) = command.invocation();
        let mut child = Command::new("sh")
            .arg("-c")
            .args(&words)
            .stdin(if command.has_stdin() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // stdin stays open until the command ends (the lifeline, see the script preamble).
        let feed =
            async { Some(super::feed_lifeline(stdin?, prefix, command.stdin.as_ref()).await) };
        let work = async {
            let (lifeline, out, err, status) = tokio::join!(
                feed,
                read_tail(stdout, OUTPUT_LIMIT),
                read_tail(stderr, OUTPUT_LIMIT),
                child.wait()
            );
            drop(lifeline);
            let (stdout, t1) = out?;
            let (stderr, t2) = err?;
            let status = status?.code().unwrap_or(-1);
            Ok::<_, std::io::Error>(CommandOutput {
                status,
                stdout,
                stderr,
                truncated: t1 || t2,
            })
        };
        match tokio::time::timeout(command.timeout, work).await {
            Ok(result) => result.map_err(io),
            Err(_) => Err(HostError::Timeout {
                host: self.name.clone(),
                after: command.timeout,
            }),
        }
    }
}
