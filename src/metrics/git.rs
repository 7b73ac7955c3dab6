//! The git source's metrics: the manifest commit served (`convoy_manifest_info`, one
//! series at a time), fetches and the webhook's requests by result. Registered with the others in
//! `mod.rs`; nothing here decides anything.

use super::{CommitLabel, Metrics, ResultLabel};

impl Metrics {
    /// The manifest commit now served: replaces the one before (`None`: not from git).
    pub fn manifest_commit(&self, commit: Option<&str>) {
        let new = commit.map(|commit| CommitLabel {
            commit: commit.into(),
        });
        if let Some(labels) = &new {
            self.manifest_info.get_or_create(labels).set(1);
        }
        let mut current = self.manifest_commit.lock().expect("not poisoned");
        if let Some(old) = std::mem::replace(&mut *current, new)
            && Some(&old) != current.as_ref()
        {
            self.manifest_info.remove(&old);
        }
    }

    /// The webhook is served: every `result` series exists from the first scrape.
    pub fn declare_webhook(&self, results: &[&str]) {
        for result in results {
            let _ = self.webhook_requests.get_or_create(&ResultLabel {
                result: (*result).into(),
            });
        }
    }

    /// The git source is followed: both fetch results exist from the first scrape.
    pub fn declare_git_fetches(&self) {
        for result in ["ok", "failed"] {
            let _ = self.git_fetches.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
    }

    /// One fetch of the git source's branch, `ok` or `failed`.
    pub fn git_fetched(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.git_fetches
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// One webhook request and what became of it (a fixed few results).
    pub fn webhook_request(&self, result: &'static str) {
        self.webhook_requests
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_manifest_commit_series_at_a_time() {
        let m = Metrics::new();
        m.manifest_commit(Some("aaaa"));
        m.manifest_commit(Some("bbbb"));
        let text = m.encode();
        assert!(
            text.contains(r#"convoy_manifest_info{commit="bbbb"} 1"#),
            "{text}"
        );
        assert!(!text.contains("aaaa"), "{text}");
        m.manifest_commit(None);
        assert!(!m.encode().contains("convoy_manifest_info{"));
    }
}
