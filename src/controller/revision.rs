//! Resolving a Release's branch or tag to one commit on the controller (`git ls-remote`),
//! so every host builds the same commit even if the branch moves during the rollout. Only
//! asks the repository; recording the answer is the pass's job.

use std::time::Duration;

/// Resolves a branch or tag to its commit on the controller (`git ls-remote`), so that all
/// hosts build the same commit even if the branch moves during the rollout. `None` when the
/// revision is already a full commit id, or the controller cannot reach the repository (the
/// first host that fetches resolves it then, and the state dir records it).
pub(super) async fn resolve_revision(repository: &str, revision: &str) -> Option<String> {
    if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut git = tokio::process::Command::new("git");
    git.args(["ls-remote", "--", repository, revision])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        git.env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=10",
        );
    }
    let out = tokio::time::timeout(Duration::from_secs(20), git.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    pick_commit(&String::from_utf8_lossy(&out.stdout), revision)
}

/// From `git ls-remote` output: a peeled tag first, then the tag, then the branch.
fn pick_commit(listing: &str, revision: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    [
        format!("refs/tags/{revision}^{{}}"),
        format!("refs/tags/{revision}"),
        format!("refs/heads/{revision}"),
        revision.to_string(),
    ]
    .iter()
    .find_map(|wanted| refs.iter().find(|(_, name)| name == wanted))
    .map(|(sha, _)| sha.to_string())
    .filter(|sha| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_prefers_the_peeled_tag_then_the_tag_then_the_branch() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let listing = format!("{a}\trefs/heads/v1\n{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n");
        assert_eq!(pick_commit(&listing, "v1"), Some(c.clone()));
        let listing = format!("{a}\trefs/heads/main\n{b}\trefs/heads/main-old\n");
        assert_eq!(pick_commit(&listing, "main"), Some(a));
        assert_eq!(pick_commit("", "main"), None);
        assert_eq!(pick_commit("garbage\n", "main"), None);
    }

    #[tokio::test]
    async fn a_full_commit_id_needs_no_resolution() {
        assert_eq!(
            resolve_revision("/nonexistent", &"f".repeat(40)).await,
            None
        );
        assert_eq!(
            resolve_revision("/nonexistent/repo", "main").await,
            None,
            "unreachable repository: hosts resolve"
        );
    }
}
