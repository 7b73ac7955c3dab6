//! The state directory (`--state-dir`, default `.convoy-state`): everything convoy remembers
//! between runs on the controller machine, and the lock that makes one controller its owner.
//!
//! Layout:
//! ```text
//! <dir>/lock                          held (flock-style) by the running controller; names it
//! <dir>/sites/<site>/status.json      the last SiteStatus written (atomic replace)
//! <dir>/sites/<site>/labels.json      the Site's `metadata.labels` (for `status -l`)
//! <dir>/sites/<site>/attempts.json    failed attempts of the desired state (the Failed hold)
//! <dir>/sites/<site>/revisions.json   release -> commit, a branch resolved once per release
//! <dir>/sites/<site>/applied.json     release -> `spec.revision` as first applied (immutable)
//! <dir>/sites/<site>/history.jsonl    append-only log of what convoy did, one event a line
//! <dir>/requests/                     requests to the running daemon and its answers
//! <dir>/source.json                   the git branch followed (`reconcile --git`), commit served
//! <dir>/git/                          convoy's clone of that repository and the served tree
//! ```
//! Every whole-file write goes to a temporary file in the same directory, is fsynced, then
//! renamed over the old one, so a controller killed at any instant leaves either the old or
//! the new file. A damaged file is reported as a warning (see [`StateDir::take_warnings`])
//! and treated as absent: state that cannot be read never stops a deployment.
//!
//! Beside this file: `history.rs` (the append-only event log), `files.rs` (atomic whole-file
//! replace), `time.rs` (RFC 3339 stamps). Showing statuses and history to people is
//! [`crate::status::render`]'s job.
//!
//! This module only stores; it decides nothing about deployments, renders nothing and never
//! talks to a host.

mod files;
mod history;
mod output;
mod requests;
mod source;
#[cfg(test)]
mod tests;
mod time;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::status::SiteStatus;

pub use files::replace_atomically;
use files::{read_json, write_atomic, write_json_atomic};
pub use history::HistoryEvent;
pub use output::KEEP_OUTPUTS;
pub use requests::{Answer, Pending, Request, now_ms};
pub use source::SourceStatus;
pub use time::{now_rfc3339, parse_rfc3339, rfc3339};

/// Where convoy keeps its state when `--state-dir` is not given.
pub const DEFAULT_STATE_DIR: &str = ".convoy-state";

const LOCK_FILE: &str = "lock";
const SITES_DIR: &str = "sites";
const STATUS_FILE: &str = "status.json";
const LABELS_FILE: &str = "labels.json";
const ATTEMPTS_FILE: &str = "attempts.json";
const REVISIONS_FILE: &str = "revisions.json";
const APPLIED_FILE: &str = "applied.json";
const HISTORY_FILE: &str = "history.jsonl";
const MANIFESTS_FILE: &str = "manifests.json";
const INSTANCE_FILE: &str = "instance-id";
const NOTIFIED_FILE: &str = "notified.json";

/// What went wrong with the state directory. Every variant names the path involved; the
/// underlying cause is chained (`source`), not pasted into the message.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to create state directory `{}`", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("failed to open `{}`", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("failed to lock `{}`", path.display())]
    Lock { path: PathBuf, source: io::Error },
    /// Another controller (this or another process) holds the state directory.
    #[error(
        "failed to lock state directory `{}`: another convoy controller holds it ({holder})",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("failed to read `{}`", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to parse `{}`", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("failed to write `{}`", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to remove `{}`", path.display())]
    Remove { path: PathBuf, source: io::Error },
    /// A site name that cannot be a single directory name (empty, `.`, `..`, or with a
    /// path separator); manifests never produce one, a mistyped command line might.
    #[error("failed to use site name {site:?} in the state directory: not a plain name")]
    InvalidSite { site: String },
}

/// The daemon's view of its manifest directory, kept in `manifests.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestsStatus {
    pub valid: bool,
    /// When the manifests became valid or invalid (RFC 3339).
    pub since: String,
    /// The first problems, as `file:line:column: ...` lines (at most 20).
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The failed attempts of one site's desired state: the Failed hold of
/// `rollout.failureRetries`. Stored as `attempts.json`:
/// `{"desiredKey", "release", "attempts", "lastError", "revision"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempts {
    /// Fingerprint of the desired state (Site spec, its Release, its groups) the count is for.
    /// When the desired state changes, the count starts again from zero.
    pub desired_key: String,
    /// The Release the failed attempts tried to roll out.
    pub release: String,
    /// Failed attempts (build or health) so far; Blocked passes never count.
    pub attempts: u32,
    /// The error of the last failed attempt.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The commit the release resolved to, when known.
    #[serde(default)]
    pub revision: Option<String>,
}

impl Attempts {
    /// Whether the desired release is held as Failed after `failure_retries` failed attempts.
    pub fn is_held(&self, failure_retries: u32) -> bool {
        self.attempts >= failure_retries.max(1)
    }
}

/// An open, locked state directory. Only one `StateDir` per directory exists at a time, across
/// all processes; the lock is released when it is dropped (or when the process dies, however).
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    /// Holds the OS lock for as long as this value lives.
    _lock: Option<File>,
    /// Serialises read-modify-write of per-site files between tasks of this controller.
    write: Mutex<()>,
    /// Damaged state seen while reading, for the caller to report.
    warnings: Mutex<Vec<String>>,
}

impl StateDir {
    /// Opens `dir` (creating it if missing) and takes its controller lock without waiting.
    /// Fails with [`StateError::Locked`], naming the holder, if another controller has it.
    pub fn lock(dir: impl AsRef<Path>) -> Result<StateDir, StateError> {
        let root = dir.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(|source| StateError::CreateDir {
            path: root.clone(),
            source,
        })?;
        let path = root.join(LOCK_FILE);
        // Never truncate on open: the current holder's name is in there.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "holder unknown".to_owned()
                } else {
                    holder.to_owned()
                };
                return Err(StateError::Locked { dir: root, holder });
            }
            Err(TryLockError::Error(source)) => return Err(StateError::Lock { path, source }),
        }
        let holder = format!(
            "pid {} on {} since {}\n",
            std::process::id(),
            hostname(),
            now_rfc3339()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|source| StateError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(StateDir {
            root,
            _lock: Some(file),
            write: Mutex::new(()),
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// Opens `dir` for reading only, without the controller lock, so `convoy status` and
    /// `convoy history` work while a controller runs. Every file is replaced atomically, so
    /// a reader never sees half a write. Never write through this handle.
    pub fn open_read_only(dir: impl AsRef<Path>) -> StateDir {
        StateDir {
            root: dir.as_ref().to_path_buf(),
            _lock: None,
            write: Mutex::new(()),
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// A random id of this state dir, created on first use by the lock holder: part of the
    /// controller's name in host leases, so two machines that share a hostname and a
    /// state-dir path still differ. `Ok(None)` for a read-only handle that finds none, or
    /// when no randomness is available; an error when the new id could not be saved.
    pub fn instance_id(&self) -> Result<Option<String>, StateError> {
        let path = self.root.join(INSTANCE_FILE);
        if let Ok(text) = fs::read_to_string(&path) {
            let id = text.trim();
            if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Some(id.to_string()));
            }
        }
        if self._lock.is_none() {
            return Ok(None);
        }
        let mut bytes = [0u8; 6];
        if fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .is_err()
        {
            return Ok(None);
        }
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(&path, format!("{id}\n").as_bytes())?;
        Ok(Some(id))
    }

    /// The directory this state lives in.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Warnings about damaged state files met since the last call (each one was treated as
    /// absent). The CLI prints them; the daemon logs them.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.warnings))
    }

    fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }

    fn site_dir(&self, site: &str) -> Result<PathBuf, StateError> {
        let plain =
            !site.is_empty() && site != "." && site != ".." && !site.contains(['/', '\\', '\0']);
        if !plain {
            return Err(StateError::InvalidSite {
                site: site.to_owned(),
            });
        }
        Ok(self.root.join(SITES_DIR).join(site))
    }

    fn site_file(&self, site: &str, file: &str) -> Result<PathBuf, StateError> {
        Ok(self.site_dir(site)?.join(file))
    }

    /// Reads a JSON file; a missing file is `None`, a damaged one is `None` plus a warning.
    fn read_or_warn<T: DeserializeOwned>(&self, site: &str, file: &str) -> Option<T> {
        let result = self
            .site_file(site, file)
            .and_then(|path| read_json::<T>(&path));
        match result {
            Ok(value) => value,
            Err(e) => {
                self.warn(format!("{}; ignoring it", error_chain(&e)));
                None
            }
        }
    }

    // ---- status ----

    /// Whether the daemon's last manifest load was valid, and if not since when and why.
    pub fn load_manifests(&self) -> Option<ManifestsStatus> {
        read_json(&self.root.join(MANIFESTS_FILE)).ok().flatten()
    }

    /// Records the outcome of a manifest load (atomically); an unchanged invalid state keeps
    /// its `since`.
    pub fn save_manifests(&self, valid: bool, errors: &[String]) -> Result<(), StateError> {
        let since = match self.load_manifests() {
            Some(previous) if previous.valid == valid => previous.since,
            _ => now_rfc3339(),
        };
        let status = ManifestsStatus {
            valid,
            since,
            errors: errors.iter().take(20).cloned().collect(),
        };
        write_json_atomic(&self.root.join(MANIFESTS_FILE), &status)
    }

    /// The last status saved for `site`, or `None` if there is none or it is unreadable
    /// (then with a warning).
    pub fn load_status(&self, site: &str) -> Option<SiteStatus> {
        self.read_or_warn(site, STATUS_FILE)
    }

    /// Replaces the saved status of `site` atomically.
    pub fn save_status(&self, site: &str, status: &SiteStatus) -> Result<(), StateError> {
        write_json_atomic(&self.site_file(site, STATUS_FILE)?, status)
    }

    /// What each Notification was last told about `site` (see `notify::decide`), so a cron
    /// run of `--once` does not repeat a message for a state that did not change.
    pub fn notified<T: DeserializeOwned + Default>(&self, site: &str) -> T {
        self.read_or_warn(site, NOTIFIED_FILE).unwrap_or_default()
    }

    /// Replaces what the Notifications were last told about `site`, atomically.
    pub fn save_notified<T: serde::Serialize>(
        &self,
        site: &str,
        notified: &T,
    ) -> Result<(), StateError> {
        write_json_atomic(&self.site_file(site, NOTIFIED_FILE)?, notified)
    }

    /// The Site's `metadata.labels` as last recorded (empty if none).
    pub fn site_labels(&self, site: &str) -> BTreeMap<String, String> {
        self.read_or_warn(site, LABELS_FILE).unwrap_or_default()
    }

    /// Records the Site's `metadata.labels`; an unchanged set is not written again.
    pub fn save_site_labels(
        &self,
        site: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StateError> {
        let path = self.site_file(site, LABELS_FILE)?;
        if read_json::<BTreeMap<String, String>>(&path)
            .ok()
            .flatten()
            .as_ref()
            == Some(labels)
        {
            return Ok(());
        }
        write_json_atomic(&path, labels)
    }

    /// Every readable saved status, sorted by site name.
    pub fn all_statuses(&self) -> Vec<(String, SiteStatus)> {
        let mut sites: Vec<String> = self
            .site_names()
            .into_iter()
            .filter(|site| {
                self.site_dir(site)
                    .is_ok_and(|d| d.join(STATUS_FILE).exists())
            })
            .collect();
        sites.sort();
        sites
            .into_iter()
            .filter_map(|site| self.load_status(&site).map(|s| (site, s)))
            .collect()
    }

    /// Names of the sites that have a directory in the state dir, sorted.
    pub fn site_names(&self) -> Vec<String> {
        let dir = self.root.join(SITES_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                let e = StateError::Read { path: dir, source };
                self.warn(format!("{}; no sites listed", error_chain(&e)));
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    // ---- attempts: the Failed hold ----

    /// The failed attempts recorded for `site`'s desired state `desired_key`. If what is
    /// stored was for another desired state (the spec, release or groups changed), the hold is
    /// lifted: the count is 0.
    pub fn attempts(&self, site: &str, desired_key: &str) -> Attempts {
        match self.read_or_warn::<Attempts>(site, ATTEMPTS_FILE) {
            Some(stored) if stored.desired_key == desired_key => stored,
            _ => Attempts {
                desired_key: desired_key.to_owned(),
                ..Attempts::default()
            },
        }
    }

    /// Counts one more failed attempt (build or health) of `release` for `desired_key` and
    /// returns the new count (1 if the desired state changed since the last failure).
    pub fn record_failure(
        &self,
        site: &str,
        desired_key: &str,
        release: &str,
        error: &str,
    ) -> Result<u32, StateError> {
        let path = self.site_file(site, ATTEMPTS_FILE)?;
        let _guard = lock(&self.write);
        let previous = self.attempts(site, desired_key);
        let attempts = Attempts {
            desired_key: desired_key.to_owned(),
            release: release.to_owned(),
            attempts: previous.attempts.saturating_add(1),
            last_error: Some(error.to_owned()),
            revision: self.revision(site, release),
        };
        write_json_atomic(&path, &attempts)?;
        Ok(attempts.attempts)
    }

    /// Forgets the failed attempts of `site`: after a success, or `convoy retry SITE`.
    pub fn reset_attempts(&self, site: &str) -> Result<(), StateError> {
        let path = self.site_file(site, ATTEMPTS_FILE)?;
        let _guard = lock(&self.write);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Remove { path, source }),
        }
    }

    // ---- revisions: a branch resolved once per release ----

    /// Records the commit `release` resolved to. The first recording wins: if the release
    /// already has a commit, that one is kept and returned, so every host builds the same
    /// commit. Returns the commit in force.
    pub fn record_revision(
        &self,
        site: &str,
        release: &str,
        commit: &str,
    ) -> Result<String, StateError> {
        let path = self.site_file(site, REVISIONS_FILE)?;
        let _guard = lock(&self.write);
        let mut revisions = self.revisions(site);
        if let Some(existing) = revisions.get(release) {
            return Ok(existing.clone());
        }
        revisions.insert(release.to_owned(), commit.to_owned());
        write_json_atomic(&path, &revisions)?;
        Ok(commit.to_owned())
    }

    /// The commit recorded for `release` of `site`, if any.
    pub fn revision(&self, site: &str, release: &str) -> Option<String> {
        self.revisions(site).remove(release)
    }

    fn revisions(&self, site: &str) -> BTreeMap<String, String> {
        self.read_or_warn(site, REVISIONS_FILE).unwrap_or_default()
    }

    // ---- applied revisions: a Release's `spec.revision` is immutable once applied ----

    /// Records `revision` (as written in the Release) for `release` of `site`, unless one is
    /// recorded already: the first applied revision stays, so a later edit can be refused.
    pub fn record_applied_revision(
        &self,
        site: &str,
        release: &str,
        revision: &str,
    ) -> Result<(), StateError> {
        let path = self.site_file(site, APPLIED_FILE)?;
        let _guard = lock(&self.write);
        let mut applied = self.applied_revisions(site);
        if applied.contains_key(release) {
            return Ok(());
        }
        applied.insert(release.to_owned(), revision.to_owned());
        write_json_atomic(&path, &applied)
    }

    /// The `spec.revision` `release` of `site` was first applied with, if it was.
    pub fn applied_revision(&self, site: &str, release: &str) -> Option<String> {
        self.applied_revisions(site).remove(release)
    }

    fn applied_revisions(&self, site: &str) -> BTreeMap<String, String> {
        self.read_or_warn(site, APPLIED_FILE).unwrap_or_default()
    }
}

/// Locks a mutex, ignoring poisoning (the guarded data stays valid either way).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error and its causes, `: `-separated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// This controller's name in history and in the lock file: `hostname:pid`.
pub fn controller_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}:{}", hostname(), std::process::id()))
}

fn hostname() -> String {
    let from_file = |path: &str| {
        fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".to_owned())
}
