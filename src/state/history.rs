//! The history of each site (`sites/<site>/history.jsonl`): what convoy did, one JSON event
//! a line, only ever appended to. Survives a controller killed mid-append (a torn last line
//! is repaired on the next append, skipped when read). Decides nothing about deployments.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::EventKind;

use super::files::create_dir;
use super::{HISTORY_FILE, StateDir, StateError, controller_id, error_chain, lock, now_rfc3339};

/// Something convoy did (or refused to do) to a site, as kept in `history.jsonl` and shown by
/// `convoy history`. Fields are camelCase in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    /// When it happened (RFC 3339, UTC, whole seconds).
    pub time: String,
    pub site: String,
    pub release: String,
    /// The host concerned, if the event is about one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The stage concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Stored as `action` (the file format predates the name).
    #[serde(rename = "action")]
    pub kind: EventKind,
    /// Free text: the error, the commit, the hosts cleaned up...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Which controller did it: `hostname:pid` (see [`controller_id`]).
    pub controller: String,
    /// The manifest commit (full SHA) of the desired state it was done for (git source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_commit: Option<String>,
}

impl HistoryEvent {
    /// An event stamped now, by this controller, about no host in particular.
    pub fn new(site: impl Into<String>, release: impl Into<String>, kind: EventKind) -> Self {
        Self {
            time: now_rfc3339(),
            site: site.into(),
            release: release.into(),
            host: None,
            stage: None,
            kind,
            detail: None,
            controller: controller_id().to_owned(),
            manifest_commit: None,
        }
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The manifest commit the event's desired state came from, if known.
    pub fn manifest_commit(mut self, commit: Option<&str>) -> Self {
        self.manifest_commit = commit.map(str::to_owned);
        self
    }
}

impl StateDir {
    /// Appends events to the history of their sites: one write per site file (O_APPEND),
    /// then fsync. A torn last line left by a killed controller is repaired first.
    pub fn append_history(&self, events: &[HistoryEvent]) -> Result<(), StateError> {
        let mut by_site: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for event in events {
            let buf = by_site.entry(&event.site).or_default();
            serde_json::to_writer(&mut *buf, event).map_err(|e| StateError::Write {
                path: PathBuf::from(HISTORY_FILE),
                source: io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let _guard = lock(&self.write);
        for (site, buf) in by_site {
            let dir = self.site_dir(site)?;
            create_dir(&dir)?;
            let path = dir.join(HISTORY_FILE);
            let write_err = |source| StateError::Write {
                path: path.clone(),
                source,
            };
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|source| StateError::Open {
                    path: path.clone(),
                    source,
                })?;
            repair_torn_tail(&mut file).map_err(write_err)?;
            file.write_all(&buf).map_err(write_err)?;
            file.sync_data().map_err(write_err)?;
        }
        Ok(())
    }

    /// The history of `site`, oldest first. A torn last line (a controller killed
    /// mid-write) is skipped silently; any other damaged line is skipped with a warning.
    pub fn history(&self, site: &str) -> Vec<HistoryEvent> {
        let path = match self.site_file(site, HISTORY_FILE) {
            Ok(path) => path,
            Err(e) => {
                self.warn(error_chain(&e));
                return Vec::new();
            }
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                let e = StateError::Read { path, source };
                self.warn(format!("{}; no history shown", error_chain(&e)));
                return Vec::new();
            }
        };
        let complete = bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let count = lines.len();
        let mut events = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<HistoryEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) if i + 1 == count && !complete => {}
                Err(e) => self.warn(format!(
                    "failed to parse line {} of `{}`: {e}; skipping it",
                    i + 1,
                    path.display()
                )),
            }
        }
        events
    }
}

/// If the file does not end with a newline, a controller was killed mid-append: a complete
/// event only lacking its newline gets one; a partial line is cut off.
fn repair_torn_tail(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read backwards until the last newline (or the start of the file).
    let mut tail: Vec<u8> = Vec::new();
    let mut end = len;
    let line_start = loop {
        let start = end.saturating_sub(4096);
        let mut chunk = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if chunk.last() == Some(&b'\n') && end == len {
            return Ok(()); // not torn
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if let Some(pos) = tail[..(end - start) as usize]
            .iter()
            .rposition(|&b| b == b'\n')
        {
            tail.drain(..=pos);
            break start + pos as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if serde_json::from_slice::<HistoryEvent>(&tail).is_ok() {
        file.write_all(b"\n") // O_APPEND: lands at the end whatever the position
    } else {
        file.set_len(line_start)
    }
}
