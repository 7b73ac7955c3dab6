//! The git source of the desired state (`reconcile --git REPO`): convoy's own clone of the
//! manifest repository under the state dir, fetched on `--interval` or when the webhook asks
//! ([`follow`]), and the exported tree of the fetched commit that the manifests are loaded
//! from. It runs the system `git` (hosts and operators already rely on it: ssh_config, agent,
//! credential helpers and `insteadOf` rules all keep working).
//!
//! Layout under `<state-dir>/git/`:
//! ```text
//! clone.git/           bare clone; refs/convoy/head follows the remote branch (force-pushes too)
//! incoming/<commit>/   a fetched commit's `--path`, exported, not served yet
//! tree/                the tree of the commit being served (the last valid one)
//! ```
//! The served tree always lives at the same path, so a Site's archive path (and with it its
//! desired state) does not change with every commit. This module loads no manifest and
//! decides nothing about deployments: the controller does both.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

/// How long one git command may run (a fetch of a large repository over a slow link).
const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The ref of the clone that follows the remote branch.
const HEAD_REF: &str = "refs/convoy/head";

/// Where the desired state comes from: a branch of a repository, a folder in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// As given: a path, `file://`, `ssh://`, `git@host:org/repo.git`, `https://…`.
    pub repository: String,
    pub branch: String,
    /// The manifest folder inside the repository, relative, normal form; empty = the root.
    pub path: String,
    /// How often to fetch.
    pub interval: Duration,
}

impl GitSource {
    /// Checks the values that reach `git` as words. `Err` is the usage error to print.
    pub fn new(
        repository: &str,
        branch: &str,
        path: &str,
        interval: Duration,
    ) -> Result<Self, String> {
        if repository.is_empty() || repository.starts_with('-') || repository.contains('\n') {
            return Err(format!(
                "invalid --git `{repository}`: expected a repository (a path or a URL)"
            ));
        }
        let branch_ok = !branch.is_empty()
            && !branch.starts_with(['-', '/'])
            && !branch.ends_with(['/', '.'])
            && !branch.contains("..")
            && !branch.ends_with(".lock")
            && branch
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !branch_ok {
            return Err(format!(
                "invalid --branch `{branch}`: expected a branch name such as `main` (letters, digits, `._-/`)"
            ));
        }
        let mut parts = Vec::new();
        for component in Path::new(path).components() {
            match component {
                Component::Normal(part) => match part.to_str() {
                    Some(part) if !part.contains('\n') => parts.push(part.to_string()),
                    _ => return Err(format!("invalid --path `{path}`: not plain text")),
                },
                Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "invalid --path `{path}`: expected a folder inside the repository, such as `manifests` (relative, no `..`)"
                    ));
                }
            }
        }
        Ok(GitSource {
            repository: repository.to_string(),
            branch: branch.to_string(),
            path: parts.join("/"),
            interval,
        })
    }

    /// The repository as shown in logs and status: the password or token of an
    /// `https://user:token@host/…` URL is never shown.
    pub fn shown_repository(&self) -> String {
        redact(&self.repository)
    }
}

/// `scheme://user:secret@host/…` without `user:secret@`; anything else as is.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Why the git source could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("failed to run `git {args}`")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("`git {args}` took longer than {}s", GIT_TIMEOUT.as_secs())]
    Timeout { args: String },
    /// The commit has no `--path` folder: an invalid desired state, not a fetch failure.
    #[error("`{path}` is not a folder in commit {commit}")]
    NoPath { path: String, commit: String },
    #[error("failed to prepare `{}`", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// convoy's clone and trees under `<state-dir>/git/`.
#[derive(Debug, Clone)]
pub struct GitDir {
    root: PathBuf,
}

impl GitDir {
    pub fn new(state_dir: &Path) -> Self {
        // Absolute: git runs with GIT_DIR and GIT_WORK_TREE from another directory.
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        GitDir {
            root: state_dir.join("git"),
        }
    }

    fn clone_dir(&self) -> PathBuf {
        self.root.join("clone.git")
    }

    fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// The tree being served: the manifests are at `tree().join(path)`.
    pub fn tree(&self) -> PathBuf {
        self.root.join("tree")
    }

    /// Fetches the branch (forced: a rewritten history is followed, not refused) and returns
    /// the commit it points at.
    pub async fn fetch(&self, source: &GitSource) -> Result<String, GitError> {
        let clone = self.clone_dir();
        if !clone.join("HEAD").exists() {
            let io = |source| GitError::Io {
                path: clone.clone(),
                source,
            };
            std::fs::create_dir_all(&self.root).map_err(io)?;
            let clone = clone.to_string_lossy();
            git(&self.root, &[], &["init", "--quiet", "--bare", &clone]).await?;
        }
        let refspec = format!("+refs/heads/{}:{HEAD_REF}", source.branch);
        let args = [
            "fetch",
            "--quiet",
            "--force",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &source.repository,
            &refspec,
        ];
        let env = [("GIT_DIR", clone.as_path())];
        git(&self.root, &env, &args).await?;
        let commit = git(
            &self.root,
            &env,
            &["rev-parse", "--verify", &format!("{HEAD_REF}^{{commit}}")],
        )
        .await?;
        Ok(commit.trim().to_string())
    }

    /// Exports the `--path` folder of `commit` into `incoming/<commit>/` (at its place in the
    /// repository, so errors name `path/file.yaml`) and returns that directory. An export
    /// already there is reused.
    pub async fn export(&self, source: &GitSource, commit: &str) -> Result<PathBuf, GitError> {
        let target = self.incoming().join(commit);
        if target.is_dir() {
            return Ok(target);
        }
        let partial = self.incoming().join(format!(".{commit}.partial"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| GitError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let index = partial.join(".convoy-index");
        let clone = self.clone_dir();
        let env = [
            ("GIT_DIR", clone.as_path()),
            ("GIT_WORK_TREE", partial.as_path()),
            ("GIT_INDEX_FILE", index.as_path()),
        ];
        let (tree, prefix) = if source.path.is_empty() {
            (commit.to_string(), None)
        } else {
            (
                format!("{commit}:{}", source.path),
                Some(format!("--prefix={}/", source.path)),
            )
        };
        let is_tree = git(&self.root, &env[..1], &["cat-file", "-t", &tree]).await;
        if !matches!(&is_tree, Ok(kind) if kind.trim() == "tree") {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(GitError::NoPath {
                path: source.path.clone(),
                commit: commit.to_string(),
            });
        }
        let mut read_tree = vec!["read-tree"];
        read_tree.extend(prefix.as_deref());
        read_tree.push(&tree);
        git(&self.root, &env, &read_tree).await?;
        git(&self.root, &env, &["checkout-index", "--all", "--force"]).await?;
        std::fs::remove_file(&index).map_err(io(&index))?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        Ok(target)
    }

    /// Makes the exported `incoming` tree the served one, in one atomic exchange (a pass
    /// packing an archive never sees a half-replaced tree), and removes the tree it replaced.
    pub fn promote(&self, incoming: &Path) -> Result<(), GitError> {
        let tree = self.tree();
        let io = |source| GitError::Io {
            path: tree.clone(),
            source,
        };
        if tree.exists() {
            exchange(incoming, &tree).map_err(io)?;
            std::fs::remove_dir_all(incoming).map_err(io)?;
        } else {
            std::fs::rename(incoming, &tree).map_err(io)?;
        }
        Ok(())
    }

    /// Removes every export (an earlier run's leftovers); only before the fetcher starts.
    pub fn prune_incoming(&self) {
        let _ = std::fs::remove_dir_all(self.incoming());
    }
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `git args` in `dir` with `env` (`GIT_DIR`, …: absolute paths) and returns its
/// stdout. Never prompts (no terminal, `GIT_TERMINAL_PROMPT=0`), ends at [`GIT_TIMEOUT`].
async fn git(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Result<String, GitError> {
    let shown = args.iter().map(|a| redact(a)).collect::<Vec<_>>().join(" ");
    let mut command = tokio::process::Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = match tokio::time::timeout(GIT_TIMEOUT, command.output()).await {
        Err(_) => return Err(GitError::Timeout { args: shown }),
        Ok(Err(source)) => {
            return Err(GitError::Spawn {
                args: shown,
                source,
            });
        }
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(GitError::Failed {
            args: shown,
            stderr: redact_text(last.unwrap_or("no error message").trim()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every URL in a git message, redacted.
fn redact_text(text: &str) -> String {
    text.split(' ').map(redact).collect::<Vec<_>>().join(" ")
}

/// What the last fetch brought, waiting for the controller loop to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new commit, exported (`Ok`: the directory) or not (`Err`: why it is invalid).
    Fetched {
        commit: String,
        tree: Result<PathBuf, String>,
    },
    /// The fetch failed; the next attempt comes after `retry_in`.
    Failed { error: String, retry_in: Duration },
    /// A fetch succeeded after failures, and found the commit fetched before them.
    Recovered,
}

/// Between [`follow`] and the controller loop: the newest update, and the webhook's trigger.
#[derive(Debug, Default)]
pub struct Feed {
    latest: Mutex<Option<Update>>,
    /// A fetch now. `Notify` keeps at most one permit: a burst of pushes during a fetch
    /// yields one more fetch, never a queue of them.
    pub trigger: Notify,
}

impl Feed {
    /// The update not taken yet, if any.
    pub fn take(&self) -> Option<Update> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Leaves `update` for the loop; returns the one it replaces, which the loop never took.
    fn put(&self, update: Update) -> Option<Update> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(update)
    }
}

/// Fetches every `interval` (or at once when `feed.trigger` is notified), exports each new
/// commit and tells the loop through `reload`. A failed fetch is retried with exponential
/// backoff (1 s up to 30 s, jitter), reset by the next success. Runs until the loop is gone.
pub async fn follow(
    dir: GitDir,
    source: GitSource,
    feed: Arc<Feed>,
    reload: UnboundedSender<()>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut delays: Option<Box<dyn Iterator<Item = Duration> + Send>> = None;
    let mut last: Option<String> = None;
    metrics.declare_git_fetches();
    loop {
        let fetched = dir.fetch(&source).await;
        metrics.git_fetched(fetched.is_ok());
        let fetched = match fetched {
            Ok(commit) if last.as_ref() == Some(&commit) => Ok(None),
            Ok(commit) => match dir.export(&source, &commit).await {
                Ok(tree) => Ok(Some((commit, Ok(tree)))),
                // The commit itself is wrong: reported once, like invalid manifests.
                Err(e @ GitError::NoPath { .. }) => Ok(Some((commit, Err(e.to_string())))),
                // The disk, not the commit: tried again, on backoff.
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let update = match fetched {
            // After failures, the branch answers again with nothing new: say so once.
            Ok(None) => delays.take().map(|_| Update::Recovered),
            Ok(Some((commit, tree))) => {
                delays = None;
                last = Some(commit.clone());
                Some(Update::Fetched { commit, tree })
            }
            Err(e) => {
                let retry_in = delays
                    .get_or_insert_with(|| Box::new(super::backoff()))
                    .next()
                    .unwrap_or(Duration::from_secs(30));
                Some(Update::Failed {
                    error: crate::state::error_chain(&e),
                    retry_in,
                })
            }
        };
        let wait = match &update {
            Some(Update::Failed { retry_in, .. }) => *retry_in,
            _ => source.interval,
        };
        if let Some(update) = update {
            // A commit the loop never took (a newer one came first): its export goes.
            if let Some(Update::Fetched { tree: Ok(old), .. }) = feed.put(update) {
                let _ = std::fs::remove_dir_all(old);
            }
            if reload.send(()).is_err() {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = feed.trigger.notified() => {}
        }
    }
}

/// `reconcile --once --git`: fetches once and serves the fetched commit's tree. Returns the
/// commit, and whether its `--path` folder exists (`Err`: why not).
pub async fn fetch_once(
    dir: &GitDir,
    source: &GitSource,
) -> Result<(String, Result<PathBuf, String>), GitError> {
    let commit = dir.fetch(source).await?;
    let tree = match dir.export(source, &commit).await {
        Ok(tree) => Ok(tree),
        Err(e @ GitError::NoPath { .. }) => Err(e.to_string()),
        Err(e) => return Err(e),
    };
    Ok((commit, tree))
}

/// Makes the manifest positions of an export name files as they are in the repository
/// (`manifests/site.yaml:3:5`), not under the state dir.
pub fn relabel(diagnostics: &mut crate::manifest::Diagnostics, tree: &Path) {
    let prefix = format!("{}/", tree.display());
    for d in &mut diagnostics.0 {
        if let Some(rest) = d.file.strip_prefix(&prefix) {
            d.file = rest.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_branches_and_relative_paths_reach_git() {
        let ok = |r: &str, b: &str, p: &str| GitSource::new(r, b, p, Duration::from_secs(1));
        assert_eq!(
            ok("/srv/m.git", "main", "manifests/").unwrap().path,
            "manifests"
        );
        assert_eq!(ok("/srv/m.git", "release/v2", "./a/b").unwrap().path, "a/b");
        assert_eq!(ok("/srv/m.git", "main", "").unwrap().path, "");
        for (repo, branch, path) in [
            ("--upload-pack=x", "main", ""),
            ("", "main", ""),
            ("/r", "-f", ""),
            ("/r", "a..b", ""),
            ("/r", "main;rm", ""),
            ("/r", "x.lock", ""),
            ("/r", "main", "/etc"),
            ("/r", "main", "../up"),
            ("/r", "main", "a/../../b"),
        ] {
            assert!(ok(repo, branch, path).is_err(), "{repo} {branch} {path}");
        }
    }

    #[test]
    fn positions_name_files_as_they_are_in_the_repository() {
        let tree = Path::new("/state/git/incoming/abc");
        let mut diagnostics = crate::manifest::Diagnostics(vec![
            crate::manifest::Diagnostic::file_level("/state/git/incoming/abc/deploy/a.yaml", "x"),
            crate::manifest::Diagnostic::file_level("/elsewhere/b.yaml", "y"),
        ]);
        relabel(&mut diagnostics, tree);
        assert_eq!(diagnostics.0[0].file, "deploy/a.yaml");
        assert_eq!(diagnostics.0[1].file, "/elsewhere/b.yaml");
    }

    #[test]
    fn credentials_in_urls_are_never_shown() {
        assert_eq!(
            redact("https://bot:ghp_secret@github.com/org/m.git"),
            "https://github.com/org/m.git"
        );
        assert_eq!(
            redact("git@github.com:org/m.git"),
            "git@github.com:org/m.git"
        );
        assert_eq!(redact("/srv/m.git"), "/srv/m.git");
        assert_eq!(
            redact_text("fatal: unable to access 'https://u:p@h/r/': 403"),
            "fatal: unable to access 'https://h/r/': 403"
        );
    }
}
