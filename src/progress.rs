//! Live progress for a terminal: one status line on stderr, redrawn while `reconcile
//! --once` runs (sites done, per running site: hosts built and switched). In a pipe or a
//! cron log nothing of this is printed; the per-site blocks on stdout say it all.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use crate::plan::EventKind;

#[derive(Default)]
struct SiteProgress {
    hosts: usize,
    built: usize,
    switched: usize,
    failed: usize,
    done: bool,
}

/// Counters the executor updates as host steps finish.
#[derive(Default)]
pub struct Progress {
    sites: Mutex<BTreeMap<String, SiteProgress>>,
}

impl Progress {
    pub fn start(&self, site: &str, hosts: usize) {
        let mut sites = self.sites.lock().expect("not poisoned");
        let entry = sites.entry(site.to_string()).or_default();
        *entry = SiteProgress {
            hosts,
            ..SiteProgress::default()
        };
    }

    pub fn record(&self, site: &str, kind: EventKind) {
        let mut sites = self.sites.lock().expect("not poisoned");
        let entry = sites.entry(site.to_string()).or_default();
        match kind {
            EventKind::Built => entry.built += 1,
            EventKind::Switched => entry.switched += 1,
            EventKind::BuildFailed | EventKind::HealthFailed | EventKind::OnceFailed => {
                entry.failed += 1
            }
            _ => {}
        }
    }

    pub fn finish(&self, site: &str) {
        if let Some(entry) = self.sites.lock().expect("not poisoned").get_mut(site) {
            entry.done = true;
        }
    }

    /// `convoy: 3/12 sites done · shop 2/3 built 1/3 live · blog 10/10 built 4/10 live`
    pub fn line(&self, total: usize, width: usize) -> String {
        let sites = self.sites.lock().expect("not poisoned");
        let done = sites.values().filter(|s| s.done).count();
        let mut line = format!("convoy: {done}/{total} sites done");
        for (name, s) in sites.iter().filter(|(_, s)| !s.done) {
            line.push_str(&format!(
                " · {name} {}/{} built {}/{} live",
                s.built, s.hosts, s.switched, s.hosts
            ));
            if s.failed > 0 {
                line.push_str(&format!(" {} failed", s.failed));
            }
        }
        line.chars().take(width.saturating_sub(1)).collect()
    }
}

/// Erases the status line (before other output is written).
pub fn clear(err: &mut dyn Write) {
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
}
