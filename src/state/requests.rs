//! Requests to the daemon that holds the state dir, as files: a command that cannot take the
//! lock (`convoy retry SITE` while a daemon runs) leaves `requests/<kind>.<token>.json`, the
//! daemon acts on it and answers in `requests/<kind>.<token>.answer.json`, then removes
//! the request; the command reads the answer and removes it. Both files are written whole
//! (temporary file, rename), so neither side ever reads half of one. No socket, no port:
//! whoever may write the state dir may ask, as whoever may take its lock may act.
//!
//! This file only stores and lists; what a request means is the controller's.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::{read_json, write_json_atomic};
use super::{StateDir, StateError};

const REQUESTS_DIR: &str = "requests";
const ANSWER_SUFFIX: &str = ".answer.json";

/// One request, as the command wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// What is asked: `retry`.
    pub kind: String,
    pub site: String,
    /// When it was asked, in milliseconds since the epoch (the requester's clock: the
    /// daemon runs on the same machine).
    pub requested_ms: u64,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// Whether the daemon did what was asked.
    pub ok: bool,
    /// What happened, for the command to print.
    pub message: String,
    /// Whether the site was unknown to the daemon (the command exits 2).
    #[serde(default)]
    pub unknown_site: bool,
}

/// A request found in the state dir, with the token that pairs it with its answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub token: String,
    pub request: Request,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Requests older than this are dropped unread: their sender has given up on them.
const MAX_AGE_MS: u64 = 30_000;

impl StateDir {
    fn requests_dir(&self) -> PathBuf {
        self.path().join(REQUESTS_DIR)
    }

    /// Leaves a request for the daemon; returns its token. Works without the lock.
    pub fn send_request(&self, request: &Request) -> Result<String, StateError> {
        let dir = self.requests_dir();
        super::files::create_dir(&dir)?;
        let token = format!("{}-{}", std::process::id(), now_ms());
        write_json_atomic(&request_path(&dir, &request.kind, &token), request)?;
        Ok(token)
    }

    /// The answer to the request `token`, if the daemon has answered; the answer file is
    /// removed once read.
    pub fn take_answer(&self, kind: &str, token: &str) -> Result<Option<Answer>, StateError> {
        let path = self
            .requests_dir()
            .join(format!("{kind}.{token}{ANSWER_SUFFIX}"));
        let answer = read_json(&path)?;
        if answer.is_some() {
            let _ = fs::remove_file(&path);
        }
        Ok(answer)
    }

    /// Withdraws an unanswered request (nobody took it): no daemon started later acts on a
    /// request its sender gave up on.
    pub fn withdraw_request(&self, kind: &str, token: &str) -> bool {
        fs::remove_file(request_path(&self.requests_dir(), kind, token)).is_ok()
    }

    /// Every request waiting for an answer, oldest token first. Unreadable ones are skipped
    /// (and reported through the warnings).
    pub fn pending_requests(&self) -> Vec<Pending> {
        let Ok(entries) = fs::read_dir(self.requests_dir()) else {
            return vec![];
        };
        let mut pending: Vec<Pending> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".json")?;
                if name.starts_with('.') || name.ends_with(ANSWER_SUFFIX) {
                    return None;
                }
                let (_, token) = stem.split_once('.')?;
                let path = entry.path();
                match read_json::<Request>(&path) {
                    Ok(Some(request)) => {
                        // Claimed before it is acted on: one that cannot be removed (another
                        // user's file, a read-only directory) would be acted on at every poll.
                        if let Err(e) = fs::remove_file(&path) {
                            self.warn(format!(
                                "ignoring request {}: it cannot be claimed: {e}",
                                path.display()
                            ));
                            return None;
                        }
                        // A sender gives up after seconds: an old request is one it withdrew
                        // too late, or left by a `retry` that was killed.
                        if now_ms().saturating_sub(request.requested_ms) > MAX_AGE_MS {
                            self.warn(format!(
                                "ignoring request {}: older than {} s",
                                path.display(),
                                MAX_AGE_MS / 1000
                            ));
                            return None;
                        }
                        Some(Pending {
                            token: token.to_string(),
                            request,
                        })
                    }
                    Ok(None) => None,
                    Err(e) => {
                        self.warn(format!("ignoring request: {}", super::error_chain(&e)));
                        let _ = fs::remove_file(&path);
                        None
                    }
                }
            })
            .collect();
        pending.sort_by(|a, b| a.token.cmp(&b.token));
        pending
    }

    /// Answers `pending` (already claimed: its request file is gone).
    pub fn answer(&self, pending: &Pending, answer: &Answer) -> Result<(), StateError> {
        let path = self.requests_dir().join(format!(
            "{}.{}{ANSWER_SUFFIX}",
            pending.request.kind, pending.token
        ));
        write_json_atomic(&path, answer)
    }
}

fn request_path(dir: &Path, kind: &str, token: &str) -> PathBuf {
    dir.join(format!("{kind}.{token}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_listed_answered_and_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let sender = StateDir::open_read_only(dir.path());
        let request = Request {
            kind: "retry".into(),
            site: "shop".into(),
            requested_ms: now_ms(),
        };
        let token = sender.send_request(&request).unwrap();
        assert_eq!(sender.take_answer("retry", &token).unwrap(), None);
        let daemon = StateDir::lock(dir.path()).unwrap();
        let pending = daemon.pending_requests();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].request, request);
        assert!(
            daemon.pending_requests().is_empty(),
            "claimed when listed: never acted on twice, even if no answer can be written"
        );
        let answer = Answer {
            ok: true,
            message: "done".into(),
            unknown_site: false,
        };
        daemon.answer(&pending[0], &answer).unwrap();
        assert_eq!(sender.take_answer("retry", &token).unwrap(), Some(answer));
        assert_eq!(sender.take_answer("retry", &token).unwrap(), None);
    }

    #[test]
    fn a_request_older_than_its_sender_waits_is_dropped_unread() {
        let dir = tempfile::tempdir().unwrap();
        let sender = StateDir::open_read_only(dir.path());
        let request = Request {
            kind: "retry".into(),
            site: "shop".into(),
            requested_ms: now_ms() - MAX_AGE_MS - 1000,
        };
        sender.send_request(&request).unwrap();
        let daemon = StateDir::lock(dir.path()).unwrap();
        assert!(daemon.pending_requests().is_empty());
        assert!(daemon.take_warnings()[0].contains("older than 30 s"));
        assert_eq!(
            fs::read_dir(dir.path().join(REQUESTS_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_withdrawn_request_is_never_seen() {
        let dir = tempfile::tempdir().unwrap();
        let sender = StateDir::open_read_only(dir.path());
        let request = Request {
            kind: "retry".into(),
            site: "shop".into(),
            requested_ms: 1,
        };
        let token = sender.send_request(&request).unwrap();
        assert!(sender.withdraw_request("retry", &token));
        assert!(sender.pending_requests().is_empty());
    }
}
