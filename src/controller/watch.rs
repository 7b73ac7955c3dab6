//! Watching the manifest directory: every burst of changes (an editor's atomic save, a
//! `git pull` touching hundreds of files, a file removed) becomes one reload signal. Hidden
//! paths (`.git/…`) and files other than `.yaml`/`.yml` are ignored.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
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
        let Ok(events) = result else { return };
        if events
            .iter()
            .any(|event| event.paths.iter().any(|p| relevant(&root, p)))
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
