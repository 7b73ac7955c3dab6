//! Watching the manifest directory: every burst of changes (an editor's atomic save, a
//! `git pull` touching hundreds of files, a file removed) becomes one reload signal. Hidden
//! paths (`.git/…`) and files other than `.yaml`/`.yml` are ignored.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc::UnboundedSender;

/// How long the file system must be quiet before a burst of events counts as one change.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the watch alive; dropping it stops watching.
pub type Watch = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Starts watching `manifests` (a directory, recursively, or one file's directory).
pub fn start(
    manifests: &Path,
    reload: UnboundedSender<()>,
) -> Result<Watch, notify_debouncer_full::notify::Error> {
    let (dir, mode) = if manifests.is_file() {
        (
            manifests
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            RecursiveMode::NonRecursive,
        )
    } else {
        (manifests.to_path_buf(), RecursiveMode::Recursive)
    };
    let root = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for e in errors {
                    tracing::warn!("watching manifests: {e}");
                }
                return;
            }
        };
        for e in &events {
            tracing::trace!(kind = ?e.kind, paths = ?e.paths, "manifest watch event");
        }
        // Only changes count: reading the manifests (access events) must not trigger a reload.
        let changed = |kind: &EventKind| {
            matches!(
                kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
            )
        };
        if events
            .iter()
            .any(|event| changed(&event.kind) && event.paths.iter().any(|p| relevant(&root, p)))
        {
            let _ = reload.send(());
        }
    })?;
    debouncer.watch(&dir, mode)?;
    Ok(debouncer)
}

/// A manifest file (or a folder that may hold some), outside hidden folders.
fn relevant(root: &Path, path: &Path) -> bool {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let hidden = relative
        .components()
        .any(|c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with('.')));
    if hidden {
        return false;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => true,
        // A folder created, renamed or removed may carry manifests with it.
        None => true,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_outside_hidden_folders_count() {
        let root = Path::new("/m");
        assert!(relevant(root, Path::new("/m/site.yaml")));
        assert!(relevant(root, Path::new("/m/a/b/site.yml")));
        assert!(relevant(root, Path::new("/m/newdir")));
        assert!(!relevant(root, Path::new("/m/.git/index")));
        assert!(!relevant(root, Path::new("/m/.site.yaml.swp")));
        assert!(!relevant(root, Path::new("/m/README.md")));
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    #[test]
    fn a_burst_of_writes_signals_and_reads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watch = start(dir.path(), tx).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("m{i}.yaml")), "a: 1\n").unwrap();
        }
        std::thread::sleep(DEBOUNCE * 4);
        let mut signals = 0;
        while rx.try_recv().is_ok() {
            signals += 1;
        }
        assert!(signals >= 1, "no reload signal for 50 new manifests");
        // Reading every file (as a reload does) is not a change.
        for i in 0..50 {
            let _ = std::fs::read(dir.path().join(format!("m{i}.yaml"))).unwrap();
        }
        std::thread::sleep(DEBOUNCE * 4);
        assert!(
            rx.try_recv().is_err(),
            "reading manifests must not signal a reload"
        );
    }
}
