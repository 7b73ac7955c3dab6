//! The state directory (`--state-dir`, default `.convoy-state`): everything convoy remembers
//! between runs on the controller machine, and the lock that makes one controller its owner.
//!
//! Layout:
//! ```text
//! <dir>/lock                          held (flock-style) by the running controller; names it
//! <dir>/sites/<site>/status.json      the last SiteStatus written (atomic replace)
//! <dir>/sites/<site>/attempts.json    failed attempts of the desired state (the Failed hold)
//! <dir>/sites/<site>/revisions.json   release -> commit, a branch resolved once per release
//! <dir>/sites/<site>/applied.json     release -> `spec.revision` as first applied (immutable)
//! <dir>/sites/<site>/history.jsonl    append-only log of what convoy did, one event a line
//! ```
//! Every whole-file write goes to a temporary file in the same directory, is fsynced, then
//! renamed over the old one, so a controller killed at any instant leaves either the old or
//! the new file. A damaged file is reported as a warning (see [`StateDir::take_warnings`])
//! and treated as absent: state that cannot be read never stops a deployment.
//!
//! This module only stores and renders; it decides nothing about deployments and never
//! talks to a host.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manifest::types::API_VERSION;
use crate::status::SiteStatus;

/// Where convoy keeps its state when `--state-dir` is not given.
pub const DEFAULT_STATE_DIR: &str = ".convoy-state";

const LOCK_FILE: &str = "lock";
const SITES_DIR: &str = "sites";
const STATUS_FILE: &str = "status.json";
const ATTEMPTS_FILE: &str = "attempts.json";
const REVISIONS_FILE: &str = "revisions.json";
const APPLIED_FILE: &str = "applied.json";
const HISTORY_FILE: &str = "history.jsonl";
const MANIFESTS_FILE: &str = "manifests.json";
const INSTANCE_FILE: &str = "instance-id";

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

/// Something convoy did (or refused to do) to a site, as kept in `history.jsonl` and shown by
/// `convoy history`. Fields are camelCase in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    /// When it happened (RFC 3339, UTC, whole seconds).
    pub time: String,
    pub site: String,
    pub release: String,
    /// The host concerned, if the event is about one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The stage concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub action: Action,
    /// Free text: the error, the commit, the hosts cleaned up...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Which controller did it: `hostname:pid` (see [`controller_id`]).
    pub controller: String,
}

impl HistoryEvent {
    /// An event stamped now, by this controller, about no host in particular.
    pub fn new(site: impl Into<String>, release: impl Into<String>, action: Action) -> Self {
        Self {
            time: now_rfc3339(),
            site: site.into(),
            release: release.into(),
            host: None,
            stage: None,
            action,
            detail: None,
            controller: controller_id().to_owned(),
        }
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// The kinds of history events. Written in PascalCase, like the status phases
/// (`"Built"`, `"HealthFailed"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A release finished building on a host.
    Built,
    /// A release failed to build on a host.
    BuildFailed,
    /// A host's `current` now points at the release.
    Switched,
    /// A host was put back on its previous release after a failed health check or activate.
    RolledBack,
    /// The `once` commands of a release ran successfully.
    OnceRan,
    /// The `once` commands of a release failed.
    OnceFailed,
    /// A host's health check failed after its switch.
    HealthFailed,
    /// Old releases were removed from a host.
    CleanedUp,
    /// The rollout waited on an unreachable host of a required stage.
    Blocked,
    /// Every host runs the desired release.
    Converged,
    /// convoy stopped (SIGTERM, SIGINT, `--timeout`) and ended the commands it had started
    /// on a host.
    Stopped,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Built => "Built",
            Action::BuildFailed => "BuildFailed",
            Action::Switched => "Switched",
            Action::RolledBack => "RolledBack",
            Action::OnceRan => "OnceRan",
            Action::OnceFailed => "OnceFailed",
            Action::HealthFailed => "HealthFailed",
            Action::CleanedUp => "CleanedUp",
            Action::Blocked => "Blocked",
            Action::Converged => "Converged",
            Action::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

    // ---- history ----

    /// Appends events to the history of their sites: one write per site file (O_APPEND),
    /// then fsync. A torn last line left by a killed controller is repaired first.
    pub fn append_history(&self, events: &[HistoryEvent]) -> Result<(), StateError> {
        let mut by_site: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for event in events {
            let buf = by_site.entry(&event.site).or_default();
            serde_json::to_writer(&mut *buf, event).map_err(|e| StateError::Write {
                path: PathBuf::from(HISTORY_FILE),
                source: io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let _guard = lock(&self.write);
        for (site, buf) in by_site {
            let dir = self.site_dir(site)?;
            create_dir(&dir)?;
            let path = dir.join(HISTORY_FILE);
            let write_err = |source| StateError::Write {
                path: path.clone(),
                source,
            };
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|source| StateError::Open {
                    path: path.clone(),
                    source,
                })?;
            repair_torn_tail(&mut file).map_err(write_err)?;
            file.write_all(&buf).map_err(write_err)?;
            file.sync_data().map_err(write_err)?;
        }
        Ok(())
    }

    /// The history of `site`, oldest first. A torn last line (a controller killed
    /// mid-write) is skipped silently; any other damaged line is skipped with a warning.
    pub fn history(&self, site: &str) -> Vec<HistoryEvent> {
        let path = match self.site_file(site, HISTORY_FILE) {
            Ok(path) => path,
            Err(e) => {
                self.warn(error_chain(&e));
                return Vec::new();
            }
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                let e = StateError::Read { path, source };
                self.warn(format!("{}; no history shown", error_chain(&e)));
                return Vec::new();
            }
        };
        let complete = bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let count = lines.len();
        let mut events = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<HistoryEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) if i + 1 == count && !complete => {}
                Err(e) => self.warn(format!(
                    "failed to parse line {} of `{}`: {e}; skipping it",
                    i + 1,
                    path.display()
                )),
            }
        }
        events
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

fn create_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file next to `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory: readers see the old content or the new, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.as_deref().unwrap_or("state"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StateError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_dir(dir)
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// If the file does not end with a newline, a controller was killed mid-append: a complete
/// event only lacking its newline gets one; a partial line is cut off.
fn repair_torn_tail(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read backwards until the last newline (or the start of the file).
    let mut tail: Vec<u8> = Vec::new();
    let mut end = len;
    let line_start = loop {
        let start = end.saturating_sub(4096);
        let mut chunk = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if chunk.last() == Some(&b'\n') && end == len {
            return Ok(()); // not torn
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if let Some(pos) = tail[..(end - start) as usize]
            .iter()
            .rposition(|&b| b == b'\n')
        {
            tail.drain(..=pos);
            break start + pos as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if serde_json::from_slice::<HistoryEvent>(&tail).is_ok() {
        file.write_all(b"\n") // O_APPEND: lands at the end whatever the position
    } else {
        file.set_len(line_start)
    }
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

// ---- time ----

/// The current time as RFC 3339 UTC with whole seconds, e.g. `2025-11-25T00:00:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `time` as RFC 3339 UTC with whole seconds (truncated), e.g. `2000-02-29T00:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Truncate towards the past, like whole seconds after the epoch.
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

// ---- rendering for the CLI ----

/// `convoy status` as a table: one line per site, then its hosts indented beneath it.
///
/// ```text
/// SITE          DESIRED        PHASE     HOSTS     SINCE                 MESSAGE
/// jobs-manager  r2026-11-24.1  Degraded  1/2 live  2026-11-25T10:00:00Z  web2 unreachable
///   web1  scheduler  r2026-11-24.1
///   web2  frontend   r2026-11-23.1  unreachable  ssh: connect timed out
/// ```
/// `HOSTS` counts the hosts whose live release is the desired one. Multi-line messages and
/// errors show their first line. With no sites, only the header is printed.
pub fn render_status_table(statuses: &[(String, SiteStatus)]) -> String {
    let mut site_rows = vec![
        ["SITE", "DESIRED", "PHASE", "HOSTS", "SINCE", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    let mut host_rows = Vec::new();
    for (name, status) in statuses {
        let live = status
            .hosts
            .iter()
            .filter(|h| h.release.as_deref() == Some(status.desired_release.as_str()))
            .count();
        site_rows.push(vec![
            name.clone(),
            status.desired_release.clone(),
            format!("{:?}", status.phase),
            format!("{live}/{} live", status.hosts.len()),
            dash(status.last_transition_time.as_deref()),
            dash(Some(first_line(&status.message))),
        ]);
        host_rows.push(
            status
                .hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.stage.clone(),
                        dash(h.release.as_deref()),
                        if h.reachable { "" } else { "unreachable" }.to_owned(),
                        first_line(h.last_error.as_deref().unwrap_or("")).to_owned(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let site_lines = align(&site_rows, "");
    let host_lines = align(&host_rows.concat(), "  ");
    let mut out = String::new();
    let mut site_lines = site_lines.into_iter();
    let mut host_lines = host_lines.into_iter();
    out.push_str(&site_lines.next().unwrap_or_default());
    out.push('\n');
    for (site_line, hosts) in site_lines.zip(&host_rows) {
        out.push_str(&site_line);
        out.push('\n');
        for line in host_lines.by_ref().take(hosts.len()) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// `convoy status -o json|yaml`: a Kubernetes `List` of Site objects carrying their status.
pub fn status_list(statuses: &[(String, SiteStatus)]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = statuses
        .iter()
        .map(|(name, status)| {
            serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "Site",
                "metadata": {"name": name},
                "status": status,
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// `convoy history`: one aligned line per event, no header:
/// time, action, release, `host/stage`, detail (first line). When the events span several
/// sites, the site is shown after the time. `host/stage` is `web1/frontend`, `web1`,
/// `-/frontend`, or `-`.
pub fn render_history(events: &[HistoryEvent]) -> String {
    let several_sites = events.iter().any(|e| e.site != events[0].site);
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let place = match (&e.host, &e.stage) {
                (Some(host), Some(stage)) => format!("{host}/{stage}"),
                (Some(host), None) => host.clone(),
                (None, Some(stage)) => format!("-/{stage}"),
                (None, None) => "-".to_owned(),
            };
            let mut row = vec![e.time.clone()];
            if several_sites {
                row.push(e.site.clone());
            }
            row.extend([
                e.action.to_string(),
                e.release.clone(),
                place,
                first_line(e.detail.as_deref().unwrap_or("")).to_owned(),
            ]);
            row
        })
        .collect();
    align(&rows, "")
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

fn dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "-".to_owned(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim_end()
}

/// Pads cells into columns two spaces apart; columns empty in every row are dropped and
/// trailing spaces trimmed.
fn align(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = indent.to_owned();
            for (cell, &width) in row.iter().zip(&widths) {
                if width == 0 {
                    continue;
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{HostStatus, Phase};
    use std::time::Duration;

    fn status(phase: Phase, desired: &str) -> SiteStatus {
        SiteStatus {
            phase,
            desired_release: desired.to_owned(),
            revision: Some("3f2a9c1".to_owned()),
            message: String::new(),
            attempts: 0,
            last_transition_time: None,
            hosts: Vec::new(),
        }
    }

    fn host(name: &str, stage: &str, release: Option<&str>, reachable: bool) -> HostStatus {
        HostStatus {
            name: name.to_owned(),
            stage: stage.to_owned(),
            release: release.map(str::to_owned),
            reachable,
            last_error: None,
        }
    }

    fn event(site: &str, time: &str, action: Action) -> HistoryEvent {
        HistoryEvent {
            time: time.to_owned(),
            controller: "ctl:1".to_owned(),
            ..HistoryEvent::new(site, "r1", action)
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state"); // created by lock()
        let first = StateDir::lock(&dir).unwrap();
        // A second open file description in the same process conflicts, like another process.
        let err = StateDir::lock(&dir).unwrap_err();
        let StateError::Locked {
            dir: locked,
            holder,
        } = &err
        else {
            panic!("expected Locked, got {err:?}");
        };
        assert_eq!(locked, &dir);
        assert!(
            holder.starts_with(&format!("pid {} on ", std::process::id())),
            "{holder}"
        );
        assert!(
            err.to_string()
                .starts_with("failed to lock state directory")
        );
        drop(first);
        // Another test thread may fork at this instant; its child holds the lock's file
        // description until it execs (close-on-exec), so allow a brief retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match StateDir::lock(&dir) {
                Ok(again) => break again,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("lock not released after drop: {e}"),
            }
        };
        // The new holder rewrote the lock file rather than appending to it.
        let content = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(content.lines().count(), 1, "{content}");
        drop(again);
    }

    /// Runs only as the child of `lock_is_exclusive_across_processes`: holds the lock until
    /// killed.
    #[test]
    fn lock_child_process() {
        let Ok(dir) = std::env::var("CONVOY_STATE_LOCK_CHILD") else {
            return;
        };
        let _state = StateDir::lock(dir).unwrap();
        println!("CHILD-LOCKED");
        io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn lock_is_exclusive_across_processes_and_freed_by_sigkill() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state::tests::lock_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CONVOY_STATE_LOCK_CHILD", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let locked = stdout.lines().any(|l| l.unwrap().contains("CHILD-LOCKED"));
        assert!(locked, "child never took the lock");
        let err = StateDir::lock(tmp.path()).unwrap_err();
        let StateError::Locked { holder, .. } = &err else {
            panic!("expected Locked, got {err:?}");
        };
        assert!(
            holder.starts_with(&format!("pid {} on ", child.id())),
            "{holder}"
        );
        child.kill().unwrap(); // SIGKILL: no destructor runs, the OS drops the lock
        child.wait().unwrap();
        StateDir::lock(tmp.path()).unwrap();
    }

    #[test]
    fn status_round_trips_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        assert_eq!(state.load_status("web"), None);
        let mut s = status(Phase::Degraded, "r2");
        s.hosts.push(host("web1", "frontend", Some("r2"), true));
        s.last_transition_time = Some("2025-11-25T00:00:00Z".into());
        state.save_status("web", &s).unwrap();
        s.message = "second write".into();
        state.save_status("web", &s).unwrap();
        state
            .save_status("api", &status(Phase::Converged, "r1"))
            .unwrap();
        assert_eq!(state.load_status("web"), Some(s.clone()));
        let all = state.all_statuses();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(files_in(&tmp.path().join("sites/web")), ["status.json"]);
        assert!(state.take_warnings().is_empty());
    }

    #[test]
    fn corrupt_status_is_absent_with_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        state
            .save_status("ok", &status(Phase::Converged, "r1"))
            .unwrap();
        fs::create_dir_all(tmp.path().join("sites/bad")).unwrap();
        fs::write(tmp.path().join("sites/bad/status.json"), "{\"phase\": ").unwrap();
        assert_eq!(state.load_status("bad"), None);
        let warnings = state.take_warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("failed to parse `") && warnings[0].contains("bad"),
            "{warnings:?}"
        );
        assert_eq!(state.all_statuses().len(), 1);
        assert_eq!(state.take_warnings().len(), 1);
        assert!(state.take_warnings().is_empty());
    }

    #[test]
    fn site_names_that_escape_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        for bad in ["", ".", "..", "../x", "a/b"] {
            let err = state
                .save_status(bad, &status(Phase::Converged, "r"))
                .unwrap_err();
            assert!(
                matches!(err, StateError::InvalidSite { .. }),
                "{bad}: {err}"
            );
        }
        assert_eq!(state.load_status(".."), None);
        assert_eq!(state.take_warnings().len(), 1);
    }

    #[test]
    fn attempts_count_per_desired_key_and_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        assert_eq!(state.attempts("web", "k1").attempts, 0);
        state.record_revision("web", "r1", "abc123").unwrap();
        assert_eq!(
            state
                .record_failure("web", "k1", "r1", "build failed")
                .unwrap(),
            1
        );
        assert_eq!(
            state
                .record_failure("web", "k1", "r1", "health failed")
                .unwrap(),
            2
        );
        let a = state.attempts("web", "k1");
        assert_eq!(
            a,
            Attempts {
                desired_key: "k1".into(),
                release: "r1".into(),
                attempts: 2,
                last_error: Some("health failed".into()),
                revision: Some("abc123".into()),
            }
        );
        assert!(a.is_held(2) && !a.is_held(3));
        // The desired state changed: the hold is lifted, counting starts again.
        assert_eq!(state.attempts("web", "k2").attempts, 0);
        assert_eq!(state.record_failure("web", "k2", "r2", "boom").unwrap(), 1);
        state.reset_attempts("web").unwrap();
        state.reset_attempts("web").unwrap(); // idempotent
        assert_eq!(state.attempts("web", "k2").attempts, 0);
        let raw: serde_json::Value = {
            state.record_failure("web", "k2", "r2", "x").unwrap();
            serde_json::from_slice(&fs::read(tmp.path().join("sites/web/attempts.json")).unwrap())
                .unwrap()
        };
        assert_eq!(
            raw,
            serde_json::json!({"desiredKey": "k2", "release": "r2", "attempts": 1,
                               "lastError": "x", "revision": null})
        );
        assert_eq!(
            files_in(&tmp.path().join("sites/web")),
            ["attempts.json", "revisions.json"]
        );
    }

    #[test]
    fn revisions_are_recorded_once_per_release() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        assert_eq!(state.revision("web", "r1"), None);
        assert_eq!(state.record_revision("web", "r1", "aaa").unwrap(), "aaa");
        // The branch moved meanwhile: the first resolution stays.
        assert_eq!(state.record_revision("web", "r1", "bbb").unwrap(), "aaa");
        assert_eq!(state.record_revision("web", "r2", "ccc").unwrap(), "ccc");
        assert_eq!(state.revision("web", "r1").as_deref(), Some("aaa"));
        assert_eq!(state.revision("web", "r2").as_deref(), Some("ccc"));
        assert_eq!(files_in(&tmp.path().join("sites/web")), ["revisions.json"]);
    }

    #[test]
    fn the_first_applied_revision_of_a_release_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        assert_eq!(state.applied_revision("web", "r1"), None);
        state.record_applied_revision("web", "r1", "v1").unwrap();
        state.record_applied_revision("web", "r1", "v2").unwrap();
        state.record_applied_revision("web", "r2", "main").unwrap();
        assert_eq!(state.applied_revision("web", "r1").as_deref(), Some("v1"));
        assert_eq!(state.applied_revision("web", "r2").as_deref(), Some("main"));
        assert_eq!(files_in(&tmp.path().join("sites/web")), ["applied.json"]);
    }

    #[test]
    fn history_appends_and_skips_a_torn_last_line() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        let e1 = event("web", "2025-11-25T00:00:01Z", Action::Built).host("web1");
        let e2 = event("web", "2025-11-25T00:00:02Z", Action::Switched);
        let other = event("api", "2025-11-25T00:00:03Z", Action::Converged);
        state
            .append_history(&[e1.clone(), other.clone(), e2.clone()])
            .unwrap();
        assert_eq!(state.history("web"), [e1.clone(), e2.clone()]);
        assert_eq!(state.history("api"), [other]);
        assert_eq!(state.history("none"), []);

        // A controller killed mid-write leaves half a line.
        let path = tmp.path().join("sites/web/history.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"time":"2025-11-25T00:00:0"#).unwrap();
        drop(file);
        assert_eq!(state.history("web"), [e1.clone(), e2.clone()]);
        assert!(state.take_warnings().is_empty());

        // The next append cuts the torn line off instead of gluing onto it.
        let e3 = event("web", "2025-11-25T00:00:04Z", Action::CleanedUp);
        state.append_history(std::slice::from_ref(&e3)).unwrap();
        assert_eq!(state.history("web"), [e1.clone(), e2.clone(), e3.clone()]);
        assert!(state.take_warnings().is_empty());

        // A complete event that only lost its newline is kept.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        let e4 = event("web", "2025-11-25T00:00:05Z", Action::Blocked);
        file.write_all(&serde_json::to_vec(&e4).unwrap()).unwrap();
        drop(file);
        let e5 = event("web", "2025-11-25T00:00:06Z", Action::Converged);
        state.append_history(std::slice::from_ref(&e5)).unwrap();
        assert_eq!(state.history("web"), [e1, e2, e3, e4, e5]);
        assert!(state.take_warnings().is_empty());
    }

    #[test]
    fn history_event_json_shape() {
        let e = event("web", "2025-11-25T00:00:01Z", Action::HealthFailed)
            .host("web1")
            .stage("frontend")
            .detail("exit 7");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"time": "2025-11-25T00:00:01Z", "site": "web", "release": "r1",
                "host": "web1", "stage": "frontend", "action": "HealthFailed",
                "detail": "exit 7", "controller": "ctl:1"})
        );
        let id = controller_id();
        assert!(id.ends_with(&format!(":{}", std::process::id())), "{id}");
    }

    #[test]
    fn rfc3339_known_dates() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_764_028_800), "2025-11-25T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z"); // 2100 is not a leap year
        assert_eq!(at(1_709_164_800 + 3_723), "2024-02-29T01:02:03Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_999)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(86_400 * 365)),
            "1969-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(62_135_596_800)),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(now_rfc3339().len(), "2025-11-25T00:00:00Z".len());
    }

    /// The inverse (Hinnant's `days_from_civil`), to check `civil_from_days` over wide ranges.
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    proptest::proptest! {
        #[test]
        fn civil_from_days_is_a_valid_bijection(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            proptest::prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            proptest::prop_assert_eq!(days_from_civil(y, m, d), days);
            let (y2, m2, d2) = civil_from_days(days + 1);
            proptest::prop_assert!((y2, m2, d2) > (y, m, d));
        }
    }

    #[test]
    fn status_table() {
        let mut degraded = status(Phase::Degraded, "r2026-11-24.1");
        degraded.last_transition_time = Some("2026-11-25T10:00:00Z".into());
        degraded.message = "web2 unreachable\nmore detail".into();
        degraded.hosts = vec![
            host("web1", "scheduler", Some("r2026-11-24.1"), true),
            HostStatus {
                last_error: Some("ssh: connect timed out\nsecond line".into()),
                ..host("web2", "frontend", Some("r2026-11-23.1"), false)
            },
        ];
        let mut failed = status(Phase::Failed, "r7");
        failed.message = "build failed on lic1".into();
        failed.hosts = vec![HostStatus {
            last_error: Some("build failed: exit 1".into()),
            ..host("lic1", "app", None, true)
        }];
        let table = render_status_table(&[
            ("jobs-manager".into(), degraded),
            ("licensing".into(), failed),
            ("empty".into(), status(Phase::Suspended, "r1")),
        ]);
        assert_eq!(
            table,
            "\
SITE          DESIRED        PHASE      HOSTS     SINCE                 MESSAGE
jobs-manager  r2026-11-24.1  Degraded   1/2 live  2026-11-25T10:00:00Z  web2 unreachable
  web1  scheduler  r2026-11-24.1
  web2  frontend   r2026-11-23.1  unreachable  ssh: connect timed out
licensing     r7             Failed     0/1 live  -                     build failed on lic1
  lic1  app        -                           build failed: exit 1
empty         r1             Suspended  0/0 live  -                     -
"
        );
        assert_eq!(
            render_status_table(&[]),
            "SITE  DESIRED  PHASE  HOSTS  SINCE  MESSAGE\n"
        );
    }

    #[test]
    fn status_list_shape() {
        let list = status_list(&[("web".into(), status(Phase::Converged, "r1"))]);
        assert_eq!(
            list,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [{
                "apiVersion": "convoy.dev/v1alpha1", "kind": "Site",
                "metadata": {"name": "web"},
                "status": {"phase": "Converged", "desiredRelease": "r1", "revision": "3f2a9c1",
                           "message": "", "attempts": 0, "hosts": []}
            }]})
        );
    }

    #[test]
    fn history_rendering() {
        let events = [
            event("web", "2025-11-25T00:00:01Z", Action::Built)
                .host("web1")
                .stage("frontend"),
            event("web", "2025-11-25T00:00:02Z", Action::HealthFailed)
                .host("web10")
                .detail("curl: (7) refused\nmore"),
            event("web", "2025-11-25T00:00:03Z", Action::OnceRan).stage("scheduler"),
            event("web", "2025-11-25T00:00:04Z", Action::Converged),
        ];
        assert_eq!(
            render_history(&events),
            "\
2025-11-25T00:00:01Z  Built         r1  web1/frontend
2025-11-25T00:00:02Z  HealthFailed  r1  web10          curl: (7) refused
2025-11-25T00:00:03Z  OnceRan       r1  -/scheduler
2025-11-25T00:00:04Z  Converged     r1  -
"
        );
        let mixed = [
            event("web", "2025-11-25T00:00:01Z", Action::Built),
            event("api", "2025-11-25T00:00:02Z", Action::Switched),
        ];
        assert_eq!(
            render_history(&mixed),
            "\
2025-11-25T00:00:01Z  web  Built     r1  -
2025-11-25T00:00:02Z  api  Switched  r1  -
"
        );
        assert_eq!(render_history(&[]), "");
    }

    #[test]
    fn instance_id_is_created_once_by_the_lock_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        assert_eq!(
            StateDir::open_read_only(&dir).instance_id().unwrap(),
            None,
            "readers never create it"
        );
        let locked = StateDir::lock(&dir).unwrap();
        let id = locked.instance_id().unwrap().unwrap();
        assert_eq!(id.len(), 12);
        assert_eq!(locked.instance_id().unwrap().as_deref(), Some(id.as_str()));
        drop(locked);
        assert_eq!(
            StateDir::open_read_only(&dir).instance_id().unwrap(),
            Some(id)
        );
    }

    #[test]
    fn an_instance_id_that_cannot_be_saved_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let locked = StateDir::lock(&dir).unwrap();
        // A directory where the file goes: the rename over it fails, even as root.
        fs::create_dir_all(dir.join(INSTANCE_FILE).join("x")).unwrap();
        let e = locked.instance_id().unwrap_err();
        assert!(
            e.to_string().starts_with("failed to write `") && e.to_string().contains(INSTANCE_FILE),
            "{e}"
        );
    }
}
