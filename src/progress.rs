//! What a run shows while it happens: one line per host event (built, switched, failed,
//! rolled back...) the moment the executor records it, and, for a terminal, one status
//! line on stderr (indicatif: as wide as the terminal, hidden when stderr is not one, so a
//! pipe or a cron log gets the event lines only). Decides nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::plan::{Event, EventKind};

#[derive(Default)]
struct SiteProgress {
    hosts: usize,
    built: usize,
    switched: usize,
    failed: usize,
    done: bool,
}

/// Where finished lines go: stdout for `--once`, the log for the daemon.
pub type Printer = Box<dyn Fn(&str) + Send + Sync>;

/// Counters the executor updates as host steps finish, and the lines it prints.
pub struct Progress {
    sites: Mutex<BTreeMap<String, SiteProgress>>,
    total: usize,
    bar: ProgressBar,
    print: Printer,
}

impl Progress {
    /// `total` sites; `terminal`: draw the status line on stderr when it is a terminal.
    pub fn new(total: usize, terminal: bool, print: Printer) -> Self {
        let bar = if terminal {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {wide_msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            sites: Mutex::default(),
            total,
            bar,
            print,
        }
    }

    pub fn start(&self, site: &str, hosts: usize) {
        self.update(site, |entry| {
            *entry = SiteProgress {
                hosts,
                ..SiteProgress::default()
            }
        });
    }

    /// Counts `event` and prints its line: `shop: web1: Switched r7`.
    pub fn record(&self, site: &str, event: &Event) {
        self.update(site, |entry| match event.kind {
            EventKind::Built => entry.built += 1,
            EventKind::Switched => entry.switched += 1,
            EventKind::BuildFailed | EventKind::HealthFailed | EventKind::OnceFailed => {
                entry.failed += 1
            }
            _ => {}
        });
        self.say(&event_line(site, event));
    }

    pub fn finish(&self, site: &str) {
        self.update(site, |entry| entry.done = true);
    }

    /// Prints a finished line above the status line.
    pub fn say(&self, line: &str) {
        self.bar.suspend(|| (self.print)(line));
    }

    /// Removes the status line for good (the end of the run).
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    fn update(&self, site: &str, change: impl FnOnce(&mut SiteProgress)) {
        let mut sites = self.sites.lock().expect("not poisoned");
        change(sites.entry(site.to_string()).or_default());
        self.bar.set_message(status_line(&sites, self.total));
    }
}

/// `shop: web1: BuildFailed r7: build (exit 2) on host `web1`: npm ERR! missing script`
pub fn event_line(site: &str, event: &Event) -> String {
    let mut line = format!("{site}: {}: {} {}", event.host, event.kind, event.release);
    if let Some(detail) = &event.detail {
        line.push_str(": ");
        line.push_str(detail.lines().next().unwrap_or(""));
    }
    line
}

/// `3/12 sites done · shop 2/3 built 1/3 live · blog 10/10 built 4/10 live`; the bar cuts
/// it to the terminal's width.
fn status_line(sites: &BTreeMap<String, SiteProgress>, total: usize) -> String {
    let done = sites.values().filter(|s| s.done).count();
    let mut line = format!("{done}/{total} sites done");
    for (name, s) in sites.iter().filter(|(_, s)| !s.done) {
        line.push_str(&format!(
            " · {name} {}/{} built {}/{} live",
            s.built, s.hosts, s.switched, s.hosts
        ));
        if s.failed > 0 {
            line.push_str(&format!(" {} failed", s.failed));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(host: &str, kind: EventKind, detail: Option<&str>) -> Event {
        Event {
            host: host.into(),
            stage: "web".into(),
            release: "r7".into(),
            kind,
            detail: detail.map(str::to_string),
            output: None,
            kept: None,
        }
    }

    #[test]
    fn every_event_is_printed_as_it_is_recorded_and_counted() {
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        let progress = Progress::new(
            2,
            false,
            Box::new(move |l: &str| sink.lock().unwrap().push(l.to_string())),
        );
        progress.start("shop", 2);
        progress.record("shop", &event("web1", EventKind::Built, None));
        assert_eq!(lines.lock().unwrap().clone(), vec!["shop: web1: Built r7"]);
        progress.record(
            "shop",
            &event(
                "web2",
                EventKind::BuildFailed,
                Some("build (exit 2) on host `web2`: boom"),
            ),
        );
        assert_eq!(
            lines.lock().unwrap()[1],
            "shop: web2: BuildFailed r7: build (exit 2) on host `web2`: boom"
        );
        let sites = progress.sites.lock().unwrap();
        assert_eq!(
            status_line(&sites, 2),
            "0/2 sites done · shop 1/2 built 0/2 live 1 failed"
        );
    }
}
