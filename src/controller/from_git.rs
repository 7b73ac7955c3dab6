//! The daemon's desired state from a git branch: what the loop does with each update the
//! fetcher ([`super::git::follow`]) leaves. A new commit is validated where it was exported;
//! only a valid one replaces the served tree and becomes the desired state. An invalid
//! commit or a failed fetch changes nothing: the last valid commit keeps being served, and
//! `source.json`, the log and the metrics say which commit is bad and why.
//! Loads through the same loader and checks as a manifest directory (`daemon.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::git::{Feed, GitDir, GitSource, Update, relabel};
use super::wrote;
use crate::manifest::{Catalog, Diagnostic, Diagnostics, LoadFailure, LoadOptions};
use crate::metrics::Metrics;
use crate::state::{SourceStatus, StateDir};
use crate::status::ConditionStatus;

/// The daemon's git source: where it fetches to, the fetcher's updates, the commit served.
pub(super) struct GitFollow {
    pub source: GitSource,
    pub dir: GitDir,
    pub feed: Arc<Feed>,
    /// The commit whose tree is served (the last valid one).
    served: Option<String>,
    /// An update whose manifests could not be read (I/O): tried again on the reload retry.
    retry: Option<Update>,
    status: SourceStatus,
}

/// What a reload gets from the git source.
pub(super) enum Loaded {
    /// Nothing new to load (a failed fetch, already reported; nothing fetched yet).
    Nothing,
    Valid {
        catalog: Catalog,
        commit: String,
    },
    /// `commit` is invalid: the loop reports `failure` and keeps the last valid state.
    Invalid {
        failure: LoadFailure,
        commit: String,
    },
}

impl GitFollow {
    /// Picks up where an earlier run on this state dir left off: its served tree is served
    /// again at once (the remote may be down right now), if it was for the same source.
    pub fn new(source: GitSource, state: &StateDir) -> Self {
        let dir = GitDir::new(state.path());
        let shown = source.shown_repository();
        let previous = state.load_source().filter(|s| {
            s.repository == shown && s.branch == source.branch && s.path == source.path
        });
        let served = previous
            .as_ref()
            .and_then(|s| s.commit.clone())
            .filter(|_| dir.tree().is_dir());
        let status = SourceStatus {
            repository: shown,
            branch: source.branch.clone(),
            path: source.path.clone(),
            commit: served.clone(),
            fetched_commit: previous.as_ref().and_then(|s| s.fetched_commit.clone()),
            last_fetch_time: previous.as_ref().and_then(|s| s.last_fetch_time.clone()),
            errors: vec![],
            conditions: previous.map(|s| s.conditions).unwrap_or_default(),
        };
        GitFollow {
            source,
            dir,
            feed: Arc::default(),
            served,
            retry: None,
            status,
        }
    }

    /// Loads what the newest update brought, or the served tree again (SIGHUP, a reload
    /// retry). Records a failed fetch in `source.json` and the log.
    pub fn load(&mut self, load: &LoadOptions, state: &StateDir, metrics: &Metrics) -> Loaded {
        let update = self.feed.take().or_else(|| self.retry.take());
        match update {
            None => match self.served.clone() {
                Some(commit) => match self.load_tree(&self.dir.tree(), load, state) {
                    Ok(catalog) => Loaded::Valid { catalog, commit },
                    Err(failure) => Loaded::Invalid { failure, commit },
                },
                None => Loaded::Nothing,
            },
            Some(Update::Failed { error, retry_in }) => {
                tracing::warn!(
                    repository = %self.status.repository,
                    "fetching branch `{}` failed, retrying in {:.1}s (backoff); still serving {}: {error}",
                    self.source.branch,
                    retry_in.as_secs_f64(),
                    self.serving()
                );
                self.status.last_fetch_time = Some(crate::state::now_rfc3339());
                let message = format!(
                    "fetch failed, retrying in {:.0}s (backoff): {error}; serving {}",
                    retry_in.as_secs_f64().ceil(),
                    self.serving()
                );
                self.status
                    .set_ready(ConditionStatus::False, "FetchFailed", message);
                self.save(state, metrics);
                Loaded::Nothing
            }
            Some(Update::Recovered) => {
                tracing::info!(
                    repository = %self.status.repository,
                    "fetching branch `{}` works again; nothing new",
                    self.source.branch
                );
                self.status.last_fetch_time = Some(crate::state::now_rfc3339());
                match (self.status.fetched_commit.clone(), self.served.clone()) {
                    (Some(fetched), Some(served)) if fetched != served => {
                        let errors = std::mem::take(&mut self.status.errors);
                        self.invalid(&fetched, errors, state, metrics);
                    }
                    (_, Some(served)) => self.valid(&served, state, metrics),
                    (_, None) => {}
                }
                Loaded::Nothing
            }
            Some(Update::Fetched { commit, tree }) => {
                self.status.last_fetch_time = Some(crate::state::now_rfc3339());
                self.status.fetched_commit = Some(commit.clone());
                self.fetched(&commit, tree, load, state)
            }
        }
    }

    /// A new commit: validated where it was exported; if valid, it becomes the served tree
    /// and is loaded from there (the path every desired state refers to).
    fn fetched(
        &mut self,
        commit: &str,
        tree: Result<PathBuf, String>,
        load: &LoadOptions,
        state: &StateDir,
    ) -> Loaded {
        let invalid = |failure| Loaded::Invalid {
            failure,
            commit: commit.to_string(),
        };
        let incoming = match tree {
            Ok(incoming) => incoming,
            Err(message) => {
                let path = if self.source.path.is_empty() {
                    "."
                } else {
                    &self.source.path
                };
                let diagnostics = Diagnostics(vec![Diagnostic::file_level(path, message)]);
                return invalid(LoadFailure {
                    diagnostics,
                    read_failed: false,
                });
            }
        };
        // A commit whose webhook URLs cannot be read is refused like an invalid one, before
        // it is served: its tree must never stand in for the desired state still in force.
        let checked = self.load_tree(&incoming, load, state).and_then(|catalog| {
            let desired = crate::desired::DesiredState::from_catalog(&catalog);
            crate::notify::resolve(&desired.notifications)
                .map(|_| ())
                .map_err(|errors| LoadFailure {
                    diagnostics: super::daemon::unresolved(&catalog, &errors),
                    read_failed: false,
                })
        });
        if let Err(failure) = checked {
            if failure.read_failed {
                self.retry = Some(Update::Fetched {
                    commit: commit.to_string(),
                    tree: Ok(incoming),
                });
            } else {
                // Only this export: the fetcher may be writing the next one beside it.
                let _ = std::fs::remove_dir_all(&incoming);
            }
            return invalid(failure);
        }
        if let Err(e) = self.dir.promote(&incoming) {
            let message = crate::state::error_chain(&e);
            let diagnostics = Diagnostics(vec![Diagnostic::file_level(".", message)]);
            return invalid(LoadFailure {
                diagnostics,
                read_failed: true,
            });
        }
        self.served = Some(commit.to_string());
        match self.load_tree(&self.dir.tree(), load, state) {
            Ok(catalog) => Loaded::Valid {
                catalog,
                commit: commit.to_string(),
            },
            Err(failure) => invalid(failure),
        }
    }

    /// The manifests of an exported tree, validated as a directory's are, with positions
    /// naming files as they are in the repository.
    fn load_tree(
        &self,
        tree: &Path,
        load: &LoadOptions,
        state: &StateDir,
    ) -> Result<Catalog, LoadFailure> {
        let manifests = tree.join(&self.source.path);
        super::daemon::load_checked(&manifests, load, state).map_err(|mut failure| {
            relabel(&mut failure.diagnostics, tree);
            failure
        })
    }

    /// `commit` is now the desired state: `source.json` says so.
    pub fn valid(&mut self, commit: &str, state: &StateDir, metrics: &Metrics) {
        self.status.commit = Some(commit.to_string());
        self.status.errors.clear();
        let message = format!("serving commit {commit}");
        self.status
            .set_ready(ConditionStatus::True, "Fetched", message);
        self.save(state, metrics);
    }

    /// `commit` is invalid: `source.json` names it with its errors and the commit served.
    pub fn invalid(
        &mut self,
        commit: &str,
        errors: Vec<String>,
        state: &StateDir,
        metrics: &Metrics,
    ) {
        let count = errors.len();
        self.status.errors = errors.into_iter().take(20).collect();
        let message = format!(
            "commit {commit} is invalid ({count} error{}); serving {}",
            if count == 1 { "" } else { "s" },
            self.serving()
        );
        self.status
            .set_ready(ConditionStatus::False, "InvalidCommit", message);
        self.save(state, metrics);
    }

    /// "commit X", or what is served when no commit is yet.
    pub fn serving(&self) -> String {
        match &self.served {
            Some(commit) => format!("commit {commit}"),
            None => "nothing (no valid commit yet)".to_string(),
        }
    }

    fn save(&self, state: &StateDir, metrics: &Metrics) {
        let _ = wrote(metrics, "source", state.save_source(&self.status));
    }
}

/// The manifests of `--once --git`: the fetched commit's tree, served and loaded, or its
/// problems (positions as in the repository).
pub fn load_once(
    source: &GitSource,
    state: &StateDir,
    load: &LoadOptions,
    commit: &str,
    tree: Result<PathBuf, String>,
) -> Result<Catalog, Diagnostics> {
    let mut follow = GitFollow::new(source.clone(), state);
    let metrics = Metrics::new();
    match follow.fetched(commit, tree, load, state) {
        Loaded::Valid { catalog, .. } => {
            follow.valid(commit, state, &metrics);
            Ok(catalog)
        }
        Loaded::Invalid { failure, .. } => {
            let errors = failure
                .diagnostics
                .0
                .iter()
                .map(ToString::to_string)
                .collect();
            follow.invalid(commit, errors, state, &metrics);
            Err(failure.diagnostics)
        }
        Loaded::Nothing => Err(Diagnostics::default()),
    }
}
