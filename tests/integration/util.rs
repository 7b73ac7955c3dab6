#![allow(dead_code)]
//! Running the real `convoy` binary from tests.

use std::path::Path;
use std::process::{Command, Output};

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
        .output()
        .expect("failed to run the convoy binary")
}

/// Copies the bundled example's application trees (`manifests/demo`) into `dir`, a manifest
/// directory: archive paths are relative to the manifest and must stay inside it.
pub fn copy_demo_into(dir: &Path) {
    let copied = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("manifests/demo"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(copied.success());
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails naming the first of `expected` that `text` (an error output) does not contain.
pub fn assert_contains_all<S: AsRef<str>>(text: &str, expected: impl IntoIterator<Item = S>) {
    for line in expected {
        let line = line.as_ref();
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}
