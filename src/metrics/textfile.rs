//! The classic Prometheus text format, and the `--metrics-textfile` that `reconcile --once`
//! leaves for node_exporter's textfile collector. The textfile holds the gauges only: each
//! run starts from zero, so a counter or histogram written by one run would restart at the
//! next and `increase()` over it would be noise. The gauges describe where things stand
//! after the run, and the timestamps in them come from the state dir, so they stay true
//! across runs.

use std::path::Path;

use super::Metrics;
use crate::state::{self, StateError};

impl Metrics {
    /// The textfile: the gauges, in the classic text format.
    pub fn encode_textfile(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.gauges)
            .expect("writing to a String cannot fail");
        to_text_format(&text)
    }

    /// Replaces `path` with [`Metrics::encode_textfile`] atomically: a temporary file in the
    /// same directory (hidden, so the collector never reads it), renamed over `path`. The
    /// directory must exist.
    pub fn write_textfile(&self, path: &Path) -> Result<(), StateError> {
        state::replace_atomically(path, self.encode_textfile().as_bytes())
    }
}

/// OpenMetrics → the classic text format: no `# EOF`, and counters' `# HELP`/`# TYPE` lines
/// named like their `_total` samples.
pub(super) fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::KnownSite;
    use crate::plan::Outcome;
    use crate::status::Phase;
    use std::time::Duration;

    #[test]
    fn the_textfile_holds_the_gauges_only() {
        let m = Metrics::new();
        m.manifests_loaded(true);
        m.declare_sites(&[KnownSite {
            name: "shop".into(),
            release: "r1".into(),
            hosts: vec!["w1".into()],
            last_success: None,
        }]);
        m.reconciled("shop", &Outcome::Converged, Duration::from_millis(5));
        m.site_state("shop", Phase::Converged, "r1");
        let text = m.encode_textfile();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert!(!types.is_empty());
        assert!(types.iter().all(|t| t.ends_with(" gauge")), "{text}");
        assert!(text.contains("convoy_manifests_valid 1\n"), "{text}");
        assert!(text.contains(r#"convoy_site_phase{site="shop",phase="Converged"} 1"#));
        assert!(!text.contains("convoy_reconciles"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/convoy.prom");
        let e = Metrics::new().write_textfile(&path).unwrap_err();
        let message = state::error_chain(&e);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            !path.parent().unwrap().exists(),
            "the directory is not created"
        );
        Metrics::new()
            .write_textfile(&dir.path().join("convoy.prom"))
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["convoy.prom"]);
    }
}
