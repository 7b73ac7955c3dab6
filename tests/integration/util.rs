#![allow(dead_code)]
//! Running the real `convoy` binary from tests, and the bundled manifests as a snapshot.
//!
//! No test reads the working tree's `manifests/` itself: the suite takes one snapshot of it
//! (in memory, the first time a test asks) and every test writes its own copy under its
//! temporary directory. A demo edited while the suite runs (an editor's save, a file half
//! written, a site added) can then neither fail a test nor make two tests see two trees.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `convoy ARGS` from the repository root, so relative paths in messages are stable.
pub fn convoy(args: &[&str]) -> Output {
    convoy_in(repo_root(), args)
}

pub fn convoy_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .current_dir(dir)
        .env_remove("CONVOY_MANIFESTS")
        .env_remove("CONVOY_STATE_DIR")
        .env_remove("CONVOY_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .output()
        .expect("failed to run the convoy binary")
}

/// A directory tree held in memory: each path relative to the tree's root, parents first.
pub struct Snapshot(Vec<(PathBuf, Entry)>);

/// A directory, or a file's bytes and permission bits.
enum Entry {
    Dir,
    File(Vec<u8>, u32),
}

impl Snapshot {
    /// Reads every directory and regular file under `root`.
    pub fn take(root: &Path) -> Snapshot {
        let mut entries = vec![];
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut children: Vec<_> = std::fs::read_dir(root.join(&rel))
                .unwrap_or_else(|e| panic!("{}: {e}", root.join(&rel).display()))
                .map(|e| e.unwrap())
                .collect();
            children.sort_by_key(std::fs::DirEntry::file_name);
            for child in children {
                let path = rel.join(child.file_name());
                let meta = std::fs::metadata(child.path()).unwrap();
                if meta.is_dir() {
                    entries.push((path.clone(), Entry::Dir));
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(child.path()).unwrap();
                    entries.push((path, Entry::File(bytes, meta.permissions().mode())));
                }
            }
        }
        Snapshot(entries)
    }

    /// Writes the part of the tree under `under` (relative; empty for all of it) into `dir`.
    pub fn write(&self, under: &str, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (path, entry) in &self.0 {
            let Ok(rel) = path.strip_prefix(under) else {
                continue;
            };
            let target = dir.join(rel);
            match entry {
                Entry::Dir => std::fs::create_dir_all(&target).unwrap(),
                Entry::File(bytes, mode) => {
                    std::fs::write(&target, bytes).unwrap();
                    let permissions = std::fs::Permissions::from_mode(*mode);
                    std::fs::set_permissions(&target, permissions).unwrap();
                }
            }
        }
    }

    /// One file's bytes, by its path relative to the tree's root.
    pub fn file(&self, rel: &str) -> &[u8] {
        self.0
            .iter()
            .find_map(|(path, entry)| match entry {
                Entry::File(bytes, _) if path == Path::new(rel) => Some(bytes.as_slice()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no file `{rel}` in the snapshot"))
    }
}

/// The repository's `manifests/`, as it was when a test first asked for it.
pub fn bundled() -> &'static Snapshot {
    static BUNDLED: OnceLock<Snapshot> = OnceLock::new();
    BUNDLED.get_or_init(|| Snapshot::take(&repo_root().join("manifests")))
}

/// Writes the bundled manifests (all of `manifests/`) to `dir/manifests`; returns that path.
pub fn bundled_manifests_in(dir: &Path) -> PathBuf {
    let manifests = dir.join("manifests");
    bundled().write("", &manifests);
    manifests
}

/// The text of one bundled manifest file, e.g. `jobs-manager.yaml`.
pub fn bundled_file(rel: &str) -> String {
    String::from_utf8(bundled().file(rel).to_vec()).unwrap()
}

/// Copies the bundled example's application trees (`manifests/demo`) into `dir`, a manifest
/// directory: archive paths are relative to the manifest and must stay inside it.
pub fn copy_demo_into(dir: &Path) {
    bundled().write("demo", &dir.join("demo"));
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// stderr without the log lines (`2026-11-30T10:00:00.000000Z  INFO …`): what a command
/// reported besides its log, e.g. the located errors of invalid manifests.
pub fn stderr_without_log(output: &Output) -> String {
    stderr(output)
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            let logged = words
                .next()
                .is_some_and(|t| t.ends_with('Z') && t.starts_with(|c: char| c.is_ascii_digit()))
                && words
                    .next()
                    .is_some_and(|l| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&l));
            !logged
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Fails naming the first of `expected` that `text` (an error output) does not contain.
pub fn assert_contains_all<S: AsRef<str>>(text: &str, expected: impl IntoIterator<Item = S>) {
    for line in expected {
        let line = line.as_ref();
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

/// (status code, body) of one HTTP/1.0 request to 127.0.0.1:`port`, bounded to 5 s;
/// `(0, "")` when nothing listens.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
