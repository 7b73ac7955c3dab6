//! The whole output of failed commands (`sites/<site>/output/*.log`), so the error in a
//! status line can be read in full later. Bounded: each file is at most what the host
//! layer captured (64 KiB), and only the newest [`KEEP_OUTPUTS`] per site are kept.

use std::fs;
use std::path::PathBuf;

use super::files::write_atomic;
use super::{StateDir, StateError};

/// How many output files a site keeps; older ones are removed when a new one is written.
pub const KEEP_OUTPUTS: usize = 20;

const OUTPUT_DIR: &str = "output";

impl StateDir {
    /// Keeps `text`, the output of a failed command of `kind` on `host`; returns its path.
    /// Names sort by time, so the oldest go first when there are too many.
    pub fn keep_output(
        &self,
        site: &str,
        host: &str,
        kind: &str,
        text: &str,
    ) -> Result<PathBuf, StateError> {
        let dir = self.site_dir(site)?.join(OUTPUT_DIR);
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let path = loop {
            // UTC time to the nanosecond first: names sort by age.
            let now = std::time::SystemTime::now();
            let nanos = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let stamp = super::rfc3339(now).replace([':', '-'], "");
            let name = format!("{stamp}.{nanos:09}-{}-{}.log", safe(host), safe(kind));
            if !dir.join(&name).exists() {
                break dir.join(name);
            }
        };
        write_atomic(&path, text.as_bytes())?;
        prune(&dir);
        Ok(path)
    }
}

/// Removes all but the newest [`KEEP_OUTPUTS`] files; best effort (a file that cannot be
/// removed now is removed by a later call).
fn prune(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(KEEP_OUTPUTS);
    for old in &names[..excess] {
        let _ = fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_outputs_of_a_site_only() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::lock(tmp.path()).unwrap();
        let mut paths = vec![];
        for i in 0..KEEP_OUTPUTS + 3 {
            let path = state
                .keep_output("web", "h/1", "BuildFailed", &format!("error {i}\n"))
                .unwrap();
            assert!(
                path.starts_with(tmp.path().join("sites/web/output")),
                "{path:?}"
            );
            paths.push(path);
        }
        let left: Vec<_> = fs::read_dir(tmp.path().join("sites/web/output"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), KEEP_OUTPUTS);
        let newest = paths.last().unwrap();
        assert_eq!(
            fs::read_to_string(newest).unwrap(),
            format!("error {}\n", KEEP_OUTPUTS + 2)
        );
        assert!(!paths[0].exists(), "the oldest went first");
        assert!(
            newest
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("-h_1-")
        );
    }
}
