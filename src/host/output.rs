//! Bounded capture of a command's output: the last 64 KiB of each stream is kept, so a
//! chatty build can neither exhaust memory nor hide the error at its end.

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of each stream is kept (the tail).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// What a command did: exit status and the tails of stdout and stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; -1 when the process was killed by a signal.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when either stream was longer than [`OUTPUT_LIMIT`] and its head was dropped.
    pub truncated: bool,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads a stream to its end, keeping only the last `limit` bytes; returns (tail, truncated).
pub async fn read_tail<R: AsyncRead + Unpin>(
    mut reader: R,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > limit {
            let excess = kept.len() - limit;
            kept.drain(..excess);
            truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_only_the_tail() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (tail, truncated) = read_tail(&data[..], 1000).await.unwrap();
        assert!(truncated);
        assert_eq!(tail, data[data.len() - 1000..]);
        let (all, truncated) = read_tail(&data[..10], 1000).await.unwrap();
        assert!(!truncated);
        assert_eq!(all, data[..10]);
    }
}
